"""A browsable report of a submission: overlay pictures and an HTML page (stage ``report``).

``./run.sh report SUBMISSION.csv`` writes, by default into ``submissions/<csv stem>/``
(beside the CSV, a folder named after it):

- ``per_image_scores.csv``: one row per image, worst first: ``ImageId``, ``kind``
  (`pipeline.data.dataset.image_kind`), ``score`` (the competition metric), ``n_true``, ``n_pred``
  and ``tp_iou50``, ``fp_iou50``, ``fn_iou50``, the matches at the lowest threshold
  (IoU > 0.5);
- ``overlays/<ImageId>.png`` for the N best and the N worst images: the image, and beside it
  the predicted nuclei filled in distinct colours with the true nuclei outlined in yellow;
- ``index.html``: one self-contained page (no external asset) with the overall score, the
  score per image kind, the two galleries and the full table.

The images are those of ``--images`` (Kaggle layout). Scores need the ground truth
(``--solution``, ``ImageId,EncodedPixels,Height,Width[,Usage]``): when it is absent or does
not cover every image, the report shows the predictions only (no score, no true outline; the
overlays are those of the first N images by id). The submission is matched with the images
and the solution as `pipeline.evaluation.score` and ``check-submission`` match it
(`pipeline.data.reconcile`), and its problems read the same: images whose solution rows are
all ``Ignored`` are left out, an image without submission rows is an empty prediction and an
unknown ImageId is ignored (these two with a warning), and a submission that cannot be read
or decoded is refused. The scores are the competition metric's (`pipeline.evaluation.metric`).

The folder is built in a temporary folder and then replaces ``--out`` in one step, so an
interrupted run leaves the previous report (or none), never half of one.

The pieces live beside it: the per-image results and their table in
`pipeline.evaluation.image_results`, the overlay pictures in `pipeline.evaluation.overlays`
and the page in `pipeline.evaluation.report_page`.

Example
-------
>>> report = build_report("submissions/unet.csv", "input/stage1_test", None)   # doctest: +SKIP
>>> report.index_html, report.score                                      # doctest: +SKIP
(PosixPath('submissions/unet/index.html'), 0.412...)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline import paths
from pipeline.data import dataset
from pipeline.data.reconcile import Reconciled, images_in_folder, read_labels, reconcile
from pipeline.data.submission import read_submission_metadata
from pipeline.errors import PipelineError
from pipeline.evaluation.image_results import ImageResult, scores_table
from pipeline.evaluation.metric import score_image
from pipeline.evaluation.overlays import OVERLAYS_DIR, overlay_file_name, write_overlay_png
from pipeline.evaluation.report_page import render_index_html
from pipeline.fileio import atomic_dir, atomic_write_text

__all__ = [
    "SCORES_CSV",
    "Report",
    "build_report",
    "default_out_dir",
    "evaluate_images",
    "select_galleries",
]

log = logging.getLogger(__name__)

SCORES_CSV = "per_image_scores.csv"
INDEX_HTML = "index.html"


@dataclass(frozen=True)
class Report:
    """A written report.

    Attributes
    ----------
    folder : Path
        The report folder.
    index_html : Path
        Its page.
    results : list of ImageResult
        Every image, worst first (by id without ground truth), as in the CSV.
    score : float or None
        Mean of the images' scores (the competition score); None without ground truth.
    worst, best : list of ImageResult
        The images of the two galleries (without ground truth: ``worst`` holds the first N
        images by id and ``best`` is empty).
    """

    folder: Path
    index_html: Path
    results: list[ImageResult]
    score: float | None
    worst: list[ImageResult]
    best: list[ImageResult]


# ----------------------------------------------------------------------------- inputs


def _read_inputs(submission_csv: Path, images_dir: Path, solution_csv: Path | None) -> Reconciled:
    """The submission reconciled with the images and the solution (`pipeline.data.reconcile`):
    refused when unreadable; unknown images are ignored and missing ones shown as empty
    predictions, with warnings."""
    images = images_in_folder(images_dir)
    labels = None if solution_csv is None else read_labels(solution_csv)
    reconciled = reconcile(submission_csv, images, labels)
    reconciled.refuse_unreadable()
    reconciled.warn_incomplete("they show as empty predictions")
    return reconciled


def _labels(
    reconciled: Reconciled, image_id: str, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Predicted and true labels of one image (true ones None without ground truth)."""
    true_labels = reconciled.true_labels(image_id, shape)
    return reconciled.predicted_labels(image_id, shape), true_labels


