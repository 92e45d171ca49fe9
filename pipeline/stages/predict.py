"""Stage ``predict``: a folder of images (Kaggle layout or plain) or one image file to a
checked submission CSV, and on request label images, a measurements table, Fiji ROI sets
and QuPath GeoJSON files.

Its options and ``main``; the work is done by
``pipeline.inference.predict``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline import paths
from pipeline.cli import add_config_arguments, config_overrides, refuse_conflicts
from pipeline.core.device import DEVICES, select_device
from pipeline.data.dataset import ImageFiles, list_image_files
from pipeline.data.synthetic import make_demo_dataset
from pipeline.errors import PipelineError
from pipeline.inference.output_checks import check_predictions
from pipeline.inference.run import run_prediction

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    io = parser.add_argument_group("input and output")
    io.add_argument("--model", type=Path, default=paths.DEFAULT_MODEL_DIR, help="model folder")
    io.add_argument(
        "--images",
        type=Path,
        default=None,
        metavar="PATH",
        help="a folder in Kaggle layout (<id>/images/<id>.png), a plain folder of PNG, JPEG "
        "or TIFF images (grey or colour, 8, 12, 16 bits or float; the ImageId is the file "
        "name without extension) or one image file; images deeper than 8 bits are brought "
        "to 8 bits by their own 0.5 and 99.5 percentiles (default: input/stage1_test)",
    )
    io.add_argument(
        "--out",
        type=Path,
        default=None,
        help="submission CSV, always written (default: submissions/<model name>.csv for a "
        "Kaggle-layout folder, submissions/<model name>-<folder or file name>.csv otherwise)",
    )
    io.add_argument(
        "--labels-out",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write a label image per input into DIR: <ImageId>.png, 16-bit grey, "
        "0 = background, 1..n the nuclei (an image with more than 65535 nuclei: "
        "<ImageId>.tif, 32-bit)",
    )
    io.add_argument(
        "--measurements",
        type=Path,
        default=None,
        metavar="FILE.csv",
        help="also write one table, a row per nucleus: image (the ImageId), label, area, "
        "centroid_row, centroid_col, mean_intensity (on the image's own pixel values, "
        "grey = mean of the channels, before any 8-bit normalisation), eccentricity, solidity",
    )
    _add_outline_arguments(io)
    io.add_argument(
        "--demo",
        action="store_true",
        help="use the synthetic demo set (input/demo) and its model (models/demo)",
    )
    _add_run_arguments(parser.add_argument_group("run"))
    add_config_arguments(parser, "predict", "prediction")


def _add_outline_arguments(io: argparse._ArgumentGroup) -> None:
    """The outputs for Fiji and QuPath: a ROI set and a GeoJSON file per image."""
    io.add_argument(
        "--rois-out",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write an ImageJ ROI set per input into DIR: <ImageId>_rois.zip, one "
        "polygon ROI per nucleus along its pixels' edges, named by its label, in the order "
        "of the CSV rows (Fiji: ROI Manager > More > Open; a nucleus' holes are covered)",
    )
    io.add_argument(
        "--geojson-out",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write a GeoJSON file per input into DIR: <ImageId>.geojson, one Polygon "
        "feature per nucleus as QuPath imports it (a detection classified Nucleus, holes "
        "kept, the measurements of --measurements as its measurements; QuPath: drag it "
        "onto the image)",
    )


def _add_run_arguments(run: argparse._ArgumentGroup) -> None:
    """How the prediction runs: device, checks, overwriting, resuming, tuned settings."""
    run.add_argument("--device", choices=DEVICES, default="auto")
    run.add_argument(
        "--dask",
        default=None,
        metavar="ADDRESS",
        help="spread the images over the workers of a Dask cluster: local:N starts N worker "
        "processes on this machine for the run, tcp://HOST:PORT uses a running scheduler "
        "(its workers read the model and images at the same paths); the outputs are the "
        "same as without it",
    )
    run.add_argument("--no-check", action="store_true", help="skip checking the written CSV")
    run.add_argument(
        "--force",
        action="store_true",
        help="let --out replace a file that is not a submission written by this pipeline "
        "(one without its sidecar .json); without it such a file is refused",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="go on after the last complete image of an interrupted run with the same model, "
        "settings and images (its rows are kept in OUT.partial until the end)",
    )
    run.add_argument(
        "--force-edited",
        action="store_true",
        help="predict with a model whose config.json or thresholds.json was edited since it "
        "was finished (their checksums in complete.json differ); without it such a model "
        "is refused",
    )
    run.add_argument(
        "--untuned",
        action="store_true",
        help="ignore the model's thresholds.json (use its config's defaults)",
    )


def _images_and_model(args: argparse.Namespace) -> tuple[Path, Path]:
    """The images to predict and the model folder, ``--demo`` taken into account."""
    refuse_conflicts(args, [("--demo", "demo"), ("--images", "images")])
    images, model_dir = args.images, args.model
    if args.demo:
        demo = make_demo_dataset(paths.INPUT_DIR / "demo")
        images = images or demo.test_dir
        if model_dir == paths.DEFAULT_MODEL_DIR:
            model_dir = paths.MODELS_DIR / "demo"
    images = Path(images or paths.TEST_DIR)
    if not images.exists():
        raise PipelineError(
            f"{images}: no such file or folder of images "
            "(./run.sh download fetches the competition data, --demo uses the synthetic set)"
        )
    return images, Path(model_dir)


def default_out_csv(found: ImageFiles, model_dir: Path) -> Path:
    """``submissions/<model>.csv`` for a Kaggle-layout folder, else
    ``submissions/<model>-<folder or file name>.csv`` (so that predicting your own images
    does not overwrite the model's stage1_test submission)."""
    if found.layout == "kaggle":
        return paths.SUBMISSIONS_DIR / f"{model_dir.name}.csv"
    return paths.SUBMISSIONS_DIR / f"{model_dir.name}-{found.name}.csv"


def _check(out_csv: Path, found: ImageFiles) -> None:
    """Check the written submission against the images (any layout, as check-submission
    does for a Kaggle-layout folder); raise on any problem."""
    problems = check_predictions(out_csv, found.files)
    for problem in problems:
        log.error("%s", problem)
    if problems:
        raise PipelineError(f"{out_csv}: the written submission has {len(problems)} problems")
    log.info("%s: valid submission", out_csv)


def main(args: argparse.Namespace) -> int:
    images, model_dir = _images_and_model(args)
    found = list_image_files(images)
    out_csv = args.out or default_out_csv(found, model_dir)
    overrides = config_overrides(args, "predict")
    select_device(args.device)
    run_prediction(
        model_dir,
        images,
        Path(out_csv),
        overrides,
        args.device,
        not args.untuned,
        labels_dir=args.labels_out,
        measurements_csv=args.measurements,
        resume=args.resume,
        force=args.force,
        dask=args.dask,
        edited_ok=args.force_edited,
        rois_dir=args.rois_out,
        geojson_dir=args.geojson_out,
    )
    if not args.no_check:
        _check(Path(out_csv), found)
    return 0
