"""A prediction's outputs, checked before the model is loaded (`check_outputs`).

The submission replaces only a submission this pipeline wrote (its sidecar ``.json``,
`pipeline.data.submission.check_submission_target`); the measurements table only a table
this pipeline wrote (its header is `MEASUREMENTS_HEADER`); a label image only one this
pipeline wrote into that folder (listed in the folder's `LABELS_MANIFEST`). Anything else
needs ``--force``. No output is an input (the images, the model) or another output
(`pipeline.outputs.check_not_input`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.fileio import atomic_write_text, check_not_special, check_writable_file
from pipeline.inference.measure import COLUMNS
from pipeline.outputs import check_not_input, check_replaceable

log = logging.getLogger(__name__)

#: The first line of a measurements table this pipeline wrote.
MEASUREMENTS_HEADER = ",".join(["image", *COLUMNS])
#: The file in a ``--labels-out`` folder that lists the images whose labels the pipeline
#: writes there; a label image of another name is not replaced without ``--force``.
LABELS_MANIFEST = "pipeline-labels.json"
LABEL_SUFFIXES = (".png", ".tif")


def _own_measurements(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.readline().rstrip("\r\n") == MEASUREMENTS_HEADER
    except (OSError, UnicodeDecodeError):
        return False


def labels_written_before(labels_dir: Path) -> set[str]:
    """The ImageIds whose label images this pipeline wrote into ``labels_dir`` (its
    `LABELS_MANIFEST`; empty when there is none or it is not the pipeline's)."""
    try:
        manifest = json.loads((Path(labels_dir) / LABELS_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    images = manifest.get("images") if isinstance(manifest, dict) else None
    return {name for name in images if isinstance(name, str)} if isinstance(images, list) else set()


def check_label_folder(labels_dir: Path, image_ids: Sequence[str], force: bool) -> None:
    """Refuse a ``--labels-out`` folder in which a label image would replace a file this
    pipeline did not write there, unless ``force``."""
    labels_dir = Path(labels_dir)
    check_not_special(labels_dir, "--labels-out")
    if labels_dir.exists() and not labels_dir.is_dir():
        raise PipelineError(f"{labels_dir}: is a file; --labels-out takes a folder")
    if not labels_dir.is_dir():
        return
    own = labels_written_before(labels_dir)
    foreign = [
        labels_dir / f"{image_id}{suffix}"
        for image_id in image_ids
        for suffix in LABEL_SUFFIXES
        if image_id not in own and (labels_dir / f"{image_id}{suffix}").exists()
    ]
    for path in foreign:
        check_not_special(path, "--labels-out")
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        check_replaceable(
            foreign[0], "--labels-out", False, force, f"not listed in its {LABELS_MANIFEST}{more}"
        )


def record_label_folder(labels_dir: Path, image_ids: Sequence[str]) -> None:
    """List ``image_ids`` in ``labels_dir``'s `LABELS_MANIFEST` (with those listed before),
    before any label image is written: a run killed midway leaves only listed files."""
    labels_dir = Path(labels_dir)
    labels_dir.mkdir(parents=True, exist_ok=True)
    images = sorted(labels_written_before(labels_dir) | set(image_ids))
    atomic_write_text(labels_dir / LABELS_MANIFEST, json.dumps({"images": images}) + "\n")


def check_outputs(
    out_csv: Path,
    labels_dir: Path | None,
    measurements_csv: Path | None,
    force: bool,
    inputs: Sequence[tuple[Path | None, str]] = (),
    image_ids: Sequence[str] = (),
) -> None:
    """Refuse, before the model is loaded, what would fail after the work or replace what
    is not the pipeline's: an output that cannot be written, one that is an input
    (``inputs``: ``(path, what)`` pairs) or another output, one that replaces a file the
    pipeline did not write (unless ``force``), a device (even with ``force``)."""
    from pipeline.data.submission import check_submission_target

    check_submission_target(out_csv, force)
    if measurements_csv is not None:
        check_writable_file(measurements_csv, "--measurements")
    outputs = [
        (out_csv, "--out"),
        (measurements_csv, "--measurements"),
        (labels_dir, "--labels-out"),
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
    if labels_dir is not None:
        check_label_folder(Path(labels_dir), image_ids, force)