# ---------------------------------------------------------------------------- scoring


def _evaluate(reconciled: Reconciled, images_dir: Path) -> list[ImageResult]:
    results = []
    for image_id in tqdm(
        reconciled.images.sources, desc="scoring", unit="image", disable=None, leave=False
    ):
        image = dataset.read_image(dataset.image_path(images_dir, image_id))
        kind = dataset.image_kind(image)
        pred_labels, true_labels = _labels(reconciled, image_id, image.shape[:2])
        if true_labels is None:
            results.append(ImageResult(image_id, kind, n_pred=int(pred_labels.max(initial=0))))
            continue
        scored = score_image(true_labels, pred_labels)
        results.append(
            ImageResult(
                image_id,
                kind,
                n_pred=scored.n_pred,
                score=scored.score,
                n_true=scored.n_true,
                tp=int(scored.tp[0]),
                fp=int(scored.fp[0]),
                fn=int(scored.fn[0]),
            )
        )
    if reconciled.labels is not None:
        results.sort(key=lambda result: (result.score, result.image_id))
    return results


def evaluate_images(
    submission_csv: str | os.PathLike[str],
    images_dir: str | os.PathLike[str] | None = None,
    solution_csv: str | os.PathLike[str] | None = None,
) -> list[ImageResult]:
    """Each image's kind, nucleus counts and (with ground truth) score.

    Parameters
    ----------
    submission_csv : str or Path
        ``ImageId,EncodedPixels``, one row per nucleus.
    images_dir : str or Path, optional
        The images, in Kaggle layout; by default ``input/stage1_test`` (`pipeline.paths`).
    solution_csv : str or Path, optional
        The ground truth; without it (or when it lacks some of the images) no score.

    Returns
    -------
    list of ImageResult
        Worst first (ties by id); by id without ground truth.

    Raises
    ------
    PipelineError
        When a file or the folder is missing or unreadable, or an encoding is invalid.
    """
    images_dir = Path(paths.TEST_DIR if images_dir is None else images_dir)
    reconciled = _read_inputs(
        Path(submission_csv), images_dir, None if solution_csv is None else Path(solution_csv)
    )
    return _evaluate(reconciled, images_dir)


def select_galleries(
    results: Sequence[ImageResult], n: int
) -> tuple[list[ImageResult], list[ImageResult]]:
    """The ``n`` worst and the ``n`` best images, never the same image twice.

    Parameters
    ----------
    results : sequence of ImageResult
        Worst first, as `evaluate_images` returns them (by id without scores).
    n : int
        Images per gallery (0 or more).

    Returns
    -------
    worst : list of ImageResult
        The first ``n`` images (worst first); without scores, simply the first ``n``.
    best : list of ImageResult
        Best first, from the images not in ``worst``: with fewer than ``2 n`` images it
        holds fewer than ``n`` (none without scores).

    Examples
    --------
    >>> ranked = [ImageResult(name, "histology", 0, score) for name, score in
    ...           [("a", 0.0), ("b", 0.5), ("c", 1.0)]]
    >>> [[r.image_id for r in gallery] for gallery in select_galleries(ranked, 2)]
    [['a', 'b'], ['c']]
    """
    if n < 0:
        raise ValueError(f"n must be 0 or more, got {n}")
    worst = list(results[:n])
    scored = bool(results) and results[0].score is not None
    best = list(results[n:][::-1][:n]) if scored else []
    return worst, best


# --------------------------------------------------------------------------- overlays


def _short_id(image_id: str, keep: int = 12) -> str:
    return image_id if len(image_id) <= keep + 4 else image_id[:keep] + "\u2026"


def _overlay_title(result: ImageResult) -> str:
    score = "no score" if result.score is None else f"score {result.score:.3f}"
    return f"{_short_id(result.image_id)}  |  {result.kind}  |  {score}"


