"""Stage ``leaderboard``: the local leaderboard, best first.

Its options and ``main``; the work is done by
``pipeline.evaluation.leaderboard``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline import paths
from pipeline.evaluation.leaderboard import format_leaderboard, read_leaderboard

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--leaderboard",
        type=Path,
        default=paths.LEADERBOARD_CSV,
        metavar="FILE",
        help="the leaderboard CSV",
    )


def main(args: argparse.Namespace) -> int:
    """Print the leaderboard, best first."""
    table = read_leaderboard(args.leaderboard)
    if table.empty:
        state = "is empty" if Path(args.leaderboard).exists() else "does not exist yet"
        print(
            f"{args.leaderboard} {state}: no submission scored "
            "(./run.sh score SUBMISSION.csv adds one)"
        )
        return 0
    print(format_leaderboard(table))
    return 0
