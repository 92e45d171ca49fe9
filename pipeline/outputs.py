"""What an output may replace, checked before any work.

Every output a stage writes (a submission, a measurements table, a folder of label
images, a model folder, the unpacked competition files) follows the same rules:

- it is never an input, nor inside one, nor a folder that holds one (`check_not_input`):
  ``--labels-out`` pointed at the images folder once replaced the images with labels;
- it replaces only what the pipeline itself wrote, recognisable as such, unless
  ``--force`` (`check_replaceable`);
- a path that exists and is neither a regular file nor a folder (a device such as
  ``/dev/full``, a pipe, a socket) is never replaced, even with ``--force``
  (`pipeline.fileio.check_not_special`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from pipeline.errors import PipelineError


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


def check_not_input(
    output: str | os.PathLike[str] | None,
    option: str,
    inputs: Iterable[tuple[str | os.PathLike[str] | None, str]],
    skip_missing: bool = True,
) -> None:
    """Refuse an output that is an input, lies inside an input folder, or is a folder that
    holds an input. Paths are resolved (links followed) before they are compared.

    ``inputs`` are ``(path, what)`` pairs, ``what`` naming the input in the message
    (``--images``, ``the model``); None paths are skipped, and with ``skip_missing``
    paths that do not exist (not for other outputs, which a run has not written yet).

    >>> check_not_input("/tmp/out.csv", "--out", [("/usr", "--images")])
    >>> check_not_input("/tmp/a.csv", "--out", [("/tmp", "--images")])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pipeline.errors.PipelineError: /tmp/a.csv: inside --images /tmp; an output is never ...
    """
    if output is None:
        return
    target = Path(output).resolve()
    for path, what in inputs:
        if path is None or (skip_missing and not Path(path).exists()):
            continue  # a missing input is refused as such; other outputs are not there yet
        source = Path(path).resolve()
        if _inside(target, source) or _inside(source, target):
            where = "is" if target == source else "inside" if _inside(target, source) else "holds"
            raise PipelineError(
                f"{output}: {where} {what} {path}; an output is never written over or among "
                f"the inputs: choose another {option}"
            )


def check_replaceable(path: Path, option: str, own: bool, force: bool, what: str) -> None:
    """Refuse to replace ``path``, an existing output that is not the pipeline's ``own``
    (``what`` says how the pipeline's own is recognised), unless ``force``."""
    if own or force:
        return
    raise PipelineError(
        f"{path}: exists and was not written by this pipeline ({what}); --force replaces "
        f"it, or choose another {option}"
    )
