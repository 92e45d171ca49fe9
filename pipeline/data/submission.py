"""Submission files: writing them and reading them (checking them, against their images:
`pipeline.data.reconcile`).

Format
------
A CSV file with the header ``ImageId,EncodedPixels`` and one row per nucleus, its pixels
run-length encoded (see `pipeline.data.rle`)::

    ImageId,EncodedPixels
    0a7d30b2...,1 2 5 2 9 1
    0a7d30b2...,40 3 296 5
    0ed3555a...,

An image in which no nucleus was found still gets exactly ONE row, with an empty
``EncodedPixels`` (``<ImageId>,``). Kaggle's DSB2018 scorer accepted that row and read it
as "no nucleus". The ``1 1`` that the sample submission puts on every image is not a
placeholder: it is a one-pixel nucleus, a false positive on every such image. An image
with no row at all is an error for `pipeline.data.reconcile.check_submission` and scores 0
(unless it truly has no nucleus).

The nuclei of one image must not share pixels, and each encoding must be valid: integer
``start length`` pairs, starts ascending, runs not overlapping and inside the image.

Beside a submission ``name.csv``, ``name.json`` holds its metadata (``model``: the model
folder, ``config``: the configuration name, ``commit``: the git commit), which the
leaderboard records with its score.

Example
-------
>>> import numpy as np
>>> with SubmissionWriter("submission.csv") as writer:      # doctest: +SKIP
...     writer.add("img1", np.array([[1, 0], [1, 2]]))
...     writer.add("img2", np.zeros((2, 2), dtype=int))
>>> print(open("submission.csv").read())                    # doctest: +SKIP
ImageId,EncodedPixels
img1,1 2
img1,4 1
img2,
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import numpy as np
import pandas as pd

from pipeline.data import dataset
from pipeline.data.rle import RLEError, decode_flat_indices, encode_labels
from pipeline.data.rle_csv import REQUIRED, Problem, read_rle_table, summary
from pipeline.errors import PipelineError
from pipeline.fileio import atomic_path, atomic_write_text, check_writable_file

log = logging.getLogger(__name__)

__all__ = [
    "HEADER",
    "Problem",
    "SubmissionWriter",
    "decode_image_rows",
    "group_rows",
    "metadata_path",
    "read_submission",
    "read_submission_metadata",
    "write_submission",
    "write_submission_metadata",
]

HEADER = REQUIRED


# --------------------------------------------------------------------------- writing


class SubmissionWriter:
    """Write a submission one image at a time, atomically.

    Rows stream to a temporary file beside ``path``, so memory stays bounded however many
    images there are; the file is moved into place only when the ``with`` block ends
    without an error. On an error ``path`` is left as it was and nothing half-written
    remains.

    Parameters
    ----------
    path : str or Path
        The CSV file to write.

    Examples
    --------
    >>> with SubmissionWriter("submission.csv") as writer:      # doctest: +SKIP
    ...     for image_id, labels in predictions:
    ...         writer.add(image_id, labels)
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.n_images = 0
        self.n_rows = 0
        self.n_nuclei = 0
        self._seen: set[str] = set()
        self._stack: contextlib.ExitStack | None = None
        self._file: TextIO | None = None

    def __enter__(self) -> SubmissionWriter:
        if self._stack is not None:
            raise RuntimeError(f"SubmissionWriter for {self.path} is already open")
        stack = contextlib.ExitStack()
        try:
            tmp = stack.enter_context(atomic_path(self.path))
            self._file = stack.enter_context(open(tmp, "w", encoding="utf-8", newline=""))
            self._file.write(",".join(HEADER) + "\n")
        except BaseException:
            stack.close()
            self._file = None
            raise
        self._stack = stack
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        stack, self._stack, self._file = self._stack, None, None
        assert stack is not None
        return bool(stack.__exit__(exc_type, exc, traceback))

    def add(self, image_id: str, labels: np.ndarray) -> int:
        """Append the rows of one image: one per nucleus, in ascending label order.

        Parameters
        ----------
        image_id : str
            The image's id (no comma, quote or line break).
        labels : np.ndarray
            2-D integer instance labels (0 = background); an image without any nucleus
            gets one row with an empty ``EncodedPixels``.

        Returns
        -------
        int
            The number of nuclei written.

        Raises
        ------
        ValueError
            When the image was added before, or the id or labels are not valid.
        """
        if self._file is None:
            raise RuntimeError("SubmissionWriter.add called outside its 'with' block")
        problem = dataset.image_id_problem(image_id)
        if problem:
            raise ValueError(f"{self.path}: {problem}")
        if image_id in self._seen:
            raise ValueError(f"{self.path}: image {image_id} added twice")
        rles = encode_labels(labels)
        self._file.write(submission_rows(image_id, rles))
        self._seen.add(image_id)
        self.n_images += 1
        self.n_rows += max(len(rles), 1)
        self.n_nuclei += len(rles)
        return len(rles)


