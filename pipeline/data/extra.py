"""Extra annotated training sets: other kinds of images, with their nucleus labels.

``./run.sh train --extra SET`` adds them to the training side of a split (validation that
chooses stays on ``stage1_train``; each set keeps a held-out share of its own, scored
beside it). A set is any of:

- a known set's name (`KNOWN_SETS`: ``cpm15``, ``monuseg``, ``lpc``), read from
  ``input/external/<name>/`` where ``./run.sh download --from DIR`` unpacks its zip;
- a folder in Kaggle layout: ``<id>/images/<id>.png`` and ``<id>/masks/*.png``;
- a plain folder of images with a label image beside each, Cellpose's convention:
  ``name.tif`` + ``name_masks.tif`` (any of the image endings, 0 for background and
  ``1..n`` for the nuclei; a 0/non-0 mask is split into its connected pieces);
- a folder holding ``images/`` and ``labels/`` with one label image per image, same stem;
- a zip of any of these.

Every sample keeps its source name (the set's name), and tiles of one image (ids ending in
``_tileN``) share a group (`group_of`), so that they always fall on one side of a split.
A set is recorded with its file count and a SHA-256 checksum of its files (`ExtraSet.record`).

Example
-------
>>> extra = load_extra_set("lpc", input_dir="input")            # doctest: +SKIP
>>> extra.name, len(extra.samples), extra.samples[0].source     # doctest: +SKIP
('lpc', 726, 'lpc')
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np
from skimage.measure import label as connected
from tqdm import tqdm

from pipeline import paths
from pipeline.data.dataset import (
    Sample,
    image_id_problem,
    image_kind,
    list_image_ids,
    load_samples,
    paint_mask,
)
from pipeline.data.images import IMAGE_SUFFIXES, read_image, read_pixels
from pipeline.data.zips import open_zip, safe_member_path
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

#: The folder of ``input/`` that known sets are unpacked into (``input/external/<name>``).
EXTERNAL_DIR_NAME = "external"
#: The suffix of a label image beside its image in a plain folder (Cellpose's convention).
MASKS_SUFFIX = "_masks"
UNKNOWN_LICENCE = "unknown licence (a user's own data: check its terms before sharing a model)"

_TILE = re.compile(r"_tile\d+$")


@dataclass(frozen=True)
class KnownSet:
    """A published annotated set the project knows: where it comes from and its terms."""

    name: str
    title: str
    kind: str
    source: str
    citation: str
    licence: str


#: The annotated sets in ``../shared/external`` (see its README for the conversion).
KNOWN_SETS: dict[str, KnownSet] = {
    item.name: item
    for item in (
        KnownSet(
            "cpm15",
            "MICCAI 2015 CPM nucleus segmentation training set",
            "H&E tissue, brightfield, 20x and 40x",
            "GitHub pengyzhang/cell_seg_matlab, data/MICCAI_competition_dataset/ at commit "
            "9a3cf3bed6841c12b1ba2c6129a1b60763e71076",
            "Vu et al., Methods for segmentation and classification of digital microscopy "
            "tissue images, Frontiers in Bioengineering and Biotechnology 7:53 (2019)",
            "none stated (the source repository has no licence file and its READMEs say "
            "nothing about terms of use)",
        ),
        KnownSet(
            "monuseg",
            "MoNuSeg 2018 (13 training and all 14 test images)",
            "H&E tissue, brightfield, 40x, 7 organs",
            "GitHub ykrmm/monuseg at 93a696d5b608b963ff7083a059c93d5addbd985a",
            "N. Kumar et al., A Dataset and a Technique for Generalized Nuclear Segmentation "
            "for Computational Pathology, IEEE TMI 36(7):1550-1560, 2017; N. Kumar et al., A "
            "Multi-organ Nucleus Segmentation Challenge, IEEE TMI 2019",
            "CC BY-NC-SA 4.0 (non-commercial; anything derived, a model trained on it "
            "included, is shared alike)",
        ),
        KnownSet(
            "lpc",
            "Hand-segmented fluorescence nuclei, U2OS and NIH3T3 (tiles)",
            "fluorescence (Hoechst), U2OS crowded and NIH3T3 large dim nuclei",
            "GitHub luispedro/Coelho2009_ISBI_NuclearSegmentation at "
            "9629f3a8829982726327802af55ab6ae7a2b5316",
            "L. P. Coelho, A. Shariff, R. F. Murphy, Nuclear segmentation in microscope cell "
            "images: A hand-segmented dataset and comparison of algorithms, ISBI 2009, pp. "
            "518-521, doi:10.1109/ISBI.2009.5193098",
            "none stated (the source repository has no licence file for its data)",
        ),
    )
}


@dataclass
class ExtraSet:
    """One extra annotated set, read: its samples (``source`` set to ``name``) and what
    identifies its files."""

    name: str
    entry: str
    location: Path
    layout: str
    files: int
    sha256: str
    samples: list[Sample] = field(repr=False)

    def record(self) -> dict:
        """What a model folder keeps of the set (``split.json``, ``DATA.md``)."""
        known = KNOWN_SETS.get(self.name)
        return {
            "name": self.name,
            "entry": self.entry,
            "location": str(self.location),
            "layout": self.layout,
            "files": self.files,
            "sha256": self.sha256,
            "samples": len(self.samples),
            "nuclei": int(sum(int(s.labels.max()) for s in self.samples)),
            "licence": known.licence if known else UNKNOWN_LICENCE,
        }


def group_of(image_id: str) -> str:
    """The image a sample comes from: its id without a ``_tileN`` ending.

    >>> group_of("lpc_gnf_dna-3_tile4"), group_of("monuseg_TCGA-21")
    ('lpc_gnf_dna-3', 'monuseg_TCGA-21')
    """
    return _TILE.sub("", image_id)


def resolve_extra(entry: str, input_dir: Path) -> Path:
    """The folder or zip an ``--extra`` entry names: a known set's name is
    ``<input_dir>/external/<name>``, anything else a path."""
    if entry in KNOWN_SETS and not Path(entry).exists():
        location = Path(input_dir) / EXTERNAL_DIR_NAME / entry
        if not location.is_dir():
            raise PipelineError(
                f"--extra {entry}: {location} not found (./run.sh download --from DIR, DIR "
                f"holding {entry}.zip, unpacks it there; or give the folder or zip's path)"
            )
        return location
    location = Path(entry)
    if not location.exists():
        raise PipelineError(f"--extra {entry}: no such folder or zip")
    return location


def set_name(location: Path) -> str:
    """A set's source name: its folder's name, or the zip's name without ``.zip``."""
    name = location.name
    return name[: -len(".zip")] if name.lower().endswith(".zip") else name


