"""Scale normalisation by nucleus size (``resize_policy="nucleus"``).

Nuclei in stage1 images range from about 7 to about 100 pixels across. With this policy
every image is rescaled so that its typical nucleus is ``nucleus_diameter`` pixels across
before the network sees it:

- in training, from the labels: each training image and its labels are resized once
  together (`rescale_labelled`: `scale_factor` of their `median_diameter`);
- in prediction, where there are no labels, the diameter is estimated from the network's
  own instances: a first pass at the image's own scale, then `REFINE_PASSES` passes at the
  scale the previous one suggests (`next_factor`); the probabilities of the last scale are
  resized back to the image's own size, so post-processing and the submission work on it
  as for any other model.

A second use, for any model (``--scales``): each image is predicted at a few fixed factors
and the one whose foreground probabilities are the most decided is kept
(`most_confident`), so that an image of large nuclei can be seen shrunk and one of small
crowded nuclei enlarged, without a first pass's guess of the nucleus size.

A factor stays within `FACTOR_LIMITS`, no image is enlarged past `MAX_SCALED_PIXELS`
(`limit_factor`: time and memory stay bounded), and a change of less than
`FACTOR_TOLERANCE` (10%) keeps the previous factor, so a well-sized image is predicted at
its own scale.

>>> round(median_diameter(np.array([[1, 1, 0], [1, 1, 0], [0, 0, 2]])), 3)
1.784
>>> scale_factor(10.0, target=20.0), scale_factor(None, target=20.0)
(2.0, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from pipeline.config import FACTOR_LIMITS  # the range of a factor, declared with the settings

__all__ = [
    "FACTOR_LIMITS",
    "FACTOR_TOLERANCE",
    "MAX_SCALED_PIXELS",
    "REFINE_PASSES",
    "limit_factor",
    "median_diameter",
    "most_confident",
    "next_factor",
    "rescale_image",
    "rescale_labelled",
    "rescale_labels",
    "restore_size",
    "scale_factor",
    "scaled_shape",
]

FACTOR_TOLERANCE = 0.1  # relative change of a factor below which it is kept as it was
REFINE_PASSES = 1  # prediction passes after the first one that re-estimate the factor
MAX_SCALED_PIXELS = 4 * 1024 * 1024  # an image is not enlarged past four megapixels


def median_diameter(labels: np.ndarray) -> float | None:
    """The equivalent diameter (of a disc of the same area) of the median-area instance.

    ``None`` when ``labels`` holds no instance.
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        return None
    areas = np.bincount(labels.ravel().astype(np.int64, copy=False))[1:]
    areas = areas[areas > 0]
    if areas.size == 0:
        return None
    return 2.0 * math.sqrt(float(np.median(areas)) / math.pi)


def _within_limits(factor: float) -> float:
    low, high = FACTOR_LIMITS
    return float(min(max(factor, low), high))


def scale_factor(diameter: float | None, target: float) -> float:
    """The factor that makes nuclei of ``diameter`` pixels ``target`` pixels across, within
    `FACTOR_LIMITS`; 1 when there is no nucleus to measure.

    >>> scale_factor(100.0, 20.0), scale_factor(2.0, 20.0)
    (0.25, 4.0)
    """
    if target <= 0:
        raise ValueError(f"target diameter must be > 0, got {target}")
    if diameter is None or diameter <= 0:
        return 1.0
    return _within_limits(target / diameter)


def next_factor(factor: float, diameter: float | None, target: float) -> float:
    """The factor of the next prediction pass, from the median ``diameter`` measured on an
    image rescaled by ``factor`` (so in rescaled pixels).

    The result stays within `FACTOR_LIMITS`; a change of less than `FACTOR_TOLERANCE`
    keeps ``factor``, as does an image in which nothing was found.

    >>> next_factor(1.0, 40.0, 20.0), next_factor(0.5, 21.0, 20.0), next_factor(2.0, None, 20.0)
    (0.5, 0.5, 2.0)
    """
    if diameter is None or diameter <= 0:
        return factor
    proposed = _within_limits(factor * target / diameter)
    if abs(proposed / factor - 1.0) < FACTOR_TOLERANCE:
        return factor
    return float(proposed)


