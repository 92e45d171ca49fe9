"""Score a submission with the competition metric (stage ``score``).

``./run.sh score SUBMISSION.csv`` compares the submission with the released ground truth
(``input/stage1_solution.csv``: ``ImageId,EncodedPixels,Height,Width,Usage``) and prints
the score, the TP/FP/FN totals at each IoU threshold and the worst images; the score is
added to the local leaderboard (see `pipeline.evaluation.leaderboard`).

Every image of the solution is scored, except rows whose ``Usage`` is ``Ignored``. A
submission that ``check-submission`` would reject is refused: one that leaves an image out
or names an image that is not in the solution, and one that cannot be decoded (a bad
encoding, nuclei that overlap). With ``checked=False`` (``score --unchecked``) a left-out
image scores as if nothing was predicted in it and unknown rows are ignored, with
warnings, and the score is never put on the leaderboard.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline import paths
from pipeline.data.reconcile import SolutionImage, read_solution
from pipeline.data.submission import (
    Problem,
    decode_image_rows,
    group_rows,
    read_submission,
    read_submission_metadata,
)
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
    submission_csv, solution_csv = Path(submission_csv), Path(solution_csv)
    solution, ignored = read_solution(solution_csv)
    if not solution:
        raise PipelineError(f"{solution_csv}: no image to score (every row is Ignored)")
    predicted = group_rows(read_submission(submission_csv))
    unknown = [image_id for image_id in predicted if image_id not in solution]
    unknown = [image_id for image_id in unknown if image_id not in ignored]
    left_out = [image_id for image_id in solution if image_id not in predicted]
    if checked and (unknown or left_out):
        raise _incomplete_error(submission_csv, solution_csv, left_out, unknown, len(solution))
    if unknown:
        log.warning(
            "%s: %d ImageId(s) not in the solution %s, ignored: %s",
            submission_csv,
            len(unknown),
            solution_csv,
            _some(unknown),
        )
    if left_out:
        log.warning(
            "%s: %d of the %d images have no row; they score as empty predictions",
            submission_csv,
            len(left_out),
            len(solution),
        )
    return _decoded(solution, predicted, submission_csv, solution_csv)


def _some(ids: list[str], most: int = 3) -> str:
    """
    >>> _some(["a", "b", "c", "d"])
    'a, b, c, ...'
    """
    return ", ".join(ids[:most]) + (", ..." if len(ids) > most else "")


def _incomplete_error(
    submission: Path, solution: Path, left_out: list[str], unknown: list[str], total: int
) -> PipelineError:
    """The refusal of a submission whose ImageIds are not the solution's."""
    parts = []
    if left_out:
        parts.append(f"{len(left_out)} of the {total} images have no row ({_some(left_out)})")
    if unknown:
        parts.append(f"{len(unknown)} ImageId(s) are not in {solution.name} ({_some(unknown)})")
    return PipelineError(
        f"{submission}: not a complete submission for {solution}: {'; '.join(parts)}. "
        f"./run.sh check-submission {submission} lists its problems; score --unchecked "
        "scores it anyway (missing images as empty, off the leaderboard)"
    )


def _decoded(
    solution: dict[str, SolutionImage],
    predicted: dict[str, list[tuple[int, str]]],
    submission_csv: Path,
    solution_csv: Path,
) -> Iterator[tuple[str, tuple[np.ndarray, np.ndarray]]]:
    for image_id, truth in tqdm(
        solution.items(), desc="scoring", unit="image", disable=None, leave=False
    ):
        true_labels, problems = decode_image_rows(image_id, truth.rows, truth.shape)
        if problems:
            raise _decode_error(solution_csv, problems)
        pred_labels, problems = decode_image_rows(
            image_id, predicted.get(image_id, []), truth.shape
        )
        if problems:
            raise _decode_error(submission_csv, problems)
        yield image_id, (true_labels, pred_labels)


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


def _decode_error(path: Path, problems: list[Problem]) -> PipelineError:
    more = f" (and {len(problems) - 1} more in this image)" if len(problems) > 1 else ""
    return PipelineError(
        f"{path}: {problems[0]}{more}; ./run.sh check-submission {path} lists every problem"
    )


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
