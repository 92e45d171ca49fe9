"""Scale normalisation by nucleus size: measuring, factors, resizing, training and prediction."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
from skimage.draw import disk
from skimage.measure import label

from pipeline.config import Config
from pipeline.core import scale
from pipeline.core.scale import (
    FACTOR_LIMITS,
    MAX_SCALED_PIXELS,
    limit_factor,
    median_diameter,
    most_confident,
    next_factor,
    rescale_image,
    rescale_labels,
    restore_size,
    scale_factor,
)
from pipeline.data.dataset import Sample
from pipeline.errors import PipelineError


def _discs(shape: tuple[int, int], radius: int, spacing: int) -> np.ndarray:
    """Instance labels: a grid of discs of ``radius`` pixels, ``spacing`` apart."""
    labels = np.zeros(shape, np.int32)
    label = 0
    for row in range(spacing // 2, shape[0] - radius, spacing):
        for col in range(spacing // 2, shape[1] - radius, spacing):
            label += 1
            labels[disk((row, col), radius, shape=shape)] = label
    return labels


def test_documented_examples_hold():
    result = doctest.testmod(scale, raise_on_error=False)
    assert result.failed == 0 and result.attempted == 11


@pytest.mark.parametrize(
    ("areas", "expected_area"),
    [([4], 4.0), ([4, 1], 2.5), ([9, 1, 4], 4.0), ([1, 1, 16, 16], 8.5)],
)
def test_median_diameter_is_that_of_a_disc_of_the_median_area(areas, expected_area):
    labels = np.concatenate([np.full(area, i + 1) for i, area in enumerate(areas)])
    labels = np.concatenate([labels, np.zeros(7, labels.dtype)])[None, :]
    assert median_diameter(labels) == pytest.approx(2 * math.sqrt(expected_area / math.pi))


def test_median_diameter_counts_only_present_labels():
    labels = np.zeros((4, 4), np.int64)
    labels[0, :2] = 3  # labels 1 and 2 are absent: they are not nuclei of area 0
    labels[2:, 2:] = 9
    assert median_diameter(labels) == pytest.approx(2 * math.sqrt(3 / math.pi))


def test_median_diameter_of_nothing_is_none():
    assert median_diameter(np.zeros((5, 5), np.int32)) is None
    assert median_diameter(np.zeros((0, 0), np.int32)) is None


def test_median_diameter_of_discs_is_close_to_their_diameter():
    assert median_diameter(_discs((200, 200), 10, 30)) == pytest.approx(20.0, abs=0.5)


@pytest.mark.parametrize(
    ("diameter", "expected"),
    [(10.0, 2.0), (40.0, 0.5), (20.0, 1.0), (1.0, FACTOR_LIMITS[1]), (500.0, FACTOR_LIMITS[0])],
)
def test_scale_factor(diameter, expected):
    assert scale_factor(diameter, 20.0) == expected


@pytest.mark.parametrize("target", [0.0, -5.0])
def test_scale_factor_refuses_a_target_that_is_not_positive(target):
    with pytest.raises(ValueError, match="target diameter must be > 0"):
        scale_factor(10.0, target)


@pytest.mark.parametrize(
    ("factor", "diameter", "expected"),
    [
        (1.0, 10.0, 2.0),  # nuclei half the target: enlarge twice
        (2.0, 22.0, 2.0),  # within 10% of the target: keep the factor
        (2.0, 21.0, 2.0),
        (2.0, 30.0, 4.0 / 3.0),  # measured on the rescaled image
        (1.0, None, 1.0),  # nothing found: keep
        (3.0, 5.0, FACTOR_LIMITS[1]),
        (0.5, 200.0, FACTOR_LIMITS[0]),
    ],
)
def test_next_factor(factor, diameter, expected):
    assert next_factor(factor, diameter, 20.0) == pytest.approx(expected)


def test_rescaled_labels_keep_their_values_and_nuclei_reach_the_target():
    labels = _discs((120, 150), 5, 24)
    image = np.where(labels[..., None] > 0, 200, 10).astype(np.uint8).repeat(3, axis=2)
    factor = scale_factor(median_diameter(labels), 20.0)
    assert factor == pytest.approx(20.0 / median_diameter(labels))
    big_labels = rescale_labels(labels, factor)
    big_image = rescale_image(image, factor)
    assert big_labels.shape == big_image.shape[:2] == (round(120 * factor), round(150 * factor))
    assert big_image.dtype == np.uint8 and big_image.shape[2] == 3
    assert big_labels.dtype == labels.dtype
    assert set(np.unique(big_labels)) == set(np.unique(labels))
    assert median_diameter(big_labels) == pytest.approx(20.0, abs=1.0)


def test_rescaling_by_one_returns_the_input_and_large_labels_survive():
    labels = np.array([[0, 70_000], [1, 2]], np.int32)
    assert rescale_labels(labels, 1.0) is labels
    assert rescale_image(labels, 1.0) is labels
    doubled = rescale_labels(labels, 2.0)
    np.testing.assert_array_equal(doubled, np.kron(labels, np.ones((2, 2), np.int32)))


def test_shrinking_a_grey_image_keeps_one_channel_axis():
    image = np.full((40, 60, 1), 100, np.uint8)
    small = rescale_image(image, 0.25)
    assert small.shape == (10, 15, 1)
    assert np.all(small == 100)


@pytest.mark.parametrize(
    ("factor", "shape", "expected"),
    [
        (4.0, (1024, 1024), 2.0),  # 4 megapixels at most
        (1.5, (1024, 1024), 1.5),
        (2.0, (3000, 3000), 1.0),  # already larger: kept at its own size
        (0.25, (3000, 3000), 0.25),  # shrinking is never limited
    ],
)
def test_limit_factor_bounds_the_enlarged_pixels(factor, shape, expected):
    assert limit_factor(factor, shape) == pytest.approx(expected)
    assert MAX_SCALED_PIXELS == 4 * 1024 * 1024


@pytest.mark.parametrize("channels", [1, 2])
def test_restore_size_gives_the_original_shape_and_float32(channels):
    prob = np.random.default_rng(0).random((30, 40, channels))
    restored = restore_size(prob, (61, 79))
    assert restored.shape == (61, 79, channels) and restored.dtype == np.float32
    assert 0.0 <= restored.min() and restored.max() <= 1.0
    same = restore_size(prob.astype(np.float32), (30, 40))
    np.testing.assert_array_equal(same, prob.astype(np.float32))


def test_training_samples_are_rescaled_by_their_own_nuclei():
    from pipeline.learning.training import prepare_training_samples

    small = _discs((96, 96), 4, 16)
    large = _discs((160, 160), 16, 48)
    samples = [
        Sample(f"s{i}", np.zeros((*labels.shape, 3), np.uint8), labels, "fluorescence")
        for i, labels in enumerate((small, large))
    ]
    config = Config()
    config.train.resize_policy = "nucleus"
    config.train.nucleus_diameter = 16.0
    prepared = prepare_training_samples(samples, config)
    for before, after in zip(samples, prepared, strict=True):
        factor = 16.0 / median_diameter(before.labels)
        assert after.labels.shape == after.image.shape[:2]
        assert after.labels.shape == (
            round(before.labels.shape[0] * factor),
            round(before.labels.shape[1] * factor),
        )
        assert median_diameter(after.labels) == pytest.approx(16.0, abs=1.0)
    config.train.resize_policy = "native"
    assert prepare_training_samples(samples, config) is samples


def test_unknown_policy_and_bad_diameter_are_refused():
    from pipeline.learning.training import prepare_training_samples

    config = Config()
    config.train.resize_policy = "zoom"
    with pytest.raises(PipelineError, match="resize_policy must be one of"):
        prepare_training_samples([], config)
    config.train.resize_policy = "nucleus"
    config.train.nucleus_diameter = 0.0
    with pytest.raises(PipelineError, match="nucleus_diameter must be > 0"):
        prepare_training_samples([], config)


def test_prediction_estimates_the_scale_then_predicts_there(monkeypatch):
    """A stand-in network that marks bright pixels: the first pass measures discs of
    diameter about 10 at the image's own scale, the second at twice it (target 20), which
    needs no further change; the result comes back at the image's own size."""
    from pipeline.inference import model as model_module
    from pipeline.inference.model import NucleusModel

    calls: list[tuple[tuple[int, int], bool]] = []

    def bright_pixels(model, images, config, tta):
        calls.append((images[0].shape[:2], tta))
        return [(image[..., :1] > 100).astype(np.float32) for image in images]

    monkeypatch.setattr(model_module, "_predict_as_trained", bright_pixels)
    labels = _discs((100, 130), 5, 25)
    image = np.where(labels[..., None] > 0, 200, 10).astype(np.uint8).repeat(3, axis=2)
    config = Config()
    config.train.resize_policy = "nucleus"
    config.train.nucleus_diameter = 20.0
    config.predict.method = "components"
    config.predict.min_size = 0
    factor = 20.0 / median_diameter(labels)
    scaled = (round(100 * factor), round(130 * factor))

    (prob,) = (
        NucleusModel.of_network(None, config)
        .with_settings(tta=False)
        .predict_probabilities([image])
    )
    assert calls == [((100, 130), False), (scaled, False)]  # the second pass is the result
    assert prob.shape == (100, 130, 1) and prob.dtype == np.float32
    np.testing.assert_array_equal(prob[..., 0] > 0.5, labels > 0)

    calls.clear()
    NucleusModel.of_network(None, config).with_settings(tta=True).predict_probabilities([image])
    assert calls == [((100, 130), False), (scaled, False), (scaled, True)]


