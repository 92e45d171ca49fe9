"""Stage ``serve``: the web page and API over one model (``pipeline.serving.app``).

Its options and ``main``; the model is loaded once, before the server listens.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import socket
from pathlib import Path

from pipeline import paths
from pipeline.cli import add_setting_argument
from pipeline.config import PredictConfig, finite_float
from pipeline.core.device import DEVICES, select_device
from pipeline.errors import PipelineError
from pipeline.serving.segmenter import Segmenter

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=paths.DEFAULT_MODEL_DIR, help="model folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument(
        "--max-megapixels",
        type=finite_float,
        default=50.0,
        help="images larger than this are refused (413)",
    )
    parser.add_argument("--device", choices=DEVICES, default="auto")
    engine = {item.name: item for item in dataclasses.fields(PredictConfig)}["engine"]
    add_setting_argument(parser, engine)  # left out: the model's (keras unless changed)


def main(args: argparse.Namespace) -> int:
    # Lazy: uvicorn and FastAPI are heavy; only a starting server needs them
    import uvicorn

    from pipeline.serving.app import create_app

    if not 0 < args.max_megapixels:
        raise PipelineError(f"--max-megapixels must be > 0, got {args.max_megapixels}")
    if not 0 <= args.port <= 65535:
        raise PipelineError(f"--port must be in [0, 65535], got {args.port}")
    check_address(args.host, args.port)
    select_device(args.device)  # the server's start: the device, chosen once
    segmenter = Segmenter(args.model, args.device, args.engine)
    app = create_app(segmenter, max_megapixels=args.max_megapixels)
    log.info("serving %s on http://%s:%d/ (Ctrl-C stops)", args.model, args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def check_address(host: str, port: int) -> None:
    """Refuse, before the model is loaded, a host that cannot be listened on or a port in
    use, with one line (uvicorn would end in its own message, exit status 3)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as error:
        raise PipelineError(f"--host {host}: not an address of this machine ({error})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind(address)
        except OSError as error:
            raise PipelineError(
                f"--host {host} --port {port}: cannot listen there ({error.strerror or error})"
            ) from None
