"""Stage ``score``: score a submission with the competition metric.

Its options and ``main``; the work is done by
``pipeline.evaluation.score``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from pipeline import paths
from pipeline.errors import PipelineError
from pipeline.evaluation.score import format_report, record_score, score_submission

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("submission", type=Path, help="the submission CSV to score")
    parser.add_argument(
        "--solution",
        type=Path,
        default=paths.SOLUTION_CSV,
        metavar="FILE",
        help="the ground truth: ImageId,EncodedPixels,Height,Width,Usage",
    )
    parser.add_argument(
        "--worst", type=int, default=10, metavar="N", help="list the N lowest-scoring images"
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--json",
        action="store_true",
        help='end with one JSON line: {"score": ..., "per_image": {ImageId: score}}',
    )
    output.add_argument(
        "--leaderboard",
        type=Path,
        default=paths.LEADERBOARD_CSV,
        metavar="FILE",
        help="the leaderboard that the score is added to",
    )
    output.add_argument(
        "--no-leaderboard", action="store_true", help="do not add the score to the leaderboard"
    )
    output.add_argument(
        "--unchecked",
        action="store_true",
        help="score a submission that check-submission rejects (images left out score as "
        "empty predictions, unknown ones are ignored); never added to the leaderboard",
    )


def main(args: argparse.Namespace) -> int:
    """Score the submission, print the report, add it to the leaderboard."""
    if args.worst < 0:
        raise PipelineError(f"--worst must be 0 or more, got {args.worst}")
    result = score_submission(args.submission, args.solution, checked=not args.unchecked)
    print(format_report(result, worst=args.worst))
    if args.json:
        print(json.dumps({"score": result.score, "per_image": result.per_image}))
    if args.unchecked:
        log.warning("scored --unchecked: not added to the leaderboard")
    elif not args.no_leaderboard:
        record_score(result, args.submission, args.leaderboard)
    return 0
