"""The competition metric on hand-made label images with exact expected values."""

from __future__ import annotations

import doctest
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.evaluation import metric
from pipeline.evaluation.metric import (
    THRESHOLDS,
    iou_matrix,
    relabel_sequential,
    score_image,
    score_images,
)

ALL = [1] * 10
NONE = [0] * 10


def test_thresholds_are_the_ten_competition_values() -> None:
    assert THRESHOLDS.tolist() == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]


# (true label rows, predicted label rows, TP, FP, FN per threshold, exact score)
CASES = [
    pytest.param(
        [[1, 1, 1, 1]],
        [[1, 1, 1, 0]],
        [1] * 5 + [0] * 5,
        [0] * 5 + [1] * 5,
        [0] * 5 + [1] * 5,
        Fraction(1, 2),
        id="iou-exactly-3/4-matches-up-to-0.70",
    ),
    pytest.param(
        [[1, 1]], [[1, 0]], NONE, ALL, ALL, Fraction(0), id="iou-exactly-1/2-never-matches"
    ),
    pytest.param(
        [[1] * 10],
        [[1] * 9 + [0]],
        [1] * 8 + [0] * 2,
        [0] * 8 + [1] * 2,
        [0] * 8 + [1] * 2,
        Fraction(4, 5),
        id="iou-exactly-0.9-matches-up-to-0.85",
    ),
    pytest.param(
        [[1] * 20],
        [[1] * 19 + [0]],
        [1] * 9 + [0],
        [0] * 9 + [1],
        [0] * 9 + [1],
        Fraction(9, 10),
        id="iou-exactly-0.95-misses-only-0.95",
    ),
    pytest.param(
        [[1] * 21], [[1] * 20 + [0]], ALL, NONE, NONE, Fraction(1), id="iou-20/21-matches-all"
    ),
    pytest.param(
        [[1, 0, 2]], [[9, 0, 4]], [2] * 10, NONE, NONE, Fraction(1), id="perfect-relabelled"
    ),
    pytest.param([[1, 0, 2]], [[0, 0, 0]], NONE, NONE, [2] * 10, Fraction(0), id="no-predictions"),
    pytest.param([[0, 0]], [[0, 3]], NONE, ALL, NONE, Fraction(0), id="no-true-nuclei"),
    pytest.param([[0, 0]], [[0, 0]], NONE, NONE, NONE, Fraction(1), id="both-empty"),
    pytest.param(
        [[1, 1, 1, 1, 1, 1, 2, 2]],
        [[1] * 8],
        [1] * 5 + [0] * 5,
        [0] * 5 + [1] * 5,
        [1] * 5 + [2] * 5,
        Fraction(1, 4),
        id="merge-of-unequal-pair-keeps-the-big-one-below-0.75",
    ),
    pytest.param(
        [[1] * 8],
        [[1] * 6 + [2] * 2],
        [1] * 5 + [0] * 5,
        [1] * 5 + [2] * 5,
        [0] * 5 + [1] * 5,
        Fraction(1, 4),
        id="unequal-split-keeps-the-big-piece-below-0.75",
    ),
    pytest.param(
        [[1, 1, 0], [1, 2, 2], [0, 2, 2]],
        [[5, 5, 5], [8, 0, 7], [0, 7, 7]],
        [1] * 5 + [0] * 5,
        [2] * 5 + [3] * 5,
        [1] * 5 + [2] * 5,
        Fraction(1, 8),
        id="3x3-one-match-at-3/4",
    ),
]


@pytest.mark.parametrize(("true_rows", "pred_rows", "tp", "fp", "fn", "expected"), CASES)
def test_score_image_exact(
    true_rows: list[list[int]],
    pred_rows: list[list[int]],
    tp: list[int],
    fp: list[int],
    fn: list[int],
    expected: Fraction,
) -> None:
    result = score_image(np.array(true_rows), np.array(pred_rows))
    assert result.tp.tolist() == tp
    assert result.fp.tolist() == fp
    assert result.fn.tolist() == fn
    assert result.score == pytest.approx(float(expected), abs=1e-15)
    assert result.n_true == len(np.unique(true_rows)) - (0 in np.unique(true_rows))
    assert result.n_pred == len(np.unique(pred_rows)) - (0 in np.unique(pred_rows))


