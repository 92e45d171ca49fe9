"""Score a submission with the competition metric (stage ``score``).

``./run.sh score SUBMISSION.csv`` compares the submission with the released ground truth
(``input/stage1_solution.csv``: ``ImageId,EncodedPixels,Height,Width,Usage``) and prints
the score, the TP/FP/FN totals at each IoU threshold and the worst images; the score is
added to the local leaderboard (see `pipeline.evaluation.leaderboard`).

Every image of the solution is scored, except rows whose ``Usage`` is ``Ignored``. A
submission that ``check-submission`` would reject is refused, in its words (both match the
submission with its images through `pipeline.data.reconcile`): one that leaves an image out
or names an image that is not in the solution, and one that cannot be decoded (a bad
encoding, nuclei that overlap). With ``checked=False`` (``score --unchecked``) a left-out
image scores as if nothing was predicted in it and unknown rows are ignored, with
warnings, and the score is never put on the leaderboard.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import numpy as np
from tqdm import tqdm

from pipeline import paths
from pipeline.data.reconcile import Reconciled, read_labels, reconcile, refusal
from pipeline.data.submission import read_submission_metadata
from pipeline.errors import PipelineError
from pipeline.evaluation import leaderboard
from pipeline.evaluation.metric import THRESHOLDS, SetScore, score_images

__all__ = [
    "format_report",
    "labelled_pairs",
    "score_and_record",
    "score_submission",
]

log = logging.getLogger(__name__)


def score_submission(
    submission_csv: str | os.PathLike[str],
    solution_csv: str | os.PathLike[str] | None = None,
    checked: bool = True,
) -> SetScore:
    """Score a submission file against a solution file with the competition metric.

    Parameters
    ----------
    submission_csv : str or Path
        ``ImageId,EncodedPixels``, one row per nucleus.
    solution_csv : str or Path, optional
        ``ImageId,EncodedPixels,Height,Width,Usage``; ``Ignored`` rows are not scored. By
        default ``input/stage1_solution.csv`` (`pipeline.paths`).
    checked : bool
        Refuse a submission that leaves an image of the solution out or names an image
        that is not in it (the default); False scores a left-out image as an empty
        prediction and ignores unknown rows, with warnings.

    Returns
    -------
    SetScore
        The mean score over the solution's images, each image's score and the TP, FP, FN
        totals per threshold.

    Raises
    ------
    PipelineError
        When either file cannot be read or decoded, or (``checked``) the submission's
        images are not the solution's; the message names the file and the problem.
    """
    return score_images(labelled_pairs(submission_csv, solution_csv, checked))


def labelled_pairs(
    submission_csv: str | os.PathLike[str],
    solution_csv: str | os.PathLike[str] | None = None,
    checked: bool = True,
) -> Iterator[tuple[str, tuple[np.ndarray, np.ndarray]]]:
    """Decode a submission and its solution, one image at a time, as `score_submission` does.

    Yields ``(image_id, (true_labels, pred_labels))`` for every scored image of the
    solution, in its order; an image the submission leaves out gets empty predictions.
    The files are read, and their ImageIds compared (with warnings), before the first
    image is yielded.

    Raises
    ------
    PipelineError
        As `score_submission`.
    """
    solution_csv = paths.SOLUTION_CSV if solution_csv is None else solution_csv
    reconciled = reconcile(submission_csv, labels=read_labels(solution_csv))
    reconciled.refuse_unreadable()
    incomplete = reconciled.unknown_problems() + reconciled.missing_problems()
    if checked and incomplete:
        raise refusal(
            reconciled.csv_path,
            incomplete,
            lead=f"not a complete submission for {solution_csv}: ",
            then="; score --unchecked scores it anyway (missing images as empty, off the "
            "leaderboard)",
        )
    reconciled.warn_incomplete("they score as empty predictions")
    return _decoded(reconciled)


def _decoded(reconciled: Reconciled) -> Iterator[tuple[str, tuple[np.ndarray, np.ndarray]]]:
    for image_id in tqdm(
        reconciled.images.sources, desc="scoring", unit="image", disable=None, leave=False
    ):
        true_labels = reconciled.true_labels(image_id)
        yield image_id, (true_labels, reconciled.predicted_labels(image_id))


def score_and_record(
    submission_csv: str | os.PathLike[str],
    solution_csv: str | os.PathLike[str],
    leaderboard_csv: str | os.PathLike[str] | None,
) -> float:
    """Score a submission (`score_submission`) and add it to the leaderboard; return the score.

    The leaderboard row takes ``model``, ``config`` and ``commit`` from the submission's
    sidecar metadata. With ``leaderboard_csv=None`` nothing is recorded.
    """
    result = score_submission(submission_csv, solution_csv)
    if leaderboard_csv is not None:
        record_score(result, submission_csv, leaderboard_csv)
    return result.score


def record_score(
    result: SetScore,
    submission_csv: str | os.PathLike[str],
    leaderboard_csv: str | os.PathLike[str],
) -> None:
    """Add a checked submission's score to the leaderboard (marked, and not ranked, when its
    model was trained on the scored images' labels)."""
    metadata = read_submission_metadata(submission_csv)
    trained = leaderboard.trained_on_scored_images(metadata, result.per_image)
    if trained:
        log.warning(
            "%s: its model was trained on the labels of %d of the %d scored images: the "
            "leaderboard marks it %r and does not rank it",
            submission_csv,
            trained,
            len(result.per_image),
            leaderboard.TRAINED_ON_LABELS,
        )
    try:
        leaderboard.append_entry(
            leaderboard_csv, submission_csv, result.score, metadata, trained_on_labels=trained > 0
        )
    except OSError as error:
        raise PipelineError(
            f"{leaderboard_csv}: cannot add the score to the leaderboard "
            f"({error.strerror or error}); the score above stands, --no-leaderboard skips it"
        ) from error
    log.info("added to the leaderboard %s", leaderboard_csv)


def format_report(result: SetScore, worst: int = 10) -> str:
    """The score, the per-threshold totals and the ``worst`` lowest-scoring images."""
    lines = [
        f"score {result.score:.6f}  ({len(result.per_image)} images)",
        "",
        f"{'IoU>t':>6} {'TP':>7} {'FP':>7} {'FN':>7} {'TP/(TP+FP+FN)':>14}",
    ]
    for threshold, tp, fp, fn, precision in zip(
        THRESHOLDS, result.tp, result.fp, result.fn, result.precision, strict=True
    ):
        lines.append(f"{threshold:>6.2f} {tp:>7d} {fp:>7d} {fn:>7d} {precision:>14.6f}")
    if worst > 0:
        ranked = sorted(result.per_image.items(), key=lambda item: item[1])[:worst]
        lines += ["", f"worst {len(ranked)} images:"]
        lines += [f"  {score:.6f}  {image_id}" for image_id, score in ranked]
    return "\n".join(lines)
