"""The overlay pictures of a submission's report: one PNG per image shown.

Each shows the image, and beside it the predicted nuclei filled in distinct colours with
the true nuclei outlined in yellow (`overlay_rgb`); a title above, a legend below
(`write_overlay_png`). The report (`pipeline.evaluation.report`) writes them into its
``overlays/`` folder under the names of `overlay_file_name`.

Examples
--------
>>> overlay_file_name("0a7d30b2")
'0a7d30b2.png'
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from scipy import ndimage
from skimage.segmentation import find_boundaries

from pipeline.fileio import atomic_path

__all__ = [
    "OVERLAYS_DIR",
    "PREDICTION_COLOURS",
    "TRUE_OUTLINE_COLOUR",
    "overlay_file_name",
    "overlay_rgb",
    "write_overlay_png",
]

#: The report's folder of overlay PNGs, and the page's links to them.
OVERLAYS_DIR = "overlays"
#: Outline colour of the true nuclei (RGB in 0..1): yellow, kept out of the fill colours.
TRUE_OUTLINE_COLOUR = (1.0, 1.0, 0.0)
#: Fill colours of the predicted nuclei: matplotlib's tab20 without its greys, olives,
#: purples and pinks (greys vanish on grey images, olives look like the yellow outlines,
#: purples and pinks like stained nuclei).
PREDICTION_COLOURS = np.array(
    [
        [0x1F, 0x77, 0xB4], [0xAE, 0xC7, 0xE8], [0xFF, 0x7F, 0x0E], [0xFF, 0xBB, 0x78],
        [0x2C, 0xA0, 0x2C], [0x98, 0xDF, 0x8A], [0xD6, 0x27, 0x28], [0xFF, 0x98, 0x96],
        [0x8C, 0x56, 0x4B], [0xC4, 0x9C, 0x94], [0x17, 0xBE, 0xCF], [0x9E, 0xDA, 0xE5],
    ],
    dtype=np.float64,
) / 255.0  # fmt: skip
#: Consecutive labels (often neighbours) take colours this far apart in the palette;
#: coprime with its length, so every colour is used.
_COLOUR_STEP = 5
#: Opacity of the prediction fill.
FILL_ALPHA = 0.55
#: The pixels just outside a true outline are darkened by this fraction.
OUTLINE_RIM_DARKENING = 0.6
#: Longest side of each picture in an overlay PNG, in pixels (keeps a PNG well under 500 KB).
PANEL_PIXELS = 400
_DPI = 100


def overlay_file_name(image_id: str) -> str:
    """The overlay PNG's file name: the id itself when it is a safe file name.

    Other characters become ``_`` and a short hash of the id keeps names apart.

    Examples
    --------
    >>> overlay_file_name("0a7d30b2")
    '0a7d30b2.png'
    >>> overlay_file_name("a/b")
    'a_b-3ec69c85.png'
    """
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", image_id).lstrip(".") or "image"
    if safe == image_id:
        return f"{image_id}.png"
    digest = hashlib.sha1(image_id.encode("utf-8")).hexdigest()[:8]
    return f"{safe[:100]}-{digest}.png"


def _thick_boundaries(labels: np.ndarray, thickness: int) -> np.ndarray:
    boundaries = find_boundaries(labels, mode="inner")
    if thickness > 1:
        boundaries = ndimage.binary_dilation(boundaries, iterations=thickness - 1) & (labels > 0)
    return boundaries


def overlay_rgb(
    image: np.ndarray,
    pred_labels: np.ndarray,
    true_labels: np.ndarray | None = None,
    thickness: int = 1,
) -> np.ndarray:
    """The image with predicted nuclei filled and true nuclei outlined.

    Parameters
    ----------
    image : np.ndarray
        RGB uint8 (H, W, 3).
    pred_labels : np.ndarray
        (H, W) predicted instance labels; each nucleus is filled (``FILL_ALPHA`` opaque) in a
        colour of ``PREDICTION_COLOURS``, with its border more opaque, so that touching
        nuclei stay apart.
    true_labels : np.ndarray, optional
        (H, W) true instance labels, outlined in ``TRUE_OUTLINE_COLOUR`` on top, with a
        one-pixel darker rim just outside the outline (on the background).
    thickness : int
        Outline width in pixels (wider for images that are shown shrunk).

    Returns
    -------
    np.ndarray
        float64 RGB in [0, 1], (H, W, 3).

    Examples
    --------
    >>> picture = overlay_rgb(np.zeros((3, 3, 3), np.uint8), np.zeros((3, 3), int),
    ...                       np.pad([[1]], 1))
    >>> picture[1, 1].tolist(), picture[0, 0].tolist()
    ([1.0, 1.0, 0.0], [0.0, 0.0, 0.0])
    """
    rgb = np.asarray(image, dtype=np.float64) / 255.0
    pred_labels = np.asarray(pred_labels)
    inside = pred_labels > 0
    colours = PREDICTION_COLOURS[(pred_labels * _COLOUR_STEP) % len(PREDICTION_COLOURS)]
    alpha = np.where(inside, FILL_ALPHA, 0.0)
    alpha[_thick_boundaries(pred_labels, thickness)] = 0.85
    rgb = rgb * (1.0 - alpha[..., None]) + colours * alpha[..., None]
    if true_labels is not None:
        outline = _thick_boundaries(np.asarray(true_labels), thickness)
        # A dark rim outside the outline keeps it visible on light backgrounds too.
        rim = ndimage.binary_dilation(outline) & ~outline & (np.asarray(true_labels) == 0)
        rgb[rim] *= 1.0 - OUTLINE_RIM_DARKENING
        rgb[outline] = TRUE_OUTLINE_COLOUR
    return rgb


def _nucleus_count(labels: np.ndarray) -> int:
    """The number of distinct non-zero labels."""
    return int(np.count_nonzero(np.bincount(labels.ravel())[1:]))


def _overlay_legend(pred_labels: np.ndarray, true_labels: np.ndarray | None) -> str:
    """The line under an overlay figure: what the fill and the outlines are, and how many."""
    legend = f"coloured fill: {_nucleus_count(pred_labels)} predicted nuclei"
    if true_labels is not None:
        legend += f"    yellow outline: {_nucleus_count(true_labels)} true nuclei"
    return legend


def _overlay_figure(
    image: np.ndarray, pred_labels: np.ndarray, true_labels: np.ndarray | None, title: str
) -> Figure:
    """The image and `overlay_rgb` of it side by side, a title above and a legend below."""
    height, width = image.shape[:2]
    scale = PANEL_PIXELS / max(height, width)
    thickness = max(1, math.ceil(1.5 / scale))  # at least about 1.5 pixels once shown
    panel_w, panel_h = width * scale / _DPI, height * scale / _DPI
    margin, top, bottom = 0.1, 0.45, 0.35  # inches
    fig_w, fig_h = 2 * panel_w + 3 * margin, panel_h + top + bottom
    figure = Figure(figsize=(fig_w, fig_h), dpi=_DPI)
    pictures = (image, overlay_rgb(image, pred_labels, true_labels, thickness))
    for index, picture in enumerate(pictures):
        axes = figure.add_axes(
            (
                (margin + index * (panel_w + margin)) / fig_w,
                bottom / fig_h,
                panel_w / fig_w,
                panel_h / fig_h,
            )
        )
        axes.imshow(picture, interpolation="antialiased")
        axes.set_axis_off()
    figure.suptitle(title, y=1 - 0.08 / fig_h, va="top", fontsize=10)
    legend = _overlay_legend(pred_labels, true_labels)
    figure.text(0.5, 0.08 / fig_h, legend, ha="center", va="bottom", fontsize=8)
    return figure


def _save_png(figure: Figure, path: str | os.PathLike[str]) -> None:
    """Render a figure and save it, atomically, as a PNG of 256 colours."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    rendered = Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3])
    # 256 colours (no dithering) keep the file small: about 1 byte a pixel at most.
    indexed = rendered.quantize(colors=256, dither=Image.Dither.NONE)
    with atomic_path(path) as tmp:
        indexed.save(tmp, format="PNG", optimize=True)


def write_overlay_png(
    path: str | os.PathLike[str],
    image: np.ndarray,
    pred_labels: np.ndarray,
    true_labels: np.ndarray | None,
    title: str,
) -> Path:
    """Write the overlay figure of one image as a PNG, atomically.

    Two pictures side by side, each at most ``PANEL_PIXELS`` on its longest side: the
    image, and `overlay_rgb` of it. A title above, a legend below.

    Parameters
    ----------
    path : str or Path
        The PNG to write.
    image : np.ndarray
        RGB uint8 (H, W, 3).
    pred_labels, true_labels : np.ndarray
        (H, W) instance labels; ``true_labels`` may be None (no outlines).
    title : str
        The figure's title.

    Returns
    -------
    Path
        ``path``.
    """
    _save_png(_overlay_figure(image, pred_labels, true_labels, title), path)
    return Path(path)
