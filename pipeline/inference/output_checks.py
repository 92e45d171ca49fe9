"""A prediction's outputs, checked before the model is loaded (`check_outputs`), and the
submission it wrote, checked after (`check_predictions`).

The submission replaces only a submission this pipeline wrote (its sidecar ``.json``,
`pipeline.data.submission.check_submission_target`); the measurements table only a table
this pipeline wrote (its header is `MEASUREMENTS_HEADER`); a label image, ROI set or
GeoJSON file only one this pipeline wrote into that folder (listed in the folder's
manifest, `FOLDER_OUTPUTS`). Anything else
needs ``--force``. No output is an input (the images, the model) or another output
(`pipeline.outputs.check_not_input`).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.data.reconcile import images_of_files, reconcile
from pipeline.data.submission import check_submission_target
from pipeline.errors import PipelineError
from pipeline.fileio import (
    atomic_write_text,
    check_not_special,
    check_writable_file,
    temporary_prefix,
)
from pipeline.inference.measure import COLUMNS
from pipeline.outputs import check_not_input, check_replaceable

if TYPE_CHECKING:
    from pipeline.data.dataset import ImageFile
    from pipeline.data.rle_csv import Problem

log = logging.getLogger(__name__)

#: The first line of a measurements table this pipeline wrote.
MEASUREMENTS_HEADER = ",".join(["image", *COLUMNS])
#: The outputs that write a file per image into a folder: the option, the file in the
#: folder that lists the images whose files the pipeline writes there (a file of another
#: image is not replaced without ``--force``), and the suffixes of an image's file.
FOLDER_OUTPUTS = {
    "--labels-out": ("pipeline-labels.json", (".png", ".tif")),
    "--rois-out": ("pipeline-rois.json", ("_rois.zip",)),
    "--geojson-out": ("pipeline-geojson.json", (".geojson",)),
}
LABELS_MANIFEST, LABEL_SUFFIXES = FOLDER_OUTPUTS["--labels-out"]


def _own_measurements(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.readline().rstrip("\r\n") == MEASUREMENTS_HEADER
    except (OSError, UnicodeDecodeError):
        return False


def labels_written_before(folder: Path, option: str = "--labels-out") -> set[str]:
    """The ImageIds whose files this pipeline wrote into ``folder``, the folder of output
    ``option`` (its manifest in `FOLDER_OUTPUTS`; empty when there is none or it is not
    the pipeline's)."""
    manifest_name = FOLDER_OUTPUTS[option][0]
    try:
        manifest = json.loads((Path(folder) / manifest_name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    images = manifest.get("images") if isinstance(manifest, dict) else None
    return {name for name in images if isinstance(name, str)} if isinstance(images, list) else set()


def check_label_folder(
    folder: Path, image_ids: Sequence[str], force: bool, option: str = "--labels-out"
) -> None:
    """Refuse the folder of output ``option`` (``--labels-out``, ``--rois-out``,
    ``--geojson-out``) when an image's file would replace one this pipeline did not write
    there, unless ``force``; refuse a folder that cannot be made or written."""
    folder = Path(folder)
    check_not_special(folder, option)
    if folder.exists() and not folder.is_dir():
        raise PipelineError(f"{folder}: is a file; {option} takes a folder")
    _check_folder_writable(folder, option)
    if not folder.is_dir():
        return
    manifest_name, suffixes = FOLDER_OUTPUTS[option]
    own = labels_written_before(folder, option)
    foreign = [
        folder / f"{image_id}{suffix}"
        for image_id in image_ids
        for suffix in suffixes
        if image_id not in own and (folder / f"{image_id}{suffix}").exists()
    ]
    for path in foreign:
        check_not_special(path, option)
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        check_replaceable(
            foreign[0], option, False, force, f"not listed in its {manifest_name}{more}"
        )


def _check_folder_writable(folder: Path, option: str) -> None:
    """Refuse an output folder that cannot be written to, or cannot be made: a file is
    made and removed in it, or in its nearest existing parent (nothing is left behind)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is not a folder")
        fd, probe = tempfile.mkstemp(prefix=temporary_prefix("probe"), dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise PipelineError(
            f"{folder}: cannot be written ({option}): {error.strerror or error}"
        ) from error


def record_label_folder(
    folder: Path, image_ids: Sequence[str], option: str = "--labels-out"
) -> None:
    """List ``image_ids`` in the manifest of ``folder``, the folder of output ``option``
    (with those listed before), before any file is written: a run killed midway leaves
    only listed files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images = sorted(labels_written_before(folder, option) | set(image_ids))
    manifest_name = FOLDER_OUTPUTS[option][0]
    atomic_write_text(folder / manifest_name, json.dumps({"images": images}) + "\n")


def check_outputs(
    out_csv: Path,
    labels_dir: Path | None,
    measurements_csv: Path | None,
    force: bool,
    inputs: Sequence[tuple[Path | None, str]] = (),
    image_ids: Sequence[str] = (),
    rois_dir: Path | None = None,
    geojson_dir: Path | None = None,
) -> None:
    """Refuse, before the model is loaded, what would fail after the work or replace what
    is not the pipeline's (the folders of ``labels_dir``, ``rois_dir`` and ``geojson_dir``
    hold a file per image, `FOLDER_OUTPUTS`): an output that cannot be written, one that is an input
    (``inputs``: ``(path, what)`` pairs) or another output, one that replaces a file the
    pipeline did not write (unless ``force``), a device (even with ``force``)."""
    check_submission_target(out_csv, force)
    if measurements_csv is not None:
        check_writable_file(measurements_csv, "--measurements")
    outputs = [
        (out_csv, "--out"),
        (measurements_csv, "--measurements"),
        (labels_dir, "--labels-out"),
        (rois_dir, "--rois-out"),
        (geojson_dir, "--geojson-out"),
    ]
    for number, (output, option) in enumerate(outputs):
        others = [(path, f"the {what} output") for path, what in outputs[:number]]
        check_not_input(output, option, inputs)
        check_not_input(output, option, others, skip_missing=False)
    if measurements_csv is not None and Path(measurements_csv).exists():
        check_replaceable(
            Path(measurements_csv),
            "--measurements",
            _own_measurements(Path(measurements_csv)),
            force,
            f"its first line is not {MEASUREMENTS_HEADER!r}",
        )
    for folder, option in outputs[2:]:
        if folder is not None:
            check_label_folder(Path(folder), image_ids, force, option)


def check_predictions(out_csv: Path, image_files: Sequence[ImageFile]) -> list[Problem]:
    """Every problem of a submission written for ``image_files`` (any layout), as
    ``check-submission`` finds them (`pipeline.data.reconcile`): the file itself, a missing
    or unknown ImageId, an invalid encoding, nuclei sharing pixels; the image shapes come
    from the files' headers."""
    return reconcile(out_csv, images_of_files(image_files)).problems()
