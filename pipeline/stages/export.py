"""Stage ``export``: a finished model's network in other formats.

``--onnx`` writes ``model.onnx`` into the model folder, its SHA-256 recorded in
``complete.json`` (`pipeline.learning.onnx_export.add_onnx`), for ``predict --engine
onnxruntime``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline import paths
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)


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


def main(args: argparse.Namespace) -> int:
    from pipeline.learning import device as device_module

    if not args.onnx:
        raise PipelineError("export: say what to write: --onnx")
    device_module.select_device("cpu")
    from pipeline.learning.onnx_export import add_onnx

    add_onnx(Path(args.model))
    return 0
