"""Command line: ``python -m pipeline STAGE [OPTIONS]`` (``./run.sh`` calls this).

Each stage lives in its own module, which provides

- ``add_arguments(parser: argparse.ArgumentParser) -> None``: its options, and
- ``main(args: argparse.Namespace) -> int``: the stage itself, returning the exit status.

Only the chosen stage's module is imported, so ``--help`` and light stages start fast and
TensorFlow is loaded only by the stages that need it. Every failure ends in one line,
exit status 2: a ``PipelineError`` as ``error: ...``; a file system error (a folder that is
read-only, a disk that is full) as ``error: FILE: what the system said``; anything else, a
bug, as ``error: unexpected ...`` with the traceback under ``--verbose``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from pipeline import __version__
from pipeline.config import SECTIONS, value_parser
from pipeline.errors import PipelineError

if not sys.stderr.isatty():
    # In a log file, a progress bar is a line per update: redraw it rarely. tqdm reads
    # TQDM_* defaults when it is imported, so this must come before any stage module.
    os.environ.setdefault("TQDM_MININTERVAL", "20")

# stage name -> (module, one-line description), in the order the main job runs them.
STAGES: dict[str, tuple[str, str]] = {
    "all": (
        "pipeline.stages.main_job",
        "the main job: data, train, predict, check, score (the default)",
    ),
    "download": (
        "pipeline.stages.download",
        "fetch the competition files into input/ (Kaggle API or --from DIR)",
    ),
    "train": ("pipeline.stages.train", "train a U-Net on input/stage1_train"),
    "evaluate": ("pipeline.stages.evaluate", "score a model on its validation split"),
    "tune": ("pipeline.stages.tune", "choose post-processing settings on the validation split"),
    "predict": ("pipeline.stages.predict", "predict a folder of images and write a submission CSV"),
    "check-submission": (
        "pipeline.stages.check_submission",
        "check a submission CSV against the test images",
    ),
    "score": ("pipeline.stages.score", "score a submission with the competition metric"),
    "submit": (
        "pipeline.stages.submit",
        "check a submission, send it to Kaggle, record Kaggle's scores on the leaderboard",
    ),
    "leaderboard": ("pipeline.stages.leaderboard", "print the local leaderboard, best first"),
    "report": ("pipeline.stages.report", "overlay pictures and an HTML page for a submission"),
    "serve": ("pipeline.stages.serve", "a web page and API: drop an image, see its nuclei"),
    "export": (
        "pipeline.stages.export",
        "a finished model's network as ONNX (model.onnx) or a bioimage.io model package",
    ),
}
DEFAULT_STAGE = "all"


def _usage() -> str:
    width = max(len(name) for name in STAGES)
    lines = [
        "usage: ./run.sh [STAGE] [OPTIONS]      (./run.sh test runs the test suite)",
        "       dsb2018 [STAGE] [OPTIONS]       (the same, installed with pip)",
        "       ./run.sh --version",
        "",
        "Nucleus segmentation for the Kaggle 2018 Data Science Bowl.",
        "Without a stage, runs the main job. Every stage has --help.",
        "",
        "stages:",
    ]
    lines += [f"  {name:<{width}}  {description}" for name, (_, description) in STAGES.items()]
    return "\n".join(lines)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the empty ones (None, False) that mean "not given"; keeps the
    lines of an epilog that a stage's ``add_arguments`` sets (``export``'s steps)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def build_parser(stage: str) -> argparse.ArgumentParser:
    """The argument parser of one stage, with the options its module declares."""
    module_name, description = STAGES[stage]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(
        prog=f"./run.sh {stage}",
        description=description[0].upper() + description[1:] + ".",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    module.add_arguments(parser)
    parser.set_defaults(_stage_main=module.main)
    return parser


def refuse_conflicts(args: argparse.Namespace, flags: Sequence[tuple[str, str]]) -> None:
    """Refuse two or more of ``flags`` (``(flag, dest)`` pairs) given together: each one
    says where the run's data or settings come from, and one would silently win."""
    given = [flag for flag, dest in flags if getattr(args, dest, None) not in (None, False)]
    if len(given) > 1:
        raise PipelineError(
            f"{' and '.join(given)} do not go together: each says what to use; give one"
        )