# --------------------------------------------------------------------------- file access


class _NamedBytes(io.BytesIO):
    """A file's bytes that name the file in messages (readers write ``f"{source}: ..."``)."""

    def __init__(self, data: bytes, shown: str):
        super().__init__(data)
        self.shown = shown

    def __str__(self) -> str:
        return self.shown


#: relative path -> a function returning the file's bytes
Members = dict[PurePosixPath, Callable[[], bytes]]


def _folder_members(root: Path) -> Members:
    members: Members = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        members[PurePosixPath(*relative.parts)] = path.read_bytes
    return members


def _zip_members(path: Path, archive: zipfile.ZipFile) -> Members:
    members: Members = {}
    for info in archive.infolist():
        relative = safe_member_path(info, str(path))
        if relative is None or info.is_dir() or relative.name.startswith("."):
            continue
        members[relative] = lambda info=info: archive.read(info)
    return members


def _strip_top(members: Members) -> Members:
    """Without a single top folder that holds everything (``cpm15/...`` in ``cpm15.zip``)."""
    tops = {relative.parts[0] for relative in members}
    if len(tops) == 1 and all(len(relative.parts) > 1 for relative in members):
        top = next(iter(tops))
        if not _is_kaggle_entry(members, top):
            return {PurePosixPath(*r.parts[1:]): read for r, read in members.items()}
    return members


def _is_kaggle_entry(members: Members, name: str) -> bool:
    return any(
        r.parts[:2] == (name, "images") and len(r.parts) == 3 and r.stem == name for r in members
    )


def _is_image(relative: PurePosixPath) -> bool:
    return relative.suffix.lower() in IMAGE_SUFFIXES


