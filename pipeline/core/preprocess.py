"""Image normalisation and padding shared by training and prediction.

Training and prediction must see images prepared the same way, so both call
``normalise_image``; prediction pads whole images with ``pad_to_multiple`` and crops the
result back with ``crop_to_shape``.
"""

from __future__ import annotations

import numpy as np

from pipeline.config import INPUT_SPACES
from pipeline.data.dataset import has_light_background


def normalise_image(
    image: np.ndarray, invert_light_background: bool = False, input_space: str = "rgb"
) -> np.ndarray:
    """RGB uint8 (H, W, 3) to float32 with zero mean and unit spread per image.

    Per-image standardisation puts dim fluorescence, bright brightfield and stained
    histology images on one scale; a flat image becomes all zeros. With
    ``invert_light_background``, images with a light background (brightfield, histology)
    are inverted first, so that nuclei are brighter than their surroundings in every kind.
    With ``input_space="grey"`` every image becomes its grey level (the mean of R, G and
    B) in all three channels, and a light background is always inverted: every kind is
    then seen as bright nuclei on a dark ground, whatever its stain's colour.

    >>> normalise_image(np.full((2, 2, 3), 7, np.uint8)).max()
    np.float32(0.0)
    >>> grey = normalise_image(np.array([[[200, 0, 0], [0, 0, 100]]], np.uint8), False, "grey")
    >>> grey[0, :, 0].round(3).tolist(), bool((grey[..., 0] == grey[..., 2]).all())
    ([1.0, -1.0], True)
    """
    if input_space not in INPUT_SPACES:
        raise ValueError(f"input_space must be one of {INPUT_SPACES}, got {input_space!r}")
    pixels = image.astype(np.float32) / 255.0
    if input_space == "grey":
        pixels = np.repeat(pixels.mean(axis=2, keepdims=True), 3, axis=2)
    if (invert_light_background or input_space == "grey") and has_light_background(image):
        pixels = 1.0 - pixels
    mean = pixels.mean()
    std = pixels.std()
    return (pixels - mean) / max(float(std), 1e-3)


def pad_to_multiple(image: np.ndarray, multiple: int, min_size: int = 0) -> np.ndarray:
    """Pad (H, W, ...) at the bottom and right, by reflection, to sides that are multiples
    of ``multiple`` and at least ``min_size``."""
    height, width = image.shape[:2]
    target_h = max(-(-height // multiple) * multiple, min_size)
    target_w = max(-(-width // multiple) * multiple, min_size)
    pad = [(0, target_h - height), (0, target_w - width)] + [(0, 0)] * (image.ndim - 2)
    if target_h == height and target_w == width:
        return image
    mode = "reflect" if target_h - height < height and target_w - width < width else "symmetric"
    return np.pad(image, pad, mode=mode)


def crop_to_shape(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Undo ``pad_to_multiple``: keep the top-left (H, W)."""
    return array[: shape[0], : shape[1]]
