"""The typical nucleus size a model was trained on, for ``predict --diameter`` (Cellpose's way).

A user who knows the typical diameter of their nuclei in pixels gives it; each image is
rescaled so that it matches the median diameter of the nuclei the model was trained on
(`pipeline.core.scale_policy.training_median_diameter`), predicted, and brought back to
its own size (`pipeline.core.scale_policy`).

A training records that median in the model folder, `NUCLEI_FILE`, when it has split its
images (`record_training_nuclei`): the equivalent diameter (of a disc of the same area) of
every nucleus of the training images as the network sees them, median over all. A model
without the record (``models/default``, trained before it existed) falls back to
`STAGE1_TRAIN_MEDIAN_DIAMETER`, measured once by the same function on that model's own
training split (`split_median_diameter`; the command is in docs/your-images.md).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from pipeline.core.model_store import SPLIT_FILE, read_json, training_images_dir, write_json
from pipeline.data.extra import load_labelled

log = logging.getLogger(__name__)

#: The model folder's record of its training nuclei.
NUCLEI_FILE = "nuclei.json"
#: The median equivalent diameter, in pixels, of the 23,108 nuclei of the 507 images of
#: models/default's training split of stage1_train (`split_median_diameter`: 19.899),
#: for models without a record.
STAGE1_TRAIN_MEDIAN_DIAMETER = 19.9


def equivalent_diameters(labels: np.ndarray) -> np.ndarray:
    """The equivalent diameter (of a disc of the same area) of each instance of ``labels``.

    >>> equivalent_diameters(np.array([[1, 1, 0], [1, 1, 0], [0, 0, 3]])).round(3).tolist()
    [2.257, 1.128]
    """
    areas = np.bincount(np.asarray(labels).ravel().astype(np.int64, copy=False))[1:]
    return 2.0 * np.sqrt(areas[areas > 0] / math.pi)


def median_nucleus_diameter(label_images: Iterable[np.ndarray]) -> tuple[float | None, int]:
    """``(median, count)``: the median equivalent diameter over every nucleus of every
    label image (None when there is none), and the number of nuclei.

    >>> median_nucleus_diameter([np.array([[1, 1, 2]]), np.array([[0, 5]])])[1]
    3
    """
    diameters = [equivalent_diameters(labels) for labels in label_images]
    every = np.concatenate(diameters) if diameters else np.zeros(0)
    return (float(np.median(every)) if every.size else None), int(every.size)


def record_training_nuclei(model_dir: Path, samples) -> None:
    """Write `NUCLEI_FILE` for the training ``samples`` (as prepared for the network)."""
    median, count = median_nucleus_diameter(sample.labels for sample in samples)
    record = {"median_diameter": median, "nuclei": count, "images": len(samples)}
    write_json(Path(model_dir) / NUCLEI_FILE, record)


def recorded_median_diameter(model_dir: Path) -> tuple[float, str]:
    """``(diameter, where from)``: the median nucleus diameter a model's `NUCLEI_FILE`
    records, else `STAGE1_TRAIN_MEDIAN_DIAMETER` (a model of the nucleus policy was trained
    on its ``nucleus_diameter``: `pipeline.core.scale_policy.training_median_diameter`)."""
    median = read_json(Path(model_dir) / NUCLEI_FILE).get("median_diameter")
    if isinstance(median, (int, float)) and math.isfinite(median) and median > 0:
        return float(median), NUCLEI_FILE
    return STAGE1_TRAIN_MEDIAN_DIAMETER, "stage1_train's (the model records none)"


def split_median_diameter(model_dir: Path) -> tuple[float | None, int]:
    """`median_nucleus_diameter` of the training images recorded in a model's
    ``split.json`` (its ``train`` ids, read from its ``images_dir``), at their own scale."""
    ids = read_json(Path(model_dir) / SPLIT_FILE).get("train", [])
    samples = load_labelled(training_images_dir(model_dir), ids)
    return median_nucleus_diameter(sample.labels for sample in samples)