def _write_overlays(
    reconciled: Reconciled, images_dir: Path, shown: Sequence[ImageResult], folder: Path
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for result in tqdm(shown, desc="overlays", unit="image", disable=None, leave=False):
        image = dataset.read_image(dataset.image_path(images_dir, result.image_id))
        pred_labels, true_labels = _labels(reconciled, result.image_id, image.shape[:2])
        write_overlay_png(
            folder / overlay_file_name(result.image_id),
            image,
            pred_labels,
            true_labels,
            _overlay_title(result),
        )


# ------------------------------------------------------------------------------ stage


def default_out_dir(submission_csv: str | os.PathLike[str]) -> Path:
    """The report folder of a submission: beside it, named after it (``a/x.csv`` -> ``a/x``)."""
    path = Path(submission_csv)
    return path.with_name(path.stem if path.suffix else path.name + ".report")


def _check_out_dir(out_dir: Path) -> None:
    """Refuse to replace anything but an earlier report (or an empty folder)."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise PipelineError(f"{out_dir}: exists and is not a folder; choose another --out")
    entries = {entry.name for entry in out_dir.iterdir()}
    if entries and not {INDEX_HTML, SCORES_CSV} <= entries:
        raise PipelineError(
            f"{out_dir}: a folder that is not a report (no {INDEX_HTML} and {SCORES_CSV}); "
            "it would be replaced, so choose another --out"
        )


def _details(
    submission_csv: Path, images_dir: Path, solution_csv: Path | None
) -> list[tuple[str, str]]:
    details = [("submission", str(submission_csv)), ("images", str(images_dir))]
    details.append(("solution", str(solution_csv) if solution_csv else "none"))
    try:
        metadata = read_submission_metadata(submission_csv)
    except PipelineError as error:
        log.warning("%s", error)
        metadata = {}
    details += [
        (key, str(metadata[key])) for key in ("model", "config", "commit") if key in metadata
    ]
    return details


def build_report(
    submission_csv: str | os.PathLike[str],
    images_dir: str | os.PathLike[str],
    solution_csv: str | os.PathLike[str] | None,
    out_dir: str | os.PathLike[str] | None = None,
    n: int = 8,
) -> Report:
    """Score a submission image by image and write its report folder (atomically).

    Parameters
    ----------
    submission_csv : str or Path
        ``ImageId,EncodedPixels``, one row per nucleus.
    images_dir : str or Path
        The images, in Kaggle layout.
    solution_csv : str or Path or None
        The ground truth (``ImageId,EncodedPixels,Height,Width[,Usage]``). None, or a
        solution that lacks some of the images: predictions only.
    out_dir : str or Path, optional
        The report folder; by default `default_out_dir` of the submission. An existing
        report there is replaced; any other non-empty folder is refused.
    n : int
        Overlays of the ``n`` worst and the ``n`` best images (the first ``n`` without
        ground truth).

    Returns
    -------
    Report
        Where it is, and what it shows.

    Raises
    ------
    PipelineError
        When the submission or the solution is missing or unreadable, the images folder is
        missing or empty, an encoding is invalid, ``n`` is negative, or ``out_dir`` holds
        something else than a report.
    """
    submission_csv, images_dir = Path(submission_csv), Path(images_dir)
    solution = None if solution_csv is None else Path(solution_csv)
    out = default_out_dir(submission_csv) if out_dir is None else Path(out_dir)
    if n < 0:
        raise PipelineError(f"--n must be 0 or more, got {n}")
    _check_out_dir(out)
    reconciled = _read_inputs(submission_csv, images_dir, solution)
    results = _evaluate(reconciled, images_dir)
    worst, best = select_galleries(results, n)
    scored = [r.score for r in results if r.score is not None]
    overall = float(np.mean(scored)) if scored else None
    page = render_index_html(
        submission_csv.stem,
        results,
        worst,
        best,
        _details(submission_csv, images_dir, None if reconciled.labels is None else solution),
    )
    with atomic_dir(out) as tmp:
        _write_overlays(reconciled, images_dir, [*worst, *best], tmp / OVERLAYS_DIR)
        atomic_write_text(tmp / SCORES_CSV, scores_table(results).to_csv(index=False))
        atomic_write_text(tmp / INDEX_HTML, page)
    return Report(out, out / INDEX_HTML, results, overall, worst, best)
