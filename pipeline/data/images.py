"""Reading image files: PNG, JPEG and TIFF, grey or colour, 8 to 32 bits or float.

Two views of a file:

- `read_pixels`: the pixels as stored, ``(H, W)`` grey or ``(H, W, 3)`` colour in the file's
  own type (``uint8``, ``uint16``, ``float32``, ...), an alpha channel dropped and a palette
  expanded. Measurements (``predict --measurements``) are taken on these values.
- `read_image`: what the network reads, RGB ``uint8`` ``(H, W, 3)``. 8-bit images are used
  as they are (a grey one repeated over three channels); deeper ones (12-, 16-, 32-bit
  integers, floats) are normalised per image by percentiles (`to_rgb_uint8`), so a 12-bit
  image in a 16-bit container keeps its grey levels instead of the 16 that a shift by 8 bits
  would leave.

TIFF files are read with ``tifffile`` (compressions that need the optional ``imagecodecs``
package, such as LZW, fall back to Pillow); 16-bit colour PNGs with OpenCV (Pillow cuts
them to 8 bits); everything else with Pillow. Every function takes a path or a binary file
object, and raises ``PipelineError`` naming the file and the problem.

Example
-------
>>> read_image("cells.tif").shape, read_pixels("cells.tif").dtype   # doctest: +SKIP
((512, 512, 3), dtype('uint16'))
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
import tifffile
from PIL import Image

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

#: The file name endings a plain folder of images is searched for (any case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
#: Low and high percentiles (per image, over all channels) that become 0 and 255 when an
#: image deeper than 8 bits is brought to 8 bits.
NORMALISE_PERCENTILES = (0.5, 99.5)

ImageSource = str | os.PathLike[str] | BinaryIO

#: The largest label a 16-bit PNG label image holds; more nuclei make a 32-bit TIFF.
MAX_PNG_LABEL = 65535

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_COLOUR_TYPES_WITH_CHANNELS = (2, 4, 6)  # RGB, grey + alpha, RGBA
_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError)


def _head(source: ImageSource, size: int = 32) -> bytes:
    """The first ``size`` bytes of the file; raise when it is missing or empty."""
    try:
        if hasattr(source, "read"):
            position = source.tell()
            head = source.read(size)
            source.seek(position)
        else:
            with open(source, "rb") as file:
                head = file.read(size)
    except FileNotFoundError as error:
        raise PipelineError(f"{source}: not a readable image (no such file)") from error
    except OSError as error:
        raise PipelineError(f"{source}: not a readable image ({error})") from error
    if not head:
        raise PipelineError(f"{source}: not a readable image (empty file, 0 bytes)")
    return head


def _is_deep_colour_png(head: bytes) -> bool:
    """A PNG of 16 bits per channel with more than one channel (Pillow would cut it)."""
    return (
        head.startswith(_PNG_SIGNATURE)
        and head[12:16] == b"IHDR"
        and head[24] == 16
        and head[25] in _PNG_COLOUR_TYPES_WITH_CHANNELS
    )


def _read_with_pillow(source: ImageSource) -> np.ndarray:
    """Pixels as Pillow decodes them: palettes expanded, other colour spaces to RGB."""
    try:
        with Image.open(source) as image:
            image.load()
            if image.mode in ("P", "PA"):
                return np.asarray(image.convert("RGBA"))
            if image.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                return np.asarray(image.convert("RGB"))
            return np.asarray(image)
    except _READ_ERRORS as error:
        reason = "not a PNG, JPEG or TIFF image" if "cannot identify" in str(error) else error
        raise PipelineError(f"{source}: not a readable image ({reason})") from error


def _read_deep_colour_png(source: ImageSource) -> np.ndarray:
    """A 16-bit colour PNG with OpenCV, as RGB(A) ``uint16``."""
    if hasattr(source, "read"):
        position = source.tell()
        data = source.read()
        source.seek(position)
    else:
        data = Path(source).read_bytes()
    pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise PipelineError(f"{source}: not a readable image (a broken or truncated PNG)")
    if pixels.ndim == 3 and pixels.shape[2] in (3, 4):
        pixels = pixels[:, :, [2, 1, 0, 3][: pixels.shape[2]]]  # BGR(A) to RGB(A)
    return pixels


def _tiff_page_pixels(page, source: ImageSource) -> np.ndarray:
    """One TIFF page's pixels as (H, W) or (H, W, samples)."""
    pixels = page.asarray()
    axes = page.axes
    if axes.startswith("S") and pixels.ndim == 3:  # planar: one plane per sample
        pixels = np.moveaxis(pixels, 0, -1)
    if pixels.ndim > 3:
        raise PipelineError(
            f"{source}: unsupported TIFF layout (axes {axes}, shape {pixels.shape}); "
            "expected a 2-D grey or colour image"
        )
    return pixels


