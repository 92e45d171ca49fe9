"""Reading the competition data: image ids, images as RGB uint8, instance labels, image kinds.

Kaggle layout: ``<images_dir>/<ImageId>/images/<ImageId>.png`` and, for training data,
``<images_dir>/<ImageId>/masks/*.png`` (one binary PNG per nucleus). Instance labels are
int32 arrays: 0 is background, ``1..n`` the nuclei. `list_image_files` also finds the
images of a plain folder or a single file (for ``predict``); the files themselves are read
by `pipeline.data.images` (`read_image`, `read_image_shape`, re-exported here).

Example
-------
>>> samples = load_samples("input/stage1_train")            # doctest: +SKIP
>>> samples[0].image.shape, samples[0].labels.max(), samples[0].kind   # doctest: +SKIP
((256, 256, 3), 27, 'fluorescence')
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.data.images import IMAGE_SUFFIXES, read_image, read_image_shape
from pipeline.data.rle import RLEError, decode_flat_indices, decode_labels
from pipeline.data.rle_csv import read_rle_table
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

#: The image kinds `image_kind` tells apart.
KINDS = ("fluorescence", "brightfield", "histology")
#: A median grey level above this means a light background (brightfield or histology).
#: On stage 1 the dark backgrounds have a median grey level of at most 60, the light ones
#: of at least 130.
LIGHT_BACKGROUND_LEVEL = 100.0
#: A mean channel spread (max - min over R, G, B, per pixel) above this means a stained,
#: coloured image. On stage 1 grey images have a spread of 0, stained ones at least 11.
STAIN_SPREAD = 5.0


def image_path(images_dir: str | Path, image_id: str) -> Path:
    """Path of one image in Kaggle layout: ``<images_dir>/<id>/images/<id>.png``."""
    return Path(images_dir) / image_id / "images" / f"{image_id}.png"


def mask_paths(sample_dir: str | Path) -> list[Path]:
    """The mask PNGs of one training image, ``<sample_dir>/masks/*.png``, sorted by name.

    Raises ``PipelineError`` when the ``masks`` folder is missing.
    """
    masks_dir = Path(sample_dir) / "masks"
    if not masks_dir.is_dir():
        raise PipelineError(f"{masks_dir}: no masks folder (training images need masks/*.png)")
    return sorted(path for path in masks_dir.iterdir() if path.suffix.lower() == ".png")


def _kaggle_ids(root: Path) -> list[str]:
    """Sorted ids of the entries of ``root`` that hold ``<id>/images/<id>.png``."""
    return sorted(entry.name for entry in root.iterdir() if image_path(root, entry.name).is_file())


def list_image_ids(images_dir: str | Path) -> list[str]:
    """Sorted ids of the images in a folder in Kaggle layout.

    Raises ``PipelineError`` when the folder is missing or holds no image in that layout.
    """
    root = Path(images_dir)
    if not root.is_dir():
        raise PipelineError(f"{root}: no such folder of images")
    ids = _kaggle_ids(root)
    if not ids:
        raise PipelineError(
            f"{root}: no images in Kaggle layout (<ImageId>/images/<ImageId>.png) found"
        )
    return ids


# --------------------------------------------------------------------------- image files

#: Characters an ImageId cannot hold (they would break the submission CSV).
_FORBIDDEN_IN_ID = (",", '"', "\n", "\r")


@dataclass(frozen=True)
class ImageFile:
    """One image to predict: its ImageId and its file."""

    image_id: str
    path: Path


@dataclass(frozen=True)
class ImageFiles:
    """The images `list_image_files` found at ``location``, sorted by ImageId.

    ``layout`` is ``"kaggle"`` (``<id>/images/<id>.png``), ``"folder"`` (a plain folder of
    image files) or ``"file"`` (one image file).
    """

    location: Path
    layout: Literal["kaggle", "folder", "file"]
    files: tuple[ImageFile, ...]

    @property
    def name(self) -> str:
        """The folder's name, or the file's name without extension."""
        return self.location.stem if self.layout == "file" else self.location.name


def list_image_files(images: str | Path) -> ImageFiles:
    """The images of a Kaggle-layout folder, a plain folder of images, or one image file.

    A folder with any ``<id>/images/<id>.png`` is in Kaggle layout (loose image files beside
    it are skipped, with a warning each); otherwise its files ending in ``IMAGE_SUFFIXES`` (PNG,
    JPEG, TIFF, any case; not in sub-folders, hidden files skipped) are the images, and
    each one's ImageId is its name without extension. A file is taken whatever its ending
    (reading it tells whether it is an image).

    Raises
    ------
    PipelineError
        When the path does not exist, a folder holds no image, two files have the same name
        without extension (``a.png`` and ``a.tif``: both are named), or a name cannot be an
        ImageId (a comma, quote or line break, or spaces around it).

    Examples
    --------
    >>> found = list_image_files("my_tiffs")          # doctest: +SKIP
    >>> found.layout, found.files[0]                   # doctest: +SKIP
    ('folder', ImageFile(image_id='cells-01', path=PosixPath('my_tiffs/cells-01.tif')))
    """
    root = Path(images)
    if root.is_file():
        return ImageFiles(root, "file", (_image_file(root),))
    if not root.is_dir():
        raise PipelineError(f"{root}: no such file or folder of images")
    loose = _loose_image_paths(root)
    ids = _kaggle_ids(root)
    if ids:
        for path in loose:
            log.warning("%s: skipped: not in Kaggle layout, beside the image folders", path)
        return ImageFiles(root, "kaggle", tuple(ImageFile(i, image_path(root, i)) for i in ids))
    if not loose:
        raise PipelineError(
            f"{root}: no images found: neither Kaggle layout (<ImageId>/images/<ImageId>.png) "
            f"nor image files ({', '.join(IMAGE_SUFFIXES)})"
        )
    return ImageFiles(root, "folder", _unique_image_files(root, loose))


def _loose_image_paths(root: Path) -> list[Path]:
    """The image files directly in ``root`` (by ending, any case), hidden ones left out;
    an image name that is not a readable file (a link to nowhere, a link loop) is
    skipped with a warning."""
    named = sorted(
        entry
        for entry in root.iterdir()
        if entry.suffix.lower() in IMAGE_SUFFIXES and not entry.name.startswith(".")
    )
    for entry in named:
        if not entry.is_file() and entry.is_symlink():
            log.warning("%s: skipped: a link to nowhere or a link loop", entry)
    return [entry for entry in named if entry.is_file()]


def image_id_problem(image_id: object) -> str | None:
    """What makes ``image_id`` unfit for a submission's ImageId column, or None.

    >>> image_id_problem("plate 1"), image_id_problem("a,b")
    (None, "ImageId 'a,b' holds a comma, quote or line break")
    """
    if not isinstance(image_id, str) or not image_id or image_id != image_id.strip():
        return f"not a valid ImageId: {image_id!r}"
    if any(char in image_id for char in _FORBIDDEN_IN_ID):
        return f"ImageId {image_id!r} holds a comma, quote or line break"
    return None


def _image_file(path: Path) -> ImageFile:
    """An image file with its ImageId (its name without extension); raise on a bad name."""
    image_id = path.stem
    if image_id_problem(image_id):
        raise PipelineError(
            f"{path}: {image_id!r} cannot be an ImageId (empty, spaces around it, or a comma, "
            "quote or line break in it): rename the file"
        )
    return ImageFile(image_id, path)


def _unique_image_files(root: Path, paths: list[Path]) -> tuple[ImageFile, ...]:
    """ImageFiles sorted by id; raise naming both files when two share an ImageId."""
    by_id: dict[str, ImageFile] = {}
    for path in paths:
        image_file = _image_file(path)
        earlier = by_id.get(image_file.image_id)
        if earlier is not None:
            raise PipelineError(
                f"{root}: {earlier.path.name} and {path.name} have the same name without "
                f"extension, so the same ImageId {image_file.image_id!r}: rename one of them"
            )
        by_id[image_file.image_id] = image_file
    return tuple(by_id[image_id] for image_id in sorted(by_id))


def _read_mask(path: Path) -> tuple[tuple[int, int], tuple[int, int], np.ndarray]:
    """Read one mask PNG compactly.

    Returns the image's (height, width), the (row, column) of the top-left corner of the
    bounding box of its foreground, and the boolean foreground inside that box. Any
    non-zero value in any colour channel is foreground; an alpha channel is ignored.
    """
    try:
        with Image.open(path) as image:
            image.load()
            width, height = image.size
            if image.mode in ("1", "L", "I", "I;16"):
                grey = image
            elif image.mode == "LA":
                grey = image.getchannel("L")
            else:
                rgb = np.asarray(image.convert("RGB"))
                grey = Image.fromarray((rgb.max(axis=2) > 0).astype(np.uint8))
            box = grey.getbbox()
            if box is None:
                return (height, width), (0, 0), np.zeros((0, 0), dtype=bool)
            foreground = np.asarray(grey.crop(box)) != 0
    except (OSError, SyntaxError, ValueError) as error:
        raise PipelineError(f"{path}: not a readable mask image ({error})") from error
    return (height, width), (box[1], box[0]), foreground


def read_mask_labels(sample_dir: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Instance labels of one training image from its mask PNGs.

    The mask files are taken in sorted name order; the k-th one becomes label k (so a label
    number always names the same file; an empty mask leaves its number unused, with a
    warning). A pixel set in several masks stays with the first of them in that order, and
    a warning names the image and the number of such pixels.

    Parameters
    ----------
    sample_dir : str or Path
        ``<images_dir>/<ImageId>``, holding ``masks/*.png``.
    shape : tuple of int, optional
        (height, width) of the image; read from ``images/<ImageId>.png`` when not given.

    Returns
    -------
    np.ndarray
        int32 array of ``shape``: 0 for background, ``1..n`` for the n mask files.

    Raises
    ------
    PipelineError
        When the masks folder is missing, a mask is unreadable, or a mask's shape differs
        from the image's; the message names the file.

    Examples
    --------
    >>> read_mask_labels("input/stage1_train/00071198d059ba7f").max()   # doctest: +SKIP
    27
    """
    sample_dir = Path(sample_dir)
    image_id = sample_dir.name
    if shape is None:
        shape = read_image_shape(image_path(sample_dir.parent, image_id))
    height, width = shape
    paths = mask_paths(sample_dir)
    labels = np.zeros((height, width), dtype=np.int32)
    if not paths:
        log.warning("%s: the masks folder holds no mask PNG", sample_dir)
        return labels
    overlapping = sum(
        paint_mask(labels, label, path, image_id) for label, path in enumerate(paths, start=1)
    )
    if overlapping:
        log.warning(
            "%s: %d pixel(s) belong to more than one mask; each stays with the first mask "
            "in file-name order",
            image_id,
            overlapping,
        )
    return labels


def paint_mask(labels: np.ndarray, label: int, path: Path, image_id: str) -> int:
    """Give ``label`` to the pixels of one mask PNG that no earlier mask took.

    Returns the number of the mask's pixels that an earlier mask took (they keep its label).
    An empty mask paints nothing, with a warning. Raises ``PipelineError`` when the mask's
    shape is not the image's.
    """
    mask_shape, (top, left), foreground = _read_mask(path)
    if mask_shape != labels.shape:
        raise PipelineError(
            f"{path}: mask is {mask_shape[0]}x{mask_shape[1]} but its image {image_id} "
            f"is {labels.shape[0]}x{labels.shape[1]}"
        )
    if not foreground.size:
        log.warning("%s: empty mask (no foreground pixel); label %d unused", path, label)
        return 0
    window = labels[top : top + foreground.shape[0], left : left + foreground.shape[1]]
    free = window == 0
    window[foreground & free] = label
    return int(np.count_nonzero(foreground & ~free))


# --------------------------------------------------------------------------- RLE CSV files


def labels_from_rle_csv(
    csv_path: str | Path,
    shapes: Mapping[str, tuple[int, int]] | None = None,
) -> dict[str, np.ndarray]:
    """Instance labels per image from a run-length-encoded CSV.

    Reads ``stage1_train_labels.csv`` (``ImageId,EncodedPixels``: the image shapes must come
    from ``shapes``) or ``stage1_solution.csv`` (with ``Height`` and ``Width`` columns; a
    ``Usage`` column is ignored), or a submission, with `pipeline.data.rle_csv`. The rows of
    an image become labels ``1..n`` in file order (rows with an empty encoding add no
    instance). A pixel encoded in several rows stays with the first of them, with a warning
    naming the image.

    Parameters
    ----------
    csv_path : str or Path
        The CSV file.
    shapes : mapping of str to (height, width), optional
        Image shapes by ImageId; needed without Height/Width columns. When both are present
        they must agree.

    Returns
    -------
    dict of str to np.ndarray
        int32 labels for every ImageId in the file, in the order they first appear.

    Raises
    ------
    PipelineError
        When the file is missing, lacks columns or has a malformed row, an image's shape is
        unknown or inconsistent, or an encoding is invalid; the message names the file and
        the line.

    Examples
    --------
    >>> labels = labels_from_rle_csv("input/stage1_solution.csv")   # doctest: +SKIP
    >>> len(labels)                                                  # doctest: +SKIP
    65
    """
    csv_path = Path(csv_path)
    rows, csv_shapes = _rle_rows_by_image(csv_path)
    labels: dict[str, np.ndarray] = {}
    for image_id, image_rows in rows.items():
        shape = _image_shape(csv_path, image_id, image_rows, shapes, csv_shapes.get(image_id))
        labels[image_id] = _decode_image_labels(csv_path, image_id, image_rows, shape)
    return labels


def _read_rle_csv(csv_path: Path) -> tuple[list[tuple[int, list[str]]], dict[str, int]]:
    """The data rows of a run-length CSV and the index of each column; raise on any problem."""
    if not csv_path.exists():
        raise PipelineError(f"{csv_path}: no such CSV file")
    table = read_rle_table(csv_path)
    if table.lacking:
        raise PipelineError(
            f"{csv_path}: line 1: missing column(s) {', '.join(table.lacking)} "
            f"(found: {', '.join(table.header or []) or 'nothing'})"
        )
    columns = {name: index for index, name in enumerate(table.header or [])}
    if ("Height" in columns) != ("Width" in columns):
        raise PipelineError(f"{csv_path}: line 1: has only one of the Height and Width columns")
    if table.problems:
        first = table.problems[0]
        where = "" if first.row is None else f"line {first.row}: "
        raise PipelineError(f"{csv_path}: {where}{first.message}")
    return table.rows, columns


def _rle_rows_by_image(
    csv_path: Path,
) -> tuple[dict[str, list[tuple[int, str]]], dict[str, tuple[int, int]]]:
    """Each image's non-empty encodings as ``(line, encoding)``, and the Height/Width sizes.

    Every ImageId of the file is a key of the first dict, in file order, also one whose only
    row has an empty encoding; the second is empty without Height/Width columns.
    """
    rows, columns = _read_rle_csv(csv_path)
    by_image: dict[str, list[tuple[int, str]]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for line, fields in rows:
        image_id = fields[columns["ImageId"]].strip()
        if not image_id:
            raise PipelineError(f"{csv_path}: line {line}: empty ImageId")
        image_rows = by_image.setdefault(image_id, [])  # also images without instance
        rle = fields[columns["EncodedPixels"]].strip()
        if rle:
            image_rows.append((line, rle))
        if "Height" in columns:
            height, width = fields[columns["Height"]], fields[columns["Width"]]
            _record_size(csv_path, line, image_id, (height, width), sizes)
    return by_image, sizes


def _record_size(
    csv_path: Path,
    line: int,
    image_id: str,
    size_text: tuple[str, str],
    sizes: dict[str, tuple[int, int]],
) -> None:
    """Add an image's Height and Width to ``sizes``; raise when not integers or inconsistent."""
    try:
        size = (int(size_text[0]), int(size_text[1]))
    except ValueError:
        raise PipelineError(
            f"{csv_path}: line {line}: Height/Width are not integers "
            f"({size_text[0]!r}, {size_text[1]!r})"
        ) from None
    previous = sizes.setdefault(image_id, size)
    if previous != size:
        raise PipelineError(
            f"{csv_path}: line {line}: ImageId {image_id} is {size[0]}x{size[1]} "
            f"here but {previous[0]}x{previous[1]} on an earlier line"
        )


def _image_shape(
    csv_path: Path,
    image_id: str,
    image_rows: list[tuple[int, str]],
    shapes: Mapping[str, tuple[int, int]] | None,
    in_file: tuple[int, int] | None,
) -> tuple[int, int]:
    """An image's shape: from ``shapes``, else from the file; they must agree when both are."""
    given = None if shapes is None else shapes.get(image_id)
    if given is not None and in_file is not None and tuple(given) != in_file:
        raise PipelineError(
            f"{csv_path}: ImageId {image_id} is {in_file[0]}x{in_file[1]} in the file but "
            f"{given[0]}x{given[1]} in the image shapes given"
        )
    shape = given if given is not None else in_file
    if shape is None:
        first_line = image_rows[0][0] if image_rows else "?"
        raise PipelineError(
            f"{csv_path}: line {first_line}: no Height/Width columns and no image shape "
            f"given for ImageId {image_id}"
        )
    return int(shape[0]), int(shape[1])


def _decode_image_labels(
    csv_path: Path, image_id: str, rows: list[tuple[int, str]], shape: tuple[int, int]
) -> np.ndarray:
    """Decode one image's encodings into labels ``1..n`` in row order.

    A pixel in several encodings stays with the first of them, with a warning; an invalid
    encoding raises ``PipelineError`` naming its line.
    """
    try:
        return decode_labels([rle for _, rle in rows], shape)
    except RLEError:
        # Find the offending line, or resolve overlapping encodings with a warning.
        return _decode_resolving_overlaps(csv_path, image_id, rows, shape)


def _decode_resolving_overlaps(
    csv_path: Path,
    image_id: str,
    rows: list[tuple[int, str]],
    shape: tuple[int, int],
) -> np.ndarray:
    """Decode one image's encodings row by row; the first encoding keeps a shared pixel."""
    flat = np.zeros(shape[0] * shape[1], dtype=np.int32)
    overlapping = 0
    for label, (line, rle) in enumerate(rows, start=1):
        try:
            indices = decode_flat_indices(rle, shape)
        except RLEError as error:
            raise PipelineError(
                f"{csv_path}: line {line}: bad EncodedPixels for ImageId {image_id} "
                f"({shape[0]}x{shape[1]}): {error}"
            ) from None
        taken = flat[indices] != 0
        overlapping += int(np.count_nonzero(taken))
        flat[indices[~taken]] = label
    if overlapping:
        log.warning(
            "%s: %s: %d pixel(s) belong to more than one encoding; each stays with the first "
            "encoding in file order",
            csv_path,
            image_id,
            overlapping,
        )
    return np.ascontiguousarray(flat.reshape(shape, order="F"))


# --------------------------------------------------------------------------- image kinds


def has_light_background(image: np.ndarray) -> bool:
    """Whether the image's median grey level is above ``LIGHT_BACKGROUND_LEVEL``.

    Brightfield and histology images have a light background and dark nuclei;
    fluorescence images the opposite.

    >>> has_light_background(np.full((4, 4, 3), 220, dtype=np.uint8))
    True
    """
    sample = np.asarray(image)[::2, ::2]
    grey = sample.mean(axis=2) if sample.ndim == 3 else sample
    return float(np.median(grey)) > LIGHT_BACKGROUND_LEVEL


def image_kind(image: np.ndarray) -> str:
    """Tell a fluorescence, brightfield or histology image apart, from its colours.

    The heuristic, checked on stage-1 (see the thresholds' comments):

    - a median grey level (mean of R, G, B) of at most ``LIGHT_BACKGROUND_LEVEL`` (100)
      means a dark background: ``"fluorescence"``, grey or coloured;
    - a light background with a mean channel spread (per pixel, max minus min of R, G, B)
      above ``STAIN_SPREAD`` (5) is a stained slide: ``"histology"``;
    - a light background in grey (or nearly) is ``"brightfield"``.

    Parameters
    ----------
    image : np.ndarray
        RGB uint8 image (H, W, 3), as `read_image` returns; a 2-D grey image is accepted.

    Returns
    -------
    str
        One of ``KINDS``.

    Examples
    --------
    >>> image_kind(np.zeros((4, 4, 3), dtype=np.uint8))
    'fluorescence'
    >>> image_kind(np.full((4, 4, 3), 220, dtype=np.uint8))
    'brightfield'
    >>> image_kind(np.tile(np.array([200, 150, 220], dtype=np.uint8), (4, 4, 1)))
    'histology'
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3) or image.size == 0:
        raise ValueError(f"image must be (H, W, 3) RGB or (H, W) grey, got shape {image.shape}")
    # Every other pixel is plenty for these statistics, and four times faster.
    sample = image[::2, ::2].astype(np.int16)
    if not has_light_background(image):
        return "fluorescence"
    spread = float((sample.max(axis=2) - sample.min(axis=2)).mean())
    return "histology" if spread > STAIN_SPREAD else "brightfield"


# --------------------------------------------------------------------------- samples


@dataclass
class Sample:
    """One image with what is known about it.

    Attributes
    ----------
    image_id : str
        The Kaggle ImageId (the folder name).
    image : np.ndarray
        RGB uint8 (H, W, 3).
    labels : np.ndarray or None
        int32 instance labels (H, W) from the masks, or None when not loaded.
    kind : str
        One of ``KINDS`` (see `image_kind`).
    source : str
        The annotated set it comes from: "" for the images being trained on (``--images``),
        an extra set's name for ``train --extra`` (`pipeline.data.extra`).
    """

    image_id: str
    image: np.ndarray
    labels: np.ndarray | None
    kind: str
    source: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the image."""
        return int(self.image.shape[0]), int(self.image.shape[1])


def _select_ids(images_dir: Path, ids: Collection[str] | None) -> list[str]:
    available = list_image_ids(images_dir)
    if ids is None:
        return available
    known = set(available)
    missing = [image_id for image_id in ids if image_id not in known]
    if missing:
        raise PipelineError(
            f"{images_dir}: {len(missing)} requested image(s) not found, such as {missing[0]} "
            f"(expected {image_path(images_dir, missing[0])})"
        )
    return list(ids)


def _load_sample(images_dir: Path, image_id: str, with_labels: bool) -> Sample:
    image = read_image(image_path(images_dir, image_id))
    labels = read_mask_labels(images_dir / image_id, shape=image.shape[:2]) if with_labels else None
    return Sample(image_id, image, labels, image_kind(image))


def load_samples(
    images_dir: str | Path,
    with_labels: bool = True,
    ids: Collection[str] | None = None,
) -> list[Sample]:
    """Load images (and their mask labels) into memory, with a progress bar.

    Parameters
    ----------
    images_dir : str or Path
        A folder in Kaggle layout, such as ``input/stage1_train``.
    with_labels : bool
        Also build the instance labels from ``masks/*.png`` (see `read_mask_labels`).
    ids : collection of str, optional
        Only these images, in this order; default: all, sorted by id.

    Returns
    -------
    list of Sample

    Raises
    ------
    PipelineError
        When the folder holds no image, a requested id is missing, or a file is unreadable.
    """
    images_dir = Path(images_dir)
    selected = _select_ids(images_dir, ids)
    return [
        _load_sample(images_dir, image_id, with_labels)
        for image_id in tqdm(selected, desc=f"loading {images_dir.name}", unit="image")
    ]


def iter_images(images_dir: str | Path, ids: Collection[str] | None = None) -> Iterator[Sample]:
    """Yield the images of a folder one at a time (labels None), for bounded memory.

    Parameters
    ----------
    images_dir : str or Path
        A folder in Kaggle layout, such as ``input/stage1_test``.
    ids : collection of str, optional
        Only these images, in this order; default: all, sorted by id.

    Returns
    -------
    Iterator of Sample
        With ``labels=None``, in the order of the ids.

    Raises
    ------
    PipelineError
        At once (before any image is read) when the folder holds no image or a requested
        id is missing; while iterating, when an image is unreadable.
    """
    images_dir = Path(images_dir)
    selected = _select_ids(images_dir, ids)
    return (_load_sample(images_dir, image_id, with_labels=False) for image_id in selected)
