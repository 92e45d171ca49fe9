"""Stage ``predict``: a folder of images to a checked submission CSV.

Its options and ``main``; the work is done by
``pipeline.inference.predict``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline import paths
from pipeline.errors import PipelineError
from pipeline.inference.predict import run_prediction

log = logging.getLogger(__name__)


def add_postprocess_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags that override a model's saved post-processing settings."""
    post = parser.add_argument_group("post-processing (default: the values saved with the model)")
    post.add_argument(
        "--method",
        choices=("components", "watershed"),
        default=None,
        help="how instances are split",
    )
    post.add_argument("--threshold", type=float, default=None, help="foreground threshold")
    post.add_argument(
        "--marker-threshold", type=float, default=None, help="watershed seed threshold"
    )
    post.add_argument(
        "--border-weight",
        type=float,
        default=None,
        help="weight of the border channel in the watershed seeds",
    )
    post.add_argument("--min-size", type=int, default=None, help="smallest nucleus, in pixels")
    post.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average the 8 flips and rotations",
    )
    network = parser.add_argument_group("network output (default: the model's config)")
    network.add_argument(
        "--tile-size",
        type=_non_negative_int,
        default=None,
        help="images with a side longer than this are predicted in overlapping tiles of "
        "this size, bounding memory (0: always whole)",
    )
    network.add_argument(
        "--heads",
        type=_heads_argument,
        default=None,
        metavar="all|N",
        help="models with several output heads (unetpp): average them all (accurate), or "
        "use head N alone, the network cut after it (fast); the saved thresholds were "
        "tuned with the config's value",
    )


def _non_negative_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value!r}")
    return number


def _heads_argument(value: str) -> str:
    from pipeline.config import check_heads

    try:
        return check_heads(value)
    except PipelineError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def postprocess_overrides(args: argparse.Namespace) -> dict:
    """The post-processing flags a user gave (None for the ones left to the model)."""
    return {
        "method": args.method,
        "threshold": args.threshold,
        "marker_threshold": args.marker_threshold,
        "border_weight": args.border_weight,
        "min_size": args.min_size,
        "tta": args.tta,
        "heads": args.heads,
        "tile_size": args.tile_size,
    }


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
    add_postprocess_arguments(parser)
    run = parser.add_argument_group("run")
    run.add_argument("--batch-size", type=int, default=None, help="images per batch")
    run.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    run.add_argument("--no-check", action="store_true", help="skip checking the written CSV")
    run.add_argument(
        "--untuned",
        action="store_true",
        help="ignore the model's thresholds.json (use its config's defaults)",
    )


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
    overrides = {**postprocess_overrides(args), "batch_size": args.batch_size}
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