class ResumableSubmissionWriter(SubmissionWriter):
    """A `SubmissionWriter` whose work survives a kill: it resumes where it stopped.

    Rows go to ``<path>.partial``; after each image the file is flushed to disk and
    ``<path>.partial.json`` records how many images and bytes are complete, with a ``key``
    naming the run (model, settings and images). A new writer with the same key opens the
    partial file, drops anything after the last complete image, and lists the images
    already done in ``done``; with another key (or none on disk) it starts over. When the
    ``with`` block ends without an error the partial file becomes ``path``; on an error
    or a kill it stays for the next run.
    """

    def __init__(self, path: str | os.PathLike[str], key: str) -> None:
        super().__init__(path)
        self.key = key
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.progress = self.path.with_name(self.path.name + ".partial.json")
        self.done: list[str] = []

    def _resumable(self) -> dict | None:
        try:
            progress = json.loads(self.progress.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if progress.get("key") != self.key or not self.partial.is_file():
            return None
        if self.partial.stat().st_size < progress.get("bytes", -1):
            return None
        return progress

    def __enter__(self) -> ResumableSubmissionWriter:
        if self._file is not None:
            raise RuntimeError(f"SubmissionWriter for {self.path} is already open")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        progress = self._resumable()
        if progress is None:
            if self.partial.exists():
                log.info(
                    "%s: from another run (model, settings or images): starting over", self.partial
                )
            self._file = open(self.partial, "w", encoding="utf-8", newline="")  # noqa: SIM115
            self._file.write(",".join(HEADER) + "\n")
            self._checkpoint()
            return self
        with open(self.partial, "r+b") as handle:
            handle.truncate(progress["bytes"])  # a kill can leave half an image after it
        self.done = _image_ids_in_order(self.partial)
        self._seen = set(self.done)
        self.n_images = len(self.done)
        self._file = open(self.partial, "a", encoding="utf-8", newline="")  # noqa: SIM115
        log.info("%s: resuming after %d images", self.partial, len(self.done))
        return self

    def add(self, image_id: str, labels: np.ndarray) -> int:
        n_nuclei = super().add(image_id, labels)
        self._checkpoint()
        return n_nuclei

    def _checkpoint(self) -> None:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        record = {"key": self.key, "images": self.n_images, "bytes": self._file.tell()}
        atomic_write_text(self.progress, json.dumps(record) + "\n")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        handle, self._file = self._file, None
        if handle is not None:
            handle.close()
        if exc_type is None:
            os.replace(self.partial, self.path)
            self.progress.unlink(missing_ok=True)
        return False


def _image_ids_in_order(path: Path) -> list[str]:
    """The distinct ImageIds of a submission file, in the order they first appear."""
    seen: dict[str, None] = {}
    with open(path, encoding="utf-8") as handle:
        next(handle, None)
        for line in handle:
            seen.setdefault(line.split(",", 1)[0], None)
    return list(seen)


def check_submission_target(path: str | os.PathLike[str], force: bool = False) -> None:
    """Refuse, before any work, to write a submission over a file that is not one this
    pipeline wrote (one without its sidecar ``.json``), or its sidecar over a ``.json``
    that is not one, unless ``force``; or where either cannot be written (a folder, a
    device: `pipeline.fileio.check_writable_file`)."""
    path = Path(path)
    check_writable_file(path, "--out")
    sidecar = metadata_path(path)
    check_writable_file(sidecar, "--out (its sidecar)")
    if path.exists() and not sidecar.is_file() and not force:
        raise PipelineError(
            f"{path}: exists and is not a submission written by this pipeline (it has no "
            f"{sidecar.name}); --force replaces it, or choose another --out"
        )
    if sidecar.exists() and not _own_sidecar(sidecar) and not force:
        raise PipelineError(
            f"{sidecar}: exists and is not the metadata of a submission written by this "
            f"pipeline (no 'model' and 'commit' in it); --out {path.name} would replace it: "
            "--force replaces it, or choose another --out"
        )


def _own_sidecar(sidecar: Path) -> bool:
    """Whether ``sidecar`` is a submission's metadata as `write_submission_metadata` writes
    it: a JSON object with ``model`` and ``commit``."""
    try:
        metadata = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(metadata, dict) and {"model", "commit"} <= set(metadata)


def submission_rows(image_id: str, encodings: Sequence[str]) -> str:
    """One image's lines of a submission: one per nucleus, or one with an empty
    ``EncodedPixels`` when it has none.

    >>> submission_rows("a1", ["1 3", "7 2"])
    'a1,1 3\\na1,7 2\\n'
    >>> submission_rows("empty", [])
    'empty,\\n'
    """
    return "".join(f"{image_id},{rle}\n" for rle in encodings or [""])


def write_submission(path: str | os.PathLike[str], items: Iterable[tuple[str, np.ndarray]]) -> None:
    """Write a whole submission from ``(image_id, labels)`` pairs (see `SubmissionWriter`)."""
    with SubmissionWriter(path) as writer:
        for image_id, labels in items:
            writer.add(image_id, labels)


# -------------------------------------------------------------------------- metadata


def metadata_path(csv_path: str | os.PathLike[str]) -> Path:
    """The sidecar metadata file of a submission: ``name.csv`` -> ``name.json``."""
    path = Path(csv_path)
    stem = path.name[:-4] if path.name.lower().endswith(".csv") else path.name
    return path.with_name(stem + ".json")


def write_submission_metadata(csv_path: str | os.PathLike[str], metadata: dict[str, Any]) -> Path:
    """Write a submission's metadata as JSON beside it (atomically); return that path.

    Keys read elsewhere: ``model`` (model folder), ``config`` (configuration name),
    ``commit`` (git commit). Values that JSON cannot hold are written as strings.
    """
    target = metadata_path(csv_path)
    atomic_write_text(target, json.dumps(metadata, indent=2, sort_keys=True, default=str) + "\n")
    return target


def read_submission_metadata(csv_path: str | os.PathLike[str]) -> dict[str, Any]:
    """A submission's metadata from its sidecar JSON file; ``{}`` when there is none."""
    path = metadata_path(csv_path)
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PipelineError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(metadata, dict):
        raise PipelineError(f"{path}: expected a JSON object, got {type(metadata).__name__}")
    return metadata


# --------------------------------------------------------------------------- reading


def _problems_error(path: Path, problems: Sequence[Problem]) -> PipelineError:
    return PipelineError(f"{path}: {summary(problems)}")


def read_submission(path: str | os.PathLike[str], required: Sequence[str] = HEADER) -> pd.DataFrame:
    """Read a submission (or solution) CSV as a table (with `pipeline.data.rle_csv`).

    Parameters
    ----------
    path : str or Path
        The CSV file.
    required : sequence of str
        Columns that must be in the header (``ImageId`` and ``EncodedPixels``, the
        default); other columns are kept.

    Returns
    -------
    pandas.DataFrame
        One row per data line, every column as ``str`` (an empty ``EncodedPixels`` is
        ``""``), indexed by the row's line number in the file (the header is line 1).

    Raises
    ------
    PipelineError
        When the file is missing, empty, not a CSV, lacks a required column, or a row has
        the wrong number of fields; the message names the file (and the line).
    """
    path = Path(path)
    table = read_rle_table(path, required)
    if table.problems:
        raise _problems_error(path, table.problems)
    assert table.header is not None
    return pd.DataFrame(
        [fields for _, fields in table.rows],
        columns=table.header,
        index=pd.Index([line for line, _ in table.rows], name="line", dtype=np.int64),
        dtype=str,
    )


def group_rows(frame: pd.DataFrame) -> dict[str, list[tuple[int, str]]]:
    """``{image_id: [(line, encoding), ...]}`` from `read_submission`'s table, in file order."""
    grouped: dict[str, list[tuple[int, str]]] = {}
    for line, image_id, rle in zip(
        frame.index.tolist(),
        frame["ImageId"].tolist(),
        frame["EncodedPixels"].tolist(),
        strict=True,
    ):
        grouped.setdefault(image_id, []).append((line, rle))
    return grouped


def decode_image_rows(
    image_id: str, rows: Sequence[tuple[int, str]], shape: tuple[int, int]
) -> tuple[np.ndarray, list[Problem]]:
    """Decode the rows of one image into instance labels, collecting what is wrong.

    Parameters
    ----------
    image_id : str
        The image (for the messages).
    rows : sequence of (int, str)
        ``(line, encoding)`` of each of its rows; an empty encoding means "no nucleus".
    shape : tuple of int
        ``(height, width)`` of the image.

    Returns
    -------
    labels : np.ndarray
        int32 labels ``1..n`` of the valid nuclei, in row order. A row that is invalid or
        shares pixels with an earlier row is left out.
    problems : list of Problem
        One per invalid row or per row that shares pixels with earlier rows.
    """
    height, width = shape
    flat = np.zeros(height * width, dtype=np.int32)
    line_of_label: list[int] = []
    problems: list[Problem] = []
    for line, rle in rows:
        if not rle.strip():
            continue
        try:
            indices = decode_flat_indices(rle, shape)
        except RLEError as error:
            problems.append(Problem(line, image_id, str(error)))
            continue
        taken = flat[indices]
        if taken.any():
            owners, counts = np.unique(taken[taken > 0], return_counts=True)
            shared = ", ".join(
                f"{count} with the nucleus on line {line_of_label[owner - 1]}"
                for owner, count in zip(owners.tolist(), counts.tolist(), strict=True)
            )
            problems.append(Problem(line, image_id, f"nuclei overlap: shares pixels, {shared}"))
            continue
        line_of_label.append(line)
        flat[indices] = len(line_of_label)
    return np.ascontiguousarray(flat.reshape((height, width), order="F")), problems
