"""Stage ``train``: a network from ``stage1_train`` (or the demo set) to a model folder.

Its options and ``main``; the work is done by
``pipeline.learning.training``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline import paths
from pipeline.config import RESIZE_POLICIES, SPLITS, Config, preset
from pipeline.errors import PipelineError
from pipeline.learning.preprocess import INPUT_SPACES
from pipeline.learning.training import train_model

log = logging.getLogger(__name__)


def _share(value: str) -> float:
    """argparse type: a number in [0, 1]."""
    try:
        share = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0.0 <= share <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not in [0, 1]")
    return share


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group(
        "what to train", "options left out take the preset's (or --config's) value"
    )
    what.add_argument(
        "--preset", default=None, help="named configuration: default, seeds-baseline, demo"
    )
    what.add_argument("--config", type=Path, default=None, help="a config.json to start from")
    what.add_argument(
        "--arch",
        default=None,
        help="architecture: unet, unetpp (U-Net++, deep supervision) or mobilenetv2_unet "
        "(MobileNetV2 encoder, U-Net decoder)",
    )
    what.add_argument("--base-filters", type=int, default=None)
    what.add_argument("--depth", type=int, default=None)
    what.add_argument(
        "--invert-light",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="invert light-background images before standardising",
    )
    what.add_argument(
        "--input-space",
        choices=INPUT_SPACES,
        default=None,
        help="what the network sees: rgb (the colours) or grey (one grey level, light "
        "backgrounds inverted)",
    )
    what.add_argument(
        "--targets", default=None, help="what the network learns: foreground, border, border_centre"
    )
    what.add_argument(
        "--encoder-weights",
        choices=("imagenet", "none"),
        default=None,
        help="mobilenetv2_unet: the encoder's initial weights (imagenet: downloaded once "
        "into ~/.keras/models/; none: random)",
    )
    what.add_argument(
        "--freeze-encoder",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mobilenetv2_unet: keep the encoder's weights fixed (only the decoder learns)",
    )
    data = parser.add_argument_group("data and output")
    data.add_argument(
        "--images",
        type=Path,
        default=None,
        help="training images in Kaggle layout (default: input/stage1_train)",
    )
    data.add_argument(
        "--out", type=Path, default=None, help="model folder (default: models/<config name>)"
    )
    data.add_argument(
        "--demo", action="store_true", help="train on the synthetic demo set with the demo preset"
    )
    data.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    how = parser.add_argument_group(
        "training", "options left out take the preset's (or --config's) value"
    )
    how.add_argument("--epochs", type=int, default=None)
    how.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="wall-clock budget: no epoch is started that would end past it (0: none)",
    )
    how.add_argument("--batch-size", type=int, default=None)
    how.add_argument("--crop-size", type=int, default=None)
    how.add_argument(
        "--scale-range",
        type=float,
        nargs=2,
        default=None,
        metavar=("MIN", "MAX"),
        help="augmentation's random scale factor range",
    )
    how.add_argument(
        "--resize-policy",
        choices=RESIZE_POLICIES,
        default=None,
        help="native: crops at the images' own scale; resize: whole images resized to "
        "the crop size; nucleus: images rescaled so that nuclei are --nucleus-diameter "
        "pixels across (estimated by a first pass in prediction)",
    )
    how.add_argument(
        "--nucleus-diameter",
        type=float,
        default=None,
        metavar="D",
        help="resize-policy nucleus: the median nucleus diameter, in pixels, that every "
        "image is rescaled to",
    )
    how.add_argument("--steps-per-epoch", type=int, default=None)
    how.add_argument("--learning-rate", type=float, default=None)
    how.add_argument("--eval-every", type=int, default=None)
    how.add_argument("--patience", type=int, default=None)
    how.add_argument("--seed", type=int, default=None)
    how.add_argument(
        "--split",
        choices=SPLITS,
        default=None,
        help="validation split: random (stratified by kind) or conditions (whole "
        "acquisition conditions, size and kind, held out: measures generalisation)",
    )
    how.add_argument("--no-augment", action="store_true")
    how.add_argument(
        "--augment-strength",
        choices=("default", "strong"),
        default=None,
        help="default: mild intensity and colour changes; strong: wide gamma and stain "
        "colour changes, grey, blur",
    )
    how.add_argument(
        "--dim-nuclei",
        type=_share,
        default=None,
        metavar="P",
        help="share of training samples in which about half the nuclei are dimmed against "
        "the background, so that dim nuclei beside bright ones are found (0: never)",
    )
    how.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default=None)
    how.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    how.add_argument(
        "--no-tune",
        action="store_true",
        help="skip tuning the post-processing on validation at the end",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    """The config a ``train`` command line asks for: preset or file, then the flags."""
    if args.config is not None:
        config = Config.load(args.config)
    else:
        config = preset(args.preset or ("demo" if args.demo else "default"))
    overrides = {
        ("model", "arch"): args.arch,
        ("model", "base_filters"): args.base_filters,
        ("model", "depth"): args.depth,
        ("model", "targets"): args.targets,
        ("model", "input_space"): args.input_space,
        ("train", "scale_min"): args.scale_range[0] if args.scale_range else None,
        ("train", "scale_max"): args.scale_range[1] if args.scale_range else None,
        ("model", "invert_light_background"): args.invert_light,
        ("model", "encoder_weights"): args.encoder_weights,
        ("model", "encoder_trainable"): (
            None if args.freeze_encoder is None else not args.freeze_encoder
        ),
        ("train", "max_minutes"): args.max_minutes,
        ("train", "epochs"): args.epochs,
        ("train", "batch_size"): args.batch_size,
        ("train", "crop_size"): args.crop_size,
        ("train", "resize_policy"): args.resize_policy,
        ("train", "nucleus_diameter"): args.nucleus_diameter,
        ("train", "steps_per_epoch"): args.steps_per_epoch,
        ("train", "learning_rate"): args.learning_rate,
        ("train", "eval_every"): args.eval_every,
        ("train", "patience"): args.patience,
        ("train", "seed"): args.seed,
        ("train", "split"): args.split,
        ("train", "precision"): args.precision,
        ("train", "augment_strength"): args.augment_strength,
        ("train", "dim_nuclei"): args.dim_nuclei,
    }
    for (section, key), value in overrides.items():
        if value is not None:
            setattr(getattr(config, section), key, value)
    if args.no_augment:
        config.train.augment = False
    return config


def main(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    images_dir = args.images
    if args.demo:
        from pipeline.data.synthetic import make_demo_dataset

        demo = make_demo_dataset(paths.INPUT_DIR / "demo")
        images_dir = images_dir or demo.train_dir
    if images_dir is None and args.resume and args.out is not None:
        from pipeline.learning.model_store import training_images_dir

        images_dir = training_images_dir(Path(args.out))
    images_dir = Path(images_dir or paths.TRAIN_DIR)
    if not images_dir.is_dir():
        raise PipelineError(
            f"{images_dir}: no training images (./run.sh download fetches them; "
            "--demo trains on the synthetic set)"
        )
    if args.resume and args.out is None:
        raise PipelineError("--resume needs --out: the model folder to continue")
    model_dir = Path(args.out or paths.MODELS_DIR / config.name)
    train_model(
        config,
        images_dir,
        model_dir,
        resume=args.resume,
        device=args.device,
        command=getattr(args, "command_line", None),
        tune=not args.no_tune,
    )
    return 0
