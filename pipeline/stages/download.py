"""Stage ``download``: fetch the competition files into ``input/``.

Its options and ``main``; the work is done by
``pipeline.data.download``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline import paths
from pipeline.data.download import (
    BUNDLE_NAME,
    describe_input,
    download_from_kaggle,
    import_local,
)
from pipeline.fileio import check_not_special
from pipeline.locks import output_lock
from pipeline.outputs import check_not_input

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``./run.sh download``."""
    source = parser.add_argument_group("where the files come from (default: the Kaggle API)")
    source.add_argument(
        "--from",
        dest="source",
        type=Path,
        default=None,
        metavar="PATH",
        help="take the competition files from a local folder (such as ../shared/dsb2018) or "
        f"from {BUNDLE_NAME} instead of downloading them",
    )
    output = parser.add_argument_group("where they go")
    output.add_argument(
        "--input",
        dest="input_dir",
        type=Path,
        default=paths.INPUT_DIR,
        metavar="DIR",
        help="folder that receives the unpacked files",
    )
    output.add_argument(
        "--force",
        action="store_true",
        help="download and unpack again, even what is already up to date",
    )


def main(args: argparse.Namespace) -> int:
    """Fetch or import the competition files, unpack them, and summarise ``input/``."""
    input_dir = Path(args.input_dir)
    check_not_special(input_dir, "--input")
    check_not_input(input_dir, "--input", [(args.source, "--from")])
    with output_lock(input_dir, "--input"):
        if args.source is not None:
            log.info("taking the competition files from %s into %s", args.source, input_dir)
            import_local(args.source, input_dir, force=args.force)
        else:
            download_from_kaggle(input_dir, force=args.force)
    log.info("%s now holds:", input_dir)
    for line in describe_input(input_dir):
        log.info("  %s", line)
    return 0
