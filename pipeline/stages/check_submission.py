"""Stage ``check-submission``: report every problem of a submission CSV.

Its options and ``main``; the work is done by
``pipeline.data.reconcile``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline import paths
from pipeline.data.reconcile import check_submission_summary

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("submission", type=Path, help="the submission CSV to check")
    parser.add_argument(
        "--images",
        type=Path,
        default=paths.TEST_DIR,
        metavar="DIR",
        help="the images it is for, in Kaggle layout (<id>/images/<id>.png)",
    )


def main(args: argparse.Namespace) -> int:
    """Print every problem of the submission and a summary; 0 when valid, 1 otherwise."""
    summary = check_submission_summary(args.submission, args.images)
    for problem in summary.problems:
        print(problem)
    if summary.problems:
        print(f"{args.submission}: INVALID, {len(summary.problems)} problem(s)")
        return 1
    print(
        f"{args.submission}: valid, {summary.n_rows} rows, {summary.n_images} images, "
        f"{summary.n_nuclei} nuclei"
    )
    return 0
