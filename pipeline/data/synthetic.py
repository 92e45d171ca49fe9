"""A small synthetic nuclei data set, made by the project itself.

It serves as the embedded demo (when there is neither Kaggle data nor credentials) and as
the data of the end-to-end tests: train, predict, write a submission and score it on a
tiny set in seconds. The generator knows every image's instance labels exactly, so a
score computed on it is checked against a known truth.

Two kinds of image, like the two main kinds of the competition:

- ``"fluorescence"``: bright nuclei on a dark background, grey (R = G = B);
- ``"histology"``: darker purple nuclei on a light pink background, in colour.

Nuclei are ellipse-like (semi-axes about 4 to 14 pixels, a slightly wavy outline), of
varied brightness; most stand apart (at least ``_GAP`` background pixels from any other),
some touch in pairs or chains of three: they share a boundary (a pixel of one is
4-adjacent to a pixel of the other) but never a pixel.

Example
-------
>>> import numpy as np
>>> image, labels = make_sample(np.random.default_rng(0), 64, 80, "histology")
>>> image.shape, image.dtype, labels.shape, labels.dtype
((64, 80, 3), dtype('uint8'), (64, 80), dtype('int32'))
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from pipeline.data.rle import encode_labels
from pipeline.errors import PipelineError
from pipeline.fileio import atomic_dir, atomic_write_text

__all__ = [
    "KINDS",
    "DemoPaths",
    "SyntheticSample",
    "demo_image_id",
    "demo_sample",
    "draw_sample",
    "make_demo_dataset",
    "make_sample",
]

log = logging.getLogger(__name__)

KINDS = ("fluorescence", "histology")
# Bump when the generator changes what it draws: a marker with another version is stale.
GENERATOR_VERSION = 1
MARKER_NAME = "synthetic_dataset.json"
SOLUTION_COLUMNS = ("ImageId", "EncodedPixels", "Height", "Width", "Usage")

_SPLIT_CODES = {"train": 1, "test": 2}
_SEMI_AXIS_RANGE = (4.0, 14.0)  # pixels
_GAP = 2  # pixels of background between nuclei that do not touch
_PIXELS_PER_NUCLEUS = 700  # average image area per nucleus
_GROUP_SIZES = (1, 2, 3)
_GROUP_SIZE_PROBS = (0.6, 0.3, 0.1)  # separate nuclei, touching pairs, chains of three
_MIN_AREA = 12  # pixels; a nucleus clipped by the image border below this is dropped


@dataclass(frozen=True)
class SyntheticSample:
    """One generated image with its exact truth.

    Attributes
    ----------
    image : np.ndarray
        uint8 (H, W, 3) RGB.
    labels : np.ndarray
        int32 (H, W): 0 background, 1..n the nuclei.
    kind : str
        ``"fluorescence"`` or ``"histology"``.
    touching_pairs : tuple of (int, int)
        Label pairs that were drawn touching (``a < b``); all other nuclei are at least
        ``_GAP`` pixels apart.
    """

    image: np.ndarray
    labels: np.ndarray
    kind: str
    touching_pairs: tuple[tuple[int, int], ...] = field(default=())


@dataclass(frozen=True)
class DemoPaths:
    """Where `make_demo_dataset` put the demo set (Kaggle layout)."""

    root: Path
    train_dir: Path
    test_dir: Path
    solution_csv: Path


# ---------------------------------------------------------------------------------------
# Drawing one image
# ---------------------------------------------------------------------------------------


@dataclass
class _Shape:
    """A rasterised nucleus candidate: its pixels and its halo within a bounding box."""

    top: int
    left: int
    inside: np.ndarray  # bool (h, w): the nucleus
    halo: np.ndarray  # bool (h, w): the nucleus grown by _GAP pixels
    distance: np.ndarray  # float (h, w): normalised distance from the centre, 1 at the edge


def _random_shape(
    rng: np.random.Generator, centre: tuple[float, float], height: int, width: int
) -> _Shape | None:
    """An ellipse with a wavy outline, clipped to the image; None when fully outside."""
    semi_a, semi_b = rng.uniform(*_SEMI_AXIS_RANGE, size=2)
    angle = rng.uniform(0.0, math.pi)
    wave = rng.uniform(0.0, 0.08, size=2)
    phase = rng.uniform(0.0, 2 * math.pi, size=2)
    reach = max(semi_a, semi_b) * 1.2 + _GAP + 1
    cy, cx = centre
    top, bottom = max(0, int(cy - reach)), min(height, int(cy + reach) + 2)
    left, right = max(0, int(cx - reach)), min(width, int(cx + reach) + 2)
    if top >= bottom or left >= right:
        return None
    dy = np.arange(top, bottom, dtype=np.float32)[:, None] - np.float32(cy)
    dx = np.arange(left, right, dtype=np.float32)[None, :] - np.float32(cx)
    cos, sin = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    u, v = dx * cos + dy * sin, dy * cos - dx * sin  # along and across the long axis
    theta = np.arctan2(v / np.float32(semi_b), u / np.float32(semi_a))
    outline = (
        1.0
        + np.float32(wave[0]) * np.sin(2 * theta + np.float32(phase[0]))
        + np.float32(wave[1]) * np.sin(3 * theta + np.float32(phase[1]))
    )
    distance = np.sqrt((u / np.float32(semi_a)) ** 2 + (v / np.float32(semi_b)) ** 2) / outline
    halo_a, halo_b = np.float32(semi_a + _GAP), np.float32(semi_b + _GAP)
    halo = np.sqrt((u / halo_a) ** 2 + (v / halo_b) ** 2) <= outline
    return _Shape(top, left, distance <= 1.0, halo, distance)


def _place_group(
    rng: np.random.Generator,
    labels: np.ndarray,
    distance: np.ndarray,
    group_size: int,
    next_label: int,
) -> tuple[list[int], list[tuple[int, int]]]:
    """Try to draw a group of nuclei: the first apart from all, each other one touching an
    earlier member. Returns the labels drawn (maybe fewer than ``group_size``) and the
    pairs of them that touch."""
    height, width = labels.shape
    members: list[int] = []
    pairs: list[tuple[int, int]] = []
    centres: list[tuple[float, float, float]] = []  # cy, cx, radius of each member
    for _ in range(group_size):
        for _attempt in range(8):
            centre = _candidate_centre(rng, centres, height, width)
            fitted = _fit_nucleus(rng, labels, centre, members)
            if fitted is None:
                continue
            shape, pixels, touched = fitted
            pairs.extend((int(label), next_label) for label in touched)
            h, w = shape.inside.shape
            window = (slice(shape.top, shape.top + h), slice(shape.left, shape.left + w))
            labels[window][pixels] = next_label
            distance[window][pixels] = shape.distance[pixels]
            members.append(next_label)
            ys, xs = np.nonzero(pixels)
            area = int(pixels.sum())
            centres.append(
                (shape.top + ys.mean(), shape.left + xs.mean(), math.sqrt(area / math.pi))
            )
            next_label += 1
            break
        else:
            break
    return members, pairs


def _candidate_centre(
    rng: np.random.Generator,
    centres: list[tuple[float, float, float]],
    height: int,
    width: int,
) -> tuple[float, float]:
    """Where to try the next nucleus of a group: anywhere for the first, else next to a
    member (``centres`` holds their cy, cx and radius)."""
    if not centres:
        return (rng.uniform(0, height), rng.uniform(0, width))
    cy, cx, radius = centres[rng.integers(len(centres))]
    direction = rng.uniform(0.0, 2 * math.pi)
    # Closer than the sum of the radii: the footprints overlap, and the new nucleus keeps
    # only the free part, so the two share a boundary.
    step = radius + rng.uniform(0.45, 0.75) * float(np.mean(_SEMI_AXIS_RANGE))
    return (cy + step * math.sin(direction), cx + step * math.cos(direction))


def _fit_nucleus(
    rng: np.random.Generator,
    labels: np.ndarray,
    centre: tuple[float, float],
    members: list[int],
) -> tuple[_Shape, np.ndarray, list[int]] | None:
    """Draw a nucleus at ``centre`` and check that it fits beside the nuclei in ``labels``.

    It fits when it is in the image, at least ``_GAP`` pixels from other groups' nuclei,
    in one piece of at least ``_MIN_AREA`` free pixels, and, when the group has
    ``members`` already, mostly visible and touching some of them along an edge (not by a
    corner only). Returns the shape, its free pixels (within the shape's box) and the
    members it touches; None when it does not fit.
    """
    height, width = labels.shape
    if not (0 <= centre[0] < height and 0 <= centre[1] < width):
        return None
    if labels[int(centre[0]), int(centre[1])] != 0:
        return None  # cheap early rejection before rasterising
    shape = _random_shape(rng, centre, height, width)
    if shape is None:
        return None
    h, w = shape.inside.shape
    region = labels[shape.top : shape.top + h, shape.left : shape.left + w]
    near = region[shape.halo]
    near = near[near > 0]
    if near.size and (not members or (near < members[0]).any()):
        return None  # too close to a nucleus of another group
    pixels = shape.inside & (region == 0)
    area = int(pixels.sum())
    if area < _MIN_AREA or ndimage.label(pixels)[1] != 1:
        return None  # too small, or in pieces
    touched: list[int] = []
    if members:
        if area < 0.5 * shape.inside.sum():
            return None  # mostly hidden behind its neighbour: not a plausible nucleus
        touched = _neighbour_labels(pixels, region, _CROSS)
        if not touched or touched != _neighbour_labels(pixels, region, _SQUARE):
            return None  # no contact, or a contact by a corner only
    return shape, pixels, touched


_CROSS = ndimage.generate_binary_structure(2, 1)  # 4-connectivity
_SQUARE = ndimage.generate_binary_structure(2, 2)  # 8-connectivity


def _neighbour_labels(pixels: np.ndarray, region: np.ndarray, structure: np.ndarray) -> list[int]:
    """The labels in ``region`` adjacent to ``pixels`` (by ``structure``), ascending."""
    rim = ndimage.binary_dilation(pixels, structure) & ~pixels
    found = np.unique(region[rim])
    return found[found > 0].tolist()


def _draw_labels(
    rng: np.random.Generator, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Instance labels, each pixel's normalised distance to its nucleus centre, and the
    touching pairs."""
    labels = np.zeros((height, width), dtype=np.int32)
    distance = np.ones((height, width), dtype=np.float64)
    target = max(1, round(height * width / _PIXELS_PER_NUCLEUS * rng.uniform(0.6, 1.3)))
    group_sizes = rng.choice(_GROUP_SIZES, size=3 * target, p=_GROUP_SIZE_PROBS)
    pairs: list[tuple[int, int]] = []
    next_label = 1
    for group_size in group_sizes.tolist():
        if next_label > target:
            break
        members, touching = _place_group(rng, labels, distance, group_size, next_label)
        next_label += len(members)
        pairs.extend(touching)
    if next_label == 1:  # nothing fitted (a tiny image): one nucleus in the middle
        shape = _random_shape(rng, (height / 2, width / 2), height, width)
        assert shape is not None
        h, w = shape.inside.shape
        window = (slice(shape.top, shape.top + h), slice(shape.left, shape.left + w))
        labels[window][shape.inside] = 1
        distance[window][shape.inside] = shape.distance[shape.inside]
    return labels, distance, sorted(pairs)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, sigma: float) -> np.ndarray:
    """Low-frequency texture with standard deviation about 1."""
    field_ = ndimage.gaussian_filter(rng.standard_normal((height, width)), sigma)
    return field_ / max(float(field_.std()), 1e-6)


