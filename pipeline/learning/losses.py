"""Training losses in backend-agnostic Keras 3 (``keras.ops`` only)."""

from __future__ import annotations

import keras
from keras import ops

from pipeline.errors import PipelineError


def soft_dice_loss(y_true, y_pred, smooth: float = 1.0):
    """1 - soft Dice coefficient per sample, over all pixels and channels."""
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    axes = (1, 2, 3)
    intersection = ops.sum(y_true * y_pred, axis=axes)
    total = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes)
    return 1.0 - (2.0 * intersection + smooth) / (total + smooth)


def bce_dice_loss(y_true, y_pred):
    """Binary cross-entropy plus soft Dice: BCE learns every pixel, Dice the overlap."""
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    bce = ops.mean(keras.losses.binary_crossentropy(y_true, y_pred), axis=(1, 2))
    return bce + soft_dice_loss(y_true, y_pred)


LOSSES = {"bce_dice": bce_dice_loss, "bce": None, "dice": soft_dice_loss}


def get_loss(name: str):
    """The loss function named in the training config."""
    if name == "bce":
        return keras.losses.BinaryCrossentropy()
    if name not in LOSSES:
        raise PipelineError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}")
    return LOSSES[name]
