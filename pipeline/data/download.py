"""Stage ``download``: put the competition files into ``input/``.

Two ways in, one result:

- ``./run.sh download`` fetches ``data-science-bowl-2018.zip`` with the Kaggle API into
  ``input/`` (it needs Kaggle credentials and the competition rules accepted), then unpacks it;
- ``./run.sh download --from PATH`` takes the same files from a local copy: a folder holding
  ``stage1_train.zip``, ``stage1_test.zip``, ``stage1_train_labels.csv.zip``, ... (such as
  ``../shared/dsb2018``), the single ``data-science-bowl-2018.zip`` that the API delivers
  (a zip of those zips), or a folder holding that file.

Every competition file found is unpacked the same way:

- an image archive ``<name>.zip`` becomes the folder ``input/<name>/`` in Kaggle layout
  (``<ImageId>/images/<ImageId>.png``, ``<ImageId>/masks/*.png``);
- ``<name>.csv.zip`` becomes ``input/<name>.csv``; a plain ``<name>.csv`` is copied.

Unpacking is atomic (a temporary folder beside the target, moved into place when complete),
checks every member's CRC while extracting, and refuses members whose path would leave the
target folder. An unpacked folder holds a marker, ``.unpacked.json``, naming the zip it came
from (name, size, CRC-32, member count) and the number of files written; a later run skips
an archive whose marker matches and whose files are all there. A CSV is skipped when the file
in ``input/`` already has the size and CRC-32 of the one in the zip.

Example
-------
>>> import_local("../shared/dsb2018", "input")   # doctest: +SKIP
[PosixPath('input/stage1_sample_submission.csv'), ..., PosixPath('input/stage1_train')]
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from pipeline.data.dataset import image_path
from pipeline.data.extra import EXTERNAL_DIR_NAME, KNOWN_SETS
from pipeline.data.kaggle_api import (
    COMPETITION,
    authenticated_api,
    download_alternative,
    kaggle_errors,
    require_credentials,
)
from pipeline.data.kaggle_api import (
    kaggle_credentials_available as kaggle_credentials_available,  # used by the main job
)
from pipeline.data.zips import JUNK_PARTS, open_zip, safe_member_path
from pipeline.errors import PipelineError
from pipeline.fileio import (
    atomic_dir,
    atomic_path,
    remove_stale_temporaries,
    temporary_prefix,
    umask,
)

log = logging.getLogger(__name__)

BUNDLE_NAME = f"{COMPETITION}.zip"  # what KaggleApi.competition_download_files writes
MARKER_NAME = ".unpacked.json"
# Archives with at least this many members get a progress bar while unpacking.
PROGRESS_MIN_MEMBERS = 200
_CHUNK = 1 << 20


def download_from_kaggle(input_dir: str | Path, force: bool = False) -> list[Path]:
    """Download the competition files with the Kaggle API and unpack them.

    The ``kaggle`` package is imported only once credentials are known to exist (importing
    it without them prints help and may exit). Its own messages go to stderr.

    Parameters
    ----------
    input_dir : str or Path
        Where ``data-science-bowl-2018.zip`` is downloaded and unpacked.
    force : bool
        Download again even when the local zip is up to date, and unpack again.

    Returns
    -------
    list of Path
        What is now in ``input_dir`` (see `import_local`).

    Raises
    ------
    PipelineError
        Without credentials (the message says how to provide them, or to use ``--from``),
        when Kaggle refuses them or the competition rules were not accepted, on a network
        error, or when the downloaded zip is damaged.
    """
    input_dir = Path(input_dir)
    sources = require_credentials(download_alternative())
    log.info("downloading %s with the Kaggle API into %s", COMPETITION, input_dir)
    input_dir.mkdir(parents=True, exist_ok=True)
    _kaggle_download(input_dir, force, sources)
    bundle = input_dir / BUNDLE_NAME
    if not bundle.is_file():
        raise PipelineError(f"{bundle}: the Kaggle API reported success but wrote no such file")
    try:
        return import_local(bundle, input_dir, force=force)
    except PipelineError as error:
        raise PipelineError(
            f"{error}\n(delete {bundle} or run with --force to download it again)"
        ) from error


def _kaggle_download(input_dir: Path, force: bool, sources: list[str]) -> None:
    """Download the competition zip into ``input_dir`` with the Kaggle API.

    ``sources`` names the credentials found, for the message when Kaggle refuses them.
    Raises ``PipelineError`` with an explanation (no traceback) on any failure.
    """
    offline = (
        " Without internet access, take the files from a local copy: ./run.sh download --from DIR"
    )
    api = authenticated_api(
        sources, "download", COMPETITION, ", or use ./run.sh download --from DIR", offline
    )
    with kaggle_errors("download", COMPETITION, offline):
        api.competition_download_files(COMPETITION, path=str(input_dir), force=force, quiet=False)


# --------------------------------------------------------------------------- unpacking


@dataclass(frozen=True)
class _Fingerprint:
    """Identity of a source zip: enough to tell whether it changed since it was unpacked."""

    source: str
    size: int
    crc32: int


def _file_crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def _fingerprint(path: Path) -> _Fingerprint:
    return _Fingerprint(path.name, path.stat().st_size, _file_crc32(path))


def _archive_name(zip_name: str) -> str:
    """``stage1_train.zip`` -> ``stage1_train``."""
    return zip_name[: -len(".zip")] if zip_name.lower().endswith(".zip") else zip_name


def archive_target(input_dir: Path, zip_name: str) -> Path:
    """Where an image archive is unpacked: ``<input_dir>/<name>``, or for a known extra
    annotated set (`pipeline.data.extra.KNOWN_SETS`) ``<input_dir>/external/<name>``.

    >>> archive_target(Path("input"), "lpc.zip"), archive_target(Path("input"), "stage1_test.zip")
    (PosixPath('input/external/lpc'), PosixPath('input/stage1_test'))
    """
    name = _archive_name(zip_name)
    return input_dir / EXTERNAL_DIR_NAME / name if name in KNOWN_SETS else input_dir / name


def _is_csv_zip(name: str) -> bool:
    return name.lower().endswith(".csv.zip")


def _copy_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, destination: Path, shown: str
) -> None:
    """Extract one member to ``destination``; its CRC-32 is checked as it is read."""
    try:
        with archive.open(info) as source, open(destination, "wb") as target:
            shutil.copyfileobj(source, target, _CHUNK)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as error:
        raise PipelineError(
            f"{shown}: member {info.filename} is damaged ({error}); the zip is corrupt or "
            "incomplete, get it again"
        ) from None


def _planned_members(
    archive: zipfile.ZipFile, name: str, shown: str
) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Every member with the relative path it gets under ``input/<name>/``.

    All names are checked before anything is written. A single top folder named like the
    archive (``stage1_train/...``) is dropped so that the result is always in Kaggle layout.
    """
    planned = []
    for info in archive.infolist():
        relative = safe_member_path(info, shown)
        if relative is not None:
            planned.append((info, relative))
    tops = {relative.parts[0] for _, relative in planned}
    if tops == {name}:
        planned = [
            (info, PurePosixPath(*relative.parts[1:]))
            for info, relative in planned
            if len(relative.parts) > 1
        ]
    return planned


