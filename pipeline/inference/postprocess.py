"""Network probabilities to nucleus instances (independent of Keras).

The counterpart of ``pipeline.core.targets.labels_to_targets``. Tested without a model.

Three methods (``method=``):

``"components"``
    The connected components (8-connectivity) of ``foreground_prob > threshold``. Two
    nuclei that touch become one instance.
``"watershed"``
    Marker-controlled watershed, the DSB2018 winners' way to split touching nuclei:

    1. mask: ``foreground_prob > threshold``;
    2. markers: the 4-connected components, inside the mask, of
       ``centre_prob > marker_threshold`` when a centre map is given, else of
       ``foreground_prob - border_weight * border_prob > marker_threshold`` when a border
       map is given, else of the mask's own centre map (each component's distance to its
       edge divided by its largest, as `pipeline.core.targets` computes it from labels; this
       splits only nuclei of similar size with a narrow waist between them);
       markers smaller than ``min_marker_size`` pixels are dropped;
    3. ``skimage.segmentation.watershed`` of the elevation ``-centre`` (or
       ``-(foreground - border_weight * border)``) from the markers, within the mask;
    4. a piece of the mask that holds no marker keeps its own connected component, so no
       nucleus is lost.
``"random_walker"``
    The watershed's mask and markers, but step 3 is ``skimage.segmentation.random_walker``
    on ``foreground_prob`` (the walk crosses where the probability dips between touching
    nuclei, and shares a flat piece between its markers by distance), run per connected
    piece of the mask that holds two or more markers (a piece with one marker is that
    marker's instance). A published DSB2018 ablation (samuelschen/DSB2018) measured it
    +0.01 over the watershed.

Both then fill holes (optional) and drop instances smaller than ``min_size`` pixels.

`instances_from_channels` takes the network's (H, W, C) output with its channel names and
a dict of parameters; `pipeline.evaluation.tuning.tune_postprocess` grid-searches those
parameters for the best mean competition score on validation images.

Example
-------
Two touching 5 x 5 squares with their perfect targets: the components merge them, the
watershed on foreground minus border splits them again.

>>> from pipeline.core.targets import TARGET_SETS, labels_to_targets
>>> labels = np.zeros((7, 12), np.int32)
>>> labels[1:6, 1:6] = 1
>>> labels[1:6, 6:11] = 2
>>> prob = labels_to_targets(labels, TARGET_SETS["border"])
>>> params = {"min_size": 0, "marker_threshold": 0.5, "min_marker_size": 1}
>>> int(instances_from_channels(prob, ("foreground", "border"), params).max())
2
>>> int(instances_from_channels(prob[..., :1], ("foreground",), params).max())
1
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.measure import label as connected_components
from skimage.segmentation import random_walker, watershed

from pipeline.config import METHODS, POSTPROCESS_DEFAULTS
from pipeline.core.targets import labels_to_targets

__all__ = [
    "DEFAULT_PARAMS",
    "METHODS",
    "PARAM_NAMES",
    "ChannelMaps",
    "fill_instance_holes",
    "instances_from_channels",
    "maps_from_channels",
    "probabilities_to_labels",
    "remove_small_instances",
    "resolve_params",
]

#: Defaults of the post-processing parameters, as `pipeline.config.PredictConfig` declares
#: them (``method`` is chosen from the channels by `instances_from_channels` when not
#: given).
DEFAULT_PARAMS: dict[str, Any] = dict(POSTPROCESS_DEFAULTS)
#: The parameter names `instances_from_channels` and the tuning's grid search accept.
PARAM_NAMES = tuple(DEFAULT_PARAMS)


def remove_small_instances(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop instances with fewer than ``min_size`` pixels; renumber the rest 1..n.

    The instances keep their order. One lookup table, no sort.

    >>> remove_small_instances(np.array([[0, 7, 7, 3, 9, 9]]), min_size=2).tolist()
    [[0, 1, 1, 0, 2, 2]]
    """
    labels = np.asarray(labels)
    if labels.size == 0 or labels.max() <= 0:
        return np.zeros(labels.shape, dtype=np.int32)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= max(min_size, 1)
    keep[0] = False
    lookup = (np.cumsum(keep) * keep).astype(np.int32)
    return lookup[labels]