def _render(
    rng: np.random.Generator, labels: np.ndarray, distance: np.ndarray, kind: str
) -> np.ndarray:
    """Paint an RGB uint8 image of the nuclei in ``labels``."""
    height, width = labels.shape
    n = int(labels.max())
    # Per-nucleus strength (index 0: background), a profile falling towards the edge (so
    # touching nuclei show a faint valley between them) and a little texture.
    strength = np.concatenate([[0.0], rng.uniform(0.35, 1.0, size=n)])
    profile = np.where(labels > 0, 1.0 - 0.35 * distance**2, 0.0)
    texture = 1.0 + 0.12 * _smooth_noise(rng, height, width, 1.5)
    coverage = strength[labels] * profile * texture
    blur = rng.uniform(0.6, 1.1)
    if kind == "fluorescence":
        background = rng.uniform(4.0, 30.0) + 4.0 * _smooth_noise(rng, height, width, 12.0)
        peak = rng.uniform(140.0, 240.0)
        grey = ndimage.gaussian_filter(background + peak * coverage, blur)
        grey += rng.normal(0.0, rng.uniform(2.0, 6.0), size=grey.shape)
        channels = np.repeat(grey[:, :, None], 3, axis=2)
    elif kind == "histology":
        paper = np.array([235.0, 215.0, 228.0]) + rng.uniform(-10.0, 10.0, size=3)
        stain = np.array([105.0, 60.0, 150.0]) + rng.uniform(-20.0, 20.0, size=3)
        background = paper + 7.0 * _smooth_noise(rng, height, width, 8.0)[:, :, None]
        alpha = np.clip(coverage * rng.uniform(0.75, 1.0), 0.0, 1.0)[:, :, None]
        channels = background * (1.0 - alpha) + stain * alpha
        channels = ndimage.gaussian_filter(channels, (blur, blur, 0.0))
        channels += rng.normal(0.0, rng.uniform(2.0, 5.0), size=channels.shape)
    else:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return np.ascontiguousarray(np.clip(np.rint(channels), 0, 255).astype(np.uint8))


