"""Network architectures, in backend-agnostic Keras 3 (``keras.layers``, ``keras.ops``).

The same code trains with the TensorFlow backend on the CPU here and with JAX or PyTorch on
a GPU machine without TensorFlow, so nothing here may use TensorFlow directly. Models take images of
any size whose sides are multiples of ``input_multiple(config)`` (prediction pads to it).
"""

from __future__ import annotations

import keras
from keras import layers

from pipeline.config import ModelConfig
from pipeline.errors import PipelineError

ARCHITECTURES = ("unet",)


def input_multiple(config: ModelConfig) -> int:
    """Image sides must be multiples of this (one halving per level)."""
    return 2**config.depth


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
    outputs = layers.Conv2D(
        out_channels, 1, activation="sigmoid", dtype="float32", name="probabilities"
    )(x)
    return keras.Model(inputs, outputs, name="unet")


def build_model(config: ModelConfig, out_channels: int = 1) -> keras.Model:
    """The network named by ``config.arch``."""
    if config.arch == "unet":
        return build_unet(config, out_channels=out_channels)
    raise PipelineError(f"unknown architecture {config.arch!r}; choose from {ARCHITECTURES}")
