"""Normalisation and padding shared by training and prediction."""

import numpy as np

from pipeline.core.preprocess import crop_to_shape, normalise_image, pad_to_multiple


def test_normalise_gives_zero_mean_unit_std():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    x = normalise_image(image)
    assert x.dtype == np.float32 and x.shape == (20, 30, 3)
    assert abs(float(x.mean())) < 1e-5
    assert abs(float(x.std()) - 1) < 1e-4


def test_normalise_flat_image_is_zero():
    assert not normalise_image(np.full((4, 4, 3), 200, np.uint8)).any()


def test_pad_and_crop_round_trip():
    image = np.arange(5 * 7 * 3, dtype=np.float32).reshape(5, 7, 3)
    padded = pad_to_multiple(image, 16)
    assert padded.shape == (16, 16, 3)
    assert (crop_to_shape(padded, (5, 7)) == image).all()


def test_pad_leaves_multiples_alone_and_honours_min_size():
    image = np.zeros((32, 48, 3), np.float32)
    assert pad_to_multiple(image, 16) is image
    assert pad_to_multiple(image, 16, min_size=64).shape == (64, 64, 3)


def test_light_background_images_are_inverted_when_asked():
    image = np.full((8, 8, 3), 220, np.uint8)
    image[2:4, 2:4] = 40  # a dark nucleus on a light background
    plain = normalise_image(image)
    inverted = normalise_image(image, invert_light_background=True)
    assert plain[2, 2, 0] < 0 < plain[0, 0, 0]
    assert inverted[2, 2, 0] > 0 > inverted[0, 0, 0]
    assert np.allclose(inverted, -plain, atol=1e-5)


def test_dark_background_images_are_never_inverted():
    image = np.full((8, 8, 3), 10, np.uint8)
    image[2:4, 2:4] = 200
    assert np.array_equal(normalise_image(image, True), normalise_image(image, False))


def test_grey_input_space_is_one_grey_level_with_light_backgrounds_inverted():
    pink = np.full((8, 8, 3), (230, 180, 220), np.uint8)
    pink[2:4, 2:4] = (90, 40, 140)  # a purple nucleus on a pink (light) background
    grey = normalise_image(pink, input_space="grey")
    assert grey.shape == (8, 8, 3)
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 0], grey[..., 2])
    assert grey[2, 2, 0] > 0 > grey[0, 0, 0]  # inverted without invert_light_background
    # grey levels 90 (nucleus) and 210 (background): 4 of 64 pixels are nucleus
    level = np.where(np.arange(64).reshape(8, 8) >= 0, 210.0, 0)
    level[2:4, 2:4] = 90.0
    expected = 1 - level / 255
    expected = (expected - expected.mean()) / expected.std()
    assert np.allclose(grey[..., 0], expected, atol=1e-5)


def test_grey_input_space_keeps_a_dark_background_and_refuses_unknown_spaces():
    import pytest

    image = np.zeros((4, 4, 3), np.uint8)
    image[1, 1] = (0, 90, 0)
    grey = normalise_image(image, input_space="grey")
    assert grey[1, 1, 0] > 0 > grey[0, 0, 0]
    with pytest.raises(ValueError, match="input_space"):
        normalise_image(image, input_space="hsv")