def draw_sample(rng: np.random.Generator, height: int, width: int, kind: str) -> SyntheticSample:
    """Draw one synthetic image with its instance labels and the pairs that touch.

    Parameters
    ----------
    rng : np.random.Generator
        The only source of randomness: the same generator state gives the same sample.
    height, width : int
        Image size in pixels (at least 16 each).
    kind : str
        ``"fluorescence"`` (grey, bright nuclei on dark) or ``"histology"`` (colour,
        purple nuclei on light pink).

    Returns
    -------
    SyntheticSample
        The image, its labels (consecutive ``1..n``, at least one nucleus), kind and the
        touching label pairs.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if height < 16 or width < 16:
        raise ValueError(f"image size must be at least 16x16, got {height}x{width}")
    labels, distance, pairs = _draw_labels(rng, int(height), int(width))
    image = _render(rng, labels, distance, kind)
    return SyntheticSample(image, labels, kind, tuple(pairs))


def make_sample(
    rng: np.random.Generator, height: int, width: int, kind: str
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image and its instance labels (see `draw_sample`).

    Returns
    -------
    image : np.ndarray
        uint8 (height, width, 3) RGB.
    labels : np.ndarray
        int32 (height, width): 0 background, 1..n the nuclei.
    """
    sample = draw_sample(rng, height, width, kind)
    return sample.image, sample.labels


