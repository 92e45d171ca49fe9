"""Atomic writes: a file or folder appears complete or not at all.

Every stage writes its outputs through these helpers, so that an interrupted run never
leaves a half-written CSV, model or unpacked folder behind. A temporary name holds the
writer's process id (``.<name>.<pid>.<random>.tmp``); the next write of the same name
removes those of processes that no longer run (`remove_stale_temporaries`), so that a
killed run's leftovers do not pile up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)


def umask() -> int:
    """The process's file-creation mask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _process_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(folder: Path, name: str) -> list[Path]:
    """Remove ``.<name>.<pid>.*`` files and folders in ``folder`` whose process is gone.

    Returns what was removed. Temporaries of running processes (another run writing the
    same name) are left alone.
    """
    pattern = re.compile(rf"\.{re.escape(name)}\.(\d+)\.")
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or _process_running(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    if removed:
        log.info("removed %d leftover(s) of an interrupted run: %s", len(removed), removed[0])
    return removed


def temporary_prefix(name: str) -> str:
    """The prefix of this process's temporaries for ``name`` (see the module docstring)."""
    return f".{name}.{os.getpid()}."


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it into place.

    On an exception the temporary file is removed and ``path`` is left as it was.

    Example
    -------
    >>> with atomic_path("out.csv") as tmp:   # doctest: +SKIP
    ...     tmp.write_text("ImageId,EncodedPixels\\n")
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target.parent, target.name)
    prefix = temporary_prefix(target.name)
    fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(0o666 & ~umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path``.

    An existing ``path`` is replaced only once the new folder is complete; on an exception
    the temporary folder is removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target.parent, target.name)
    old = target.with_name(f".{target.name}.old")
    if old.exists() and not target.exists():
        os.replace(old, target)  # a run killed between its two renames: the old one back
    prefix = temporary_prefix(target.name)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=target.parent))
    tmp.chmod(0o777 & ~umask())
    try:
        yield tmp
        if target.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def check_not_special(path: str | os.PathLike[str], option: str) -> None:
    """Refuse an output that exists and is neither a regular file nor a folder (a device
    such as ``/dev/full``, a pipe, a socket): an atomic write would replace the node with
    a regular file, so it is refused even with ``--force``."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise PipelineError(
            f"{path}: is not a regular file or folder (a device, pipe or socket); "
            f"{option} never replaces it, even with --force"
        )


def check_writable_file(path: str | os.PathLike[str], option: str) -> None:
    """Refuse, before any work, an output file that could not be written: ``path`` is a
    folder or a device (`check_not_special`), or its folder cannot be made or written to.
    ``option`` names the flag."""
    path = Path(path)
    check_not_special(path, option)
    if path.is_dir():
        raise PipelineError(f"{path}: is a folder; {option} takes a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=temporary_prefix(path.name), dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise PipelineError(
            f"{path}: cannot be written ({option}): {error.strerror or error}"
        ) from error
