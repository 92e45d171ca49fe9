"""Instance labels to training targets: the per-pixel channels the network learns.

``labels_to_targets`` (here) and ``pipeline.inference.postprocess.probabilities_to_labels`` are a
matched pair: one turns instances into the network's targets, the other turns the
network's output back into instances.

Channels
--------
``foreground``
    1 inside any nucleus, 0 elsewhere.
``border``
    1 on each nucleus's rim and where nuclei touch or nearly touch, 0 elsewhere. This is
    what lets a watershed split touching nuclei (the DSB2018 winners' trick): the
    foreground minus the border leaves one core per nucleus, a marker.

    - *Rim*: the nucleus pixels within ``w`` pixels (Euclidean) of a pixel that is not
      the same nucleus (background or another nucleus), so ``w = 1`` is the 4-connected
      inner outline. ``w`` grows with the nucleus's equivalent radius
      ``r = sqrt(area / pi)``: 1 pixel when ``r < 8``, 2 when ``8 <= r < 16``, 3 when
      ``r >= 16`` (`RIM_WIDTHS`). The image edge is not a boundary: a nucleus cut by it
      goes on outside, so it has no rim there.
    - *Contact zone*: every pixel, nucleus or background, that has two different nuclei
      within ``CONTACT_DISTANCE`` = 2 pixels (chessboard distance: its 5 x 5
      neighbourhood holds two labels). It covers 2 pixels on each side of the line where
      two nuclei touch, the background of a gap up to 2 pixels wide between two, and the
      middle of a 3-pixel gap.

    A wider border is an easier target for the network but eats into small nuclei, whose
    core can then fall apart or vanish. Fed back as perfect predictions on 30 stage1_train
    images, foreground and border give a watershed score of 0.995 with these widths (0.990
    with the thresholds at radius 6 and 12, 0.996 with a 1-pixel rim everywhere), where the
    connected components of the true foreground score 0.724.
``centre``
    Each nucleus pixel's Euclidean distance to the nearest pixel that is not the same
    nucleus, divided by the nucleus's largest such distance: 1 at the nucleus's centre
    (its innermost pixels), small on its outline, 0 on background. Thresholding it gives
    watershed markers.

The named target sets, the values of ``--targets``, are declared with that setting
(`pipeline.config.TARGET_SETS`, imported here). The first channel of a target set is always
``foreground``: the code that turns predictions into instances reads the foreground
probability from channel 0.

Example
-------
Two 5 x 5 squares that touch along an edge (columns 5 and 6). Each has radius < 6, so a
1-pixel rim; the contact zone adds the two columns on each side of the contact line.

>>> labels = np.zeros((7, 12), np.int32)
>>> labels[1:6, 1:6] = 1
>>> labels[1:6, 6:11] = 2
>>> targets = labels_to_targets(labels, TARGET_SETS["border_centre"])
>>> targets.shape
(7, 12, 3)
>>> targets[3, :, 1].astype(int).tolist()  # border, middle row
[0, 1, 0, 0, 1, 1, 1, 1, 0, 0, 1, 0]
>>> (3 * targets[3, :, 2]).round().astype(int).tolist()  # centre (in thirds), middle row
[0, 1, 2, 3, 2, 1, 1, 2, 3, 2, 1, 0]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from pipeline.config import TARGET_SETS
from pipeline.errors import PipelineError

__all__ = [
    "CONTACT_DISTANCE",
    "KNOWN_CHANNELS",
    "RIM_WIDTHS",
    "TARGET_CHANNELS",
    "TARGET_SETS",
    "contact_zone",
    "instance_distance",
    "labels_to_targets",
    "rim_width",
]

#: The channels the network learns by default (kept for backward compatibility).
TARGET_CHANNELS = ("foreground",)
#: Every channel name `labels_to_targets` knows (those of every set in `TARGET_SETS`).
KNOWN_CHANNELS = ("foreground", "border", "centre")
#: Rim width by equivalent radius: ``(radius_below, width)``, the first row that fits.
RIM_WIDTHS: tuple[tuple[float, int], ...] = ((8.0, 1), (16.0, 2), (math.inf, 3))
#: Pixels (chessboard distance) within which two different nuclei make a contact zone.
CONTACT_DISTANCE = 2


def rim_width(area: int | np.ndarray) -> int | np.ndarray:
    """Rim width in pixels of a nucleus of ``area`` pixels (see `RIM_WIDTHS`).

    >>> rim_width(100), rim_width(400), rim_width(1000)  # radius 5.6, 11.3, 17.8
    (1, 2, 3)
    >>> rim_width(np.array([0, 201, 202])).tolist()  # radius 8 is between 201 and 202 px
    [1, 1, 2]
    """
    radius = np.sqrt(np.asarray(area, dtype=np.float64) / np.pi)
    width = np.full(radius.shape, RIM_WIDTHS[-1][1], dtype=np.int64)
    for below, value in reversed(RIM_WIDTHS):
        width[radius < below] = value
    return int(width) if width.ndim == 0 else width


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D label image, got shape {labels.shape}")
    if labels.dtype == np.bool_:
        return labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers (0 = background), got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels must be >= 0, found {labels.min()}")
    return labels


def instance_distance(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each nucleus pixel's distance to the nearest pixel of another label.

    One Euclidean distance transform per nucleus, on its bounding box grown by one pixel
    (``scipy.ndimage.find_objects``): background and other nuclei both count as "not this
    nucleus"; the image edge does not.

    Parameters
    ----------
    labels : np.ndarray
        2-D non-negative integer labels, 0 = background.

    Returns
    -------
    distance : np.ndarray
        float32, same shape: >= 1 inside nuclei (1 on the 4-connected outline), 0 on
        background.
    largest : np.ndarray
        float32 ``(labels.max() + 1,)``: each label's largest distance (0 when absent).

    Examples
    --------
    >>> distance, largest = instance_distance(np.array([[0, 1, 1, 1, 2]]))
    >>> distance.tolist(), largest.tolist()
    ([[0.0, 1.0, 2.0, 1.0, 1.0]], [0.0, 2.0, 1.0])
    """
    labels = _check_labels(labels)
    height, width = labels.shape
    distance = np.zeros(labels.shape, dtype=np.float32)
    largest = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.float32)
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        rows = slice(max(box[0].start - 1, 0), min(box[0].stop + 1, height))
        cols = slice(max(box[1].start - 1, 0), min(box[1].stop + 1, width))
        inside = labels[rows, cols] == index
        if inside.all():  # the nucleus fills the image: no boundary to measure from
            local = np.ones(inside.shape, dtype=np.float64)
        else:
            local = ndimage.distance_transform_edt(inside)
        distance[rows, cols][inside] = local[inside]
        largest[index] = local[inside].max()
    return distance, largest


