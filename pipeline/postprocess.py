"""Network probabilities to nucleus instances (independent of Keras).

The counterpart of ``pipeline.targets.labels_to_targets``. Tested without a model.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.measure import label as connected_components
from skimage.segmentation import relabel_sequential


def remove_small_instances(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop instances with fewer than ``min_size`` pixels; renumber the rest 1..n."""
    if min_size > 0 and labels.max() > 0:
        sizes = np.bincount(labels.ravel())
        too_small = sizes < min_size
        too_small[0] = False
        labels = np.where(too_small[labels], 0, labels)
    return relabel_sequential(labels)[0].astype(np.int32)


def fill_instance_holes(labels: np.ndarray) -> np.ndarray:
    """Fill holes inside each instance (a hole is background enclosed by one instance)."""
    background = labels == 0
    holes = ndimage.binary_fill_holes(~background) & background
    if not holes.any():
        return labels
    # Each hole pixel takes the label of the nearest instance pixel.
    _, (rows, cols) = ndimage.distance_transform_edt(background, return_indices=True)
    filled = labels.copy()
    filled[holes] = labels[rows[holes], cols[holes]]
    return filled


def probabilities_to_labels(
    foreground_prob: np.ndarray,
    threshold: float = 0.5,
    min_size: int = 10,
    fill_holes: bool = True,
) -> np.ndarray:
    """Instance labels (int32, 0 = background) from a foreground probability map.

    Thresholds the map, labels connected components (8-connectivity), optionally fills
    holes and drops instances smaller than ``min_size`` pixels.

    >>> prob = np.zeros((5, 7)); prob[1:4, 1:3] = 0.9; prob[1:4, 4:6] = 0.8
    >>> probabilities_to_labels(prob, min_size=0).max()
    np.int32(2)
    """
    if foreground_prob.ndim != 2:
        raise ValueError(f"expected a 2-D probability map, got shape {foreground_prob.shape}")
    foreground = foreground_prob > threshold
    labels = connected_components(foreground, connectivity=2).astype(np.int32)
    if fill_holes:
        labels = fill_instance_holes(labels)
    return remove_small_instances(labels, min_size)
