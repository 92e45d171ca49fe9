"""One writer per output: a lock file beside each output while a run writes it.

Two runs that write the same file or folder (two ``predict --out``, two ``train --out``,
``tune`` of one model, two ``download --input``) would interleave their writes: a resumed
submission once held every row twice. While a run writes an output ``NAME`` it holds
``.NAME.lock`` beside it, a file with its process id, under an exclusive ``flock``. A
second run that finds the lock held refuses with one line naming the holder's process;
the lock is removed when the holder ends, and the kernel releases it when the holder is
killed, so that the next run takes a killed run's lock over without asking.

Example
-------
>>> with output_lock("submissions/sub.csv", "--out"):     # doctest: +SKIP
...     write_the_submission()
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)


def lock_path(output: str | os.PathLike[str]) -> Path:
    """The lock file of an output: ``.NAME.lock`` beside it.

    >>> lock_path("submissions/sub.csv").as_posix()
    'submissions/.sub.csv.lock'
    """
    output = Path(output)
    return output.with_name(f".{output.name}.lock")


def _holder(lock: Path) -> str:
    try:
        text = lock.read_text(encoding="utf-8").strip()
    except OSError:
        text = ""
    return f"process {text}" if text.isdigit() else "another process"


def _acquire(lock: Path, option: str, output: Path) -> int:
    """Open and lock ``lock``; return its descriptor. Retries when the file it locked was
    removed or replaced meanwhile (its holder ended between our open and our lock)."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise PipelineError(
                f"{output}: another run is writing it ({_holder(lock)}, lock {lock}); wait "
                f"for it to end, or choose another {option}"
            ) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def output_lock(output: str | os.PathLike[str], option: str) -> Iterator[Path]:
    """Hold the lock of ``output`` (a file or folder) for the ``with`` block.

    Raises ``PipelineError`` naming the holder when another running process holds it;
    ``option`` (``--out``) names the flag in that message. A lock left by a killed run
    is taken over. Yields the lock file's path.
    """
    output = Path(output)
    lock = lock_path(output)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(lock, option, output)
    try:
        if os.fstat(fd).st_size:
            log.debug("%s: taking over the lock of an ended run", lock)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield lock
    finally:
        lock.unlink(missing_ok=True)  # while still locked: no one else holds this file
        os.close(fd)


@contextlib.contextmanager
def output_locks(outputs: Iterable[tuple[str | os.PathLike[str] | None, str]]) -> Iterator[None]:
    """Hold the locks of several ``(output, option)`` pairs (None outputs are skipped)."""
    with contextlib.ExitStack() as stack:
        taken: set[Path] = set()
        for output, option in outputs:
            if output is None or Path(output).resolve() in taken:
                continue
            taken.add(Path(output).resolve())
            stack.enter_context(output_lock(output, option))
        yield
