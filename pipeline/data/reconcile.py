"""A submission reconciled with its images and, when given, their labels (the one place).

Four readers put a submission beside the images it is for: ``check-submission`` (which
lists every problem), ``predict``'s own check of the file it wrote, ``score`` (whose images
are those of the solution, with its sizes) and ``report`` (a folder of images and, when
given, a solution). What can be wrong between them is found here, once, and reads the same
in all four:

- the file itself: not a CSV, a wrong or repeated header, a row with the wrong number of
  fields (`pipeline.data.rle_csv`), an empty ImageId;
- an ImageId that is none of the images (unknown), an image with no row (missing);
- an encoding that cannot be decoded within its image's size, nuclei of one image that
  share pixels (`pipeline.data.submission.decode_image_rows`);
- with labels: the images whose labels are all ``Ignored`` (left out, and their rows passed
  over), labels that do not cover every image (not used), labels of another size than
  their image, labels that cannot be decoded.

The readers differ only in what they do with a problem: list it, refuse the file
(`refusal`), or warn and go on (an unknown image ignored, a missing one taken as an empty
prediction).

Example
-------
>>> images = images_in_folder("input/stage1_test")                 # doctest: +SKIP
>>> for problem in reconcile("submission.csv", images).problems():  # doctest: +SKIP
...     print(problem)
line 4: zz: unknown ImageId: no such image (1 row(s), line(s) 4)
0ed3555a...: missing: no row for this image (an image with no nucleus is '0ed3555a...,')
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.data import dataset
from pipeline.data.rle import RLEError, parse_rle
from pipeline.data.rle_csv import Problem, RleTable, read_rle_table, summary
from pipeline.data.submission import HEADER, decode_image_rows, read_submission
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

__all__ = [
    "CheckSummary",
    "Images",
    "Labels",
    "Reconciled",
    "SolutionImage",
    "check_submission",
    "check_submission_summary",
    "images_in_folder",
    "images_of_files",
    "read_labels",
    "read_solution",
    "reconcile",
    "refusal",
    "summary",
]

SOLUTION_COLUMNS = ("ImageId", "EncodedPixels", "Height", "Width")

#: ``(line, encoding)`` of each row of one image, in file order.
Rows = list[tuple[int, str]]


# ----------------------------------------------------------------------------- messages


def refusal(
    path: Path,
    problems: Sequence[Problem],
    more: str = "problem(s)",
    lead: str = "",
    then: str = "",
) -> PipelineError:
    """The error of a run-length CSV that cannot be used as it is: ``lead``, its first
    problem and how many ``more``, the command that lists them all, and ``then``.

    >>> print(refusal(Path("s.csv"), [Problem(3, "a", "odd number of values (3)")]))
    s.csv: line 3: a: odd number of values (3); ./run.sh check-submission s.csv lists every problem
    """
    return PipelineError(
        f"{path}: {lead}{summary(problems, more)}; "
        f"./run.sh check-submission {path} lists every problem{then}"
    )


def _some(ids: Sequence[str], most: int = 3) -> str:
    """
    >>> _some(["a", "b", "c", "d"])
    'a, b, c, ...'
    """
    return ", ".join(ids[:most]) + (", ..." if len(ids) > most else "")


def _line_list(lines: Sequence[int], limit: int = 5) -> str:
    shown = ", ".join(str(line) for line in lines[:limit])
    return shown + (", ..." if len(lines) > limit else "")


# ------------------------------------------------------------------------------- labels


@dataclass
class SolutionImage:
    """The ground truth of one image: its size and its rows as ``(line, encoding)``."""

    shape: tuple[int, int]
    rows: Rows = field(default_factory=list)


def _positive_int(text: str, path: Path, line: int, column: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise PipelineError(f"{path}: line {line}: {column} {text!r} is not a positive integer")
    return value


def read_solution(
    solution_csv: str | os.PathLike[str],
) -> tuple[dict[str, SolutionImage], set[str]]:
    """Read a solution CSV (``ImageId,EncodedPixels,Height,Width[,Usage]``).

    Returns
    -------
    images : dict of str to SolutionImage
        The images to score, in file order.
    ignored : set of str
        Images whose rows are all ``Usage == "Ignored"`` (not scored).

    Raises
    ------
    PipelineError
        When the file is not such a CSV or an image's size is missing or inconsistent.
    """
    path = Path(solution_csv)
    table = read_submission(path, required=SOLUTION_COLUMNS)
    usage = table["Usage"] if "Usage" in table.columns else None
    images: dict[str, SolutionImage] = {}
    seen: set[str] = set()
    for line, row in zip(table.index.tolist(), table.itertuples(index=False), strict=True):
        image_id = row.ImageId
        seen.add(image_id)
        if usage is not None and usage.loc[line] == "Ignored":
            continue
        shape = (
            _positive_int(row.Height, path, line, "Height"),
            _positive_int(row.Width, path, line, "Width"),
        )
        image = images.setdefault(image_id, SolutionImage(shape))
        if image.shape != shape:
            raise PipelineError(
                f"{path}: line {line}: {image_id}: size {shape[0]}x{shape[1]} differs from "
                f"{image.shape[0]}x{image.shape[1]} on line {image.rows[0][0]}"
            )
        image.rows.append((line, row.EncodedPixels))
    return images, seen - set(images)


@dataclass(frozen=True)
class Labels:
    """The ground truth of a set of images, as a solution CSV holds it.

    Attributes
    ----------
    csv_path : Path
        The solution file.
    images : dict of str to SolutionImage
        The labelled images, in file order.
    ignored : frozenset of str
        The images whose rows are all ``Ignored``: neither scored nor shown, and the rows a
        submission has for them are passed over.
    """

    csv_path: Path
    images: dict[str, SolutionImage]
    ignored: frozenset[str]


def read_labels(solution_csv: str | os.PathLike[str]) -> Labels:
    """The `Labels` of a solution file (`read_solution`)."""
    path = Path(solution_csv)
    if not path.exists():
        raise PipelineError(f"{path}: no such solution file")
    images, ignored = read_solution(path)
    return Labels(path, images, frozenset(ignored))


# ------------------------------------------------------------------------------- images


@dataclass(frozen=True)
class Images:
    """The images a submission is for, in order.

    Attributes
    ----------
    sources : dict of str to Path or (int, int)
        Each ImageId's image file (its size is read from the file's header when needed) or
        its ``(height, width)``.
    location : str
        Where they are (a folder, a solution file), for messages.
    """

    sources: dict[str, Path | tuple[int, int]]
    location: str

    def shape(self, image_id: str) -> tuple[int, int]:
        """``(height, width)`` of one image."""
        source = self.sources[image_id]
        return source if isinstance(source, tuple) else dataset.read_image_shape(source)


def images_in_folder(images_dir: str | os.PathLike[str]) -> Images:
    """The images of a folder in Kaggle layout (`pipeline.data.dataset.list_image_ids`)."""
    root = Path(images_dir)
    ids = dataset.list_image_ids(root)
    return Images({image_id: dataset.image_path(root, image_id) for image_id in ids}, str(root))


def images_of_files(
    files: Sequence[dataset.ImageFile], location: str | os.PathLike[str] = "the images"
) -> Images:
    """The images of `pipeline.data.dataset.list_image_files` (any layout)."""
    return Images({file.image_id: file.path for file in files}, str(location))


# -------------------------------------------------------------------------- reconciling


@dataclass(frozen=True)
class Reconciled:
    """A submission read and matched with its images and labels (`reconcile`); nothing is
    decoded until asked for.

    Attributes
    ----------
    csv_path : Path
        The submission.
    images : Images
        The images it is for, without those that the labels ignore.
    labels : Labels or None
        Their labels; None when none were given or they lack some of the images.
    rows : dict of str to list of (int, str)
        The rows of each image that has rows, in file order.
    unknown : dict of str to list of (int, str)
        The rows of each ImageId that is none of the images (nor ignored by the labels).
    file_problems : list of Problem
        What is wrong with the file itself: unreadable, a bad header, rows with the wrong
        number of fields, empty ImageIds.
    readable : bool
        Whether the file could be read as a table at all (else it has no rows).
    n_rows : int
        Its data rows.
    """

    csv_path: Path
    images: Images
    labels: Labels | None
    rows: dict[str, Rows]
    unknown: dict[str, Rows]
    file_problems: list[Problem]
    readable: bool
    n_rows: int

    @property
    def missing(self) -> list[str]:
        """The images without a row, in order."""
        return [image_id for image_id in self.images.sources if image_id not in self.rows]

    @property
    def n_nuclei(self) -> int:
        """Rows with a non-empty encoding, of known and unknown images."""
        every = [*self.rows.values(), *self.unknown.values()]
        return sum(1 for rows in every for _, rle in rows if rle.strip())

    def unknown_problems(self) -> list[Problem]:
        """One problem per unknown ImageId, at its first row."""
        return [
            Problem(
                rows[0][0],
                image_id,
                f"unknown ImageId: no such image ({len(rows)} row(s), "
                f"line(s) {_line_list([line for line, _ in rows])})",
            )
            for image_id, rows in self.unknown.items()
        ]

    def missing_problems(self) -> list[Problem]:
        """One problem per image without a row."""
        return [
            Problem(
                None,
                image_id,
                f"missing: no row for this image (an image with no nucleus is '{image_id},')",
            )
            for image_id in self.missing
        ]

    def problems(self) -> list[Problem]:
        """Every problem, every image decoded: sorted by line, those of the whole file or of
        missing images last (what ``check-submission`` prints)."""
        problems = list(self.file_problems)
        if not self.readable:
            return problems
        for problem in self.unknown_problems():
            problems.append(problem)
            for line, rle in self.unknown[problem.image_id]:  # encodings that cannot be read
                try:
                    parse_rle(rle)
                except RLEError as error:
                    problems.append(Problem(line, problem.image_id, str(error)))
        for image_id, rows in tqdm(
            self.rows.items(), desc="checking", unit="image", disable=None, leave=False
        ):
            problems += decode_image_rows(image_id, rows, self.images.shape(image_id))[1]
        problems += self.missing_problems()
        problems.sort(key=lambda problem: (problem.row is None, problem.row or 0))
        return problems

    def refuse_unreadable(self) -> None:
        """Raise `refusal` when the file itself has a problem."""
        if self.file_problems:
            raise refusal(self.csv_path, self.file_problems)

    def warn_incomplete(self, missing_as: str) -> None:
        """Log the unknown images (ignored) and the missing ones (``missing_as``: what they
        are taken as) as warnings, each kind with its first problem."""
        unknown, missing = self.unknown_problems(), self.missing_problems()
        if unknown:
            log.warning("%s: %s; ignored", self.csv_path, summary(unknown, "unknown ImageId(s)"))
        if missing:
            log.warning("%s: %s; %s", self.csv_path, summary(missing, "image(s)"), missing_as)

    def predicted_labels(self, image_id: str, shape: tuple[int, int] | None = None) -> np.ndarray:
        """The submission's instance labels of one image (all 0 when it has no row), at
        ``shape`` (by default the image's); refuses rows that cannot be decoded."""
        shape = self.images.shape(image_id) if shape is None else shape
        labels, problems = decode_image_rows(image_id, self.rows.get(image_id, []), shape)
        if problems:
            raise refusal(self.csv_path, problems, "in this image")
        return labels

    def true_labels(self, image_id: str, shape: tuple[int, int] | None = None) -> np.ndarray | None:
        """The labels' instance labels of one image (None without labels); refuses labels of
        another size than ``shape`` (by default the image's) and rows that cannot be
        decoded."""
        if self.labels is None:
            return None
        shape = self.images.shape(image_id) if shape is None else shape
        truth = self.labels.images[image_id]
        if truth.shape != shape:
            raise PipelineError(
                f"{self.labels.csv_path}: line {truth.rows[0][0]}: {image_id} is "
                f"{truth.shape[0]}x{truth.shape[1]} but its image "
                f"{self.images.sources[image_id]} is {shape[0]}x{shape[1]}"
            )
        labels, problems = decode_image_rows(image_id, truth.rows, shape)
        if problems:
            raise refusal(self.labels.csv_path, problems, "in this image")
        return labels


def _images_and_labels(
    images: Images | None, labels: Labels | None
) -> tuple[Images, Labels | None]:
    """The images to reconcile a submission with, and the labels that cover them."""
    if images is None:
        if labels is None:
            raise ValueError("reconcile needs images, labels or both")
        if not labels.images:
            raise PipelineError(f"{labels.csv_path}: no image to score (every row is Ignored)")
        shapes = {image_id: truth.shape for image_id, truth in labels.images.items()}
        return Images(shapes, str(labels.csv_path)), labels
    if labels is None:
        return images, None
    kept = {i: source for i, source in images.sources.items() if i not in labels.ignored}
    if len(kept) < len(images.sources):
        left_out = len(images.sources) - len(kept)
        log.info("%d image(s) are Ignored in %s: left out", left_out, labels.csv_path)
        if not kept:
            raise PipelineError(f"{labels.csv_path}: every image of {images.location} is Ignored")
        images = Images(kept, images.location)
    uncovered = [image_id for image_id in kept if image_id not in labels.images]
    if uncovered:
        log.warning(
            "%s covers %d of the %d images of %s (not: %s); predictions only, no scores",
            labels.csv_path,
            len(kept) - len(uncovered),
            len(kept),
            images.location,
            _some(uncovered),
        )
        return images, None
    return images, labels


def _rows_by_image(
    table: RleTable, images: Images, ignored: frozenset[str]
) -> tuple[dict[str, Rows], dict[str, Rows], list[Problem]]:
    """The rows of the images, those of unknown ImageIds, and the rows without an ImageId."""
    assert table.header is not None
    id_column, rle_column = table.header.index("ImageId"), table.header.index("EncodedPixels")
    rows: dict[str, Rows] = {}
    unknown: dict[str, Rows] = {}
    problems: list[Problem] = []
    for line, fields in table.rows:
        image_id = fields[id_column]
        if not image_id.strip():
            problems.append(Problem(line, None, "empty ImageId"))
        elif image_id in images.sources:
            rows.setdefault(image_id, []).append((line, fields[rle_column]))
        elif image_id not in ignored:
            unknown.setdefault(image_id, []).append((line, fields[rle_column]))
    return rows, unknown, problems


def reconcile(
    csv_path: str | os.PathLike[str],
    images: Images | None = None,
    labels: Labels | None = None,
) -> Reconciled:
    """Read a submission and match it with its images and, when given, their labels.

    Parameters
    ----------
    csv_path : str or Path
        The submission CSV (``ImageId,EncodedPixels``).
    images : Images, optional
        The images it is for (`images_in_folder`, `images_of_files`); by default those of
        ``labels``, at the sizes the labels give.
    labels : Labels, optional
        Their ground truth (`read_labels`). The images it ignores are left out and their
        rows passed over; when it lacks some of the images it is not used (a warning).

    Returns
    -------
    Reconciled
        The rows by image, the unknown ImageIds and the problems of the file itself;
        `Reconciled.problems` decodes every image, `Reconciled.predicted_labels` and
        `Reconciled.true_labels` one.

    Raises
    ------
    PipelineError
        When the file does not exist or is a folder, or the labels leave no image.
    """
    csv_path = Path(csv_path)
    images, labels = _images_and_labels(images, labels)
    table = read_rle_table(csv_path, HEADER)
    if table.header is None:
        return Reconciled(csv_path, images, labels, {}, {}, list(table.problems), False, 0)
    ignored = labels.ignored if labels is not None else frozenset()
    rows, unknown, no_id = _rows_by_image(table, images, ignored)
    problems = [*table.problems, *no_id]
    return Reconciled(csv_path, images, labels, rows, unknown, problems, True, len(table.rows))


# ----------------------------------------------------------------------------- checking


@dataclass(frozen=True)
class CheckSummary:
    """What `check_submission` found, with counts for the summary line."""

    problems: list[Problem]
    n_rows: int
    n_images: int
    n_nuclei: int


def check_submission_summary(
    csv_path: str | os.PathLike[str], images_dir: str | os.PathLike[str]
) -> CheckSummary:
    """`check_submission`, with the counts of rows, images and nuclei."""
    reconciled = reconcile(csv_path, images_in_folder(images_dir))
    return CheckSummary(
        reconciled.problems(),
        reconciled.n_rows,
        len(reconciled.rows) + len(reconciled.unknown),
        reconciled.n_nuclei,
    )


def check_submission(
    csv_path: str | os.PathLike[str], images_dir: str | os.PathLike[str]
) -> list[Problem]:
    """Every problem of a submission file, for the images of a folder in Kaggle layout.

    Parameters
    ----------
    csv_path : str or Path
        The submission CSV.
    images_dir : str or Path
        The images it is for (``<id>/images/<id>.png``); their sizes bound the runs.

    Returns
    -------
    list of Problem
        Empty when the file is valid; else sorted by line, with problems of the whole
        file or of images without rows last. Found: an empty file, a wrong or repeated
        header, rows with the wrong number of fields, encodings that are not integer
        pairs, have an odd number of values, unsorted or overlapping runs or runs
        outside the image, nuclei of one image that share pixels, unknown ImageIds and
        images with no row.

    Raises
    ------
    PipelineError
        When the file or the folder of images does not exist.
    """
    return check_submission_summary(csv_path, images_dir).problems
