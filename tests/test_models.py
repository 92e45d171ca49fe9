"""Model and loss code: shapes, exact loss values, and no TensorFlow-only calls."""

import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ModelConfig

keras = pytest.importorskip("keras")


def test_unet_keeps_the_input_size_and_outputs_probabilities():
    from pipeline.core.models import build_model, input_multiple

    config = ModelConfig(base_filters=4, depth=2)
    model = build_model(config, out_channels=2)
    assert input_multiple(config) == 4
    x = np.random.default_rng(0).normal(size=(2, 16, 24, 3)).astype("float32")
    y = np.asarray(model.predict_on_batch(x))
    assert y.shape == (2, 16, 24, 2)
    assert y.min() >= 0 and y.max() <= 1


def test_unet_width_and_depth_come_from_the_config():
    from pipeline.core.models import build_model

    small = build_model(ModelConfig(base_filters=4, depth=2)).count_params()
    wide = build_model(ModelConfig(base_filters=8, depth=2)).count_params()
    deep = build_model(ModelConfig(base_filters=4, depth=3)).count_params()
    assert small < wide and small < deep


def test_unknown_architecture_is_refused():
    from pipeline.core.models import build_model
    from pipeline.errors import PipelineError

    with pytest.raises(PipelineError, match="unknown architecture"):
        build_model(ModelConfig(arch="resnet"))


def test_dice_loss_exact_values():
    from pipeline.learning.losses import soft_dice_loss

    y_true = np.zeros((1, 2, 2, 1), "float32")
    y_true[0, 0, 0, 0] = 1
    perfect = np.asarray(soft_dice_loss(y_true, y_true))
    assert perfect.tolist() == [0.0]
    # prediction 0 everywhere: dice = (0 + 1) / (1 + 0 + 1) = 1/2, loss 1/2
    assert np.allclose(np.asarray(soft_dice_loss(y_true, np.zeros_like(y_true))), [0.5])


def test_bce_dice_is_bce_plus_dice():
    from pipeline.learning.losses import bce_dice_loss, soft_dice_loss

    y_true = np.array([[[[1.0]], [[0.0]]]], "float32")  # (1, 2, 1, 1)
    y_pred = np.array([[[[0.8]], [[0.3]]]], "float32")
    bce = -(np.log(0.8) + np.log(0.7)) / 2
    expected = bce + np.asarray(soft_dice_loss(y_true, y_pred))
    assert np.allclose(np.asarray(bce_dice_loss(y_true, y_pred)), expected, atol=1e-5)


def test_model_and_loss_code_is_backend_agnostic():
    """Model, loss and metric code must run on JAX or PyTorch too: no tf.* there."""
    root = Path(__file__).resolve().parents[1] / "pipeline"
    for name in (
        "core/models.py",
        "learning/losses.py",
        "evaluation/metric.py",
        "core/targets.py",
        "inference/postprocess.py",
    ):
        source = (root / name).read_text()
        assert not re.search(r"\bimport tensorflow\b|\btf\.", source), name


# --- the architectures: unet, unetpp (U-Net++), mobilenetv2_unet ------------------------

TINY_ARCHS = {
    "unet": ModelConfig(arch="unet", base_filters=4, depth=2),
    "unetpp": ModelConfig(arch="unetpp", base_filters=4, depth=2),
    "mobilenetv2_unet": ModelConfig(
        arch="mobilenetv2_unet", base_filters=4, encoder_weights="none", encoder_trainable=False
    ),
}


def _outputs_as_list(y):
    return [np.asarray(v) for v in y] if isinstance(y, (list, tuple)) else [np.asarray(y)]


@pytest.mark.parametrize("arch", sorted(TINY_ARCHS))
def test_every_architecture_keeps_non_square_input_sizes(arch):
    from pipeline.core.models import ARCHITECTURES, build_model, input_multiple, model_outputs

    assert arch in ARCHITECTURES
    config = TINY_ARCHS[arch]
    model = build_model(config, out_channels=2)
    multiple = input_multiple(config)
    x = np.random.default_rng(0).normal(size=(1, 2 * multiple, 3 * multiple, 3)).astype("float32")
    outputs = _outputs_as_list(model(x, training=False))
    assert len(outputs) == model_outputs(model) == (2 if arch == "unetpp" else 1)
    for y in outputs:
        assert y.shape == (1, 2 * multiple, 3 * multiple, 2)
        assert y.dtype == np.float32 and y.min() >= 0 and y.max() <= 1