def _hole_sources(foreground: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of a mask's holes, and of the foreground pixel nearest to each."""
    background = ~foreground
    holes = ndimage.binary_fill_holes(foreground) & background
    hole_index = np.flatnonzero(holes)
    if hole_index.size == 0:
        return hole_index, hole_index
    _, (rows, cols) = ndimage.distance_transform_edt(background, return_indices=True)
    source = np.ravel_multi_index(
        (rows.ravel()[hole_index], cols.ravel()[hole_index]), foreground.shape
    )
    return hole_index, source


def _fill_from(labels: np.ndarray, hole_index: np.ndarray, source: np.ndarray) -> np.ndarray:
    if hole_index.size == 0:
        return labels
    filled = labels.copy()
    filled.ravel()[hole_index] = labels.ravel()[source]
    return filled


def fill_instance_holes(labels: np.ndarray) -> np.ndarray:
    """Fill holes inside each instance (a hole is background enclosed by one instance).

    Each hole pixel takes the label of the nearest instance pixel.
    """
    return _fill_from(labels, *_hole_sources(labels != 0))


class ChannelMaps:
    """One image's probability maps and what is shared between parameter settings.

    The mask, its components, its centre map and its holes depend on the threshold only;
    a tuning run asks for them once per threshold instead of once per setting. Both
    methods label exactly the mask's pixels, so the holes of their labels are the mask's.
    """

    def __init__(
        self,
        foreground_prob: np.ndarray,
        border_prob: np.ndarray | None,
        centre_prob: np.ndarray | None,
    ) -> None:
        self.foreground = foreground_prob
        self.border = border_prob
        self.centre = centre_prob
        self._masks: dict[float, np.ndarray] = {}
        self._components: dict[float, np.ndarray] = {}
        self._mask_centres: dict[float, np.ndarray] = {}
        self._holes: dict[float, tuple[np.ndarray, np.ndarray]] = {}

    def mask(self, threshold: float) -> np.ndarray:
        if threshold not in self._masks:
            self._masks[threshold] = self.foreground > threshold
        return self._masks[threshold]

    def components(self, threshold: float) -> np.ndarray:
        if threshold not in self._components:
            self._components[threshold] = connected_components(
                self.mask(threshold), connectivity=2
            ).astype(np.int32)
        return self._components[threshold]

    def mask_centre(self, threshold: float) -> np.ndarray:
        if threshold not in self._mask_centres:
            components = self.components(threshold)
            self._mask_centres[threshold] = labels_to_targets(components, ("centre",))[..., 0]
        return self._mask_centres[threshold]

    def fill_holes(self, labels: np.ndarray, threshold: float) -> np.ndarray:
        """`fill_instance_holes` of labels whose foreground is ``mask(threshold)``."""
        if threshold not in self._holes:
            self._holes[threshold] = _hole_sources(self.mask(threshold))
        return _fill_from(labels, *self._holes[threshold])

    def finish(self, params: Mapping[str, Any]) -> np.ndarray:
        """The labels of a setting: raw labels, holes filled, small instances dropped."""
        labels = self.raw_labels(params)
        if params["fill_holes"]:
            labels = self.fill_holes(labels, float(params["threshold"]))
        return remove_small_instances(labels, int(params["min_size"]))

    def raw_key(self, params: Mapping[str, Any]) -> tuple:
        """The parameters the labels before hole filling and size filtering depend on."""
        threshold = float(params["threshold"])
        if params["method"] == "components":
            return ("components", threshold)
        uses_border = self.centre is None and self.border is not None
        return (
            params["method"],
            threshold,
            float(params["marker_threshold"]),
            float(params["border_weight"]) if uses_border else None,
            int(params["min_marker_size"]),
        )

    def raw_labels(self, params: Mapping[str, Any]) -> np.ndarray:
        """Instance labels before hole filling and size filtering."""
        threshold = float(params["threshold"])
        if params["method"] == "components":
            return self.components(threshold)
        mask = self.mask(threshold)
        if self.centre is not None:
            score = self.centre
        elif self.border is not None:
            score = self.foreground - float(params["border_weight"]) * self.border
        else:
            score = self.mask_centre(threshold)
        markers = connected_components(
            (score > float(params["marker_threshold"])) & mask, connectivity=1
        ).astype(np.int32)
        markers = remove_small_instances(markers, int(params["min_marker_size"]))
        if params["method"] == "random_walker":
            labels = _random_walk(self.foreground, markers, self.components(threshold))
        else:
            labels = watershed(-score, markers, mask=mask).astype(np.int32)
        # Parts of the mask that no marker reached keep their own component.
        unreached = mask & (labels == 0)
        if unreached.any():
            pieces = connected_components(unreached, connectivity=2).astype(np.int32)
            labels = np.where(pieces > 0, pieces + labels.max(), labels)
        return labels


#: The random walker's edge weights are exp(-beta * difference**2) between neighbouring
#: foreground probabilities (skimage's default beta).
RANDOM_WALKER_BETA = 130.0


def _random_walk(prob: np.ndarray, markers: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Grow the markers over their pieces of the mask by a random walker on ``prob``.

    Each connected piece (``components``) is solved on its own bounding box: a piece with
    no marker stays unlabelled (the caller gives it its own instance), one with a single
    marker becomes that marker's instance, and one with several is shared between them.
    """
    labels = np.zeros(markers.shape, np.int32)
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        inside = components[box] == index
        seeds = np.where(inside, markers[box], 0)
        present = np.unique(seeds[seeds > 0])
        if len(present) == 0:
            continue
        if len(present) == 1:
            labels[box][inside] = present[0]
            continue
        data = prob[box].astype(np.float64)
        if data.std() == 0:  # skimage scales beta by the spread: nothing to walk on
            labels[box][inside] = watershed(np.zeros_like(data), seeds, mask=inside)[inside]
            continue
        # Seeds numbered 1..n: random_walker renumbers them so when it solves, and hands
        # them back as given when nothing is left to solve; either way 1..n come back.
        numbered = np.where(seeds > 0, np.searchsorted(present, seeds) + 1, 0)
        with warnings.catch_warnings():  # its solver's tolerance notes, not the user's
            warnings.simplefilter("ignore", UserWarning)
            walked = random_walker(data, np.where(inside, numbered, -1), beta=RANDOM_WALKER_BETA)
        labels[box][inside] = np.concatenate([[0], present])[np.maximum(walked[inside], 0)]
    return labels


def _check_map(name: str, prob: np.ndarray | None, shape: tuple[int, ...]) -> None:
    if prob is not None and prob.shape != shape:
        raise ValueError(f"{name} has shape {prob.shape}, foreground_prob {shape}")


def probabilities_to_labels(
    foreground_prob: np.ndarray,
    border_prob: np.ndarray | None = None,
    centre_prob: np.ndarray | None = None,
    **params: Any,
) -> np.ndarray:
    """Instance labels (int32, 0 = background) from probability maps.

    Parameters
    ----------
    foreground_prob : np.ndarray
        2-D foreground probability.
    border_prob, centre_prob : np.ndarray, optional
        Border and centre probabilities (the ``border`` and ``centre`` channels of
        `pipeline.core.targets`), same shape; used by the watershed only.
    **params
        Any of `PARAM_NAMES` (declared, with their defaults and meaning, in
        `pipeline.config.PredictConfig`): ``threshold`` (a pixel is foreground strictly
        above it), ``min_size`` (smaller instances are dropped, after hole filling),
        ``fill_holes``, ``method`` (see the module docstring), ``marker_threshold`` and
        ``border_weight`` (watershed markers are where ``foreground - weight * border``
        is strictly above the threshold) and ``min_marker_size`` (smaller markers are
        dropped; 3 gave the best watershed from perfect foreground and border targets
        on 30 stage1_train images: 1: 0.992, 3: 0.995, 5: 0.992, 8: 0.988).

    Returns
    -------
    np.ndarray
        int32 labels ``0..n``, consecutive.

    Examples
    --------
    >>> prob = np.zeros((5, 7)); prob[1:4, 1:3] = 0.9; prob[1:4, 4:6] = 0.8
    >>> probabilities_to_labels(prob, min_size=0).max()
    np.int32(2)
    """
    foreground_prob = np.asarray(foreground_prob)
    if foreground_prob.ndim != 2:
        raise ValueError(f"expected a 2-D probability map, got shape {foreground_prob.shape}")
    resolved = resolve_params((), params)
    _check_map("border_prob", border_prob, foreground_prob.shape)
    _check_map("centre_prob", centre_prob, foreground_prob.shape)
    maps = ChannelMaps(foreground_prob, border_prob, centre_prob)
    return maps.finish(resolved)


def resolve_params(channels: Sequence[str], params: Mapping[str, Any]) -> dict[str, Any]:
    """All parameters: the given ones over the defaults; the method from the channels."""
    unknown = sorted(set(params) - set(PARAM_NAMES))
    if unknown:
        raise ValueError(f"unknown post-processing parameters {unknown}; known: {PARAM_NAMES}")
    resolved = dict(DEFAULT_PARAMS)
    if "border" in channels or "centre" in channels:
        resolved["method"] = "watershed"
    resolved.update(params)
    if resolved["method"] not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {resolved['method']!r}")
    return resolved


def maps_from_channels(prob: np.ndarray, channels: Sequence[str]) -> ChannelMaps:
    prob = np.asarray(prob)
    channels = tuple(channels)
    if prob.ndim != 3 or prob.shape[-1] != len(channels):
        raise ValueError(
            f"expected (H, W, {len(channels)}) probabilities for channels {channels}, "
            f"got shape {prob.shape}"
        )
    if not channels or channels[0] != "foreground":
        raise ValueError(f"the first channel must be 'foreground', got {channels}")
    unknown = [name for name in channels if name not in ("foreground", "border", "centre")]
    if unknown or len(set(channels)) != len(channels):
        raise ValueError(f"channels must be distinct foreground/border/centre, got {channels}")

    def plane(name: str) -> np.ndarray | None:
        return prob[..., channels.index(name)] if name in channels else None

    return ChannelMaps(prob[..., 0], plane("border"), plane("centre"))


def instances_from_channels(
    prob: np.ndarray, channels: Sequence[str], params: Mapping[str, Any] | None = None
) -> np.ndarray:
    """Instance labels from the network's multi-channel output.

    Parameters
    ----------
    prob : np.ndarray
        ``(H, W, C)`` probabilities, one channel per name in ``channels``.
    channels : sequence of str
        The channel names, ``"foreground"`` first (a value of
        ``pipeline.core.targets.TARGET_SETS``); ``"border"`` and ``"centre"`` are passed to
        `probabilities_to_labels` as ``border_prob`` and ``centre_prob``.
    params : mapping, optional
        Any of `PARAM_NAMES`; the others take `DEFAULT_PARAMS`, except ``method``, which
        defaults to ``"watershed"`` when there is a border or centre channel.

    Returns
    -------
    np.ndarray
        int32 labels ``0..n``.

    Raises
    ------
    ValueError
        For an unknown parameter name, a bad method, channels not starting with
        ``"foreground"``, or a shape that does not match the channels.

    Examples
    --------
    >>> prob = np.zeros((3, 6, 2)); prob[..., 0] = 1.0; prob[:, 2:4, 1] = 1.0
    >>> instances_from_channels(prob, ("foreground", "border"), {"min_size": 0}).tolist()
    [[1, 1, 1, 2, 2, 2], [1, 1, 1, 2, 2, 2], [1, 1, 1, 2, 2, 2]]
    """
    resolved = resolve_params(channels, params or {})
    maps = maps_from_channels(prob, channels)
    return maps.finish(resolved)
