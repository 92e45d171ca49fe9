"""Stage ``evaluate``: a model's competition score on its own validation split.

Its options and ``main``; the work is done by
``pipeline.evaluation.validation``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from pipeline.cli import add_config_arguments, config_overrides
from pipeline.core.device import DEVICES, select_device
from pipeline.evaluation.validation import evaluate_model

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="model folder")
    parser.add_argument(
        "--images",
        type=Path,
        default=None,
        help="its training images (default: the folder it was trained on)",
    )
    parser.add_argument(
        "--untuned",
        action="store_true",
        help="ignore the model's thresholds.json (use its config's defaults)",
    )
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    add_config_arguments(parser, "predict", "prediction")


def main(args: argparse.Namespace) -> int:
    select_device(args.device)
    result = evaluate_model(
        args.model, config_overrides(args, "predict"), not args.untuned, args.images, args.device
    )
    split = (
        "held-out conditions: " + ", ".join(result["held_out_conditions"])
        if result["split"] == "conditions"
        else "random split"
    )
    print(f"validation score {result['score']:.6f} ({result['images']} images, {split})")
    for kind, score in result["per_kind"].items():
        print(f"  {kind:<13}{score:.6f}")
    print(f"settings: {result['settings']}")
    if args.json:
        print(json.dumps(result))
    return 0
