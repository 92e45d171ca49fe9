"""The DSB2018 competition metric (pure numpy).

For one image and one threshold ``t``, a true nucleus and a predicted one match when their
intersection over union is *strictly* greater than ``t``. Then

    precision(t) = TP(t) / (TP(t) + FP(t) + FN(t))

with TP the matched pairs, FP the unmatched predictions and FN the unmatched true nuclei.
The image's score is the mean of precision(t) over ``THRESHOLDS`` (0.50, 0.55, ..., 0.95),
and a set's score is the mean over its images. An image with neither true nor predicted
nuclei scores 1; one with only one of the two scores 0.

Because every threshold is at least 0.5, a nucleus can match at most one other (two
objects with IoU > 0.5 with a third would have to share more than half of it each), so
counting the pairs above the threshold is the whole matching: no assignment problem.

The comparison ``IoU > t`` is made exactly in integers, ``100 * intersection >
percent(t) * union``, so an IoU of exactly 3/4 does not match at t = 0.75 whatever the
floating point rounding of 0.75 or of 3/4.

Example
-------
One true nucleus of 4 pixels, predicted by 3 of them: IoU = 3/4, a match at the five
thresholds 0.50 ... 0.70 and a miss plus a false positive at the other five.

>>> import numpy as np
>>> true = np.array([[1, 1, 1, 1]])
>>> pred = np.array([[2, 2, 2, 0]])
>>> iou_matrix(true, pred).tolist()
[[0.75]]
>>> result = score_image(true, pred)
>>> result.score, result.tp.tolist()
(0.5, [1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

__all__ = [
    "THRESHOLDS",
    "ImageScore",
    "SetScore",
    "iou_matrix",
    "relabel_sequential",
    "score_image",
    "score_images",
]

#: IoU thresholds in whole percent: 50, 55, ..., 95. Matching compares against these.
THRESHOLD_PERCENTS = np.arange(50, 100, 5, dtype=np.int64)
#: IoU thresholds of the competition: 0.50, 0.55, ..., 0.95 (10 values).
THRESHOLDS = np.round(THRESHOLD_PERCENTS / 100, 2)

# Relabel through a lookup table when the largest label is at most this, else np.unique.
_LOOKUP_LIMIT = 1 << 24


@dataclass(frozen=True, eq=False)
class ImageScore:
    """The metric on one image.

    Attributes
    ----------
    score : float
        Mean over ``THRESHOLDS`` of ``precision``.
    tp, fp, fn : np.ndarray
        Matched pairs, unmatched predictions and unmatched true nuclei at each threshold.
    precision : np.ndarray
        ``tp / (tp + fp + fn)`` at each threshold (1 where the image has no nucleus at all).
    n_true, n_pred : int
        Number of true and of predicted nuclei.
    """

    score: float
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    precision: np.ndarray
    n_true: int
    n_pred: int


@dataclass(frozen=True, eq=False)
class SetScore:
    """The metric on a set of images.

    Attributes
    ----------
    score : float
        Mean of the images' scores (the competition score).
    per_image : dict of str to float
        Each image's score, by image id, in the order the images were given.
    tp, fp, fn : np.ndarray
        Totals over the images at each threshold.
    """

    score: float
    per_image: dict[str, float]
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray

    @property
    def precision(self) -> np.ndarray:
        """Pooled ``tp / (tp + fp + fn)`` at each threshold (not the competition score)."""
        total = self.tp + self.fp + self.fn
        return np.divide(self.tp, total, out=np.ones(len(total), dtype=float), where=total > 0)


def _check_labels(labels: np.ndarray, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"{name} must be a 2-D label image, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{name} must be an integer label image (0 = background, one value per "
            f"nucleus), got dtype {labels.dtype}; label a binary mask first, "
            "e.g. with skimage.measure.label"
        )
    if labels.size and labels.min() < 0:
        raise ValueError(f"{name} has negative labels (minimum {labels.min()})")
    return labels


def _check_pair(true_labels: np.ndarray, pred_labels: np.ndarray) -> tuple[np.ndarray, ...]:
    true_labels = _check_labels(true_labels, "true_labels")
    pred_labels = _check_labels(pred_labels, "pred_labels")
    if true_labels.shape != pred_labels.shape:
        raise ValueError(
            f"true_labels and pred_labels differ in shape: "
            f"{true_labels.shape} != {pred_labels.shape}"
        )
    return true_labels, pred_labels


def relabel_sequential(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Renumber the labels present as ``1..n`` in ascending order; 0 stays background.

    Parameters
    ----------
    labels : np.ndarray
        Non-negative integer label image, any label values.

    Returns
    -------
    relabelled : np.ndarray
        int64 array of the same shape with labels ``0..n``.
    n : int
        The number of instances.

    Examples
    --------
    >>> relabelled, n = relabel_sequential(np.array([[0, 7], [42, 7]]))
    >>> relabelled.tolist(), n
    ([[0, 1], [2, 1]], 2)
    """
    labels = _check_labels(labels, "labels")
    relabelled, n = _relabel_flat(labels.ravel())
    return relabelled.reshape(labels.shape), n


def _relabel_flat(flat: np.ndarray) -> tuple[np.ndarray, int]:
    """`relabel_sequential` of a checked 1-D array."""
    flat = flat.astype(np.int64, copy=False)
    if flat.size == 0:
        return flat, 0
    top = int(flat.max())
    if top <= _LOOKUP_LIMIT:
        present = np.bincount(flat, minlength=top + 1) > 0
        present[0] = False
        lookup = np.cumsum(present) * present
        return lookup[flat], int(present.sum())
    values, inverse = np.unique(flat, return_inverse=True)
    n_background = int(values[0] == 0)  # 1 when background is present, it keeps 0
    relabelled = inverse.reshape(-1).astype(np.int64) + (1 - n_background)
    return relabelled, len(values) - n_background


