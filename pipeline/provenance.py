"""Where a result came from: the git commit of the code that produced it."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

from pipeline import paths

log = logging.getLogger(__name__)


def _git(repo: Path, *arguments: str) -> str:
    completed = subprocess.run(
        ["git", "-C", str(repo), *arguments],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"},
    )
    return completed.stdout.strip()


def git_commit(short: bool = True, repo: str | os.PathLike[str] | None = None) -> str | None:
    """The commit checked out in the repository, with ``-dirty`` when it has changes.

    Parameters
    ----------
    short : bool
        Abbreviated hash (``git rev-parse --short``) rather than the full 40 digits.
    repo : str or Path, optional
        The repository; by default the one holding this package (``paths.SOURCE_ROOT``).

    Returns
    -------
    str or None
        e.g. ``"abb3a17"`` or ``"abb3a17-dirty"`` when tracked files differ from the commit
        (untracked files do not count, as with ``git describe --dirty``); None when git is
        not installed, the folder is not a repository, or it has no commit yet. Never raises.
    """
    folder = Path(paths.SOURCE_ROOT if repo is None else repo)
    try:
        commit = _git(folder, "rev-parse", *(["--short"] if short else []), "HEAD")
        changes = _git(folder, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError, UnicodeDecodeError) as error:
        log.debug("no git commit for %s: %s", folder, error)
        return None
    if not commit:
        return None
    return f"{commit}-dirty" if changes else commit