@pytest.mark.parametrize("k", range(9, 21))
def test_iou_of_k_twentieths_matches_the_thresholds_strictly_below(k: int) -> None:
    """IoU = k/20 lands exactly on a threshold for k = 10..19; it matches t < k/20 only."""
    true = np.ones((1, 20), dtype=np.int32)
    pred = np.zeros((1, 20), dtype=np.int32)
    pred[0, :k] = 1
    matched = max(k - 10, 0)  # thresholds 0.50, 0.55, ... strictly below k/20
    result = score_image(true, pred)
    assert result.tp.tolist() == [1] * matched + [0] * (10 - matched)
    assert result.score == pytest.approx(matched / 10, abs=1e-15)


def hand_image() -> tuple[np.ndarray, np.ndarray]:
    """One merged pair, one split, one missed, one extra, one exact, one partial match."""
    true = np.zeros((12, 10), dtype=np.int32)
    pred = np.zeros((12, 10), dtype=np.int32)
    true[0, 0:4], true[0, 4:8] = 1, 2  # A and B ...
    pred[0, 0:8] = 1  # ... merged: IoU 4/8 with each, no match
    true[2, 0:8] = 3  # C ...
    pred[2, 0:4], pred[2, 4:8] = 2, 3  # ... split: IoU 4/8 with each piece, no match
    true[4, 0:4] = 4  # D: missed
    true[6, 0:4] = 5  # E ...
    pred[6, 0:4] = 4  # ... found exactly
    pred[8, 0:2] = 5  # extra
    true[10, 0:10] = 6  # F ...
    pred[10, 0:8] = 6  # ... found with IoU 8/10: a match below 0.80
    return true, pred


def test_merged_split_missed_extra_by_hand() -> None:
    true, pred = hand_image()
    result = score_image(true, pred)
    assert (result.n_true, result.n_pred) == (6, 6)
    # t = 0.50..0.75: E and F match; t = 0.80..0.95: only E.
    assert result.tp.tolist() == [2] * 6 + [1] * 4
    assert result.fp.tolist() == [4] * 6 + [5] * 4
    assert result.fn.tolist() == [4] * 6 + [5] * 4
    np.testing.assert_allclose(result.precision, [1 / 5] * 6 + [1 / 11] * 4, rtol=0, atol=1e-15)
    assert result.score == pytest.approx(float(Fraction(43, 275)), abs=1e-15)


def test_iou_matrix_exact_fractions() -> None:
    true = np.array([[1, 1, 0], [1, 2, 2], [0, 2, 2]])
    pred = np.array([[5, 5, 5], [8, 0, 7], [0, 7, 7]])
    # Rows: true 1, 2; columns: predicted 5, 7, 8 (ascending label values).
    np.testing.assert_allclose(
        iou_matrix(true, pred), [[1 / 2, 0, 1 / 3], [0, 3 / 4, 0]], rtol=0, atol=1e-15
    )
    assert iou_matrix(true, np.zeros_like(pred)).shape == (2, 0)
    assert iou_matrix(np.zeros_like(true), pred).shape == (0, 3)