def _overlaps(
    true_labels: np.ndarray, pred_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int]:
    """The non-zero cells of the joint histogram of two label images.

    Returns the 0-based true and predicted object of each overlapping pair, the pair's
    intersection and union in pixels, each object's area, and the object counts.
    """
    true_flat, n_true = _relabel_flat(true_labels.ravel())
    pred_flat, n_pred = _relabel_flat(pred_labels.ravel())
    true_area = np.bincount(true_flat, minlength=n_true + 1)[1:]
    pred_area = np.bincount(pred_flat, minlength=n_pred + 1)[1:]
    both = (true_flat > 0) & (pred_flat > 0)
    # One key per (true, pred) pair; counting the keys is the joint histogram.
    keys = (true_flat[both] - 1) * n_pred + (pred_flat[both] - 1)
    pair_keys, intersection = np.unique(keys, return_counts=True)
    true_index, pred_index = np.divmod(pair_keys, max(n_pred, 1))
    union = true_area[true_index] + pred_area[pred_index] - intersection
    return true_index, pred_index, intersection, union, true_area, n_true, n_pred


def iou_matrix(true_labels: np.ndarray, pred_labels: np.ndarray) -> np.ndarray:
    """Intersection over union of every true nucleus with every predicted one.

    Parameters
    ----------
    true_labels, pred_labels : np.ndarray
        2-D non-negative integer label images of the same shape (0 = background); label
        values need not be consecutive.

    Returns
    -------
    np.ndarray
        float64 array ``(n_true, n_pred)``; row ``i`` is the ``i``-th smallest true label,
        column ``j`` the ``j``-th smallest predicted label.

    Examples
    --------
    >>> iou_matrix(np.array([[1, 1, 0]]), np.array([[0, 5, 5]])).tolist()
    [[0.3333333333333333]]
    """
    true_labels, pred_labels = _check_pair(true_labels, pred_labels)
    true_index, pred_index, intersection, union, _, n_true, n_pred = _overlaps(
        true_labels, pred_labels
    )
    iou = np.zeros((n_true, n_pred), dtype=np.float64)
    iou[true_index, pred_index] = intersection / union
    return iou


def score_image(true_labels: np.ndarray, pred_labels: np.ndarray) -> ImageScore:
    """The competition metric on one image.

    Parameters
    ----------
    true_labels, pred_labels : np.ndarray
        2-D non-negative integer label images of the same shape (0 = background).

    Returns
    -------
    ImageScore
        The score and the TP, FP, FN counts at each of the ``THRESHOLDS``.

    Examples
    --------
    >>> truth = np.array([[1, 1, 0, 2]])
    >>> score_image(truth, truth).score
    1.0
    >>> score_image(truth, np.zeros_like(truth)).score
    0.0
    """
    true_labels, pred_labels = _check_pair(true_labels, pred_labels)
    _, _, intersection, union, _, n_true, n_pred = _overlaps(true_labels, pred_labels)
    # matched[k, p]: pair p has IoU > THRESHOLDS[k], compared exactly in integers.
    matched = 100 * intersection[None, :] > THRESHOLD_PERCENTS[:, None] * union[None, :]
    tp = matched.sum(axis=1).astype(np.int64)
    fp = n_pred - tp
    fn = n_true - tp
    total = tp + fp + fn
    precision = np.divide(tp, total, out=np.ones(len(tp), dtype=float), where=total > 0)
    return ImageScore(
        score=float(precision.mean()),
        tp=tp,
        fp=fp,
        fn=fn,
        precision=precision,
        n_true=n_true,
        n_pred=n_pred,
    )


def score_images(
    pairs: Mapping[str, tuple[np.ndarray, np.ndarray]]
    | Iterable[tuple[str, tuple[np.ndarray, np.ndarray]]],
) -> SetScore:
    """The competition metric on a set of images: the mean of the images' scores.

    Parameters
    ----------
    pairs : mapping or iterable
        ``{image_id: (true_labels, pred_labels)}``, or an iterable of
        ``(image_id, (true_labels, pred_labels))`` so that images can be decoded one at a
        time and memory stays bounded.

    Returns
    -------
    SetScore
        The mean score, each image's score and the per-threshold TP, FP, FN totals.

    Raises
    ------
    ValueError
        When there is no image, an image id repeats, or a pair is invalid.

    Examples
    --------
    >>> truth = np.array([[1, 0, 2]])
    >>> result = score_images({"a": (truth, truth), "b": (truth, 0 * truth)})
    >>> result.score, result.per_image
    (0.5, {'a': 1.0, 'b': 0.0})
    """
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    per_image: dict[str, float] = {}
    totals = np.zeros((3, len(THRESHOLDS)), dtype=np.int64)
    for image_id, (true_labels, pred_labels) in items:
        if image_id in per_image:
            raise ValueError(f"image {image_id!r} given twice")
        try:
            result = score_image(true_labels, pred_labels)
        except ValueError as error:
            raise ValueError(f"image {image_id!r}: {error}") from None
        per_image[image_id] = result.score
        totals += np.stack([result.tp, result.fp, result.fn])
    if not per_image:
        raise ValueError("no image to score")
    return SetScore(
        score=float(np.mean(list(per_image.values()))),
        per_image=per_image,
        tp=totals[0],
        fp=totals[1],
        fn=totals[2],
    )
