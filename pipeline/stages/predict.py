"""Stage ``predict``: a folder of images to a checked submission CSV.

Its options and ``main``; the work is done by
``pipeline.inference.predict``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline import paths
from pipeline.cli import add_config_arguments, config_overrides
from pipeline.errors import PipelineError
from pipeline.inference.predict import run_prediction
from pipeline.learning.device import DEVICES

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    io = parser.add_argument_group("input and output")
    io.add_argument("--model", type=Path, default=paths.DEFAULT_MODEL_DIR, help="model folder")
    io.add_argument(
        "--images",
        type=Path,
        default=None,
        help="folder of images in Kaggle layout (default: input/stage1_test)",
    )
    io.add_argument(
        "--out",
        type=Path,
        default=None,
        help="submission CSV (default: submissions/<model name>.csv)",
    )
    io.add_argument(
        "--demo",
        action="store_true",
        help="use the synthetic demo set (input/demo) and its model (models/demo)",
    )
    run = parser.add_argument_group("run")
    run.add_argument("--device", choices=DEVICES, default="auto")
    run.add_argument("--no-check", action="store_true", help="skip checking the written CSV")
    run.add_argument(
        "--untuned",
        action="store_true",
        help="ignore the model's thresholds.json (use its config's defaults)",
    )
    add_config_arguments(parser, "predict", "prediction")


def main(args: argparse.Namespace) -> int:
    images_dir = args.images
    model_dir = args.model
    if args.demo:
        from pipeline.data.synthetic import make_demo_dataset

        demo = make_demo_dataset(paths.INPUT_DIR / "demo")
        images_dir = images_dir or demo.test_dir
        if model_dir == paths.DEFAULT_MODEL_DIR:
            model_dir = paths.MODELS_DIR / "demo"
    images_dir = images_dir or paths.TEST_DIR
    if not Path(images_dir).is_dir():
        raise PipelineError(
            f"{images_dir}: no such folder of images "
            "(./run.sh download fetches the competition data, --demo uses the synthetic set)"
        )
    out_csv = args.out or paths.SUBMISSIONS_DIR / f"{Path(model_dir).name}.csv"
    overrides = config_overrides(args, "predict")
    run_prediction(
        Path(model_dir), Path(images_dir), Path(out_csv), overrides, args.device, not args.untuned
    )
    if not args.no_check:
        from pipeline.data.submission import check_submission

        problems = check_submission(out_csv, images_dir)
        for problem in problems:
            log.error("%s", problem)
        if problems:
            raise PipelineError(f"{out_csv}: the written submission has {len(problems)} problems")
        log.info("%s: valid submission", out_csv)
    return 0
