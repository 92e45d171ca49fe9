"""Stage ``export``: a finished model's network in other formats.

``--onnx`` writes ``model.onnx`` into the model folder, its SHA-256 recorded in
``complete.json`` (`pipeline.core.onnx_export.add_onnx`), for ``predict --engine
onnxruntime``. ``--out NAME.bioimageio.zip`` writes a bioimage.io model package
(`pipeline.learning.bioimageio_package`) for Fiji (deepImageJ), ilastik and napari; its
``--help`` says how to open it there.
"""

from __future__ import annotations

import argparse
import logging
from importlib import resources
from pathlib import Path

from pipeline import paths
from pipeline.core import device as device_module
from pipeline.core.onnx_export import add_onnx
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)


def opening_steps() -> str:
    """How to open a package in Fiji (deepImageJ), ilastik and napari: the text that the
    package's README.md holds too (``pipeline/learning/templates/bioimageio_open.txt``)."""
    steps = resources.files("pipeline.learning") / "templates" / "bioimageio_open.txt"
    return steps.read_text(encoding="utf-8")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", type=Path, default=paths.DEFAULT_MODEL_DIR, help="a finished model folder"
    )
    parser.add_argument(
        "--onnx",
        action="store_true",
        help="write the network as model.onnx into the model folder, its SHA-256 recorded "
        "in complete.json beside the weights' (predict --engine onnxruntime uses it; "
        "without it that engine exports a copy into the cache, $DSB2018_CACHE or "
        "~/.cache/dsb2018, on first use)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="NAME.bioimageio.zip",
        help="write a bioimage.io model package (format 0.5): rdf.yaml, the weights as "
        "Keras 3 and ONNX, a synthetic test image with the network's output, a cover, and "
        "a README with the tuned post-processing settings, the scores, the training data "
        "and their licences; validated as it is written",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an --out that exists though this pipeline did not write it",
    )
    parser.epilog = opening_steps()


def main(args: argparse.Namespace) -> int:
    if not args.onnx and args.out is None:
        raise PipelineError(
            "export: say what to write: --onnx, or --out NAME.bioimageio.zip (a bioimage.io "
            "package)"
        )
    device_module.select_device("cpu")
    if args.out is not None:
        package = _package_module()
        package.check_package_target(Path(args.out), args.force, Path(args.model))
    if args.onnx:
        add_onnx(Path(args.model))
    if args.out is not None:
        package.export_package(Path(args.model), Path(args.out), args.force)
    return 0


def _package_module():
    """`pipeline.learning.bioimageio_package`, imported here (bioimageio.spec and ONNX are
    for the package alone, not for --help or --onnx), or one line saying what to install."""
    try:
        # Lazy: it loads Keras, ONNX and bioimage.io, which only --out needs
        from pipeline.learning import bioimageio_package
    except ImportError as error:
        raise PipelineError(
            f"export --out needs bioimageio.spec, onnx and onnxruntime ({error}); ./run.sh "
            "installs them from requirements.lock, pip from dsb2018-pipeline[bioimageio]"
        ) from None
    return bioimageio_package
