"""Prediction of large images in overlapping tiles, so that memory does not grow with size.

A fully convolutional network can take a whole image at once, but its activations grow
with the image's area: a 1040x1388 image needs about a gigabyte, and larger microscope
images would exhaust memory. An image with a side longer than ``tile`` is cut into
``tile`` x ``tile`` windows that overlap by ``2 * margin``; each output pixel is taken from
the one window in which it lies at least ``margin`` pixels from every cut edge (or on
the image's own edge), so the network sees the same surroundings as on the whole image
wherever its receptive field is within ``margin``.

Window starts are multiples of ``multiple`` (the network's down-sampling factor), so the
pooling grid of every window is aligned with the whole image's.

>>> [(s.start, s.keep_from, s.keep_to) for s in tile_spans(200, 96, 16, 16)]
[(0, 0, 80), (64, 80, 144), (104, 144, 200)]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["Span", "predict_in_tiles", "tile_spans"]


@dataclass(frozen=True)
class Span:
    """One window on one axis: it starts at ``start`` and supplies the output in
    ``[keep_from, keep_to)`` (absolute coordinates)."""

    start: int
    keep_from: int
    keep_to: int


def tile_spans(length: int, tile: int, margin: int, multiple: int = 1) -> list[Span]:
    """The windows covering ``[0, length)`` along one axis.

    Parameters
    ----------
    length : int
        Size of the (padded) image on this axis; a multiple of ``multiple`` when the
        windows are to be aligned.
    tile : int
        Window size, a multiple of ``multiple``.
    margin : int
        Pixels at each cut edge of a window that are not used (overlap is ``2 * margin``).
    multiple : int
        Window starts are multiples of this.

    Returns
    -------
    list of Span
        In order; their kept ranges partition ``[0, length)``. One span covering all of
        it when ``length <= tile``.
    """
    if tile < 1 or margin < 0 or multiple < 1:
        raise ValueError(
            f"need tile >= 1, margin >= 0, multiple >= 1; got {tile}, {margin}, {multiple}"
        )
    if tile % multiple:
        raise ValueError(f"tile {tile} is not a multiple of {multiple}")
    if length <= tile:
        return [Span(0, 0, length)]
    step = (tile - 2 * margin) // multiple * multiple
    if step < multiple:
        raise ValueError(
            f"tile {tile} leaves no room between margins of {margin} (multiple {multiple})"
        )
    starts = list(range(0, length - tile, step)) + [length - tile]
    spans = []
    for index, start in enumerate(starts):
        keep_from = 0 if index == 0 else spans[-1].keep_to
        keep_to = length if index == len(starts) - 1 else start + tile - margin
        spans.append(Span(start, keep_from, keep_to))
    return spans


def predict_in_tiles(
    predict: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    tile: int,
    margin: int,
    multiple: int = 1,
    batch_size: int = 4,
) -> np.ndarray:
    """``predict`` of one (H, W, C) image, assembled from overlapping windows.

    Parameters
    ----------
    predict : callable
        Takes a batch (N, h, w, C) and returns (N, h, w, K): the network's output for each
        window.
    image : np.ndarray
        (H, W, C), already padded to multiples of ``multiple``.
    tile, margin, multiple : int
        See `tile_spans`.
    batch_size : int
        Windows predicted together.

    Returns
    -------
    np.ndarray
        (H, W, K) float32.
    """
    height, width = image.shape[:2]
    rows = tile_spans(height, tile, margin, multiple)
    columns = tile_spans(width, tile, margin, multiple)
    windows = [(row, column) for row in rows for column in columns]
    tile_h, tile_w = min(tile, height), min(tile, width)
    result: np.ndarray | None = None
    for first in range(0, len(windows), max(1, batch_size)):
        chunk = windows[first : first + max(1, batch_size)]
        batch = np.stack(
            [image[r.start : r.start + tile_h, c.start : c.start + tile_w] for r, c in chunk]
        )
        outputs = np.asarray(predict(batch))
        if result is None:
            result = np.zeros((height, width, outputs.shape[-1]), np.float32)
        for (row, column), output in zip(chunk, outputs, strict=True):
            result[row.keep_from : row.keep_to, column.keep_from : column.keep_to] = output[
                row.keep_from - row.start : row.keep_to - row.start,
                column.keep_from - column.start : column.keep_to - column.start,
            ]
    assert result is not None
    return result
