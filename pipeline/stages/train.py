"""Stage ``train``: a network from ``stage1_train`` (or the demo set) to a model folder.

Its options and ``main``; the work is done by
``pipeline.learning.training``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline import paths
from pipeline.cli import add_config_arguments, config_overrides, refuse_conflicts
from pipeline.config import Config, check_network_fits, check_section, preset
from pipeline.core.device import DEVICES, select_device
from pipeline.core.distribute import parse_devices, process_model_dir
from pipeline.core.model_store import check_finished, load_config, training_images_dir
from pipeline.data.synthetic import make_demo_dataset
from pipeline.errors import PipelineError
from pipeline.evaluation.tuning import tune_model
from pipeline.evaluation.validation import score_extra_sets, score_samples
from pipeline.inference.model import NucleusModel
from pipeline.learning.training import Scoring, check_resumable, train_model
from pipeline.locks import output_lock
from pipeline.outputs import check_not_input

log = logging.getLogger(__name__)


def evaluation_scoring() -> Scoring:
    """Evaluation's functions that a training calls: the validation score between epochs,
    the tuning at its end, the extra sets' scores (learning does not import evaluation)."""
    return Scoring(samples=score_network, tune=tune_model, extra_sets=score_extra_sets)


def score_network(network, samples, config: Config) -> dict:
    """The validation score of a network being trained, predicted as its finished model
    will predict (`pipeline.inference.model.NucleusModel.of_network`)."""
    return score_samples(NucleusModel.of_network(network, config), samples)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The run's options, then one flag per model and training setting
    (`pipeline.config`)."""
    what = parser.add_argument_group("what to train")
    what.add_argument(
        "--preset", default=None, help="named configuration: default, seeds-baseline, demo"
    )
    what.add_argument("--config", type=Path, default=None, help="a config.json to start from")
    data = parser.add_argument_group("data and output")
    data.add_argument(
        "--images",
        type=Path,
        default=None,
        help="labelled training images (default: input/stage1_train): a folder in Kaggle "
        "layout, of images with name_masks label images beside them, or of images/ + "
        "labels/, or a zip of one",
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
    data.add_argument(
        "--init",
        type=Path,
        default=None,
        metavar="MODEL",
        help="fine-tune: start from the weights of a finished model folder (same network; "
        "without --preset or --config its settings are the starting point, so give only "
        "what changes, e.g. --images MY_LABELLED --learning-rate 1e-4 --epochs 20 "
        "--max-minutes 10; default --out: models/<its name>-finetuned)",
    )
    data.add_argument("--device", choices=DEVICES, default="auto")
    data.add_argument(
        "--devices",
        default="1",
        metavar="N|all",
        help="train data-parallel on N devices (all: every GPU the backend sees): each "
        "step's --batch-size is split evenly over them; the learning rate stays that of "
        "the global batch (see docs/scaling.md)",
    )
    data.add_argument(
        "--no-tune",
        action="store_true",
        help="skip tuning the post-processing on validation at the end",
    )
    add_config_arguments(parser, "model", "model settings")
    add_config_arguments(parser, "train", "training settings")


def config_from_args(args: argparse.Namespace) -> Config:
    """The config a ``train`` command line asks for: preset or file, then the flags."""
    refuse_conflicts(args, [("--preset", "preset"), ("--config", "config")])
    for other in ("preset", "images", "config"):  # --demo chooses the demo set and preset
        refuse_conflicts(args, [("--demo", "demo"), (f"--{other}", other)])
    if args.config is not None:
        config = Config.load(args.config)
    elif args.init is not None and args.preset is None:
        check_finished(args.init)
        config = load_config(args.init, tuned=False)
        config.name = f"{args.init.name}-finetuned"
    else:
        config = preset(args.preset or ("demo" if args.demo else "default"))
    if args.config is None:
        # Extra sets come from the command line only: ./run.sh train (a preset's or an
        # --init model's recipe) trains on --images alone unless --extra names more.
        config.train.extra = ""
    for section in ("model", "train"):
        for key, value in config_overrides(args, section).items():
            if value is not None:
                setattr(getattr(config, section), key, value)
        check_section(section, getattr(config, section), "the training settings")
    check_network_fits(config, "the training settings")
    return config


def main(args: argparse.Namespace) -> int:
    devices = parse_devices(args.devices)
    config = config_from_args(args)
    if args.init is not None and args.out is not None and args.out.resolve() == args.init.resolve():
        raise PipelineError(f"--init {args.init}: --out must be another folder than the model")
    images_dir = args.images
    if args.demo:
        demo = make_demo_dataset(paths.INPUT_DIR / "demo")
        images_dir = images_dir or demo.train_dir
    if args.init is not None and args.demo:
        raise PipelineError("--init and --demo do not go together (--demo trains a new model)")
    if args.resume and args.out is not None:
        check_resumable(Path(args.out))
    if images_dir is None and args.resume and args.out is not None:
        images_dir = training_images_dir(Path(args.out))
    images_dir = Path(images_dir or paths.TRAIN_DIR)
    if not images_dir.exists():
        raise PipelineError(
            f"{images_dir}: no training images (./run.sh download fetches them; "
            "--demo trains on the synthetic set)"
        )
    if args.resume and args.out is None:
        raise PipelineError("--resume needs --out: the model folder to continue")
    model_dir = Path(args.out or paths.MODELS_DIR / config.name)
    check_not_input(model_dir, "--out", [(images_dir, "--images"), (args.init, "--init")])
    # Each process of a data-parallel training writes its own folder: lock that one.
    with output_lock(process_model_dir(model_dir), "--out"):
        select_device(args.device, devices)
        train_model(
            config,
            images_dir,
            model_dir,
            resume=args.resume,
            device=args.device,
            command=getattr(args, "command_line", None),
            tune=not args.no_tune,
            devices=devices,
            init=args.init,
            scoring=evaluation_scoring(),
        )
    return 0