def test_prediction_of_an_empty_image_stays_at_its_own_scale(monkeypatch):
    from pipeline.inference import model as model_module
    from pipeline.inference.model import NucleusModel

    calls: list[tuple[int, int]] = []

    def nothing(model, images, config, tta):
        calls.extend(image.shape[:2] for image in images)
        return [np.zeros((*image.shape[:2], 1), np.float32) for image in images]

    monkeypatch.setattr(model_module, "_predict_as_trained", nothing)
    config = Config()
    config.train.resize_policy = "nucleus"
    (prob,) = NucleusModel.of_network(None, config).predict_probabilities(
        [np.zeros((33, 47, 3), np.uint8)]
    )
    assert calls == [(33, 47), (33, 47)]  # measured twice, nothing to rescale or redo
    assert prob.shape == (33, 47, 1) and not prob.any()


def test_fingerprint_ignores_the_diameter_unless_the_policy_uses_it():
    config = Config()
    before = config.training_fingerprint()
    config.train.nucleus_diameter = 31.0
    assert config.training_fingerprint() == before
    config.train.resize_policy = "nucleus"
    nucleus = config.training_fingerprint()
    assert nucleus != before
    config.train.nucleus_diameter = 20.0
    assert config.training_fingerprint() != nucleus


def test_train_flags_set_the_policy_and_refuse_an_unknown_one(capsys):
    from pipeline.cli import build_parser
    from pipeline.stages.train import config_from_args

    parser = build_parser("train")
    args = parser.parse_args(["--resize-policy", "nucleus", "--nucleus-diameter", "24"])
    config = config_from_args(args)
    assert (config.train.resize_policy, config.train.nucleus_diameter) == ("nucleus", 24.0)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--resize-policy", "zoom"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'zoom'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("probs", "factors", "expected"),
    [
        # 0.9 and 0.1 are decided (0.8), 0.6 and 0.4 are not (0.2).
        ([[[0.6, 0.4]], [[0.9, 0.1]]], [1.0, 0.5], 1),
        ([[[0.9, 0.1]], [[0.6, 0.4]]], [2.0, 1.0], 0),
        # Compared on the union of their foregrounds, both pixels here: (0.8 + 0.4) / 2
        # against (0.4 + 0.9) / 2; on its own foreground alone the first would win (0.8).
        ([[[0.9, 0.3]], [[0.7, 0.95]]], [0.5, 2.0], 1),
        # A tie, or no foreground anywhere, keeps the factor nearest 1.
        ([[[0.9, 0.1]], [[0.9, 0.1]], [[0.1, 0.9]]], [0.5, 1.0, 2.0], 1),
        ([[[0.2, 0.1]], [[0.0, 0.3]]], [0.5, 1.0], 1),
        ([[[0.2, 0.1]], [[0.0, 0.3]]], [2.0, 0.25], 0),
    ],
)
def test_most_confident_compares_the_scales_on_their_common_foreground(probs, factors, expected):
    assert most_confident([np.array(p) for p in probs], factors) == expected


