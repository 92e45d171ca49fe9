"""Joint augmentation of an image and its instance labels (albumentations, numpy in and out).

One training sample is a random window of the image at a random scale, cut first and then
resized to ``crop_size`` (so the work does not depend on the image size: a 256 crop of a
1040x1388 image costs a few milliseconds), then flipped, rotated by a multiple of 90
degrees, and changed in brightness, contrast, gamma, hue and saturation, with Gaussian
noise and CLAHE now and then. An image smaller than the window is padded by reflection
(or with zeros).

Instance labels stay exact: they are only cut, padded (by reflection, or with 0), flipped,
rotated and resized by nearest neighbour (``cv2.INTER_NEAREST_EXACT``, aligned with the
image's linear resize), so no label value appears that was not in the input. A nucleus
mirrored into the reflected border keeps the label of the nucleus it mirrors.

Determinism
-----------
``augment(transform, image, labels, rng_seed)`` gives the same output for the same seed,
byte for byte. In albumentations 2.0.8 the global ``np.random``/``random`` seeds have no
effect, and ``Compose(..., seed=s)`` or ``Compose.set_random_seed(s)`` give *every*
transform its own generator seeded with the same ``s``, so their first draws coincide
(``HorizontalFlip(p=0.5)`` and ``VerticalFlip(p=0.5)`` then always fire together). Instead,
before each call, `augment` hands the whole pipeline one shared pair of generators with
``Compose.set_random_state(np.random.default_rng(s), random.Random(s))``. That state lives
on the transform object, so `augment` holds a lock per transform while it runs.

Example
-------
>>> import numpy as np
>>> image = np.zeros((300, 400, 3), np.uint8)
>>> labels = np.zeros((300, 400), np.int32)
>>> transform = build_augmentation(256)
>>> out_image, out_labels = augment(transform, image, labels, rng_seed=7)
>>> out_image.shape, out_labels.dtype
((256, 256, 3), dtype('int32'))
"""

from __future__ import annotations

import math
import random
import threading
import weakref
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.core.transforms_interface import DualTransform
from albumentations.core.type_definitions import Targets
from scipy import ndimage
from skimage.color import hed2rgb

from pipeline.config import AUGMENT_STRENGTHS, TrainConfig
from pipeline.data.dataset import has_light_background

__all__ = [
    "PAD_MODES",
    "STRENGTHS",
    "RandomScaleCrop",
    "augment",
    "build_augmentation",
    "dim_nuclei",
    "paste_touching_nuclei",
    "stain_like_tissue",
]

STRENGTHS = ("none", *AUGMENT_STRENGTHS)
PAD_MODES = {"reflect": cv2.BORDER_REFLECT_101, "constant": cv2.BORDER_CONSTANT}
# The random scale of a sample, by default: the declared defaults of train.scale_min and
# train.scale_max.
DEFAULT_SCALE_RANGE = (TrainConfig.scale_min, TrainConfig.scale_max)
DIM_CONTRAST_RANGE = (0.1, 0.6)  # kept contrast of a dimmed nucleus (`dim_nuclei`)
# Stain concentrations of `stain_like_tissue` (skimage's rgb2hed units). The 96 histology
# images of stage1_train measure about 0.06-0.08 hematoxylin in nuclei and 0.02-0.04 around
# them, eosin 0.02-0.04 in nuclei and 0-0.005 around them; stage1_test's pink H&E has more
# eosin, so the ranges reach past both.
NUCLEUS_HEMATOXYLIN_RANGE = (0.05, 0.14)
GROUND_HEMATOXYLIN_RANGE = (0.0, 0.04)
EOSIN_RANGE = (0.0, 0.08)

_UINT16_MAX = int(np.iinfo(np.uint16).max)
_locks: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


# ---------------------------------------------------------------------------------------
# Cutting a window, with padding where it leaves the image
# ---------------------------------------------------------------------------------------


def _window_origin(length: int, window: int, draw: Any) -> int:
    """A random start of a window on one axis: inside the image when it fits, else a
    random placement of the image inside the window (the rest is padding).

    ``draw(low, high)`` returns a random integer in ``[low, high]`` (both included).
    """
    slack = length - window
    return int(draw(min(0, slack), max(0, slack)))