def test_input_multiples():
    from pipeline.core.models import input_multiple

    assert input_multiple(ModelConfig(arch="unet", depth=3)) == 8
    assert input_multiple(ModelConfig(arch="unetpp", depth=4)) == 16
    assert input_multiple(ModelConfig(arch="mobilenetv2_unet", depth=2)) == 32


def test_unetpp_has_one_head_per_top_level_node():
    from pipeline.core.models import build_model

    model = build_model(ModelConfig(arch="unetpp", base_filters=4, depth=3))
    assert model.output_names == ["probabilities_1", "probabilities_2", "probabilities_3"]
    # X^{0,3} concatenates X^{0,0}, X^{0,1}, X^{0,2} and the up-sampled X^{1,2}.
    assert len(model.get_layer("skip0_3").input) == 4
    assert len(model.get_layer("skip1_1").input) == 2
    unet = build_model(ModelConfig(arch="unet", base_filters=4, depth=3))
    assert model.count_params() > unet.count_params()


def test_unetpp_prediction_averages_the_heads_or_uses_one():
    from pipeline.core.models import build_model, select_heads
    from pipeline.errors import PipelineError
    from pipeline.inference.model import _predict_batch, _run_network

    model = build_model(ModelConfig(arch="unetpp", base_filters=4, depth=2, batch_norm=False))
    x = np.random.default_rng(1).normal(size=(2, 8, 12, 3)).astype("float32")
    head1, head2 = _outputs_as_list(model(x, training=False))
    assert not np.allclose(head1, head2)
    assert np.allclose(_run_network(model, x), (head1 + head2) / 2, atol=1e-6)
    assert np.allclose(_run_network(model, x, "all"), (head1 + head2) / 2, atol=1e-6)
    assert np.allclose(_run_network(model, x, "1"), head1, atol=1e-6)
    assert np.allclose(_run_network(model, x, "2"), head2, atol=1e-6)
    # Fast mode: the network cut after head 1 skips the nodes only head 2 needs.
    fast = select_heads(model, "1")
    assert fast is select_heads(model, "1") and fast.count_params() < model.count_params()
    # TTA of one head: each flip's result brought back, then averaged.
    assert _predict_batch(model, x, tta=True, heads="1").shape == head1.shape
    with pytest.raises(PipelineError, match="has 2 output heads"):
        _run_network(model, x, "3")


def test_heads_setting_is_checked():
    from pipeline.config import PredictConfig, check_heads
    from pipeline.core.models import build_model
    from pipeline.errors import PipelineError
    from pipeline.inference.model import _run_network

    assert PredictConfig().heads == "all"
    assert check_heads("ALL") == "all" and check_heads(3) == "3"
    for bad in ("0", "-1", "first", ""):
        with pytest.raises(PipelineError, match="heads must be"):
            check_heads(bad)
    unet = build_model(ModelConfig(base_filters=4, depth=1))
    x = np.zeros((1, 4, 4, 3), "float32")
    assert _run_network(unet, x, "1").shape == _run_network(unet, x, "all").shape == (1, 4, 4, 1)
    with pytest.raises(PipelineError, match="has 1 output head$"):
        _run_network(unet, x, "2")


def test_predict_probabilities_uses_the_configured_heads():
    from pipeline.config import Config
    from pipeline.core.models import build_model
    from pipeline.inference.model import NucleusModel

    config = Config(model=ModelConfig(arch="unetpp", base_filters=4, depth=2))
    model = NucleusModel.of_network(build_model(config.model), config)
    image = np.random.default_rng(2).integers(0, 255, size=(10, 7, 3), dtype=np.uint8)
    averaged = model.predict_probabilities([image])[0]
    second = model.with_settings(heads="2").predict_probabilities([image])[0]
    assert averaged.shape == second.shape == (10, 7, 1)
    assert not np.allclose(averaged, second)


