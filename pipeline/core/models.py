"""Network architectures, in backend-agnostic Keras 3 (``keras.layers``, ``keras.ops``).

The same code trains with the TensorFlow backend on the CPU here and with JAX or PyTorch on
a GPU machine without TensorFlow, so nothing here may use TensorFlow directly. Models take images of
any size whose sides are multiples of ``input_multiple(config)`` (prediction pads to it).

Architectures (``ModelConfig.arch``, ``./run.sh train --arch``):

- ``unet``: the U-Net, ``depth`` halvings, ``base_filters`` doubled at each level.
- ``unetpp``: U-Net++ (Zhou et al. 2018): nested, dense skip pathways and deep supervision,
  one sigmoid head per top-level node X^{0,1} .. X^{0,depth}. Training applies the loss to
  every head (their sum); prediction averages the heads or uses one of them
  (``PredictConfig.heads``, see ``select_heads``).
- ``mobilenetv2_unet``: Keras' MobileNetV2 (width multiplier 1.0, ImageNet weights or
  random) as the encoder, a U-Net decoder fed by its feature maps at strides 2, 4, 8 and 16
  (``MOBILENETV2_SKIPS``) from its output at stride 32; ``base_filters`` sets the decoder's
  widths (``base_filters * 2**level`` at stride ``2**level``), ``depth`` is not used
  (always 5 halvings: sides are multiples of 32). The pipeline's per-image standardised
  input is rescaled inside the network to the [-1, 1] range MobileNetV2 was trained on
  (``PerImageRange``: each image's minimum to -1, its maximum to 1).
"""

from __future__ import annotations

import logging
import os
import weakref
from pathlib import Path

import keras
from keras import layers, ops

from pipeline.config import ARCHITECTURES, ENCODER_WEIGHTS, ModelConfig, check_heads
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)


# MobileNetV2 layers whose outputs feed the decoder, by stride (Keras 3 layer names).
MOBILENETV2_SKIPS = {
    2: "block_1_expand_relu",
    4: "block_3_expand_relu",
    8: "block_6_expand_relu",
    16: "block_13_expand_relu",
}
MOBILENETV2_OUTPUT = "out_relu"  # stride 32
MOBILENETV2_ALPHA = 1.0
# Batch-norm momentum of a MobileNetV2 encoder trained from random weights (Keras: 0.999).
RANDOM_INIT_BN_MOMENTUM = 0.9
MOBILENETV2_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
)


def input_multiple(config: ModelConfig) -> int:
    """Image sides must be multiples of this (one halving per level)."""
    if config.arch == "mobilenetv2_unet":
        return 32
    return 2**config.depth


@keras.saving.register_keras_serializable(package="pipeline")
class PerImageRange(layers.Layer):
    """Rescale each image linearly to [-1, 1]: its minimum to -1, its maximum to 1.

    The pipeline standardises images per image (``pipeline.core.preprocess.normalise_image``);
    ImageNet-trained encoders expect pixels scaled to [-1, 1]. A linear map per image
    turns one into the other (up to a contrast stretch), whatever the standardisation
    did; a flat image becomes all -1.
    """

    def call(self, inputs):
        low = ops.min(inputs, axis=(1, 2, 3), keepdims=True)
        high = ops.max(inputs, axis=(1, 2, 3), keepdims=True)
        return 2.0 * (inputs - low) / ops.maximum(high - low, 1e-6) - 1.0

    def compute_output_shape(self, input_shape):
        return input_shape


def custom_objects() -> dict[str, type]:
    """The pipeline's own layers, for ``keras.saving.load_model``."""
    return {"PerImageRange": PerImageRange}


def _conv_block(x, filters: int, config: ModelConfig, name: str):
    for i in (1, 2):
        x = layers.Conv2D(
            filters,
            3,
            padding="same",
            use_bias=not config.batch_norm,
            kernel_initializer="he_normal",
            name=f"{name}_conv{i}",
        )(x)
        if config.batch_norm:
            x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def _probability_head(x, out_channels: int, name: str):
    # float32 even under mixed precision: the loss and the thresholds want full precision.
    return layers.Conv2D(out_channels, 1, activation="sigmoid", dtype="float32", name=name)(x)