def test_most_confident_reads_the_foreground_channel_only():
    # Channel 1 (a border) is decided in the first map and not the second: not looked at.
    first = np.dstack([[[0.6, 0.4]], [[1.0, 0.0]]])
    second = np.dstack([[[0.9, 0.1]], [[0.5, 0.5]]])
    assert most_confident([first, second], [1.0, 0.5]) == 1


def test_most_confident_refuses_maps_and_factors_that_do_not_pair():
    with pytest.raises(ValueError, match="2 probability maps for 1 factors"):
        most_confident([np.zeros((2, 2)), np.zeros((2, 2))], [1.0])


def test_prediction_at_several_scales_keeps_the_most_confident_at_the_image_size(monkeypatch):
    """A stand-in network that is sure of discs 10 pixels across and unsure of others: of
    the factors 0.5, 1 and 2, an image of discs 20 across is kept at 0.5 and one of discs 10
    across at 1; both come back at their own size."""
    from pipeline.inference import model as model_module
    from pipeline.inference.model import NucleusModel

    calls: list[tuple[tuple[int, int], bool]] = []

    def sure_of_size_ten(model, images, config, tta, on_image=None):
        probs = []
        for image in images:
            calls.append((image.shape[:2], tta))
            if on_image is not None:
                on_image()
            bright = image[..., :1] > 100
            diameter = median_diameter(label(bright[..., 0]))
            sure = diameter is not None and abs(diameter - 10) < 2
            probs.append(np.where(bright, 0.95 if sure else 0.6, 0.05).astype(np.float32))
        return probs

    monkeypatch.setattr(model_module, "_predict_as_trained", sure_of_size_ten)
    large = _discs((120, 160), 10, 40)
    small = _discs((120, 160), 5, 30)
    images = [
        np.where(labels[..., None] > 0, 200, 10).astype(np.uint8).repeat(3, axis=2)
        for labels in (large, small)
    ]
    config = Config()
    config.predict.scales = "0.5,1,2"

    ticks: list[int] = []  # the progress bar's: once an image, during the last factor
    probs = (
        NucleusModel.of_network(None, config)
        .with_settings(tta=True)
        .predict_probabilities(images, on_image=lambda: ticks.append(len(calls)))
    )
    assert ticks == [5, 6]
    assert [shape for shape, _ in calls] == [(60, 80)] * 2 + [(120, 160)] * 2 + [(240, 320)] * 2
    assert all(tta for _, tta in calls)
    assert [prob.shape for prob in probs] == [(120, 160, 1)] * 2
    assert [round(float(prob.max()), 2) for prob in probs] == [0.95, 0.95]
    np.testing.assert_array_equal(probs[1][..., 0] > 0.5, small > 0)
    # The large discs, found at half size and brought back: all but their edges' pixels.
    agreement = ((probs[0][..., 0] > 0.5) == (large > 0)).mean()
    assert agreement > 0.97