def _extract_window(
    pixels: np.ndarray, top: int, left: int, window: int, border_mode: int
) -> np.ndarray:
    """The ``window`` x ``window`` region at ``(top, left)``, padded where it leaves the image.

    Padding happens only on an axis that the window covers whole (see `_window_origin`),
    so reflection mirrors the image itself, never a cut edge inside it. The constant
    fill is 0.
    """
    height, width = pixels.shape[:2]
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + window, height), min(left + window, width)
    region = pixels[y0:y1, x0:x1]
    pad_top, pad_left = y0 - top, x0 - left
    pad_bottom, pad_right = top + window - y1, left + window - x1
    if pad_top or pad_bottom or pad_left or pad_right:
        region = cv2.copyMakeBorder(
            np.ascontiguousarray(region),
            pad_top,
            pad_bottom,
            pad_left,
            pad_right,
            border_mode,
            value=0,
        )
        if region.ndim < pixels.ndim:  # cv2 drops a single channel axis
            region = region[..., None]
        return region
    return region.copy()  # never a view into the caller's array


class RandomScaleCrop(DualTransform):
    """Cut a random square window of side ``size / scale`` and resize it to ``size``.

    ``scale`` is drawn log-uniformly from ``scale_range`` (a scale above 1 enlarges the
    nuclei). The window is cut before resizing, so the cost does not depend on the image
    size. Where the window is larger than the image on an axis, the image sits at a random
    place inside it and the rest is padded with ``border_mode`` (constant: 0). The image is
    resized with ``INTER_LINEAR`` (``INTER_AREA`` when shrinking) and the mask with
    ``INTER_NEAREST_EXACT``, which is aligned with them and creates no new value. With
    ``scale_range=(1, 1)`` nothing is resized: the output is a crop (or pad) of the input.

    Parameters
    ----------
    size : int
        Side of the output in pixels.
    scale_range : tuple of float
        Smallest and largest scale (> 0).
    border_mode : int
        ``cv2.BORDER_REFLECT_101`` or ``cv2.BORDER_CONSTANT``.
    p : float
        Probability of applying the transform (1: always; otherwise the output keeps the
        input's size).
    """

    _targets = (Targets.IMAGE, Targets.MASK)

    def __init__(
        self,
        size: int,
        scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE,
        border_mode: int = cv2.BORDER_REFLECT_101,
        p: float = 1.0,
    ):
        super().__init__(p=p)
        low, high = (float(value) for value in scale_range)
        if int(size) < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if not 0 < low <= high:
            raise ValueError(
                f"scale_range must be (low, high) with 0 < low <= high, got {scale_range}"
            )
        if border_mode not in PAD_MODES.values():
            raise ValueError(
                f"border_mode must be one of {sorted(PAD_MODES.values())}, got {border_mode}"
            )
        self.size = int(size)
        self.scale_range = (low, high)
        self.border_mode = int(border_mode)

    def get_params_dependent_on_data(
        self, params: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        height, width = params["shape"][:2]
        low, high = self.scale_range
        scale = math.exp(self.py_random.uniform(math.log(low), math.log(high)))
        window = max(1, round(self.size / scale))
        return {
            "window": window,
            "top": _window_origin(height, window, self.py_random.randint),
            "left": _window_origin(width, window, self.py_random.randint),
        }

    def apply(self, img: np.ndarray, window: int, top: int, left: int, **params: Any) -> np.ndarray:
        region = _extract_window(img, top, left, window, self.border_mode)
        if window == self.size:
            return region
        interpolation = cv2.INTER_AREA if window > self.size else cv2.INTER_LINEAR
        resized = cv2.resize(region, (self.size, self.size), interpolation=interpolation)
        return resized if resized.ndim == region.ndim else resized[..., None]

    def apply_to_mask(
        self, mask: np.ndarray, window: int, top: int, left: int, **params: Any
    ) -> np.ndarray:
        region = _extract_window(mask, top, left, window, self.border_mode)
        if window == self.size:
            return region
        return cv2.resize(region, (self.size, self.size), interpolation=cv2.INTER_NEAREST_EXACT)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("size", "scale_range", "border_mode")


# ---------------------------------------------------------------------------------------
# The pipelines
# ---------------------------------------------------------------------------------------


def build_augmentation(
    crop_size: int,
    strength: str = "default",
    pad_mode: str = "reflect",
    scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE,
) -> A.Compose:
    """The augmentation pipeline of training, for `augment`.

    Parameters
    ----------
    crop_size : int
        Side of every output sample.
    strength : str
        ``"none"``: only a random crop (padded where the image is smaller), no pixel value
        changes. ``"default"``: a random scale in ``scale_range`` then a crop, flips, 90 degree
        rotations, brightness/contrast, gamma, hue/saturation, Gaussian noise and CLAHE.
        ``"strong"``: the same geometry with wider gamma (0.5-2), hue (+-40) and
        saturation changes, grey versions of colour images, blur, noise and CLAHE.
    pad_mode : str
        How an image smaller than the window is padded: ``"reflect"`` (image and labels
        mirrored) or ``"constant"`` (0 in the image and the labels).
    scale_range : tuple of float
        The range of the random scale factor (not used by ``"none"``).

    Returns
    -------
    albumentations.Compose
        Called through `augment` (which seeds it); it takes ``image`` and ``mask``.
    """
    if strength not in STRENGTHS:
        raise ValueError(f"strength must be one of {STRENGTHS}, got {strength!r}")
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {sorted(PAD_MODES)}, got {pad_mode!r}")
    border_mode = PAD_MODES[pad_mode]
    if strength == "none":
        return A.Compose([RandomScaleCrop(crop_size, (1.0, 1.0), border_mode)])
    geometry = [
        # Cut first, so that everything after works on crop_size x crop_size pixels.
        RandomScaleCrop(crop_size, tuple(scale_range), border_mode),
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=1.0),
    ]
    return A.Compose([*geometry, *_pixel_transforms(strength)])


