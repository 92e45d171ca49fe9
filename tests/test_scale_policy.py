"""The input-scale policy: chosen once from a model's settings, each policy's way to the
network and back to the image's own size, and the refusals of what a policy cannot take."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk
from skimage.measure import label

from pipeline.config import Config
from pipeline.core.scale import median_diameter
from pipeline.core.scale_policy import (
    NativeScale,
    NucleusScale,
    ResizeScale,
    scale_policy,
    settle_prediction_scale,
)
from pipeline.errors import PipelineError

SHAPE = (45, 67)  # no side a multiple of 16, nor the crop size


def _config(policy: str, scales: str = "1", diameter: float = 0.0) -> Config:
    config = Config()
    config.train.resize_policy = policy
    config.predict.scales = scales
    config.predict.diameter = diameter
    return config


@pytest.mark.parametrize(
    ("policy", "scales", "diameter", "expected"),
    [
        ("native", "1", 0.0, NativeScale((1.0,))),
        ("native", "0.5,1,2", 0.0, NativeScale((0.5, 1.0, 2.0))),
        ("native", "0.5,1", 10.0, NativeScale((2.0,))),  # the diameter sets the scale
        ("resize", "0.5,1", 10.0, ResizeScale(128)),  # neither taken from the config
        ("nucleus", "0.5,1", 0.0, NucleusScale(20.0)),  # estimated, not the config's scales
        ("nucleus", "1", 40.0, NucleusScale(20.0, (0.5,))),
    ],
)
def test_the_policy_is_chosen_from_the_models_settings(policy, scales, diameter, expected):
    assert scale_policy(_config(policy, scales, diameter)) == expected


def test_an_unknown_policy_is_refused():
    with pytest.raises(PipelineError, match="resize_policy must be one of .*got 'zoom'"):
        scale_policy(_config("zoom"))


@pytest.mark.parametrize(
    ("policy", "network_shape"),
    [
        (NativeScale(), (48, 80)),
        (NucleusScale(20.0), (48, 80)),
        (ResizeScale(32), (32, 32)),
    ],
)
def test_before_and_after_come_back_to_the_images_size_exactly(policy, network_shape):
    rng = np.random.default_rng(0)
    image = rng.random((*SHAPE, 3)).astype(np.float32)
    x = policy.before(image, 16)
    assert x.shape == (*network_shape, 3)
    prob = rng.random((*x.shape[:2], 2)).astype(np.float32)
    back = policy.after(prob, SHAPE)
    assert back.shape == (*SHAPE, 2)
    if not isinstance(policy, ResizeScale):  # padded and cropped: the pixels themselves
        np.testing.assert_array_equal(x[: SHAPE[0], : SHAPE[1]], image)
        np.testing.assert_array_equal(back, prob[: SHAPE[0], : SHAPE[1]])


def _bright(images, tta, on_image=None):
    """A stand-in network: the bright pixels of each image, at its size."""
    probs = []
    for image in images:
        probs.append((image[..., :1] > 100).astype(np.float32))
        if on_image is not None:
            on_image()
    return probs


def _discs_image() -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros(SHAPE, np.int32)
    for number, centre in enumerate([(12, 12), (12, 40), (32, 25), (32, 55)], start=1):
        labels[disk(centre, 5, shape=SHAPE)] = number
    image = np.where(labels[..., None] > 0, 200, 10).astype(np.uint8).repeat(3, axis=2)
    return image, labels


@pytest.mark.parametrize(
    "policy",
    [NativeScale(), NativeScale((0.5, 1.0, 2.0)), NucleusScale(20.0), NucleusScale(20.0, (0.7,))],
    ids=["native", "native-scales", "nucleus", "nucleus-diameter"],
)
def test_probabilities_come_back_at_each_images_own_size(policy):
    image, labels = _discs_image()
    small = image[:20, :31]
    ticks: list[int] = []
    probs = policy.probabilities(
        [image, small], _bright, False, lambda: ticks.append(1), lambda prob: label(prob[..., 0])
    )
    assert [prob.shape for prob in probs] == [(*SHAPE, 1), (20, 31, 1)]
    assert len(ticks) == 2  # once an image
    assert ((probs[0][..., 0] > 0.5) == (labels > 0)).mean() > 0.95


def test_the_training_samples_of_each_policy():
    from pipeline.data.dataset import Sample

    image, labels = _discs_image()
    samples = [Sample("s", image, labels, "fluorescence")]
    assert NativeScale().training_samples(samples) is samples
    (resized,) = ResizeScale(32).training_samples(samples)
    assert resized.image.shape == (32, 32, 3) and resized.labels.shape == (32, 32)
    (rescaled,) = NucleusScale(20.0).training_samples(samples)
    factor = 20.0 / median_diameter(labels)  # discs about 9.4 across
    expected = (round(SHAPE[0] * factor), round(SHAPE[1] * factor))
    assert rescaled.image.shape[:2] == rescaled.labels.shape == expected == (96, 143)
    assert median_diameter(rescaled.labels) == pytest.approx(20.0, abs=1.0)


@pytest.mark.parametrize(
    ("policy", "scales", "diameter", "message"),
    [
        (
            "nucleus",
            "0.5,1",
            0.0,
            "m: --scales 0.5,1 needs a model trained at the images' own scale (resize_policy "
            "native); this one's is nucleus, which sets the scale itself",
        ),
        (
            "resize",
            "2",
            0.0,
            "m: --scales 2 needs a model trained at the images' own scale (resize_policy "
            "native); this one's is resize, which sets the scale itself",
        ),
        (
            "resize",
            None,
            12.0,
            "m: --diameter needs a model that predicts at the images' own scale; this one "
            "resizes every image to its crop size (resize_policy resize)",
        ),
        ("native", "0.5,1", 12.0, "--diameter sets the scale itself: leave out --scales"),
    ],
)
def test_a_prediction_refuses_what_the_policy_cannot_take(
    tmp_path, policy, scales, diameter, message
):
    config = _config(policy, diameter=diameter)
    with pytest.raises(PipelineError) as error:
        settle_prediction_scale(tmp_path / "m", config, scales)
    assert str(error.value).replace(str(tmp_path / "m"), "m") == message


def test_a_prediction_takes_the_diameter_its_model_was_trained_on(tmp_path):
    config = _config("nucleus", diameter=12.0)
    config.train.nucleus_diameter = 24.0
    settle_prediction_scale(tmp_path, config, "1")
    assert config.train.nucleus_diameter == 24.0
    native = _config("native")
    settle_prediction_scale(tmp_path, native, "0.5,1")  # no record: stage1_train's
    assert native.train.nucleus_diameter == 19.9