def test_iou_matrix_of_the_hand_image() -> None:
    true, pred = hand_image()
    iou = iou_matrix(true, pred)
    assert iou.shape == (6, 6)
    expected = np.zeros((6, 6))
    expected[0, 0] = expected[1, 0] = 0.5  # merged
    expected[2, 1] = expected[2, 2] = 0.5  # split
    expected[4, 3] = 1.0
    expected[5, 5] = 0.8
    np.testing.assert_allclose(iou, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize(
    ("true", "pred", "message"),
    [
        (np.zeros((2, 2), int), np.zeros((2, 3), int), r"differ in shape: \(2, 2\) != \(2, 3\)"),
        (np.zeros((2, 2, 1), int), np.zeros((2, 2, 1), int), "true_labels must be a 2-D"),
        (np.zeros((2, 2), int), np.zeros((2, 2), float), "pred_labels must be an integer"),
        (np.zeros((2, 2), bool), np.zeros((2, 2), int), "skimage.measure.label"),
        (np.array([[0, -1]]), np.zeros((1, 2), int), "negative labels"),
    ],
)
def test_invalid_inputs_raise_value_error(true: np.ndarray, pred: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        score_image(true, pred)
    with pytest.raises(ValueError, match=message):
        iou_matrix(true, pred)


def test_relabel_sequential_both_ways_agree() -> None:
    labels = np.array([[0, 7, 7], [42, 0, 3]])
    relabelled, n = relabel_sequential(labels)
    assert relabelled.tolist() == [[0, 2, 2], [3, 0, 1]] and n == 3
    # Huge label values go through np.unique instead of a lookup table: same answer.
    huge, n_huge = relabel_sequential(labels * 2**40)
    assert huge.tolist() == relabelled.tolist() and n_huge == 3
    no_background, n_all = relabel_sequential(np.array([[2**40, 5]]))
    assert no_background.tolist() == [[2, 1]] and n_all == 2


def test_huge_label_values_score_like_small_ones() -> None:
    true, pred = hand_image()
    big = score_image(true.astype(np.int64) * 2**40, pred.astype(np.int64) * 2**35 + (pred > 0))
    assert big.score == pytest.approx(float(Fraction(43, 275)), abs=1e-15)


def test_score_images_means_over_images_and_totals_counts() -> None:
    true, pred = hand_image()
    perfect = np.array([[1, 0, 2]])
    result = score_images(
        {"hand": (true, pred), "perfect": (perfect, perfect), "blank": (0 * perfect, perfect)}
    )
    assert result.per_image == pytest.approx(
        {"hand": float(Fraction(43, 275)), "perfect": 1.0, "blank": 0.0}, abs=1e-15
    )
    assert list(result.per_image) == ["hand", "perfect", "blank"]
    assert result.score == pytest.approx(float((Fraction(43, 275) + 1) / 3), abs=1e-15)
    assert result.tp.tolist() == [4] * 6 + [3] * 4
    assert result.fp.tolist() == [6] * 6 + [7] * 4
    assert result.fn.tolist() == [4] * 6 + [5] * 4
    np.testing.assert_allclose(result.precision, [4 / 14] * 6 + [3 / 15] * 4, atol=1e-15)


def test_score_images_takes_an_iterable_and_refuses_bad_sets() -> None:
    perfect = np.array([[1, 0, 2]])
    assert score_images(iter([("a", (perfect, perfect))])).score == 1.0
    with pytest.raises(ValueError, match="no image"):
        score_images({})
    with pytest.raises(ValueError, match="'a' given twice"):
        score_images([("a", (perfect, perfect)), ("a", (perfect, perfect))])
    with pytest.raises(ValueError, match="image 'b': .*differ in shape"):
        score_images({"a": (perfect, perfect), "b": (perfect, perfect.T)})


def test_documented_examples_hold() -> None:
    result = doctest.testmod(metric, raise_on_error=False)
    assert result.failed == 0
    assert result.attempted >= 8


# ----------------------------------------------------------------------- properties

label_pairs = st.tuples(st.integers(1, 9), st.integers(1, 9)).flatmap(
    lambda shape: st.tuples(
        arrays(np.int32, shape, elements=st.integers(0, 4)),
        arrays(np.int32, shape, elements=st.sampled_from([0, 1, 3, 8, 1000])),
    )
)


def naive_iou(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    true_values = [v for v in np.unique(true) if v]
    pred_values = [v for v in np.unique(pred) if v]
    iou = np.zeros((len(true_values), len(pred_values)))
    for i, t in enumerate(true_values):
        for j, p in enumerate(pred_values):
            inter = np.logical_and(true == t, pred == p).sum()
            iou[i, j] = inter / np.logical_or(true == t, pred == p).sum()
    return iou


@settings(max_examples=150, deadline=None)
@given(label_pairs)
def test_iou_matrix_equals_a_loop_over_pairs(pair: tuple[np.ndarray, np.ndarray]) -> None:
    true, pred = pair
    np.testing.assert_allclose(iou_matrix(true, pred), naive_iou(true, pred), rtol=0, atol=0)


@settings(max_examples=150, deadline=None)
@given(label_pairs)
def test_score_properties(pair: tuple[np.ndarray, np.ndarray]) -> None:
    true, pred = pair
    forward, backward = score_image(true, pred), score_image(pred, true)
    # Swapping truth and prediction swaps FP and FN: the score is symmetric.
    assert forward.score == backward.score
    np.testing.assert_array_equal(forward.fp, backward.fn)
    assert score_image(true, true).score == 1.0
    assert 0.0 <= forward.score <= 1.0
    # TP never grows with the threshold, and counts are consistent.
    assert (np.diff(forward.tp) <= 0).all()
    assert (forward.tp + forward.fn == forward.n_true).all()
    assert (forward.tp + forward.fp == forward.n_pred).all()
    # Renumbering the predictions changes nothing.
    assert score_image(true, np.where(pred > 0, 5000 - pred, 0)).score == forward.score