def _pixel_transforms(strength: str) -> list[Any]:
    """The transforms of pixel values that follow the geometry, for ``strength``."""
    if strength == "default":
        return [
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
            A.RandomGamma(gamma_limit=(80, 120), p=0.3),
            # Hue/saturation leave grey pixels grey (albumentations keeps S = 0 at 0),
            # and the noise is the same in the three channels: fluorescence stays grey.
            A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=20, val_shift_limit=0, p=0.3),
            A.GaussNoise(std_range=(0.01, 0.04), per_channel=False, p=0.3),
            A.CLAHE(clip_limit=(1.0, 3.0), tile_grid_size=(8, 8), p=0.1),
        ]
    # "strong": images are standardised per image afterwards, so brightness and contrast
    # changes mostly cancel out; what changes how nuclei look relative to each other is
    # gamma (dim nuclei next to bright ones, as in many stage1_test images), the stain's
    # colour (pink H&E against the purple of the training histology), grey versions of
    # colour images, blur and local contrast.
    return [
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.3, p=0.5),
        A.RandomGamma(gamma_limit=(50, 200), p=0.5),
        A.HueSaturationValue(hue_shift_limit=40, sat_shift_limit=40, val_shift_limit=0, p=0.5),
        A.ToGray(num_output_channels=3, p=0.1),
        A.GaussianBlur(blur_limit=(3, 5), p=0.1),
        A.GaussNoise(std_range=(0.01, 0.05), per_channel=False, p=0.3),
        A.CLAHE(clip_limit=(1.0, 4.0), tile_grid_size=(8, 8), p=0.2),
    ]