def contact_zone(labels: np.ndarray, distance: int = CONTACT_DISTANCE) -> np.ndarray:
    """Pixels with two different nuclei within ``distance`` pixels (chessboard distance).

    Vectorised: the largest and the smallest non-zero label in each pixel's
    ``(2 distance + 1)``-square neighbourhood differ exactly when it holds two nuclei.

    >>> labels = np.array([[1, 1, 2, 2, 0, 0, 3]])
    >>> contact_zone(labels, distance=1).astype(int).tolist()
    [[0, 1, 1, 0, 0, 0, 0]]
    >>> contact_zone(labels, distance=2).astype(int).tolist()  # and the 2-pixel gap
    [[1, 1, 1, 1, 1, 1, 0]]
    """
    labels = _check_labels(labels)
    if distance < 1:
        return np.zeros(labels.shape, dtype=bool)
    size = 2 * distance + 1
    top = int(labels.max(initial=0)) + 1  # stands for background in the minimum
    labels = labels.astype(np.min_scalar_type(top), copy=False)
    highest = ndimage.maximum_filter(labels, size=size, mode="nearest")
    lowest = ndimage.minimum_filter(np.where(labels > 0, labels, top), size=size, mode="nearest")
    return (highest != lowest) & (lowest != top)


def labels_to_targets(labels: np.ndarray, channels: Sequence[str] = TARGET_CHANNELS) -> np.ndarray:
    """Float32 (H, W, C) targets, one channel per name in ``channels``.

    Parameters
    ----------
    labels : np.ndarray
        2-D non-negative integer instance labels (0 = background); values need not be
        consecutive. A boolean mask is taken as a single nucleus.
    channels : sequence of str
        Names from `KNOWN_CHANNELS` (see the module docstring), e.g. a value of
        `TARGET_SETS`. Any order; the pipeline puts ``foreground`` first.

    Returns
    -------
    np.ndarray
        float32 ``(H, W, len(channels))``: ``foreground`` and ``border`` are 0 or 1,
        ``centre`` is in [0, 1].

    Raises
    ------
    PipelineError
        For an unknown channel name.

    Examples
    --------
    >>> labels_to_targets(np.array([[0, 2], [1, 0]]))[..., 0].tolist()
    [[0.0, 1.0], [1.0, 0.0]]
    >>> labels = np.zeros((1, 7), np.int32); labels[0, 1:6] = 1
    >>> (3 * labels_to_targets(labels, ("centre",))[0, :, 0]).tolist()
    [0.0, 1.0, 2.0, 3.0, 2.0, 1.0, 0.0]
    """
    unknown = [channel for channel in channels if channel not in KNOWN_CHANNELS]
    if unknown:
        raise PipelineError(f"unknown target channel {unknown[0]!r}; known: {KNOWN_CHANNELS}")
    labels = _check_labels(labels)
    if "border" in channels or "centre" in channels:
        distance, largest = instance_distance(labels)
    planes = []
    for channel in channels:
        if channel == "foreground":
            planes.append(labels > 0)
        elif channel == "border":
            widths = rim_width(np.bincount(labels.ravel()))
            rim = (labels > 0) & (distance <= widths[labels])
            planes.append(rim | contact_zone(labels))
        else:  # centre
            scale = np.divide(1.0, largest, out=np.zeros_like(largest), where=largest > 0)
            planes.append(distance * scale[labels])
    if not planes:
        return np.zeros((*labels.shape, 0), dtype=np.float32)
    return np.stack(planes, axis=-1).astype(np.float32)