# ---------------------------------------------------------------------------------------
# The demo data set on disk
# ---------------------------------------------------------------------------------------


def demo_image_id(split: str, index: int, count: int = 1000) -> str:
    """The id of a demo image: ``demo-train-000``, ``demo-test-011``, ...

    ``count`` (the number of images in the split) widens the number past three digits
    when needed, so that ids sort in index order.
    """
    if split not in _SPLIT_CODES:
        raise ValueError(f"split must be one of {sorted(_SPLIT_CODES)}, got {split!r}")
    digits = max(3, len(str(max(count - 1, 0))))
    return f"demo-{split}-{index:0{digits}d}"


def _kind_of(index: int) -> str:
    # Every third image is histology, starting with the second: any split of two or more
    # images holds both kinds.
    return "histology" if index % 3 == 1 else "fluorescence"


def demo_sample(
    split: str, index: int, seed: int = 0, size_range: tuple[int, int] = (128, 192)
) -> SyntheticSample:
    """The demo image number ``index`` of a split, regenerated exactly.

    Each image has its own random stream, drawn from ``(seed, split, index)``: an image
    does not depend on how many others the set holds.

    Parameters
    ----------
    split : str
        ``"train"`` or ``"test"``.
    index : int
        Position in the split, from 0.
    seed : int
        The data set's seed (>= 0).
    size_range : tuple of int
        Smallest and largest side in pixels; height and width are drawn independently.
    """
    if split not in _SPLIT_CODES:
        raise ValueError(f"split must be one of {sorted(_SPLIT_CODES)}, got {split!r}")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    low, high = _check_size_range(size_range)
    rng = np.random.default_rng([int(seed), _SPLIT_CODES[split], int(index)])
    height, width = (int(side) for side in rng.integers(low, high, size=2, endpoint=True))
    return draw_sample(rng, height, width, _kind_of(index))


def _check_size_range(size_range: tuple[int, int]) -> tuple[int, int]:
    low, high = (int(side) for side in size_range)
    if not 32 <= low <= high:
        raise ValueError(f"size_range must be (low, high) with 32 <= low <= high, got {size_range}")
    return low, high


def _png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png_bytes(pixels))


def _write_split(
    folder: Path, split: str, count: int, seed: int, size_range: tuple[int, int]
) -> list[tuple[str, np.ndarray]]:
    """Write one split in Kaggle layout; return (id, labels) of each image."""
    written = []
    for index in range(count):
        image_id = demo_image_id(split, index, count)
        sample = demo_sample(split, index, seed, size_range)
        _write_png(folder / image_id / "images" / f"{image_id}.png", sample.image)
        if split == "train":
            masks = folder / image_id / "masks"
            for label in range(1, int(sample.labels.max()) + 1):
                mask = np.where(sample.labels == label, 255, 0).astype(np.uint8)
                _write_png(masks / f"{label:03d}.png", mask)
        written.append((image_id, sample.labels))
    return written


