"""Run-length encoding: hand examples with exact strings, errors, round trips, properties."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.data import rle
from pipeline.data.rle import (
    RLEError,
    decode_flat_indices,
    decode_labels,
    decode_mask,
    encode_labels,
    encode_mask,
    parse_rle,
)


def naive_encode(mask: np.ndarray) -> str:
    """Reference encoder written pixel by pixel, the way the Kaggle kernels did."""
    pairs: list[int] = []
    previous = False
    for number, value in enumerate(np.asarray(mask).T.flatten().tolist(), start=1):
        if value and not previous:
            pairs += [number, 0]
        if value:
            pairs[-1] += 1
        previous = bool(value)
    return " ".join(map(str, pairs))


HAND_EXAMPLES = [
    # (mask rows, encoding): pixels are numbered down each column, then across.
    pytest.param([[1, 0, 0], [1, 1, 0], [0, 1, 1]], "1 2 5 2 9 1", id="3x3-diagonal"),
    pytest.param([[0, 0, 0], [0, 0, 0], [0, 0, 0]], "", id="3x3-empty"),
    pytest.param([[1, 1, 1], [1, 1, 1]], "1 6", id="2x3-full"),
    pytest.param([[0, 1], [1, 0]], "2 2", id="run-across-columns"),
    pytest.param([[0, 0, 1], [0, 0, 0]], "5 1", id="2x3-top-right"),
    pytest.param([[0, 0, 0], [1, 0, 0]], "2 1", id="2x3-bottom-left"),
    pytest.param([[1, 0, 1, 0]], "1 1 3 1", id="1x4-row"),
    pytest.param([[1], [1], [0], [1]], "1 2 4 1", id="4x1-column"),
    pytest.param([[0, 0], [0, 1]], "4 1", id="last-pixel"),
]


@pytest.mark.parametrize(("rows", "encoding"), HAND_EXAMPLES)
def test_encode_mask_hand_examples(rows: list[list[int]], encoding: str) -> None:
    mask = np.array(rows, dtype=bool)
    assert encode_mask(mask) == encoding
    assert encode_mask(mask.astype(np.uint8)) == encoding


@pytest.mark.parametrize(("rows", "encoding"), HAND_EXAMPLES)
def test_decode_mask_hand_examples(rows: list[list[int]], encoding: str) -> None:
    mask = np.array(rows, dtype=bool)
    decoded = decode_mask(encoding, mask.shape)
    assert decoded.dtype == np.bool_
    assert decoded.shape == mask.shape
    np.testing.assert_array_equal(decoded, mask)


def test_decode_tolerates_surrounding_and_repeated_white_space() -> None:
    np.testing.assert_array_equal(
        decode_mask("  1 2\t5  2\n", (3, 3)), decode_mask("1 2 5 2", (3, 3))
    )


def test_parse_rle_returns_starts_and_lengths() -> None:
    starts, lengths = parse_rle("1 2 5 2 9 1")
    assert starts.tolist() == [1, 5, 9]
    assert lengths.tolist() == [2, 2, 1]
    assert starts.dtype == np.int64
    empty_starts, empty_lengths = parse_rle("")
    assert empty_starts.size == 0 and empty_lengths.size == 0


def test_adjacent_runs_are_valid() -> None:
    """Two runs that touch (1-2 then 3) are unusual but not wrong."""
    np.testing.assert_array_equal(decode_mask("1 2 3 1", (3, 1)), [[True], [True], [True]])


@pytest.mark.parametrize(
    ("encoding", "message"),
    [
        ("1 a", "not an integer: 'a'"),
        ("1.5 2", "not an integer: '1.5'"),
        ("1 -2", "not an integer: '-2'"),
        ("1,2", "not an integer: '1,2'"),
        ("1 2 3", "odd number of values (3)"),
        ("7", "odd number of values (1)"),
        ("0 2", "run 1 starts at 0"),
        ("1 1 4 0", "run 2 (start 4) has length 0"),
        ("5 1 2 1", "starts not ascending: run 2 starts at 2, not after run 1 (start 5)"),
        ("2 1 2 1", "starts not ascending: run 2 starts at 2, not after run 1 (start 2)"),
        ("1 3 2 1", "runs overlap: run 1 (start 1, length 3) covers pixels up to 3"),
        ("99999999999999999999 1", "too large"),
    ],
)
def test_parse_rle_errors(encoding: str, message: str) -> None:
    with pytest.raises(RLEError) as caught:
        parse_rle(encoding)
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_decode_rejects_a_run_outside_the_image() -> None:
    assert decode_mask("9 1", (3, 3))[2, 2]  # the last pixel is fine
    with pytest.raises(RLEError, match="ends at pixel 10, but a 3x3 image has 9 pixels"):
        decode_mask("8 3", (3, 3))
    with pytest.raises(RLEError, match="outside the image"):
        decode_mask("10 1", (3, 3))


def test_decode_flat_indices_are_column_major() -> None:
    assert decode_flat_indices("2 3 6 1", (2, 3)).tolist() == [1, 2, 3, 5]


def test_encode_labels_hand_example() -> None:
    labels = np.array(
        [
            [7, 7, 0],
            [0, 3, 0],
            [3, 3, 0],
        ]
    )
    # Label 3: pixels 3, 5, 6; label 7: pixels 1 and 4. Ascending label order: 3, then 7.
    assert encode_labels(labels) == ["3 1 5 2", "1 1 4 1"]
    assert encode_labels(np.zeros((2, 2), dtype=np.int32)) == []


def test_encode_labels_accepts_bool_and_rejects_bad_input() -> None:
    assert encode_labels(np.array([[True, False]])) == ["1 1"]
    with pytest.raises(ValueError, match="integer"):
        encode_labels(np.array([[1.0, 0.0]]))
    with pytest.raises(ValueError, match="2-D"):
        encode_labels(np.zeros((2, 2, 2), dtype=int))
    with pytest.raises(ValueError, match=">= 0"):
        encode_labels(np.array([[-1, 0]]))
    with pytest.raises(ValueError, match="2-D"):
        encode_mask(np.zeros(4, dtype=bool))


def test_decode_labels_numbers_in_the_given_order() -> None:
    labels = decode_labels(["4 1", "1 2", ""], (2, 2))
    assert labels.dtype == np.int32
    assert labels.tolist() == [[2, 0], [2, 1]]


def test_decode_labels_rejects_shared_pixels_naming_both() -> None:
    with pytest.raises(RLEError, match="encoding 3 shares 1 pixel"):
        decode_labels(["1 1", "3 1", "2 2"], (2, 2))
    with pytest.raises(RLEError, match="encoding 2 shares 1 pixel.* with encoding 1"):
        decode_labels(["1 2", "2 1"], (2, 2))


def test_decode_labels_names_the_bad_encoding() -> None:
    with pytest.raises(RLEError, match="encoding 2: odd number of values"):
        decode_labels(["1 1", "3"], (2, 2))
    with pytest.raises(RLEError, match="encoding 1: run outside the image"):
        decode_labels(["4 2"], (2, 2))


def test_shape_must_be_two_positive_sides() -> None:
    with pytest.raises(ValueError, match="shape"):
        decode_mask("1 1", (0, 3))
    with pytest.raises(ValueError, match="shape"):
        decode_labels(["1 1"], (3,))  # type: ignore[arg-type]


def test_documented_examples_hold() -> None:
    result = doctest.testmod(rle, raise_on_error=False)
    assert result.failed == 0
    assert result.attempted >= 8


def test_large_image_with_many_nuclei_round_trips() -> None:
    """A 1040x1388 image (the largest size in the data) with 400 nuclei."""
    from skimage.draw import disk

    labels = np.zeros((1040, 1388), dtype=np.int32)
    rng = np.random.default_rng(0)
    for label in range(1, 401):
        row, col = rng.integers(0, 1040), rng.integers(0, 1388)
        rows, cols = disk((row, col), rng.integers(3, 15), shape=labels.shape)
        labels[rows, cols] = label
    rles = encode_labels(labels)
    present = np.unique(labels[labels > 0])
    assert len(rles) == present.size
    decoded = decode_labels(rles, labels.shape)
    lookup = np.zeros(labels.max() + 1, dtype=np.int32)
    lookup[present] = np.arange(1, present.size + 1)
    np.testing.assert_array_equal(decoded, lookup[labels])


# ----------------------------------------------------------------------- properties

masks = st.tuples(st.integers(1, 12), st.integers(1, 12)).flatmap(
    lambda shape: arrays(np.bool_, shape)
)
label_images = st.tuples(st.integers(1, 10), st.integers(1, 10)).flatmap(
    lambda shape: arrays(np.int32, shape, elements=st.sampled_from([0, 0, 1, 2, 5, 9, 40]))
)


@settings(max_examples=200, deadline=None)
@given(masks)
def test_decode_encode_round_trip(mask: np.ndarray) -> None:
    encoding = encode_mask(mask)
    np.testing.assert_array_equal(decode_mask(encoding, mask.shape), mask)


@settings(max_examples=200, deadline=None)
@given(masks)
def test_encode_agrees_with_the_naive_encoder_and_is_canonical(mask: np.ndarray) -> None:
    encoding = encode_mask(mask)
    assert encoding == naive_encode(mask)
    starts, lengths = parse_rle(encoding)  # valid: sorted, not overlapping
    # Canonical: runs are maximal, so no two runs touch.
    assert (starts[1:] > starts[:-1] + lengths[:-1]).all()
    assert int(lengths.sum()) == int(mask.sum())


@settings(max_examples=200, deadline=None)
@given(label_images)
def test_label_round_trip_up_to_relabelling(labels: np.ndarray) -> None:
    rles = encode_labels(labels)
    present = sorted(set(labels[labels > 0].tolist()))
    assert len(rles) == len(present)
    # encode_labels goes in ascending label order, so label k is the k-th value present.
    for rle_string, value in zip(rles, present, strict=True):
        np.testing.assert_array_equal(decode_mask(rle_string, labels.shape), labels == value)
    decoded = decode_labels(rles, labels.shape)
    for number, value in enumerate(present, start=1):
        np.testing.assert_array_equal(decoded == number, labels == value)
    np.testing.assert_array_equal(decoded == 0, labels == 0)
