"""Stage ``submit``: send a checked submission to Kaggle, wait for its scores, record them.

Its options and ``main``, over the functions that do the work: the check
(`pipeline.data.reconcile.check_submission_summary`, against the images the submission was
predicted from, named in its sidecar ``.json``), the Kaggle calls
(`pipeline.data.kaggle_api`: ``competition_submit``, then ``competition_submissions`` polled
until the submission is scored), the local score (`pipeline.evaluation.score`, when labels
for every image exist) and the leaderboard row (`pipeline.evaluation.leaderboard`).

Nothing is uploaded unless the file is valid, within the size bound and credentials are
there. ``--dry-run`` does all of it but the upload: it authenticates and lists the
submissions already made (a read-only call, so that refused credentials show), then stops.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from pipeline import paths
from pipeline.config import finite_float
from pipeline.data.dataset import list_image_ids
from pipeline.data.kaggle_api import (
    COMPETITION,
    MAX_SUBMISSION_MIB,
    authenticated_api,
    check_size,
    kaggle_errors,
    require_credentials,
    submit_file,
    wait_for_scores,
)
from pipeline.data.reconcile import check_submission_summary, read_solution
from pipeline.data.rle_csv import summary as problems_summary
from pipeline.data.submission import metadata_path, read_submission_metadata
from pipeline.errors import PipelineError
from pipeline.evaluation.leaderboard import (
    TRAINED_ON_LABELS,
    append_entry,
    trained_on_scored_images,
)
from pipeline.evaluation.score import score_submission

log = logging.getLogger(__name__)

NETWORK_HINT = " Check the internet connection and run again."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``./run.sh submit``."""
    parser.add_argument("submission", type=Path, help="the submission CSV to send")
    parser.add_argument(
        "-m", "--message", required=True, help="the submission's description on Kaggle"
    )
    parser.add_argument(
        "--competition", default=COMPETITION, help="the Kaggle competition (its URL name)"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check, score locally and authenticate (listing the earlier submissions), "
        "but upload nothing",
    )
    _add_check_arguments(parser)
    _add_wait_arguments(parser)


def _add_check_arguments(parser: argparse.ArgumentParser) -> None:
    check = parser.add_argument_group("what it is checked and scored against")
    check.add_argument(
        "--images",
        type=Path,
        default=None,
        metavar="DIR",
        help="the images it is for, in Kaggle layout (default: the folder its sidecar "
        ".json names, the one it was predicted from)",
    )
    check.add_argument(
        "--solution",
        type=Path,
        default=paths.SOLUTION_CSV,
        metavar="FILE",
        help="labels for the local score, used when they cover every image",
    )
    check.add_argument(
        "--max-mib",
        type=finite_float,
        default=MAX_SUBMISSION_MIB,
        metavar="MIB",
        help="refuse a larger file (Kaggle publishes no limit for this competition: this "
        "is the pipeline's bound)",
    )


def _add_wait_arguments(parser: argparse.ArgumentParser) -> None:
    wait = parser.add_argument_group("waiting for Kaggle's scores and recording them")
    wait.add_argument(
        "--timeout",
        type=finite_float,
        default=900.0,
        metavar="SECONDS",
        help="give up waiting for Kaggle's scores after this long (the submission stays)",
    )
    wait.add_argument(
        "--poll-every",
        type=finite_float,
        default=15.0,
        metavar="SECONDS",
        help="time between two looks at the submission list",
    )
    wait.add_argument(
        "--leaderboard",
        type=Path,
        default=paths.LEADERBOARD_CSV,
        metavar="FILE",
        help="the leaderboard the scores are added to",
    )
    wait.add_argument(
        "--no-leaderboard", action="store_true", help="do not add the scores to the leaderboard"
    )


def images_for(csv_path: Path, metadata: dict[str, Any], given: Path | None) -> Path:
    """The folder a submission is checked against: ``given``, else its sidecar's ``images``."""
    if given is not None:
        return given
    sidecar = metadata_path(csv_path)
    named = metadata.get("images")
    if not named:
        where = f"{sidecar} names no image folder" if metadata else f"no {sidecar} beside it"
        raise PipelineError(
            f"{csv_path}: {where}, so the images it is for are unknown; pass --images DIR"
        )
    for candidate in (Path(str(named)), paths.REPO_ROOT / str(named)):
        if candidate.is_dir():
            return candidate
    raise PipelineError(
        f"{csv_path}: the image folder its {sidecar.name} names, {named}, is not there; "
        "pass --images DIR"
    )