def _solution_text(images: list[tuple[str, np.ndarray]]) -> str:
    """stage1_solution.csv: one row per nucleus, in image order and ascending label."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SOLUTION_COLUMNS)
    for image_id, labels in images:
        height, width = labels.shape
        for rle in encode_labels(labels):
            writer.writerow([image_id, rle, height, width, "Public"])
    return buffer.getvalue()


def _marker_content(n_train: int, n_test: int, seed: int, size_range: tuple[int, int]) -> dict:
    return {
        "generator": "pipeline.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "n_train": n_train,
        "n_test": n_test,
        "seed": seed,
        "size_range": list(size_range),
    }


def _is_complete(paths: DemoPaths, expected: dict) -> bool:
    marker = paths.root / MARKER_NAME
    try:
        found = json.loads(marker.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    if found != expected or not paths.solution_csv.is_file():
        return False
    for folder, count in (
        (paths.train_dir, expected["n_train"]),
        (paths.test_dir, expected["n_test"]),
    ):
        if not folder.is_dir() or sum(1 for _ in folder.iterdir()) != count:
            return False
    return True


def _refuse_foreign(folder: Path) -> None:
    """Refuse to replace a folder that holds images this module did not make."""
    if not folder.is_dir():
        return
    foreign = [entry.name for entry in folder.iterdir() if not entry.name.startswith("demo-")]
    if foreign:
        raise PipelineError(
            f"{folder}: holds images that are not synthetic demo images (e.g. {foreign[0]}); "
            "choose another folder for the demo data set"
        )


def make_demo_dataset(
    root: str | Path,
    n_train: int = 48,
    n_test: int = 12,
    seed: int = 0,
    size_range: tuple[int, int] = (128, 192),
) -> DemoPaths:
    """Write the synthetic demo data set in Kaggle layout, unless it is already there.

    Writes ``root/stage1_train/<id>/images/<id>.png`` with ``masks/<k>.png`` (one 0/255
    PNG per nucleus), ``root/stage1_test/<id>/images/<id>.png``, ``root/stage1_solution.csv``
    (``ImageId,EncodedPixels,Height,Width,Usage``; every row ``Public``) and a marker
    ``root/synthetic_dataset.json`` with the parameters. Each of the three outputs is
    written atomically, and the marker last: a set with a marker is complete. When the
    marker already names the same parameters (and the folders hold as many images), nothing
    is written.

    Parameters
    ----------
    root : str or Path
        Folder of the data set; other content in it is left alone.
    n_train, n_test : int
        Number of training and test images (>= 1 each).
    seed : int
        Seed of the whole set (>= 0); the same seed writes byte-identical files.
    size_range : tuple of int
        Smallest and largest image side in pixels.

    Returns
    -------
    DemoPaths
        ``root``, ``train_dir``, ``test_dir`` and ``solution_csv``.

    Raises
    ------
    PipelineError
        When ``root/stage1_train`` or ``root/stage1_test`` holds images that are not demo
        images (real data is never overwritten).
    """
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be >= 1, got {n_train} and {n_test}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    size_range = _check_size_range(size_range)
    root = Path(root)
    paths = DemoPaths(
        root=root,
        train_dir=root / "stage1_train",
        test_dir=root / "stage1_test",
        solution_csv=root / "stage1_solution.csv",
    )
    expected = _marker_content(n_train, n_test, seed, size_range)
    if _is_complete(paths, expected):
        log.info("synthetic demo data set up to date in %s", root)
        return paths
    _write_demo_dataset(paths, n_train, n_test, seed, size_range)
    return paths


def _write_demo_dataset(
    paths: DemoPaths, n_train: int, n_test: int, seed: int, size_range: tuple[int, int]
) -> None:
    """Write the demo set (see `make_demo_dataset`): the splits, the solution, the marker last."""
    _refuse_foreign(paths.train_dir)
    _refuse_foreign(paths.test_dir)
    marker = paths.root / MARKER_NAME
    if marker.exists():
        marker.unlink()  # the set is about to change: it is incomplete until the end
    log.info(
        "writing a synthetic demo data set (%d training, %d test images, seed %d) to %s",
        n_train,
        n_test,
        seed,
        paths.root,
    )
    with atomic_dir(paths.train_dir) as tmp:
        _write_split(tmp, "train", n_train, seed, size_range)
    with atomic_dir(paths.test_dir) as tmp:
        test_images = _write_split(tmp, "test", n_test, seed, size_range)
    atomic_write_text(paths.solution_csv, _solution_text(test_images))
    parameters = _marker_content(n_train, n_test, seed, size_range)
    atomic_write_text(marker, json.dumps(parameters, indent=2) + "\n")
