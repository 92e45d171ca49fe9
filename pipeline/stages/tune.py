"""Stage ``tune``: choose post-processing settings on the validation split.

Its options and ``main``; the work is done by
``pipeline.evaluation.tuning``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.core.device import DEVICES, select_device
from pipeline.evaluation.tuning import tune_model
from pipeline.locks import output_lock

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="model folder")
    parser.add_argument(
        "--images",
        type=Path,
        default=None,
        help="its training images (default: the folder it was trained on)",
    )
    parser.add_argument("--device", choices=DEVICES, default="auto")


def main(args: argparse.Namespace) -> int:
    with output_lock(args.model, "--model"):  # a training or another tuning writes it
        select_device(args.device)
        tuned = tune_model(args.model, args.images, args.device)
    print(f"validation score {tuned['validation_score']:.4f} with {tuned['params']}")
    return 0