def _read_tiff(source: ImageSource) -> np.ndarray:
    """The first page of a TIFF with tifffile (Pillow when it lacks the compression's codec)."""
    try:
        with tifffile.TiffFile(source) as tiff:
            if not tiff.pages:
                raise PipelineError(f"{source}: not a readable TIFF image (it holds no image)")
            if len(tiff.pages) > 1:
                log.warning("%s: %d pages; only the first is read", source, len(tiff.pages))
            return _tiff_page_pixels(tiff.pages[0], source)
    except _READ_ERRORS as error:
        if "imagecodecs" not in str(error):
            raise PipelineError(f"{source}: not a readable TIFF image ({error})") from error
        codec_error = error
    if hasattr(source, "seek"):
        source.seek(0)
    try:
        return _read_with_pillow(source)
    except PipelineError as error:
        raise PipelineError(
            f"{source}: not a readable TIFF image ({codec_error}; Pillow cannot read it either)"
        ) from error


def read_pixels(source: ImageSource) -> np.ndarray:
    """The pixels of an image file as stored: ``(H, W)`` grey or ``(H, W, 3)`` colour.

    The file's own pixel type is kept (``uint8``, ``uint16``, ``int32``, ``float32``,
    ``bool``); an alpha channel is dropped (not composited), a palette expanded, a grey +
    alpha image becomes grey, and only the first page of a multi-page TIFF is read (with a
    warning).

    Raises
    ------
    PipelineError
        When the file is missing, empty, truncated, not an image, of an unsupported shape
        or pixel type, or has NaN or infinite pixels; the message names the file.

    Examples
    --------
    >>> read_pixels("deep.tif").dtype   # doctest: +SKIP
    dtype('uint16')
    """
    head = _head(source)
    if head.startswith(_TIFF_SIGNATURES):
        pixels = _read_tiff(source)
    elif _is_deep_colour_png(head):
        pixels = _read_deep_colour_png(source)
    else:
        pixels = _read_with_pillow(source)
    if not (pixels.dtype == np.bool_ or np.issubdtype(pixels.dtype, np.number)) or (
        np.issubdtype(pixels.dtype, np.complexfloating)
    ):
        raise PipelineError(f"{source}: unsupported pixel type {pixels.dtype}")
    if pixels.ndim == 3 and pixels.shape[2] in (1, 2):  # grey, grey + alpha
        pixels = pixels[:, :, 0]
    elif pixels.ndim == 3 and pixels.shape[2] >= 3:
        pixels = pixels[:, :, :3]
    elif pixels.ndim != 2:
        raise PipelineError(f"{source}: unsupported image shape {pixels.shape}")
    if pixels.size == 0:
        raise PipelineError(f"{source}: not a readable image (no pixels, shape {pixels.shape})")
    _refuse_non_finite(source, pixels)
    return pixels


def _refuse_non_finite(source: ImageSource, pixels: np.ndarray) -> None:
    """Refuse NaN and infinite pixels (a float TIFF's "no data"): no reading of them as
    nucleus or background is right for every instrument, and they would make blank
    measurements; the user decides what they are."""
    if not np.issubdtype(pixels.dtype, np.floating):
        return
    bad = int(pixels.size - np.count_nonzero(np.isfinite(pixels)))
    if bad:
        raise PipelineError(
            f"{source}: {bad} of its {pixels.size} pixel values are NaN or infinite; "
            "replace them with a number (such as the background's) and try again"
        )


