"""Tests of overlapping-tile prediction (pipeline/tiling.py and its use in predict)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from pipeline.inference.tiling import Span, predict_in_tiles, tile_spans


def test_spans_exact_values():
    assert tile_spans(200, 96, 16, 16) == [Span(0, 0, 80), Span(64, 80, 144), Span(104, 144, 200)]
    assert tile_spans(96, 96, 16, 16) == [Span(0, 0, 96)]
    assert tile_spans(50, 96, 16, 16) == [Span(0, 0, 50)]
    # No margin: windows side by side, the last one pulled back inside the image.
    assert tile_spans(10, 4, 0) == [Span(0, 0, 4), Span(4, 4, 8), Span(6, 8, 10)]


@settings(max_examples=200, deadline=None)
@given(
    multiple=st.sampled_from([1, 4, 16, 32]),
    tile_units=st.integers(2, 12),
    margin=st.integers(0, 100),
    length_units=st.integers(1, 60),
)
def test_spans_partition_the_axis_away_from_cut_edges(multiple, tile_units, margin, length_units):
    tile, length = tile_units * multiple, length_units * multiple
    if (tile - 2 * margin) // multiple * multiple < multiple and length > tile:
        with pytest.raises(ValueError, match="no room"):
            tile_spans(length, tile, margin, multiple)
        return
    spans = tile_spans(length, tile, margin, multiple)
    assert spans[0].keep_from == 0 and spans[-1].keep_to == length
    for before, after in zip(spans, spans[1:], strict=False):
        assert before.keep_to == after.keep_from  # a partition, in order
    for span in spans:
        assert span.start % multiple == 0
        assert 0 <= span.start and span.start + min(tile, length) <= length
        assert span.keep_from < span.keep_to
        # Kept pixels are at least `margin` from a window edge, unless on the image's edge.
        if span.keep_from > 0:
            assert span.keep_from - span.start >= margin
        if span.keep_to < length:
            assert span.start + tile - span.keep_to >= margin


def test_bad_tile_settings_are_refused():
    with pytest.raises(ValueError, match="multiple"):
        tile_spans(100, 30, 4, 16)
    with pytest.raises(ValueError, match="tile >= 1"):
        tile_spans(100, 0, 4)


def _box_sum(batch: np.ndarray, radius: int) -> np.ndarray:
    """A (2r+1)^2 box sum per channel with zeros outside: exact on integers."""
    weights = np.ones((2 * radius + 1, 2 * radius + 1), np.int64)
    return np.stack(
        [
            np.stack(
                [
                    ndimage.correlate(x[..., c], weights, mode="constant")
                    for c in range(x.shape[-1])
                ],
                axis=-1,
            )
            for x in batch
        ]
    )


@pytest.mark.parametrize("shape", [(150, 230), (64, 300), (97, 97)])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_tiles_equal_the_whole_image_when_the_reach_is_within_the_margin(shape, batch_size):
    image = np.random.default_rng(1).integers(0, 100, size=(*shape, 2)).astype(np.int64)
    whole = _box_sum(image[None], radius=7)[0]
    calls = []

    def predict(batch):
        calls.append(batch.shape)
        return _box_sum(batch, radius=7)

    tiled = predict_in_tiles(predict, image, tile=48, margin=8, batch_size=batch_size)
    np.testing.assert_array_equal(tiled, whole)
    assert tiled.dtype == np.float32
    assert all(n <= batch_size and h <= 48 and w <= 48 for n, h, w, _ in calls)


def test_tiles_differ_when_the_reach_exceeds_the_margin():
    """The check above can fail: a filter reaching past the margin sees the cut edges."""
    image = np.random.default_rng(2).integers(0, 100, size=(150, 230, 1)).astype(np.int64)
    whole = _box_sum(image[None], radius=12)[0]
    tiled = predict_in_tiles(lambda b: _box_sum(b, 12), image, tile=48, margin=8)
    assert not np.array_equal(tiled, whole)


def test_network_prediction_in_tiles_matches_the_whole_image():
    """A small U-Net (reach well under 48 pixels): tiling changes nothing but rounding."""
    pytest.importorskip("keras")
    from pipeline.config import Config, ModelConfig
    from pipeline.core.models import build_model
    from pipeline.inference.model import NucleusModel

    config = Config(model=ModelConfig(base_filters=4, depth=2))
    model = NucleusModel.of_network(build_model(config.model, out_channels=2), config)
    image = np.random.default_rng(3).integers(0, 255, size=(150, 230, 3), dtype=np.uint8)
    whole = model.with_settings(tile_size=0).predict_probabilities([image])[0]
    tiled = model.with_settings(tile_size=128, tile_margin=48).predict_probabilities([image])[0]
    assert tiled.shape == whole.shape == (150, 230, 2)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    # With TTA, tiles (rectangular where the image is narrower than a tile) agree too.
    small = image[:100]
    whole_tta = model.with_settings(tile_size=0, tta=True).predict_probabilities([small])[0]
    tiled_tta = model.with_settings(tile_size=128, tta=True).predict_probabilities([small])[0]
    np.testing.assert_allclose(tiled_tta, whole_tta, atol=1e-5)


def test_documented_example_holds():
    import doctest

    from pipeline.inference import tiling

    result = doctest.testmod(tiling, raise_on_error=False)
    assert result.failed == 0 and result.attempted == 1


@pytest.mark.parametrize("value", ["-3", "x", "1.5"])
def test_tile_size_flag_refuses_what_is_not_a_size(value, capsys):
    from pipeline.cli import main as cli_main

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["predict", "--tile-size", value])
    assert exit_info.value.code == 2
    expected = f"--tile-size: tile_size must be 0 (never tile) or at least 16 pixels, got '{value}'"
    assert expected in capsys.readouterr().err


def test_batches_are_bounded_in_pixels():
    """At most MAX_BATCH_PIXELS (a megapixel) per batch, and never fewer than one image."""
    from pipeline.inference.model import MAX_BATCH_PIXELS, _images_per_batch

    assert MAX_BATCH_PIXELS == 1024 * 1024
    assert [_images_per_batch(4, side, side) for side in (256, 544, 1024, 2048)] == [4, 3, 1, 1]
    assert _images_per_batch(2, 100, 100) == 2
    assert _images_per_batch(8, 512, 512) == 4
