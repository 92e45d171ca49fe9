"""``predict --diameter`` splits touching nuclei three times the training size.

The tests' tiny trained model is too little trained to show it, so this module builds a
network whose output is a fixed function of the image: a U-Net of the project's own
architecture (``config.json`` describes it, ``./run.sh predict`` builds and loads it), its
weights set by hand to a nucleus detector of one size. Its two channels are

- ``foreground``: the pixel is brighter than the image's mean by half a standard
  deviation;
- ``border``: some background lies within a fixed reach of about 5 pixels (a blur of the
  background through the full-resolution and half-resolution convolutions, max pooling
  included), so the watershed's markers are the foreground eroded by that reach.

Two discs of radius `RADIUS` (8 pixels) whose centres are 1.8 radii apart meet in a waist
3.5 pixels from their line of centres: the erosion cuts it and the pair is split, as a
network trained on such nuclei splits them. The same pair three times larger has a waist
of 10.5 pixels that the erosion does not cut: one nucleus. The model folder records the
small discs as its training nuclei (``nuclei.json``), so ``--diameter`` with the large
discs' own median diameter shrinks them by three before the network sees them.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from pipeline.core.nucleus_size import median_nucleus_diameter, record_training_nuclei
from pipeline.evaluation.metric import score_image

keras = pytest.importorskip("keras")

#: The radius of the discs the fixed network is made for (its "training" nuclei).
RADIUS = 8
#: Distance between the centres of two touching discs, in radii.
CENTRE_DISTANCE = 1.8
#: Pairs of touching discs in an image, one pair a row.
PAIRS = 3
#: The detector's settings: input offset (in standard deviations), border gain and bias.
FOREGROUND_OFFSET, BORDER_GAIN, BORDER_BIAS = 0.5, 50.0, 2.0
#: The post-processing the model folder's thresholds.json holds.
POSTPROCESS = {
    "method": "watershed", "threshold": 0.5, "marker_threshold": 0.5, "border_weight": 1.0,
    "min_size": 10, "min_marker_size": 3, "fill_holes": True,
}  # fmt: skip


def touching_pairs(radius: float) -> tuple[np.ndarray, np.ndarray]:
    """An RGB uint8 image of `PAIRS` pairs of touching bright discs on a dark ground, and
    its labels (the overlap of a pair split at the middle)."""
    size = int(radius * 11)
    image = np.full((size, size), 20, np.uint8)
    labels = np.zeros((size, size), np.int32)
    rows, cols = np.mgrid[:size, :size]
    for pair in range(PAIRS):
        centre_row = radius * (2 + 3.5 * pair)
        centre_cols = (radius * 2.5, radius * (2.5 + CENTRE_DISTANCE))
        inside = [(rows - centre_row) ** 2 + (cols - c) ** 2 < radius**2 for c in centre_cols]
        image[inside[0] | inside[1]] = 200
        left_half = cols < sum(centre_cols) / 2
        labels[inside[0] & (left_half | ~inside[1])] = 2 * pair + 1
        labels[inside[1] & ~(left_half & inside[0])] = 2 * pair + 2
    return np.repeat(image[..., None], 3, axis=2), labels


def _kernel(n_in: int, n_out: int, blur=(), keep=()) -> list[np.ndarray]:
    """A 3x3 convolution: a 3x3 mean from input to output channel for each pair in
    ``blur``, the centre pixel for each pair in ``keep``; no bias."""
    kernel = np.zeros((3, 3, n_in, n_out), np.float32)
    for source, target in blur:
        kernel[:, :, source, target] = 1.0 / 9.0
    for source, target in keep:
        kernel[1, 1, source, target] = 1.0
    return [kernel, np.zeros(n_out, np.float32)]


def detector_weights() -> dict[str, list[np.ndarray]]:
    """The weights of each layer of a 1-level U-Net with 4 base filters: channel 0 carries
    the foreground excess at full resolution (the skip), channel 1 the background excess,
    blurred and max-pooled down and back up."""
    first = np.zeros((3, 3, 3, 4), np.float32)
    first[1, 1, :, 0], first[1, 1, :, 1] = 1.0 / 3.0, -1.0 / 3.0
    offsets = np.array([-FOREGROUND_OFFSET, FOREGROUND_OFFSET, 0, 0], np.float32)
    upsample = np.zeros((2, 2, 4, 8), np.float32)
    upsample[:, :, 0, 0] = 1.0  # nearest-neighbour: the half-resolution blur, doubled
    head = np.zeros((1, 1, 4, 2), np.float32)
    head[0, 0, 0, 0], head[0, 0, 1, 1] = 20.0, BORDER_GAIN
    return {
        "down0_conv1": [first, offsets],
        "down0_conv2": _kernel(4, 4, blur=[(1, 1)], keep=[(0, 0)]),
        "bottom_conv1": _kernel(4, 8, blur=[(1, 0)]),
        "bottom_conv2": _kernel(8, 8, blur=[(0, 0)]),
        "up0": [upsample, np.zeros(4, np.float32)],
        "dec0_conv1": _kernel(8, 4, blur=[(0, 1)], keep=[(4, 0)]),  # up is 0-3, skip 4-7
        "dec0_conv2": _kernel(4, 4, blur=[(1, 1)], keep=[(0, 0)]),
        "probabilities": [head, np.array([-5.0, -BORDER_BIAS], np.float32)],
    }


@pytest.fixture(scope="module")
def disc_detector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished model folder of the fixed detector, written as a training writes one."""
    from pipeline.config import Config, ModelConfig
    from pipeline.core import model_store
    from pipeline.core.models import build_model

    model_dir = tmp_path_factory.mktemp("disc_detector")
    model = ModelConfig(
        arch="unet", depth=1, base_filters=4, batch_norm=False, dropout=0.0,
        targets="border", invert_light_background=False,
    )  # fmt: skip
    config = Config(name="disc-detector", model=model)
    network = build_model(config.model, out_channels=2, pretrained=False)
    for name, weights in detector_weights().items():
        network.get_layer(name).set_weights(weights)
    config.save(model_dir / model_store.CONFIG_FILE)
    network.save_weights(model_dir / model_store.WEIGHTS_FILE)
    model_store.write_json(model_dir / model_store.THRESHOLDS_FILE, {"params": POSTPROCESS})
    training = [SimpleNamespace(labels=touching_pairs(RADIUS)[1])]
    record_training_nuclei(model_dir, training)
    model_store.mark_complete(model_dir, tuned=True)
    return model_dir