def _check_pair(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels must be (H, W) = {image.shape[:2]}, got {labels.shape}")
    if labels.dtype != np.bool_ and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels must be >= 0, found {labels.min()}")
    if labels.size and labels.max() > np.iinfo(np.int32).max:
        raise ValueError(f"labels must fit in int32, found {labels.max()}")
    return image, labels


def _mask_dtype(labels: np.ndarray) -> type[np.integer]:
    """uint16 when the labels fit (every cv2 function takes it), else int32.

    cv2 5.0's ``resize`` (nearest), ``copyMakeBorder``, ``flip`` and ``rotate`` also take
    int32 losslessly (a test checks labels above 65535); both are exact integer types.
    """
    return np.uint16 if labels.size == 0 or int(labels.max()) <= _UINT16_MAX else np.int32


def _lock_of(transform: Any) -> threading.Lock:
    with _locks_guard:
        lock = _locks.get(transform)
        if lock is None:
            lock = _locks[transform] = threading.Lock()
        return lock


def augment(
    transform: A.Compose, image: np.ndarray, labels: np.ndarray, rng_seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Augment an image and its instance labels together, reproducibly.

    Parameters
    ----------
    transform : albumentations.Compose
        From `build_augmentation`.
    image : np.ndarray
        uint8 (H, W, 3).
    labels : np.ndarray
        Integer (H, W) instance labels, 0 for background.
    rng_seed : int
        The only source of randomness (>= 0): the same seed gives the same output.

    Returns
    -------
    image : np.ndarray
        uint8 (crop, crop, 3).
    labels : np.ndarray
        int32 (crop, crop); every value is one of the input's values.
    """
    image, labels = _check_pair(image, labels)
    mask = np.ascontiguousarray(labels, dtype=_mask_dtype(labels))
    seed = int(rng_seed)
    with _lock_of(transform):
        # One shared pair of generators for the whole pipeline (see the module docstring).
        transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        result = transform(image=np.ascontiguousarray(image), mask=mask)
    out_image, out_mask = result["image"], result["mask"]
    if out_image.shape[:2] != out_mask.shape[:2] or out_image.dtype != np.uint8:
        raise ValueError(
            f"the transform returned image {out_image.dtype} {out_image.shape} and labels "
            f"{out_mask.shape}; expected uint8 and the same height and width"
        )
    return out_image, out_mask.astype(np.int32)


def dim_nuclei(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    share: float = 0.5,
    contrast_range: tuple[float, float] = DIM_CONTRAST_RANGE,
) -> np.ndarray:
    """Lower the contrast of a random share of the nuclei against the background.

    Many stage1_test images hold dim nuclei beside bright ones, and the labels mark both;
    a network trained on images where nuclei look alike learns "bright blob" and misses
    the dim ones (whose per-image standardised values stay low). Each nucleus is chosen
    with probability ``share``; a chosen one keeps a contrast factor ``f`` drawn from
    ``contrast_range``: its pixels become ``b + f * (pixel - b)``, with ``b`` the
    background's median colour. The factor map is smoothed (Gaussian, sigma 2 pixels) so
    that a dimmed nucleus keeps soft edges and its halo dims with it. Light backgrounds
    work the same way: nuclei darker than ``b`` come closer to it.

    Parameters
    ----------
    image, labels : np.ndarray
        uint8 (H, W, 3) and integer (H, W) instance labels, 0 for background.
    rng : np.random.Generator
        The only source of randomness.
    share : float
        Probability that a nucleus is dimmed, in [0, 1].
    contrast_range : tuple of float
        Smallest and largest kept contrast, 0 <= low <= high <= 1.

    Returns
    -------
    np.ndarray
        uint8 (H, W, 3); the input unchanged (a copy) where there is no nucleus or no
        background. Labels are not changed: a dimmed nucleus is still a nucleus.
    """
    image, labels = _check_pair(image, labels)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    low, high = (float(value) for value in contrast_range)
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"contrast_range must have 0 <= low <= high <= 1, got {contrast_range}")
    background = labels == 0
    count = int(labels.max()) if labels.size else 0
    if count == 0 or not background.any():
        return image.copy()
    factors = np.ones(count + 1, np.float32)
    chosen = rng.random(count) < share
    factors[1:][chosen] = rng.uniform(low, high, int(chosen.sum()))
    factor_map = cv2.GaussianBlur(factors[labels], (0, 0), sigmaX=2.0)[..., None]
    level = np.median(image[background], axis=0).astype(np.float32)
    out = level + factor_map * (image.astype(np.float32) - level)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def stain_like_tissue(
    image: np.ndarray,
    rng: np.random.Generator,
    nucleus_hematoxylin: tuple[float, float] = NUCLEUS_HEMATOXYLIN_RANGE,
    ground_hematoxylin: tuple[float, float] = GROUND_HEMATOXYLIN_RANGE,
    eosin: tuple[float, float] = EOSIN_RANGE,
) -> np.ndarray:
    """Re-colour a fluorescence image as if it were H&E-stained tissue.

    stage1_train holds 486 fluorescence images and no pink H&E at all, and a network trained
    on it finds almost nothing in stained tissue (issue 12). Here the image's brightness
    becomes the hematoxylin concentration (nuclei dark purple-blue), a random smooth
    texture the eosin of the tissue around them (pink) with a little hematoxylin of its
    own, and skimage's ``hed2rgb`` turns the stains into colours, so that the network
    sees nuclei that look like the stained ones, with their labels unchanged. Images with
    a light background are already brightfield or histology and are returned unchanged.

    Parameters
    ----------
    image : np.ndarray
        uint8 (H, W, 3).
    rng : np.random.Generator
        The only source of randomness: the stain levels, the texture and a little noise
        (standard deviation 2 grey levels).
    nucleus_hematoxylin, ground_hematoxylin, eosin : tuple of float
        Ranges of the concentrations drawn: hematoxylin of the brightest nuclei, of the
        tissue around them (times the texture) and eosin (times the texture, halved in
        the nuclei), each ``(low, high)`` with ``0 <= low <= high``.

    Returns
    -------
    np.ndarray
        uint8 (H, W, 3), a new array; light where the input was dark.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    ranges = {"nucleus_hematoxylin": nucleus_hematoxylin, "ground_hematoxylin": ground_hematoxylin}
    for name, (low, high) in {**ranges, "eosin": eosin}.items():
        if not 0.0 <= low <= high:
            raise ValueError(f"{name} must be (low, high) with 0 <= low <= high, got {(low, high)}")
    if image.size == 0 or has_light_background(image):
        return image.copy()
    grey = image.astype(np.float32).mean(axis=2)
    low, high = np.percentile(grey, (1.0, 99.5))
    brightness = np.clip((grey - low) / max(float(high - low), 1.0), 0.0, 1.0)
    texture = _smooth_noise(image.shape[:2], rng)
    nucleus_level = rng.uniform(*nucleus_hematoxylin)
    ground_level = rng.uniform(*ground_hematoxylin) * texture
    hematoxylin = ground_level + (nucleus_level - ground_level) * brightness
    pink = rng.uniform(*eosin) * texture * (1.0 - 0.5 * brightness)
    stains = np.stack([hematoxylin, pink, np.zeros_like(pink)], axis=-1)
    colours = hed2rgb(stains) * 255.0 + rng.normal(0.0, 2.0, image.shape)
    return np.clip(np.rint(colours), 0, 255).astype(np.uint8)


def _smooth_noise(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Random texture in [0, 1]: noise blurred at a random scale (2-8 pixels), stretched."""
    noise = rng.random(shape).astype(np.float32)
    blurred = cv2.GaussianBlur(noise, (0, 0), sigmaX=float(rng.uniform(2.0, 8.0)))
    spread = float(blurred.max() - blurred.min())
    return (blurred - blurred.min()) / spread if spread > 0 else np.full(shape, 0.5, np.float32)


def paste_touching_nuclei(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, count: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Paste copies of the sample's own nuclei against other nuclei, to crowd it.

    Crowded, touching nuclei are where the watershed's splits fail most (stage1_test's
    crowded small-nucleus groups); a published DSB2018 ablation (samuelschen/DSB2018) gained
    0.03 by training on images with nuclei pasted against each other. Each of ``count``
    copies takes a random nucleus of the sample (its pixels and shape, randomly flipped)
    and places it against another random nucleus, in a random direction, at a distance of
    0.7 to 1.0 times the sum of their radii (so they touch or overlap a little). The copy
    lies on top: pixels it covers become its own, under a new label; a nucleus that is left
    with nothing disappears from the labels. Nothing is pasted where the copy would leave
    the sample.

    Parameters
    ----------
    image, labels : np.ndarray
        uint8 (H, W, 3) and integer (H, W) instance labels, 0 for background.
    rng : np.random.Generator
        The only source of randomness.
    count : int
        Copies tried (>= 0); fewer are pasted where they do not fit.

    Returns
    -------
    image, labels : np.ndarray
        New arrays: uint8 (H, W, 3) and int32 (H, W).
    """
    image, labels = _check_pair(image, labels)
    if int(count) < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    image, labels = image.copy(), labels.astype(np.int32)
    for _ in range(int(count)):
        # Looked up again after each copy: a copy may cover a nucleus whole.
        boxes = ndimage.find_objects(labels)
        present = [index + 1 for index, box in enumerate(boxes) if box is not None]
        if not present:
            break
        source, target = rng.choice(present, 2)
        box = boxes[source - 1]
        shape = labels[box] == source
        pixels = image[box]
        if rng.random() < 0.5:
            shape, pixels = shape[:, ::-1], pixels[:, ::-1]
        if rng.random() < 0.5:
            shape, pixels = shape[::-1], pixels[::-1]
        _paste_against(image, labels, shape, pixels, _centre_and_radius(labels, target), rng)
    return image, labels


def _centre_and_radius(labels: np.ndarray, label: int) -> tuple[float, float, float]:
    rows, columns = np.nonzero(labels == label)
    return float(rows.mean()), float(columns.mean()), math.sqrt(len(rows) / math.pi)


def _paste_against(image, labels, shape, pixels, target, rng) -> None:
    """Put ``shape`` (with its ``pixels``) at a touching distance from ``target``."""
    target_row, target_column, target_radius = target
    radius = math.sqrt(shape.sum() / math.pi)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    distance = rng.uniform(0.7, 1.0) * (radius + target_radius)
    top = round(target_row + distance * math.sin(angle) - (shape.shape[0] - 1) / 2)
    left = round(target_column + distance * math.cos(angle) - (shape.shape[1] - 1) / 2)
    height, width = labels.shape
    if top < 0 or left < 0 or top + shape.shape[0] > height or left + shape.shape[1] > width:
        return
    window = (slice(top, top + shape.shape[0]), slice(left, left + shape.shape[1]))
    image[window][shape] = pixels[shape]
    labels[window][shape] = int(labels.max()) + 1