def normalise_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """8-bit version of pixels deeper than 8 bits, by per-image percentiles.

    The ``NORMALISE_PERCENTILES`` (0.5 and 99.5) of all the values (over every channel, so
    colours keep their balance) become 0 and 255, linearly, values outside them are
    clipped; when they coincide (an image almost all one value) the minimum and maximum are
    used instead, and a constant image becomes 0. Non-finite floats become 0. ``uint8`` is
    returned as it is, ``bool`` as 0 and 255.

    >>> normalise_to_uint8(np.array([[0, 1000, 2000, 3000, 4095]], np.uint16))  # 20 to 4073.1
    array([[  0,  62, 125, 187, 255]], dtype=uint8)
    """
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype == np.bool_:
        return pixels.astype(np.uint8) * 255
    values = pixels.astype(np.float32)
    finite = np.isfinite(values)
    sample = values if finite.all() else values[finite]
    if sample.size == 0:
        return np.zeros(pixels.shape, dtype=np.uint8)
    low, high = (float(x) for x in np.percentile(sample, NORMALISE_PERCENTILES))
    if high <= low:
        low, high = float(sample.min()), float(sample.max())
    if high <= low:
        return np.zeros(pixels.shape, dtype=np.uint8)
    scaled = (values - np.float32(low)) * np.float32(255.0 / (high - low))
    scaled[~finite] = 0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_rgb_uint8(pixels: np.ndarray) -> np.ndarray:
    """RGB ``uint8`` (H, W, 3) from `read_pixels`' output, as the network reads it.

    >>> to_rgb_uint8(np.array([[7]], np.uint8)).tolist()
    [[[7, 7, 7]]]
    """
    pixels = normalise_to_uint8(pixels)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    return np.ascontiguousarray(pixels)


def read_image(source: ImageSource) -> np.ndarray:
    """Read an image file as RGB ``uint8`` (H, W, 3): `to_rgb_uint8` of `read_pixels`.

    8-bit images are read as stored (grey repeated over three channels, alpha dropped,
    palette expanded, bilevel as 0/255, other colour spaces converted by Pillow); deeper
    ones are normalised by per-image percentiles (`normalise_to_uint8`).

    Raises
    ------
    PipelineError
        When the file is missing, empty, truncated, not an image, of an unsupported shape
        or pixel type, or has NaN or infinite pixels; the message names the file.

    Examples
    --------
    >>> read_image("x.png").dtype   # doctest: +SKIP
    dtype('uint8')
    """
    return to_rgb_uint8(read_pixels(source))


def read_image_shape(source: ImageSource) -> tuple[int, int]:
    """(height, width) of an image file, read from its header only."""
    if _head(source).startswith(_TIFF_SIGNATURES):
        try:
            with tifffile.TiffFile(source) as tiff:
                page = tiff.pages[0]
                return int(page.shape[page.axes.index("Y")]), int(page.shape[page.axes.index("X")])
        except (*_READ_ERRORS, AttributeError):
            if hasattr(source, "seek"):
                source.seek(0)  # Pillow may still know it
    try:
        with Image.open(source) as image:
            width, height = image.size
    except _READ_ERRORS as error:
        raise PipelineError(f"{source}: not a readable image ({error})") from error
    return height, width


def encode_label_image(labels: np.ndarray) -> tuple[str, bytes]:
    """An instance label image as a file: ``(suffix, bytes)``.

    A 16-bit grey PNG (0 = background, ``1..n`` the nuclei), or a 32-bit TIFF when a label
    is above `MAX_PNG_LABEL`. ``predict --labels-out`` and the web page write the same.

    >>> encode_label_image(np.array([[0, 1], [2, 300]]))[0]
    '.png'
    >>> encode_label_image(np.array([[0, MAX_PNG_LABEL + 1]]))[0]
    '.tif'
    """
    buffer = io.BytesIO()
    if labels.max(initial=0) <= MAX_PNG_LABEL:
        Image.fromarray(labels.astype(np.uint16)).save(buffer, format="PNG")
        return ".png", buffer.getvalue()

    tifffile.imwrite(buffer, labels.astype(np.uint32))
    return ".tif", buffer.getvalue()