def build_unet(config: ModelConfig, out_channels: int = 1, in_channels: int = 3) -> keras.Model:
    """U-Net: ``depth`` down-sampling levels, ``base_filters`` doubled at each level.

    Outputs per-pixel probabilities (sigmoid, float32 even under mixed precision), one
    channel per training target.

    >>> build_unet(ModelConfig(base_filters=8, depth=2)).output_shape   # doctest: +SKIP
    (None, None, None, 1)
    """
    inputs = keras.Input(shape=(None, None, in_channels), name="image")
    x = inputs
    skips = []
    for level in range(config.depth):
        x = _conv_block(x, config.base_filters * 2**level, config, f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = _conv_block(x, config.base_filters * 2**config.depth, config, "bottom")
    if config.dropout > 0:
        x = layers.Dropout(config.dropout, name="bottom_dropout")(x)
    for level in reversed(range(config.depth)):
        filters = config.base_filters * 2**level
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"up{level}")(x)
        x = layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = _conv_block(x, filters, config, f"dec{level}")
    outputs = _probability_head(x, out_channels, "probabilities")
    return keras.Model(inputs, outputs, name="unet")


def build_unetpp(config: ModelConfig, out_channels: int = 1, in_channels: int = 3) -> keras.Model:
    """U-Net++: nested dense skip pathways, one output head per top-level node.

    Node X^{i,j} sits at level ``i`` (``base_filters * 2**i`` filters); X^{i,0} is the
    encoder, and every later node concatenates all earlier nodes of its level with the
    up-sampled X^{i+1,j-1} before a conv block. The outputs are ``depth`` sigmoid heads
    on X^{0,1} .. X^{0,depth}, in that order (float32): head ``j`` only needs the nodes
    X^{i,k} with ``i + k <= j``, so the network cut after it is smaller and faster.

    >>> len(build_unetpp(ModelConfig(base_filters=4, depth=3)).outputs)   # doctest: +SKIP
    3
    """
    if config.depth < 1:
        raise PipelineError(f"unetpp needs depth 1 or more, got {config.depth}")
    inputs = keras.Input(shape=(None, None, in_channels), name="image")
    nodes: dict[tuple[int, int], object] = {}
    x = inputs
    for level in range(config.depth + 1):
        if level > 0:
            x = layers.MaxPooling2D(2, name=f"pool{level - 1}")(x)
        x = _conv_block(x, config.base_filters * 2**level, config, f"x{level}_0")
        nodes[level, 0] = x
    if config.dropout > 0:
        nodes[config.depth, 0] = layers.Dropout(config.dropout, name="bottom_dropout")(
            nodes[config.depth, 0]
        )
    for column in range(1, config.depth + 1):
        for level in range(config.depth - column + 1):
            filters = config.base_filters * 2**level
            up = layers.Conv2DTranspose(
                filters, 2, strides=2, padding="same", name=f"up{level}_{column}"
            )(nodes[level + 1, column - 1])
            joined = layers.Concatenate(name=f"skip{level}_{column}")(
                [*(nodes[level, k] for k in range(column)), up]
            )
            nodes[level, column] = _conv_block(joined, filters, config, f"x{level}_{column}")
    heads = [
        _probability_head(nodes[0, column], out_channels, f"probabilities_{column}")
        for column in range(1, config.depth + 1)
    ]
    return keras.Model(inputs, heads, name="unetpp")