# --------------------------------------------------------------------------- layouts

#: image id -> (image file, [mask files] or one label image file, "masks" or "labels")
_Plan = dict[str, tuple[PurePosixPath, list[PurePosixPath], str]]


def _kaggle_plan(members: Members, shown: str) -> _Plan:
    plan: _Plan = {}
    for relative in members:
        if len(relative.parts) == 3 and relative.parts[1] == "images" and _is_image(relative):
            image_id = relative.parts[0]
            if relative.stem == image_id:
                plan[image_id] = (relative, [], "masks")
    for relative in members:
        if len(relative.parts) == 3 and relative.parts[1] == "masks" and _is_image(relative):
            if relative.parts[0] in plan:
                plan[relative.parts[0]][1].append(relative)
    for image_id, (image, masks, _) in plan.items():
        if not masks:
            raise PipelineError(
                f"{shown}: {image}: an image without labels (no {image_id}/masks/*.png)"
            )
        masks.sort()
    return plan


def _paired_plan(images: dict[str, PurePosixPath], labels: dict[str, PurePosixPath], shown: str):
    plan: _Plan = {}
    for stem, image in sorted(images.items()):
        if stem not in labels:
            raise PipelineError(f"{shown}: {image}: an image without labels")
        plan[stem] = (image, [labels[stem]], "labels")
    for stem, label in sorted(labels.items()):
        if stem not in images:
            raise PipelineError(f"{shown}: {label}: labels without an image")
    return plan


def _folders_plan(members: Members, shown: str) -> _Plan:
    images = {r.stem: r for r in members if r.parts[0] == "images" and _is_image(r)}
    labels = {r.stem: r for r in members if r.parts[0] == "labels" and _is_image(r)}
    return _paired_plan(images, labels, shown)


def _masks_plan(members: Members, shown: str) -> _Plan:
    top = [r for r in members if len(r.parts) == 1 and _is_image(r)]
    labels = {r.stem[: -len(MASKS_SUFFIX)]: r for r in top if r.stem.endswith(MASKS_SUFFIX)}
    images = {r.stem: r for r in top if not r.stem.endswith(MASKS_SUFFIX)}
    return _paired_plan(images, labels, shown)


def _plan(members: Members, shown: str) -> tuple[Members, str, _Plan]:
    """The layout of a set's files and, per sample, which files hold its image and labels
    (with the members renamed without a single top folder)."""
    members = _strip_top(members)
    if any(_is_kaggle_entry(members, r.parts[0]) for r in members):
        return members, "kaggle", _kaggle_plan(members, shown)
    tops = {r.parts[0] for r in members if len(r.parts) > 1}
    if {"images", "labels"} <= tops:
        return members, "images+labels", _folders_plan(members, shown)
    plan = _masks_plan(members, shown)
    if not plan:
        raise PipelineError(
            f"{shown}: no annotated images found: expected Kaggle layout "
            f"(<id>/images/<id>.png, <id>/masks/*.png), images with label images beside "
            f"them (name.tif + name{MASKS_SUFFIX}.tif), or images/ + labels/"
        )
    return members, "images+masks", plan


# --------------------------------------------------------------------------- reading


def _label_image(data: _NamedBytes, shape: tuple[int, int]) -> np.ndarray:
    """Instance labels from one label image (0 background, ``1..n`` nuclei)."""
    pixels = read_pixels(data)
    if pixels.ndim == 3:
        if not (pixels == pixels[:, :, :1]).all():
            raise PipelineError(f"{data}: a label image must be grey (one label per pixel)")
        pixels = pixels[:, :, 0]
    if pixels.shape != shape:
        raise PipelineError(
            f"{data}: labels of size {pixels.shape[0]}x{pixels.shape[1]} for an image of size "
            f"{shape[0]}x{shape[1]}"
        )
    if np.issubdtype(pixels.dtype, np.floating):
        if not np.isfinite(pixels).all() or (pixels != np.round(pixels)).any():
            raise PipelineError(f"{data}: label values must be whole numbers")
    if (pixels < 0).any():
        raise PipelineError(f"{data}: label values must not be negative")
    values = np.unique(pixels)
    if values.size == 2 and values[0] == 0:  # a 0/non-0 mask: its connected pieces
        return connected(pixels > 0, connectivity=1).astype(np.int32)
    return _renumbered(pixels.astype(np.int64))


