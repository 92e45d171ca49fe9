"""Reading the competition data: image ids, images as RGB uint8, instance labels.

Kaggle layout: ``<images_dir>/<ImageId>/images/<ImageId>.png`` and, for training data,
``<images_dir>/<ImageId>/masks/*.png`` (one binary PNG per nucleus).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.errors import PipelineError


def image_path(images_dir: str | Path, image_id: str) -> Path:
    """Path of one image in Kaggle layout: ``<images_dir>/<id>/images/<id>.png``."""
    return Path(images_dir) / image_id / "images" / f"{image_id}.png"


def list_image_ids(images_dir: str | Path) -> list[str]:
    """Sorted ids of the images in a folder in Kaggle layout.

    Raises ``PipelineError`` when the folder is missing or holds no image in that layout.
    """
    root = Path(images_dir)
    if not root.is_dir():
        raise PipelineError(f"{root}: no such folder of images")
    ids = sorted(
        entry.name for entry in root.iterdir() if image_path(root, entry.name).is_file()
    )
    if not ids:
        raise PipelineError(
            f"{root}: no images in Kaggle layout (<ImageId>/images/<ImageId>.png) found"
        )
    return ids


def read_image_shape(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file, read from its header only."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, SyntaxError) as error:
        raise PipelineError(f"{path}: not a readable image ({error})") from error
    return height, width


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as RGB uint8 (H, W, 3), whatever the PNG holds.

    Grey images are repeated over three channels, an alpha channel is dropped, and 16-bit
    images are scaled to 8 bits by their maximum range (``value >> 8``).

    >>> read_image("x.png").dtype   # doctest: +SKIP
    dtype('uint8')
    """
    try:
        with Image.open(path) as image:
            image.load()
            pixels = np.asarray(image)
            mode = image.mode
    except (OSError, SyntaxError) as error:
        raise PipelineError(f"{path}: not a readable image ({error})") from error
    if mode == "P":  # palette: let PIL expand it
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGBA"))
    if pixels.dtype == np.bool_:
        pixels = pixels.astype(np.uint8) * 255
    elif pixels.dtype in (np.uint16, np.int32, np.uint32) or mode.startswith("I"):
        pixels = (np.clip(pixels, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        raise PipelineError(f"{path}: unsupported pixel type {pixels.dtype}")
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    elif pixels.ndim == 3 and pixels.shape[2] == 2:  # grey + alpha
        pixels = np.repeat(pixels[:, :, :1], 3, axis=2)
    elif pixels.ndim == 3 and pixels.shape[2] >= 3:
        pixels = pixels[:, :, :3]
    else:
        raise PipelineError(f"{path}: unsupported image shape {pixels.shape}")
    return np.ascontiguousarray(pixels)