def test_mobilenetv2_skips_come_from_strides_2_to_32():
    from pipeline.core.models import MOBILENETV2_OUTPUT, MOBILENETV2_SKIPS, build_model

    model = build_model(TINY_ARCHS["mobilenetv2_unet"])
    encoder = model.get_layer("encoder")
    features = encoder(np.zeros((1, 64, 96, 3), "float32"))
    strides = [*sorted(MOBILENETV2_SKIPS), 32]
    assert [64 // f.shape[1] for f in features] == strides
    assert [96 // f.shape[2] for f in features] == strides
    assert encoder.get_layer(MOBILENETV2_OUTPUT) is not None
    assert not encoder.trainable  # encoder_trainable=False


def test_frozen_encoder_leaves_only_the_decoder_trainable():
    from pipeline.core.models import build_model

    config = TINY_ARCHS["mobilenetv2_unet"]
    frozen = build_model(config)
    tuned = build_model(ModelConfig(**{**vars(config), "encoder_trainable": True}))
    assert frozen.count_params() == tuned.count_params()
    n_frozen = sum(int(np.prod(w.shape)) for w in frozen.trainable_weights)
    n_tuned = sum(int(np.prod(w.shape)) for w in tuned.trainable_weights)
    assert n_tuned - n_frozen > 2_000_000  # MobileNetV2's 2.2 million weights


def test_per_image_range_maps_each_image_to_minus_one_one():
    from pipeline.core.models import PerImageRange

    x = np.stack([np.full((2, 2, 3), 5.0), np.arange(12.0).reshape(2, 2, 3)]).astype("float32")
    y = np.asarray(PerImageRange()(x))
    assert np.allclose(y[0], -1.0)  # a flat image
    assert y[1].min() == -1.0 and y[1].max() == 1.0
    assert np.allclose(y[1].ravel(), np.linspace(-1, 1, 12), atol=1e-6)


def test_missing_imagenet_weights_is_a_clear_error(monkeypatch, tmp_path):
    from pipeline.core.models import build_model
    from pipeline.errors import PipelineError

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(keras.utils, "get_file", offline)
    config = ModelConfig(arch="mobilenetv2_unet", base_filters=4, encoder_weights="imagenet")
    with pytest.raises(PipelineError) as error:
        build_model(config)
    message = str(error.value)
    assert "could not be downloaded" in message
    assert "--encoder-weights none" in message
    expected = (
        tmp_path / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    )
    assert str(expected) in message
    # Loading a trained model needs no download: its own weights replace the encoder's.
    assert build_model(config, pretrained=False).count_params() > 0


def test_imagenet_weights_are_loaded_from_keras_cache(monkeypatch, tmp_path):
    """The cached file (Keras' legacy h5 layout) goes into the encoder, layer by layer."""
    import h5py
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    from pipeline.core.models import build_model

    keras.utils.set_random_seed(3)
    source = keras.applications.MobileNetV2(
        input_shape=(None, None, 3), include_top=False, weights=None
    )
    cached = tmp_path / "mobilenet_v2_no_top.h5"
    with h5py.File(cached, "w") as handle:
        save_weights_to_hdf5_group(handle, source)
    requested = []
    monkeypatch.setattr(
        keras.utils, "get_file", lambda name, *a, **k: requested.append(name) or str(cached)
    )
    model = build_model(
        ModelConfig(arch="mobilenetv2_unet", base_filters=4, encoder_weights="imagenet")
    )
    assert requested == ["mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"]
    encoder = model.get_layer("encoder")
    for name in ("Conv1", "block_6_expand", "block_16_project", "Conv_1"):
        for loaded, original in zip(
            encoder.get_layer(name).get_weights(), source.get_layer(name).get_weights(), strict=True
        ):
            assert np.array_equal(loaded, original), name


@pytest.mark.parametrize("arch", ["unetpp", "mobilenetv2_unet"])
def test_weights_and_resume_checkpoint_round_trip(arch, tmp_path):
    """model.weights.h5 (predict) and checkpoint/last.keras (train --resume) round trips.

    (The U-Net's go through the command line in tests/test_end_to_end.py.)
    """
    from pipeline.core.models import build_model, custom_objects, input_multiple, model_outputs
    from pipeline.learning.losses import bce_dice_loss, get_loss, soft_dice_loss

    config = TINY_ARCHS[arch]
    model = build_model(config)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=get_loss("bce_dice"))
    side = input_multiple(config)
    x = np.random.default_rng(4).normal(size=(2, side, 2 * side, 3)).astype("float32")
    target = (x[..., :1] > 0).astype("float32")
    targets = tuple([target] * model_outputs(model)) if model_outputs(model) > 1 else target
    logs = model.train_on_batch(x, targets, return_dict=True)
    assert np.isfinite(logs["loss"])
    expected = _outputs_as_list(model(x, training=False))

    model.save_weights(str(tmp_path / "model.weights.h5"))
    rebuilt = build_model(config, pretrained=False)
    rebuilt.load_weights(str(tmp_path / "model.weights.h5"))
    for got, want in zip(_outputs_as_list(rebuilt(x, training=False)), expected, strict=True):
        assert np.allclose(got, want, atol=1e-5)

    model.save(tmp_path / "last.keras")
    resumed = keras.saving.load_model(
        tmp_path / "last.keras",
        custom_objects={
            "bce_dice_loss": bce_dice_loss,
            "soft_dice_loss": soft_dice_loss,
            **custom_objects(),
        },
    )
    for got, want in zip(_outputs_as_list(resumed(x, training=False)), expected, strict=True):
        assert np.allclose(got, want, atol=1e-5)
    assert int(resumed.optimizer.iterations) == 1  # the optimiser's state came back too


def test_new_settings_at_their_defaults_keep_old_fingerprints():
    """Models trained before the encoder, time-budget, augmentation-strength,
    dimmed-nuclei, nucleus-diameter, split, input-space, scale-range, stage1-test and
    extra-set settings keep their fingerprint."""
    import hashlib
    import json

    from pipeline.config import ModelConfig, TrainConfig, preset

    for name in ("default", "demo", "seeds-baseline"):
        config = preset(name)
        data = config.to_dict()
        for key in ("encoder_weights", "encoder_trainable"):
            del data["model"][key]
        at_default = {
            "train": ("max_minutes", "augment_strength", "dim_nuclei", "stain_tissue")
            + ("paste_nuclei", "split", "scale_min", "scale_max", "with_stage1_test"),
            "model": ("input_space",),
        }
        for section, keys in at_default.items():
            declared = {"train": TrainConfig(), "model": ModelConfig()}[section]
            for key in keys:
                if data[section][key] == getattr(declared, key):
                    del data[section][key]
        del data["train"]["nucleus_diameter"]  # native policy: unused
        for key in ("extra", "source_weighting"):  # no extra set
            del data["train"][key]
        payload = json.dumps({"model": data["model"], "train": data["train"]}, sort_keys=True)
        assert config.training_fingerprint() == hashlib.sha256(payload.encode()).hexdigest()[:12]
        config.train.max_minutes = 30
        assert config.training_fingerprint() != hashlib.sha256(payload.encode()).hexdigest()[:12]
    # The shipped models' recorded fingerprints (models/*/scores.json).
    assert preset("seeds-baseline").training_fingerprint() == "36aa5e14d6c7"
    strong = preset("seeds-baseline")
    strong.train.augment_strength = "strong"
    assert strong.training_fingerprint() != "36aa5e14d6c7"
    assert preset("default").training_fingerprint() == "50d91d718203"
    dimmed = preset("default")
    dimmed.train.dim_nuclei = 0.5
    assert dimmed.training_fingerprint() != "50d91d718203"
    stained = preset("default")
    stained.train.stain_tissue = 0.3
    assert stained.training_fingerprint() != "50d91d718203"
    crowded = preset("default")
    crowded.train.paste_nuclei = 0.5
    assert crowded.training_fingerprint() != "50d91d718203"
    mobile = preset("default")
    mobile.model.arch = "mobilenetv2_unet"
    frozen = preset("default")
    frozen.model.arch, frozen.model.encoder_trainable = "mobilenetv2_unet", False
    assert mobile.training_fingerprint() != frozen.training_fingerprint()


def test_random_init_mobilenetv2_learns_batch_norm_statistics_at_a_usable_pace():
    """From random weights, Keras' 0.999 momentum left inference-mode output as noise."""
    from keras import layers

    from pipeline.core.models import RANDOM_INIT_BN_MOMENTUM, build_model

    def momenta(model):
        encoder = model.get_layer("encoder")
        return {
            layer.momentum
            for layer in encoder.layers
            if isinstance(layer, layers.BatchNormalization)
        }

    random_init = ModelConfig(arch="mobilenetv2_unet", base_filters=4, encoder_weights="none")
    assert momenta(build_model(random_init)) == {RANDOM_INIT_BN_MOMENTUM}
    imagenet = ModelConfig(arch="mobilenetv2_unet", base_filters=4, encoder_weights="imagenet")
    assert momenta(build_model(imagenet, pretrained=False)) == {0.999}