def _make_readable(path: Path) -> None:
    """Give a temporary file or folder the usual permissions (mkstemp/mkdtemp make them private)."""
    path.chmod((0o777 if path.is_dir() else 0o666) & ~umask())


def _count_files(folder: Path) -> int:
    """Number of files under ``folder``, the marker excepted."""
    count = 0
    for _, _, files in os.walk(folder):
        count += len(files)
    return count - int((folder / MARKER_NAME).is_file())


def count_images(images_dir: str | Path) -> int:
    """Number of images in Kaggle layout (``<id>/images/<id>.png``) in a folder."""
    root = Path(images_dir)
    if not root.is_dir():
        return 0
    return sum(1 for entry in root.iterdir() if image_path(root, entry.name).is_file())


def _read_marker(target: Path) -> dict | None:
    try:
        marker = json.loads((target / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return marker if isinstance(marker, dict) else None


def _is_unpacked(target: Path, fingerprint: _Fingerprint) -> bool:
    """Whether ``target`` holds a complete unpacking of the zip with this fingerprint."""
    marker = _read_marker(target)
    if marker is None:
        return False
    same_source = (
        marker.get("source") == fingerprint.source
        and marker.get("size") == fingerprint.size
        and marker.get("crc32") == fingerprint.crc32
    )
    return same_source and marker.get("files") == _count_files(target)


def _unpack_into(target: Path, zip_path: Path, fingerprint: _Fingerprint, shown: str) -> None:
    """Unpack an image archive into the folder ``target`` atomically, with its marker.

    Every member's path is checked before anything is written (see `_planned_members`).
    Logs what was unpacked, with a warning when it holds no image in Kaggle layout.
    """
    with open_zip(zip_path, shown) as archive:
        planned = _planned_members(archive, target.name, shown)
        with atomic_dir(target) as tmp:
            n_files = _extract_members(archive, planned, tmp, zip_path.name, shown)
            marker = _write_marker(tmp, fingerprint, len(archive.infolist()), n_files)
            _make_readable(tmp)
    log.info("%s: unpacked %s (%d files, %d images)", target, shown, n_files, marker["images"])
    if marker["images"] == 0:
        log.warning(
            "%s: no image in Kaggle layout (<ImageId>/images/<ImageId>.png) in %s",
            target,
            shown,
        )


def _extract_members(
    archive: zipfile.ZipFile,
    planned: list[tuple[zipfile.ZipInfo, PurePosixPath]],
    folder: Path,
    zip_name: str,
    shown: str,
) -> int:
    """Extract the planned members into ``folder`` (see `_planned_members`); return the
    number of files written. A large archive gets a progress bar."""
    n_files = 0
    progress = tqdm(
        planned,
        desc=f"unpacking {zip_name}",
        unit="file",
        disable=len(planned) < PROGRESS_MIN_MEMBERS,
        leave=False,
    )
    for info, relative in progress:
        destination = folder.joinpath(*relative.parts)
        if info.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        _copy_member(archive, info, destination, shown)
        n_files += 1
    return n_files


def _write_marker(folder: Path, fingerprint: _Fingerprint, n_members: int, n_files: int) -> dict:
    """Write ``folder/.unpacked.json`` (see `_is_unpacked`) and return its content."""
    marker = {
        "source": fingerprint.source,
        "size": fingerprint.size,
        "crc32": fingerprint.crc32,
        "members": n_members,
        "files": n_files,
        "images": count_images(folder),
    }
    (folder / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return marker


def unpack_archive(
    zip_path: str | Path,
    input_dir: str | Path,
    force: bool = False,
    display_name: str | None = None,
) -> Path:
    """Unpack an image archive ``<name>.zip`` into ``<input_dir>/<name>/``.

    The members go into a temporary folder beside the target, which replaces the target only
    when every member has been extracted and its CRC-32 checked, so that a damaged zip leaves
    neither a partial ``<name>/`` nor a temporary folder behind. The folder gets a marker,
    ``.unpacked.json``; when it is already there, matches the zip and all files are present,
    nothing is done.

    Parameters
    ----------
    zip_path : str or Path
        The archive, such as ``stage1_train.zip``.
    input_dir : str or Path
        The folder that receives ``<name>/``.
    force : bool
        Unpack even when the folder is up to date.
    display_name : str, optional
        How to name the zip in messages (default: its path), for a zip taken out of another.

    Returns
    -------
    Path
        ``<input_dir>/<name>``.

    Raises
    ------
    PipelineError
        When the zip is unreadable, truncated or fails a CRC check, or when a member's path
        would leave the target folder; the message names the zip.

    Examples
    --------
    >>> unpack_archive("../shared/dsb2018/stage1_test.zip", "input")   # doctest: +SKIP
    PosixPath('input/stage1_test')
    """
    zip_path = Path(zip_path)
    shown = display_name or str(zip_path)
    if not zip_path.is_file():
        raise PipelineError(f"{shown}: no such file")
    target = archive_target(Path(input_dir), zip_path.name)
    fingerprint = _fingerprint(zip_path)
    if not force and _is_unpacked(target, fingerprint):
        log.info("%s: already unpacked from %s, skipped", target, shown)
        return target
    _unpack_into(target, zip_path, fingerprint, shown)
    return target


def _same_content(path: Path, size: int, crc32: int) -> bool:
    return path.is_file() and path.stat().st_size == size and _file_crc32(path) == crc32


def unpack_csv(
    zip_path: str | Path,
    input_dir: str | Path,
    force: bool = False,
    display_name: str | None = None,
) -> Path:
    """Unpack ``<name>.csv.zip`` (a zip holding one CSV) into ``<input_dir>/<name>.csv``.

    Skipped when the CSV in ``input_dir`` already has the size and CRC-32 of the one in the
    zip. The file is written atomically and its CRC checked while it is extracted.

    Parameters
    ----------
    zip_path : str or Path
        Such as ``stage1_train_labels.csv.zip``.
    input_dir : str or Path
        The folder that receives ``<name>.csv``.
    force : bool
        Unpack even when the CSV is up to date.
    display_name : str, optional
        How to name the zip in messages (default: its path).

    Returns
    -------
    Path
        ``<input_dir>/<name>.csv``.

    Raises
    ------
    PipelineError
        When the zip is damaged or does not hold exactly one CSV file.
    """
    zip_path = Path(zip_path)
    shown = display_name or str(zip_path)
    if not zip_path.is_file():
        raise PipelineError(f"{shown}: no such file")
    target = Path(input_dir) / _archive_name(zip_path.name)
    with open_zip(zip_path, shown) as archive:
        members = [
            info
            for info in archive.infolist()
            if not info.is_dir()
            and info.filename.lower().endswith(".csv")
            and not JUNK_PARTS.intersection(info.filename.replace("\\", "/").split("/"))
        ]
        if len(members) != 1:
            found = ", ".join(info.filename for info in members) or "none"
            raise PipelineError(f"{shown}: expected one CSV file inside, found {found}")
        info = members[0]
        if not force and _same_content(target, info.file_size, info.CRC):
            log.info("%s: already unpacked from %s, skipped", target, shown)
            return target
        with atomic_path(target) as tmp:
            _copy_member(archive, info, tmp, shown)
            _make_readable(tmp)
    log.info("%s: unpacked %s", target, shown)
    return target


def copy_csv(csv_path: str | Path, input_dir: str | Path, force: bool = False) -> Path:
    """Copy a plain CSV into ``input_dir`` (atomically; skipped when identical)."""
    csv_path = Path(csv_path)
    target = Path(input_dir) / csv_path.name
    if target.exists() and target.resolve() == csv_path.resolve():
        return target
    if not force and _same_content(target, csv_path.stat().st_size, _file_crc32(csv_path)):
        log.info("%s: already there, skipped", target)
        return target
    with atomic_path(target) as tmp:
        shutil.copyfile(csv_path, tmp)
        _make_readable(tmp)
    log.info("%s: copied from %s", target, csv_path)
    return target


def _output_name(file_name: str) -> str | None:
    """Name of what a competition file becomes in ``input/``; None when it is not one."""
    lower = file_name.lower()
    if _is_csv_zip(lower):
        return file_name[: -len(".zip")]
    if lower.endswith(".zip"):
        return _archive_name(file_name)
    if lower.endswith(".csv"):
        return file_name
    return None


def _import_file(path: Path, input_dir: Path, force: bool, shown: str | None = None) -> Path:
    """Unpack or copy one competition file, by its name."""
    if _is_csv_zip(path.name):
        return unpack_csv(path, input_dir, force=force, display_name=shown)
    if path.name.lower().endswith(".zip"):
        return unpack_archive(path, input_dir, force=force, display_name=shown)
    return copy_csv(path, input_dir, force=force)


def _is_bundle(path: Path) -> bool:
    """Whether a zip holds competition files (zips, CSVs) rather than images."""
    with open_zip(path, str(path)) as archive:
        names = [info.filename.lower() for info in archive.infolist() if not info.is_dir()]
    return any(name.endswith((".zip", ".csv")) for name in names) and not any(
        name.endswith(".png") for name in names
    )


def _import_bundle(bundle: Path, input_dir: Path, force: bool, already: set[str]) -> list[Path]:
    """Unpack the competition files inside ``bundle`` (``data-science-bowl-2018.zip``).

    Members whose result is in ``already`` (taken from loose files) are left out. An image
    archive that is already unpacked is recognised from the bundle's directory alone; the
    others are extracted to a temporary folder in ``input_dir`` and unpacked from there.
    """
    written: list[Path] = []
    with open_zip(bundle, str(bundle)) as archive:
        members = []
        for info in archive.infolist():
            relative = safe_member_path(info, str(bundle))
            if relative is None or info.is_dir():
                continue
            output = _output_name(relative.name)
            if output is None:
                log.debug("%s: ignoring %s", bundle, info.filename)
            elif output in already:
                log.info("%s: %s taken from the loose file instead", bundle, relative.name)
            else:
                already.add(output)
                members.append((info, relative.name))
        if not members:
            raise PipelineError(f"{bundle}: holds no competition files (.zip or .csv)")
        for info, file_name in members:
            shown = f"{bundle}:{info.filename}"
            is_image_archive = file_name.lower().endswith(".zip") and not _is_csv_zip(file_name)
            target = (
                archive_target(input_dir, file_name)
                if is_image_archive
                else input_dir / _output_name(file_name)
            )
            fingerprint = _Fingerprint(file_name, info.file_size, info.CRC)
            if is_image_archive and not force and _is_unpacked(target, fingerprint):
                log.info("%s: already unpacked from %s, skipped", target, shown)
                written.append(target)
                continue
            remove_stale_temporaries(input_dir, "bundle")
            scratch_prefix = temporary_prefix("bundle")
            with tempfile.TemporaryDirectory(prefix=scratch_prefix, dir=input_dir) as scratch:
                inner = Path(scratch) / file_name
                _copy_member(archive, info, inner, str(bundle))
                written.append(_import_file(inner, input_dir, force, shown))
    return written


def import_local(source: str | Path, input_dir: str | Path, force: bool = False) -> list[Path]:
    """Take the competition files from a local folder or zip and unpack them into ``input_dir``.

    Parameters
    ----------
    source : str or Path
        One of: a folder holding competition files (``<name>.zip`` image archives,
        ``<name>.csv.zip``, ``<name>.csv``) and/or ``data-science-bowl-2018.zip``; that
        bundle itself (a zip of competition files, whatever its name); or a single competition
        file. Loose files in a folder take precedence over the same files inside a bundle.
    input_dir : str or Path
        The folder that receives ``<name>/`` folders and ``<name>.csv`` files.
    force : bool
        Unpack again even what is up to date.

    Returns
    -------
    list of Path
        The folders and CSV files in ``input_dir`` that came from ``source``, sorted.

    Raises
    ------
    PipelineError
        When ``source`` does not exist or holds no competition file, or a zip is damaged
        (see `unpack_archive`).
    """
    source = Path(source)
    input_dir = Path(input_dir)
    if not source.exists():
        raise PipelineError(f"{source}: no such file or folder to take the competition files from")
    input_dir.mkdir(parents=True, exist_ok=True)
    if source.is_file():
        return sorted(_import_source_file(source, input_dir, force))
    return sorted(set(_import_folder(source, input_dir, force)))


def _looks_like_bundle(path: Path) -> bool:
    """Whether a file is ``data-science-bowl-2018.zip``, or a zip of competition files."""
    return path.name == BUNDLE_NAME or (
        path.name.lower().endswith(".zip") and not _is_csv_zip(path.name) and _is_bundle(path)
    )


def _import_source_file(source: Path, input_dir: Path, force: bool) -> list[Path]:
    """`import_local` of a single file: a bundle or one competition file."""
    if _looks_like_bundle(source):
        return _import_bundle(source, input_dir, force, set())
    if _output_name(source.name) is not None:
        return [_import_file(source, input_dir, force)]
    raise PipelineError(f"{source}: not a competition file (expected a .zip, .csv.zip or .csv)")


def _import_folder(source: Path, input_dir: Path, force: bool) -> list[Path]:
    """`import_local` of a folder: its loose competition files, then its bundles."""
    loose: list[Path] = []
    bundles: list[Path] = []
    for path in sorted(source.iterdir()):
        if not path.is_file() or path.name.startswith(".") or _output_name(path.name) is None:
            continue
        if _looks_like_bundle(path):
            bundles.append(path)
        else:
            loose.append(path)
    if not loose and not bundles:
        raise PipelineError(
            f"{source}: no competition files found (expected stage1_train.zip, "
            f"stage1_test.zip, *.csv.zip ... or {BUNDLE_NAME})"
        )
    taken = {_output_name(path.name) for path in loose}
    written = [_import_file(path, input_dir, force) for path in loose]
    for bundle in bundles:
        written += _import_bundle(bundle, input_dir, force, taken)
    return written


# --------------------------------------------------------------------------- summary


def _csv_summary(path: Path) -> str:
    try:
        with open(path, newline="", encoding="utf-8") as stream:
            reader = csv.reader(stream)
            header = next(reader, [])
            ids = [row[0] for row in reader if row]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        return f"unreadable ({error})"
    if header[:1] != ["ImageId"]:
        return f"{len(ids)} rows"
    return f"{len(ids)} rows, {len(set(ids))} images"


def describe_input(input_dir: str | Path) -> list[str]:
    """One line per image folder and CSV in ``input_dir``, with its image count.

    Examples
    --------
    >>> describe_input("input")   # doctest: +SKIP
    ['stage1_test/: 65 images', 'stage1_train/: 596 images with masks', ...]
    """
    root = Path(input_dir)
    lines = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if path.name.startswith("."):
            continue
        if path.is_dir() and path.name == EXTERNAL_DIR_NAME:
            lines += [
                f"{EXTERNAL_DIR_NAME}/{line}"
                for line in describe_input(path)
                if not line.startswith(f"{EXTERNAL_DIR_NAME}/")
            ]
        elif path.is_dir() and (path / "synthetic_dataset.json").is_file():
            lines.append(f"{path.name}/: the synthetic demo set (./run.sh --demo)")
        elif path.is_dir():
            n_images = count_images(path)
            with_masks = n_images and any(
                (entry / "masks").is_dir() for entry in path.iterdir() if entry.is_dir()
            )
            lines.append(f"{path.name}/: {n_images} images" + (" with masks" if with_masks else ""))
        elif path.suffix.lower() == ".csv":
            lines.append(f"{path.name}: {_csv_summary(path)}")
    return lines


# --------------------------------------------------------------------------- stage