def check_for_upload(csv_path: Path, images_dir: Path) -> None:
    """Refuse a submission that `check_submission_summary` finds a problem in."""
    summary = check_submission_summary(csv_path, images_dir)
    if summary.problems:
        raise PipelineError(
            f"{csv_path} is not a valid submission for {images_dir}: "
            f"{problems_summary(summary.problems)}; nothing was submitted (./run.sh "
            f"check-submission {csv_path} --images {images_dir} lists every problem)"
        )
    log.info(
        "%s: valid for %s (%d rows, %d images, %d nuclei)",
        csv_path,
        images_dir,
        summary.n_rows,
        summary.n_images,
        summary.n_nuclei,
    )


def local_score(csv_path: Path, images_dir: Path, solution: Path | None) -> float | None:
    """The submission's score on ``solution`` (as ``./run.sh score``), when its labels cover
    every image of ``images_dir``; None otherwise (stage 2 has no released labels)."""
    if solution is None or not solution.is_file():
        log.info("no local score: %s not found", solution)
        return None
    labelled, ignored = read_solution(solution)
    ids = list_image_ids(images_dir)
    missing = [image_id for image_id in ids if image_id not in labelled and image_id not in ignored]
    if missing:
        log.info(
            "no local score: %s has no labels for %d of the %d images (such as %s)",
            solution,
            len(missing),
            len(ids),
            missing[0],
        )
        return None
    return score_submission(csv_path, solution).score


def _record(args: argparse.Namespace, metadata: dict, score: float | None, scores) -> None:
    trained = score is not None and bool(
        trained_on_scored_images(metadata, list_image_ids(args.images_dir))
    )
    if trained:
        print(f"local score: {TRAINED_ON_LABELS} (not ranked on the leaderboard)")
    if args.no_leaderboard:
        return
    append_entry(
        args.leaderboard,
        args.submission,
        score,
        metadata,
        kaggle_public=scores.public or None,
        kaggle_private=scores.private or None,
        trained_on_labels=trained,
    )
    log.info("added to the leaderboard %s", args.leaderboard)


def main(args: argparse.Namespace) -> int:
    """Check, score locally, submit, wait for Kaggle's scores, print and record them."""
    csv_path = Path(args.submission)
    if not csv_path.is_file():
        raise PipelineError(f"{csv_path}: no such file")
    if args.timeout < 0 or args.poll_every < 0 or args.max_mib <= 0:
        raise PipelineError("--timeout and --poll-every must be >= 0, --max-mib > 0")
    check_size(csv_path, args.max_mib)
    metadata = read_submission_metadata(csv_path)
    args.images_dir = images_for(csv_path, metadata, args.images)
    check_for_upload(csv_path, args.images_dir)
    sources = require_credentials()
    score = local_score(csv_path, args.images_dir, args.solution)
    if score is not None:
        print(f"local score {score:.6f} ({args.solution})")
    api = authenticated_api(sources, "submission", args.competition, network_hint=NETWORK_HINT)
    if args.dry_run:
        with kaggle_errors("submission list", args.competition, NETWORK_HINT):
            earlier = api.competition_submissions(args.competition)
        print(
            f"dry run: {csv_path} is ready for {args.competition} (Kaggle accepted the "
            f"credentials; {len(earlier or [])} submission(s) listed); nothing uploaded"
        )
        return 0
    ref = submit_file(api, csv_path, args.message, args.competition)
    log.info("submitted %s to %s (submission %s)", csv_path, args.competition, ref or "?")
    scores = wait_for_scores(
        api, ref, args.message, args.competition, timeout_s=args.timeout, poll_s=args.poll_every
    )
    print(
        f"Kaggle scored submission {scores.ref}: public {scores.public or '-'}, "
        f"private {scores.private or '-'}"
    )
    _record(args, metadata, score, scores)
    return 0
