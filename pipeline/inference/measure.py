"""Measurements of predicted nuclei: one row per nucleus, as a biologist's table wants.

`measure_nuclei` turns an instance label image (and the image it came from) into a
``pandas.DataFrame``: the nucleus' label, its area in pixels, its centroid (row, column),
its mean grey intensity in the original image, its eccentricity (0: a circle) and its
solidity (area over convex-hull area; 1: convex). ``predict --measurements`` writes these
rows for every image, and ``serve`` shows them in its table and its API.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from skimage.measure import regionprops_table

#: The columns of a measurements table, in order (``image`` first when there are several).
COLUMNS = (
    "label",
    "area",
    "centroid_row",
    "centroid_col",
    "mean_intensity",
    "eccentricity",
    "solidity",
)


def measure_nuclei(labels: np.ndarray, image: np.ndarray) -> pd.DataFrame:
    """One row per nucleus of ``labels`` (int, 0 = background), in label order.

    ``image`` is the picture the labels were predicted on, (H, W) or (H, W, C) of the same
    height and width; the mean intensity is taken on its grey level (the mean of the
    channels), in the image's own units.

    >>> labels = np.zeros((4, 6), np.int32); labels[1:3, 1:3] = 1; labels[0, 4:6] = 2
    >>> image = np.full((4, 6), 10, np.uint8); image[1:3, 1:3] = 200
    >>> measure_nuclei(labels, image)[["label", "area", "centroid_row", "mean_intensity"]]
       label  area  centroid_row  mean_intensity
    0      1     4           1.5           200.0
    1      2     2           0.0            10.0
    """
    labels = np.asarray(labels)
    image = np.asarray(image)
    if labels.ndim != 2 or image.shape[:2] != labels.shape:
        raise ValueError(f"labels {labels.shape} and image {image.shape} do not match")
    grey = image.astype(np.float64)
    if grey.ndim == 3:
        grey = grey.mean(axis=2)
    properties = ("label", "area", "centroid", "intensity_mean", "eccentricity", "solidity")
    table = pd.DataFrame(
        regionprops_table(labels.astype(np.int32), intensity_image=grey, properties=properties)
    )
    table = table.rename(
        columns={
            "centroid-0": "centroid_row",
            "centroid-1": "centroid_col",
            "intensity_mean": "mean_intensity",
        }
    )
    if table.empty:
        return pd.DataFrame({name: pd.Series(dtype=float) for name in COLUMNS})
    table["label"] = table["label"].astype(np.int64)
    table["area"] = table["area"].astype(np.int64)
    return table[list(COLUMNS)].sort_values("label", ignore_index=True)