def predicted_labels(model: Path, image: np.ndarray, folder: Path, capsys, *flags) -> np.ndarray:
    """``./run.sh predict`` of one image in a Kaggle-layout folder; its label image."""
    images = folder / "images"
    (images / "pairs" / "images").mkdir(parents=True)
    Image.fromarray(image).save(images / "pairs" / "images" / "pairs.png")
    argv = ["predict", "--model", str(model), "--images", str(images)]
    argv += ["--out", str(folder / "s.csv"), "--labels-out", str(folder / "labels"), *flags]
    status, _, err = run_cli(argv, capsys)
    assert status == 0, err
    return np.asarray(Image.open(folder / "labels" / "pairs.png")).astype(np.int32)


def covered_nuclei(truth: np.ndarray, predicted: np.ndarray) -> list[int]:
    """For each predicted nucleus, how many true nuclei it covers (90% of their pixels)."""
    counts = []
    for label in range(1, int(predicted.max()) + 1):
        inside = truth[predicted == label]
        counts.append(
            sum(
                int(np.count_nonzero(inside == true) >= 0.9 * np.count_nonzero(truth == true))
                for true in np.unique(inside[inside > 0])
            )
        )
    return counts


def test_the_detector_splits_touching_discs_of_its_own_size(disc_detector, tmp_path, capsys):
    image, truth = touching_pairs(RADIUS)
    found = score_image(truth, predicted_labels(disc_detector, image, tmp_path, capsys))
    assert (found.n_true, found.n_pred, int(found.tp[0])) == (6, 6, 6)


def test_discs_three_times_larger_are_split_with_diameter_and_not_without(
    disc_detector, tmp_path, capsys
):
    image, truth = touching_pairs(3 * RADIUS)
    diameter, _ = median_nucleus_diameter([truth])  # what a user measures on the image
    trained, _ = median_nucleus_diameter([touching_pairs(RADIUS)[1]])
    assert diameter / trained == pytest.approx(3.0, rel=0.02)
    without = predicted_labels(disc_detector, image, tmp_path / "without", capsys)
    assert covered_nuclei(truth, without) == [2, 2, 2]  # each pair is one nucleus
    flag = ("--diameter", f"{diameter:.2f}")
    split = score_image(
        truth, predicted_labels(disc_detector, image, tmp_path / "with", capsys, *flag)
    )
    assert (split.n_true, split.n_pred, int(split.tp[0])) == (6, 6, 6)  # every pair split
    assert split.score > 0.9