def flag_of(item: dataclasses.Field) -> str:
    """The command-line flag of a config field, e.g. ``--min-size``."""
    return "--" + (item.metadata["flag"] or item.name.replace("_", "-"))


def add_config_arguments(parser: argparse.ArgumentParser, section: str, title: str) -> None:
    """One flag for each field of a config section, generated from its declaration.

    A flag left out is None in the parsed arguments (`config_overrides` skips it), so the
    model's, the preset's or the file's value stays. Fields that declare a ``group`` go
    into that group of the help, the others into ``title``.
    """
    groups: dict[str, Any] = {}
    for item in dataclasses.fields(SECTIONS[section]):
        name = item.metadata["group"] or title
        if name not in groups:
            groups[name] = parser.add_argument_group(name, "left out: " + _SOURCE[section])
        add_setting_argument(groups[name], item)


def add_setting_argument(parser: argparse.ArgumentParser | Any, item: dataclasses.Field) -> None:
    """The flag of one config field, from its declaration (None when left out)."""
    meta = item.metadata
    help_text = meta["help"].replace("%", "%%")  # argparse formats help with %
    options: dict[str, Any] = {"dest": item.name, "default": None, "help": help_text}
    if item.type is bool:
        options["action"] = argparse.BooleanOptionalAction
    else:
        options["type"] = value_parser(item)
        if meta["choices"]:
            options["choices"] = meta["choices"]
        if meta["metavar"]:
            options["metavar"] = meta["metavar"]
        if meta["repeat"]:
            options["action"] = "append"
    parser.add_argument(flag_of(item), **options)


_SOURCE = {
    "model": "the preset's (or --config's) value",
    "train": "the preset's (or --config's) value",
    "predict": "the value saved with the model",
}


def config_overrides(args: argparse.Namespace, section: str) -> dict[str, Any]:
    """The values a user gave by flag for a config section's fields (None: not given)."""
    overrides = {}
    for item in dataclasses.fields(SECTIONS[section]):
        value = getattr(args, item.name, None)
        if value is not None and item.metadata["negate"]:
            value = not value
        if value is not None and item.metadata["repeat"]:
            value = ",".join(value)
        overrides[item.name] = value
    return overrides


def setup_logging(verbose: bool = False) -> None:
    """Plain messages for the user on stderr; ``--verbose`` adds debugging detail."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s" if not verbose else "%(asctime)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run one stage; return its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv and argv[0] == "--version":
        print(f"dsb2018 {__version__}")
        return 0
    if argv and not argv[0].startswith("-"):
        stage, rest = argv[0], argv[1:]
        if stage not in STAGES:
            print(_usage(), file=sys.stderr)
            print(f"\nerror: unknown stage {stage!r}", file=sys.stderr)
            return 2
    else:
        stage, rest = DEFAULT_STAGE, argv
    args = build_parser(stage).parse_args(rest)
    args.command_line = shlex.join(["./run.sh", *argv])  # as the user typed it
    setup_logging(args.verbose)
    try:
        return int(args._stage_main(args) or 0)
    except PipelineError as error:
        logging.getLogger("pipeline").error("error: %s", error)
        return 2
    except BrokenPipeError:  # output piped into head or less, which stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        logging.getLogger("pipeline").error("interrupted")
        return 130
    except OSError as error:
        logging.getLogger("pipeline").error("error: %s", os_error_message(error))
        logging.getLogger("pipeline").debug("traceback:", exc_info=True)
        return 2
    except Exception as error:  # noqa: BLE001 - the last line of defence: one line, not a dump
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        logging.getLogger("pipeline").error(
            "error: unexpected %s: %s (a bug; ./run.sh %s --verbose shows where)",
            type(error).__name__,
            first,
            stage,
        )
        logging.getLogger("pipeline").debug("traceback:", exc_info=True)
        return 2


def os_error_message(error: OSError) -> str:
    """One line for a file system error: the file, then what the system said.

    >>> os_error_message(PermissionError(13, "Permission denied", "/data/out.csv"))
    '/data/out.csv: Permission denied'
    """
    names = [name for name in (error.filename, error.filename2) if name]
    what = error.strerror or str(error)
    return f"{' -> '.join(map(str, names))}: {what}" if names else what