def _renumbered(labels: np.ndarray) -> np.ndarray:
    values, inverse = np.unique(labels, return_inverse=True)
    offset = 0 if values[0] == 0 else 1
    return (inverse.reshape(labels.shape) + offset).astype(np.int32)


def _read_sample(
    members: Members,
    image_id: str,
    planned: tuple[PurePosixPath, list[PurePosixPath], str],
    shown: str,
    digest,
) -> Sample:
    image_file, label_files, how = planned

    def named(relative: PurePosixPath) -> _NamedBytes:
        data = members[relative]()
        digest.update(str(relative).encode() + b"\0" + hashlib.sha256(data).digest())
        return _NamedBytes(data, f"{shown}/{relative}")

    image = read_image(named(image_file))
    shape = image.shape[:2]
    if how == "labels":
        labels = _label_image(named(label_files[0]), shape)
    else:
        labels = np.zeros(shape, dtype=np.int32)
        for label, relative in enumerate(label_files, start=1):
            paint_mask(labels, label, named(relative), image_id)
    if not labels.any():
        where = label_files[0] if how == "labels" else image_file.parent.parent / "masks"
        raise PipelineError(f"{shown}/{where}: an empty label image (no nucleus)")
    return Sample(image_id, image, labels, image_kind(image))


def load_extra_set(entry: str | Path, input_dir: Path | None = None) -> ExtraSet:
    """Read one extra annotated set (see the module docstring for what it can be).

    Raises
    ------
    PipelineError
        Naming the file: an image without labels (or labels without an image), labels of
        another size than their image, an empty label image, a zip member whose path leaves
        the zip (``../``), an unreadable file, or a folder that holds no annotated image.
    """
    location = resolve_extra(str(entry), Path(input_dir or paths.INPUT_DIR))
    name = set_name(location)
    shown = str(location)
    digest = hashlib.sha256()
    if location.is_file():
        with open_zip(location, shown) as archive:
            members = _zip_members(location, archive)
            members, layout, plan = _plan(members, shown)
            samples = _read_all(members, plan, shown, name, digest)
        layout = f"zip ({layout})"
    else:
        members = _folder_members(location)
        members, layout, plan = _plan(members, shown)
        samples = _read_all(members, plan, shown, name, digest)
    files = len(plan) + sum(len(files) for _, files, _ in plan.values())
    log.info("extra set %s: %d annotated images from %s (%s)", name, len(samples), shown, layout)
    return ExtraSet(name, str(entry), location, layout, files, digest.hexdigest(), samples)


def _read_all(members: Members, plan: _Plan, shown: str, name: str, digest) -> list[Sample]:
    samples = []
    for image_id in tqdm(sorted(plan), desc=f"loading {name}", unit="image"):
        problem = image_id_problem(image_id)
        if problem:
            raise PipelineError(f"{shown}: {problem}")
        sample = _read_sample(members, image_id, plan[image_id], shown, digest)
        samples.append(replace(sample, source=name))
    return samples


def load_labelled(location: str | Path, ids: list[str] | None = None) -> list[Sample]:
    """The labelled images of a training folder (``train --images``), in any layout an
    extra set may have: Kaggle layout is read as `pipeline.data.dataset.load_samples` reads
    it; a plain folder of ``name`` + ``name_masks`` images, ``images/`` + ``labels/`` or a
    zip as `load_extra_set` reads them, with their source left empty (the set being
    trained on). With ``ids``: only those, in that order.
    """
    location = Path(location)
    if location.is_dir():
        try:
            list_image_ids(location)
        except PipelineError:
            pass  # not Kaggle layout: read below as another layout
        else:
            return load_samples(location, with_labels=True, ids=ids)
    samples = [replace(s, source="") for s in load_extra_set(location).samples]
    if ids is None:
        return samples
    by_id = {sample.image_id: sample for sample in samples}
    missing = [image_id for image_id in ids if image_id not in by_id]
    if missing:
        raise PipelineError(f"{location}: {len(missing)} image(s) not found, such as {missing[0]}")
    return [by_id[image_id] for image_id in ids]
