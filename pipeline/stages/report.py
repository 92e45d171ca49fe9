"""Stage ``report``: overlay pictures and an HTML page for a submission.

Its options and ``main``; the work is done by
``pipeline.evaluation.report``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline import paths
from pipeline.evaluation.report import build_report

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("submission", type=Path, help="the submission CSV to report on")
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument(
        "--images",
        type=Path,
        default=paths.TEST_DIR,
        metavar="DIR",
        help="the images it is for, in Kaggle layout (<id>/images/<id>.png)",
    )
    inputs.add_argument(
        "--solution",
        type=Path,
        default=None,
        metavar="FILE",
        help="the ground truth (ImageId,EncodedPixels,Height,Width,Usage); None: "
        f"{paths.SOLUTION_CSV} if it exists, else predictions only",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="the report folder; None: beside the CSV, a folder named after it",
    )
    output.add_argument(
        "--n",
        type=int,
        default=8,
        metavar="N",
        help="overlay pictures of the N worst and the N best images",
    )


def main(args: argparse.Namespace) -> int:
    """Write the report of a submission; log where its page is."""
    solution = args.solution
    if solution is None:
        if paths.SOLUTION_CSV.is_file():
            solution = paths.SOLUTION_CSV
        else:
            log.info("no solution at %s: the report shows predictions only", paths.SOLUTION_CSV)
    report = build_report(args.submission, args.images, solution, args.out, args.n)
    if report.score is not None:
        log.info("score %.6f over %d images", report.score, len(report.results))
    log.info("report: %s", report.index_html)
    return 0