def limit_factor(factor: float, shape: tuple[int, ...]) -> float:
    """``factor``, lowered where it would enlarge an image of ``shape`` past
    `MAX_SCALED_PIXELS` (an image already that large is not enlarged at all).

    >>> limit_factor(4.0, (256, 256)), limit_factor(4.0, (1024, 2048))
    (4.0, 1.4142135623730951)
    >>> limit_factor(3.0, (4096, 4096)), limit_factor(0.5, (4096, 4096))
    (1.0, 0.5)
    """
    pixels = shape[0] * shape[1]
    if factor <= 1.0 or pixels * factor * factor <= MAX_SCALED_PIXELS:
        return factor
    return max(1.0, math.sqrt(MAX_SCALED_PIXELS / pixels))


def scaled_shape(shape: tuple[int, ...], factor: float) -> tuple[int, int]:
    """``(height, width)`` of an image of ``shape`` rescaled by ``factor`` (at least 1 each).

    >>> scaled_shape((256, 320, 3), 0.5), scaled_shape((3, 5), 0.1)
    ((128, 160), (1, 1))
    """
    return max(1, round(shape[0] * factor)), max(1, round(shape[1] * factor))


def rescale_image(image: np.ndarray, factor: float) -> np.ndarray:
    """An (H, W[, C]) image resized by ``factor``: area averaging when it shrinks, linear
    interpolation when it grows; the image itself when ``factor`` is 1."""
    if factor == 1.0:
        return image
    height, width = scaled_shape(image.shape, factor)
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (width, height), interpolation=interpolation)
    return resized if resized.ndim == image.ndim else resized[..., None]


def rescale_labels(labels: np.ndarray, factor: float) -> np.ndarray:
    """Instance labels resized by ``factor`` by nearest neighbour (no new label appears;
    a nucleus smaller than a pixel of the result may disappear)."""
    if factor == 1.0:
        return labels
    height, width = scaled_shape(labels.shape, factor)
    as_int32 = np.ascontiguousarray(labels, dtype=np.int32)
    resized = cv2.resize(as_int32, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)
    return resized.astype(labels.dtype, copy=False)


def rescale_labelled(
    image: np.ndarray, labels: np.ndarray, target: float
) -> tuple[np.ndarray, np.ndarray]:
    """A training image and its labels rescaled together so that the median nucleus of the
    labels is ``target`` pixels across (within `FACTOR_LIMITS` and `MAX_SCALED_PIXELS`)."""
    factor = limit_factor(scale_factor(median_diameter(labels), target), labels.shape)
    return rescale_image(image, factor), rescale_labels(labels, factor)


def restore_size(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(h, w, C) probabilities resized (linearly) to ``shape``, float32."""
    prob = np.asarray(prob, dtype=np.float32)
    if prob.shape[:2] == tuple(shape):
        return prob
    resized = cv2.resize(prob, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return resized if resized.ndim == prob.ndim else resized[..., None]


def most_confident(probs: Sequence[np.ndarray], factors: Sequence[float]) -> int:
    """The index of the most confident of one image's probabilities at several scales.

    ``probs`` are (H, W[, C]) probabilities of the same image predicted at each of
    ``factors`` and brought back to its own size; channel 0 is the foreground. They are
    compared on one region, the pixels that any of them calls foreground (above 0.5): a
    scale's confidence is the mean of ``|2p - 1|`` there, 1 where every pixel is 0 or 1
    and 0 where every pixel is 0.5. A tie, or an image without foreground, keeps the
    factor nearest 1.

    >>> sure = np.array([[0.95, 0.05], [0.05, 0.05]])
    >>> unsure = np.array([[0.6, 0.4], [0.1, 0.1]])
    >>> most_confident([unsure, sure], [1.0, 0.5]), most_confident([sure, unsure], [2.0, 1.0])
    (1, 0)
    >>> most_confident([np.zeros((2, 2)), np.zeros((2, 2))], [0.5, 1.0])
    1
    """
    if len(probs) != len(factors) or not probs:
        raise ValueError(f"{len(probs)} probability maps for {len(factors)} factors")
    foreground = [np.asarray(prob, dtype=np.float32) for prob in probs]
    foreground = [prob[..., 0] if prob.ndim == 3 else prob for prob in foreground]
    region = np.logical_or.reduce([prob > 0.5 for prob in foreground])
    nearest_one = sorted(range(len(factors)), key=lambda i: abs(math.log(factors[i])))
    if not region.any():
        return nearest_one[0]
    confidence = [float(np.abs(2.0 * prob[region] - 1.0).mean()) for prob in foreground]
    return max(nearest_one, key=lambda i: confidence[i])
