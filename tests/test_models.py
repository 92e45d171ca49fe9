"""Model and loss code: shapes, exact loss values, and no TensorFlow-only calls."""

import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ModelConfig

keras = pytest.importorskip("keras")


def test_unet_keeps_the_input_size_and_outputs_probabilities():
    from pipeline.models import build_model, input_multiple

    config = ModelConfig(base_filters=4, depth=2)
    model = build_model(config, out_channels=2)
    assert input_multiple(config) == 4
    x = np.random.default_rng(0).normal(size=(2, 16, 24, 3)).astype("float32")
    y = np.asarray(model.predict_on_batch(x))
    assert y.shape == (2, 16, 24, 2)
    assert y.min() >= 0 and y.max() <= 1


def test_unet_width_and_depth_come_from_the_config():
    from pipeline.models import build_model

    small = build_model(ModelConfig(base_filters=4, depth=2)).count_params()
    wide = build_model(ModelConfig(base_filters=8, depth=2)).count_params()
    deep = build_model(ModelConfig(base_filters=4, depth=3)).count_params()
    assert small < wide and small < deep


def test_unknown_architecture_is_refused():
    from pipeline.errors import PipelineError
    from pipeline.models import build_model

    with pytest.raises(PipelineError, match="unknown architecture"):
        build_model(ModelConfig(arch="resnet"))


def test_dice_loss_exact_values():
    from pipeline.losses import soft_dice_loss

    y_true = np.zeros((1, 2, 2, 1), "float32")
    y_true[0, 0, 0, 0] = 1
    perfect = np.asarray(soft_dice_loss(y_true, y_true))
    assert perfect.tolist() == [0.0]
    # prediction 0 everywhere: dice = (0 + 1) / (1 + 0 + 1) = 1/2, loss 1/2
    assert np.allclose(np.asarray(soft_dice_loss(y_true, np.zeros_like(y_true))), [0.5])


def test_bce_dice_is_bce_plus_dice():
    from pipeline.losses import bce_dice_loss, soft_dice_loss

    y_true = np.array([[[[1.0]], [[0.0]]]], "float32")  # (1, 2, 1, 1)
    y_pred = np.array([[[[0.8]], [[0.3]]]], "float32")
    bce = -(np.log(0.8) + np.log(0.7)) / 2
    expected = bce + np.asarray(soft_dice_loss(y_true, y_pred))
    assert np.allclose(np.asarray(bce_dice_loss(y_true, y_pred)), expected, atol=1e-5)


def test_model_and_loss_code_is_backend_agnostic():
    """Model, loss and metric code must run on JAX or PyTorch too: no tf.* there."""
    root = Path(__file__).resolve().parents[1] / "pipeline"
    for name in ("models.py", "losses.py", "metric.py", "targets.py", "postprocess.py"):
        source = (root / name).read_text()
        assert not re.search(r"\bimport tensorflow\b|\btf\.", source), name