def test_scales_are_checked():
    from pipeline.config import check_scales, scale_factors

    assert scale_factors(" 2, 0.5 ,1") == (2.0, 0.5, 1.0)
    for bad in ("0", "5", "half", "1,,2", ""):
        with pytest.raises(PipelineError, match=r"scales must be factors from 0\.25 to 4"):
            check_scales(bad)
    with pytest.raises(PipelineError, match="must not repeat a factor, got '1,1.0'"):
        check_scales("1,1.0")


def test_a_nucleus_policy_model_sets_its_own_scale_whatever_the_presets_scales(monkeypatch):
    """The default preset predicts at 0.5,1; trained with --resize-policy nucleus, its
    validation and tuning take the nucleus policy's two passes instead (they used to stop
    with an error after the first epoch)."""
    from pipeline.config import preset
    from pipeline.inference import model as model_module
    from pipeline.inference.model import NucleusModel

    calls: list[tuple[int, int]] = []

    def nothing(model, images, config, tta):
        calls.extend(image.shape[:2] for image in images)
        return [np.zeros((*image.shape[:2], 1), np.float32) for image in images]

    monkeypatch.setattr(model_module, "_predict_as_trained", nothing)
    config = preset("default")
    assert config.predict.scales == "0.5,1"
    config.train.resize_policy = "nucleus"
    (prob,) = NucleusModel.of_network(None, config).predict_probabilities(
        [np.zeros((33, 47, 3), np.uint8)]
    )
    assert calls == [(33, 47), (33, 47)]  # the nucleus policy's passes, no 0.5x one
    assert prob.shape == (33, 47, 1)
