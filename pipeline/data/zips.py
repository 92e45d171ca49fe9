"""Reading zips safely: a damaged zip named in one line, members that would leave the
folder they are unpacked into refused (``../``, absolute paths, drives, links)."""

from __future__ import annotations

import contextlib
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from pipeline.errors import PipelineError

# Names in zips that are never data (macOS resource forks, Finder files).
JUNK_PARTS = {"__MACOSX", ".DS_Store"}


@contextlib.contextmanager
def open_zip(path: Path, shown: str) -> Iterator[zipfile.ZipFile]:
    """Open a zip, turning a damaged or missing file into a PipelineError naming ``shown``."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise PipelineError(
            f"{shown}: not a valid zip file ({error}); it is damaged or was not downloaded "
            "completely"
        ) from None
    except OSError as error:
        raise PipelineError(f"{shown}: cannot read ({error})") from None
    with archive:
        # zipfile finds the last end-of-archive record in a file; in a truncated zip of
        # stored zips that can be an inner zip's, which would pass for the whole file.
        members = archive.infolist()
        if members and min(info.header_offset for info in members) != 0:
            raise PipelineError(
                f"{shown}: not a valid zip file (it does not start with its first member); "
                "it is damaged or was not downloaded completely"
            )
        yield archive


def safe_member_path(info: zipfile.ZipInfo, shown: str) -> PurePosixPath | None:
    """Relative path of a member inside the target folder; None for junk entries.

    Raises PipelineError for names that would leave the folder (absolute, ``..``, drives)
    and for symbolic links.
    """
    name = info.filename.replace("\\", "/")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if (
        name.startswith("/")
        or ".." in parts
        or (parts and ":" in parts[0])
        or any("\0" in part for part in parts)
    ):
        raise PipelineError(
            f"{shown}: refusing to unpack, member {info.filename!r} points outside the folder "
            "it is unpacked into"
        )
    if stat.S_ISLNK(info.external_attr >> 16):
        raise PipelineError(
            f"{shown}: refusing to unpack, member {info.filename!r} is a symbolic link "
            "(the competition archives hold none)"
        )
    if not parts or JUNK_PARTS.intersection(parts):
        return None
    return PurePosixPath(*parts)