def _keras_cache_dir() -> Path:
    """Where ``keras.utils.get_file`` keeps downloads: ``$KERAS_HOME`` or ``~/.keras``."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser()


def mobilenetv2_weights_file(alpha: float = MOBILENETV2_ALPHA) -> str:
    """The ImageNet weights of MobileNetV2's convolutional part: name of Keras' file."""
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_224_no_top.h5"


def fetch_mobilenetv2_weights(alpha: float = MOBILENETV2_ALPHA) -> Path:
    """Path of the ImageNet weights file, downloaded into Keras' cache on first use.

    Raises ``PipelineError`` when the file is not cached and cannot be downloaded,
    saying where to put it by hand and how to train without it.
    """
    name = mobilenetv2_weights_file(alpha)
    cache_dir = _keras_cache_dir()
    try:
        path = keras.utils.get_file(
            name, MOBILENETV2_WEIGHTS_URL + name, cache_subdir="models", cache_dir=str(cache_dir)
        )
    except Exception as error:  # noqa: BLE001 - Keras raises a bare Exception when offline
        raise PipelineError(
            f"the ImageNet weights of the MobileNetV2 encoder could not be downloaded "
            f"({error}). Keras caches them as {cache_dir / 'models' / name}: download "
            f"{MOBILENETV2_WEIGHTS_URL + name} on a machine with internet access and put it "
            "there, or train from random initialisation with --encoder-weights none"
        ) from error
    return Path(path)


def build_mobilenetv2_unet(
    config: ModelConfig, out_channels: int = 1, in_channels: int = 3, pretrained: bool = True
) -> keras.Model:
    """A U-Net decoder on a MobileNetV2 encoder (``keras.applications``).

    The encoder is a sub-model named ``encoder`` whose outputs are the feature maps of
    ``MOBILENETV2_SKIPS`` and ``MOBILENETV2_OUTPUT``; each decoder level up-samples
    (transposed convolution), concatenates the skip of its stride and applies a conv
    block; a last up-sampling and conv block bring it to full resolution. With
    ``config.encoder_weights == "imagenet"`` and ``pretrained``, the encoder starts from
    the ImageNet weights (``fetch_mobilenetv2_weights``); ``pretrained=False`` skips them
    when trained weights are loaded over the whole model anyway.
    """
    if config.encoder_weights not in ENCODER_WEIGHTS:
        raise PipelineError(
            f"unknown encoder weights {config.encoder_weights!r}; choose from {ENCODER_WEIGHTS}"
        )
    if in_channels != 3:
        raise PipelineError(f"mobilenetv2_unet takes RGB images, not {in_channels} channels")
    # Built without weights: keras.applications refuses ImageNet weights for some input
    # shapes, and the file holds the same weights for every input size anyway.
    backbone = keras.applications.MobileNetV2(
        input_shape=(None, None, 3), alpha=MOBILENETV2_ALPHA, include_top=False, weights=None
    )
    if config.encoder_weights == "imagenet" and pretrained:
        backbone.load_weights(fetch_mobilenetv2_weights(MOBILENETV2_ALPHA))
    if config.encoder_weights == "none":
        # Keras' MobileNetV2 uses a batch-norm momentum of 0.999, made for fine-tuning
        # ImageNet statistics: from random weights, the moving statistics would still be
        # ~70% their initial values after a few hundred steps, and inference-mode output
        # noise. Learn them at the U-Net's pace instead.
        for layer in backbone.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = RANDOM_INIT_BN_MOMENTUM
    names = [MOBILENETV2_SKIPS[stride] for stride in sorted(MOBILENETV2_SKIPS)]
    encoder = keras.Model(
        backbone.input,
        [backbone.get_layer(name).output for name in [*names, MOBILENETV2_OUTPUT]],
        name="encoder",
    )
    encoder.trainable = config.encoder_trainable
    if not config.encoder_trainable and config.encoder_weights == "none":
        log.warning("a frozen encoder with random weights: only the decoder will learn")

    inputs = keras.Input(shape=(None, None, in_channels), name="image")
    features = encoder(PerImageRange(name="to_unit_range")(inputs))
    skips, x = features[:-1], features[-1]
    if config.dropout > 0:
        x = layers.Dropout(config.dropout, name="bottom_dropout")(x)
    for level in reversed(range(5)):  # strides 16, 8, 4, 2, then full resolution
        filters = config.base_filters * 2**level
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"up{level}")(x)
        if level > 0:
            x = layers.Concatenate(name=f"skip{level}")([x, skips[level - 1]])
        x = _conv_block(x, filters, config, f"dec{level}")
    outputs = _probability_head(x, out_channels, "probabilities")
    return keras.Model(inputs, outputs, name="mobilenetv2_unet")


def build_model(config: ModelConfig, out_channels: int = 1, pretrained: bool = True) -> keras.Model:
    """The network named by ``config.arch``.

    ``pretrained=False`` leaves out pretrained encoder weights (no download): for a model
    whose trained weights are loaded next (``pipeline.core.model_store.load_trained_network``).
    """
    if config.arch == "unet":
        return build_unet(config, out_channels=out_channels)
    if config.arch == "unetpp":
        return build_unetpp(config, out_channels=out_channels)
    if config.arch == "mobilenetv2_unet":
        return build_mobilenetv2_unet(config, out_channels=out_channels, pretrained=pretrained)
    raise PipelineError(f"unknown architecture {config.arch!r}; choose from {ARCHITECTURES}")


def model_outputs(model: keras.Model) -> int:
    """The number of output heads of ``model`` (1 but for U-Net++ with deep supervision)."""
    return len(model.outputs)


# Networks cut after one head, per model: built once, dropped with their model.
_single_head_models: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def select_heads(model: keras.Model, heads: str = "all") -> keras.Model:
    """The network that computes the heads asked for.

    ``"all"``: ``model`` itself (the caller averages its outputs); ``"N"``: the network cut
    after head ``N`` (1-based), which skips the nodes only the later heads need.
    """
    heads = check_heads(heads)
    n_heads = model_outputs(model)
    if heads == "all":
        return model
    head = int(heads)
    if head > n_heads:
        raise PipelineError(
            f"heads {head}: the {model.name} model has {n_heads} output head"
            + ("s" if n_heads > 1 else "")
        )
    if n_heads == 1:
        return model
    cached = _single_head_models.setdefault(model, {})
    if head not in cached:
        cached[head] = keras.Model(
            model.input, model.outputs[head - 1], name=f"{model.name}_head{head}"
        )
    return cached[head]
