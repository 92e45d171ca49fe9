"""One uploaded image to its nuclei: the web's adapter over the model object.

The web server (`pipeline.serving.app`) hands every request to one `Segmenter`, which
holds the model (`pipeline.inference.model.NucleusModel`, loaded once). It checks the
upload (type, size, pixels) before any work, decodes it, has the model predict with its
tuned settings (or the request's, checked against their declared ranges in
`pipeline.config.PredictConfig`), and returns the labels with everything the page and the
API show: measurements, run-length encodings, a picture of the image, its outlines and
the label image as files. Nothing is written to disk.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import io
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from skimage.segmentation import find_boundaries

from pipeline.config import PredictConfig, value_parser
from pipeline.data.images import encode_label_image, read_image_shape, read_pixels, to_rgb_uint8
from pipeline.data.rle import encode_labels
from pipeline.data.submission import HEADER, submission_rows
from pipeline.errors import PipelineError
from pipeline.inference.measure import measure_nuclei
from pipeline.inference.model import NucleusModel
from pipeline.inference.outlines import geojson_text, imagej_roi_set

#: The settings a request may change, and those the page shows.
REQUEST_SETTINGS = ("method", "threshold", "marker_threshold", "min_size", "tta", "diameter")
PAGE_SETTINGS = ("threshold", "min_size", "tta", "diameter")
#: File signatures of the accepted types.
SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}
MAX_MEGAPIXELS = 50.0


class UploadError(PipelineError):
    """A request that cannot be served, with its HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Segmentation:
    """One image's result: labels, measurements and what the page downloads."""

    name: str
    image: np.ndarray  # RGB uint8, as the network saw it
    labels: np.ndarray
    measurements: pd.DataFrame
    encodings: list[str]
    settings: dict[str, Any]
    seconds: float

    def summary(self) -> dict[str, Any]:
        """The API's answer: count, settings and one record per nucleus."""
        nuclei = self.measurements.to_dict(orient="records")
        for record, rle in zip(nuclei, self.encodings, strict=True):
            record["rle"] = rle
        height, width = self.labels.shape
        return {
            "name": self.name,
            "image_id": image_id_of(self.name),
            "height": height,
            "width": width,
            "count": len(nuclei),
            "settings": self.settings,
            "seconds": round(self.seconds, 3),
            "nuclei": nuclei,
        }

    def files(self) -> dict[str, str]:
        """The pictures and downloads of the page, base64 (PNGs, the ROI set's ZIP) or
        text (CSVs, GeoJSON), as ``predict`` writes them (the labels numbered ``1..n``)."""
        image_id = image_id_of(self.name)
        suffix, labels_bytes = encode_label_image(self.labels)
        measurements = self.measurements.copy()
        measurements.insert(0, "image", self.name)
        return {
            "image_png": _base64(_png(display_image(self.image))),
            "outlines_png": _base64(_png(outline_layer(self.labels))),
            "labels_name": f"{image_id}-labels{suffix}",
            "labels_file": _base64(labels_bytes),
            "measurements_csv": measurements.to_csv(index=False),
            "rle_csv": ",".join(HEADER) + "\n" + submission_rows(image_id, self.encodings),
            "rois_name": f"{image_id}_rois.zip",
            "rois_zip": _base64(imagej_roi_set(self.labels)),
            "geojson_name": f"{image_id}.geojson",
            "geojson": geojson_text(self.labels, self.measurements),
        }


def image_id_of(name: str) -> str:
    """The ImageId of an uploaded file: its name without folders and extension.

    >>> image_id_of("C:/scans/plate 1.tif")
    'plate 1'
    """
    stem = Path(name.replace("\\", "/")).name
    return stem.rsplit(".", 1)[0] if "." in stem else stem


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def display_image(image: np.ndarray) -> np.ndarray:
    """The image stretched for the eye: its 0.5 and 99.5 percentiles to black and white.

    >>> display_image(np.array([[[10] * 3, [20] * 3]], np.uint8))[0, :, 0].tolist()
    [0, 255]
    """
    low, high = np.percentile(image, (0.5, 99.5))
    if high <= low:
        return image
    stretched = (image.astype(np.float32) - low) * (255.0 / (high - low))
    return np.clip(stretched, 0, 255).astype(np.uint8)


def outline_layer(labels: np.ndarray) -> np.ndarray:
    """RGBA (H, W, 4): the nuclei's outlines in yellow, transparent elsewhere."""
    layer = np.zeros((*labels.shape, 4), np.uint8)
    layer[find_boundaries(labels, mode="inner")] = (255, 230, 0, 255)
    return layer


def check_upload(data: bytes, name: str, max_megapixels: float = MAX_MEGAPIXELS) -> str:
    """The file's type, once it is known to be a PNG, JPEG or TIFF within the size limit.

    Raises `UploadError`: 400 for an empty or unreadable file, 415 for another type, 413
    for an image over ``max_megapixels``. Only the header is read.
    """
    if not data:
        raise UploadError(f"{name}: the file is empty")
    kind = next((k for sig, k in SIGNATURES.items() if data.startswith(sig)), None)
    if kind is None:
        raise UploadError(f"{name}: not a PNG, JPEG or TIFF image", status=415)
    try:
        height, width = read_image_shape(io.BytesIO(data))
    except PipelineError as error:
        raise UploadError(f"{name}: {_without_source(str(error))}") from error
    megapixels = height * width / 1e6
    if megapixels > max_megapixels:
        raise UploadError(
            f"{name}: {width}x{height} is {megapixels:.1f} megapixels, over the limit of "
            f"{max_megapixels:g} (serve --max-megapixels)",
            status=413,
        )
    return kind


def decode_upload(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(rgb, pixels)``: the image as the network reads it (RGB uint8, deeper images
    normalised by percentiles) and its pixels as stored (for the measurements), read as
    ``predict`` reads files (`pipeline.data.images`)."""
    try:
        pixels = read_pixels(io.BytesIO(data))
        return to_rgb_uint8(pixels), pixels
    except PipelineError as error:
        raise UploadError(f"{name}: {_without_source(str(error))}") from error
    except Exception as error:  # noqa: BLE001 - any decoder failure is the file's fault
        raise UploadError(f"{name}: not a readable image ({error})") from error


def _without_source(message: str) -> str:
    """A reader's message without the ``<_io.BytesIO ...>:`` it starts with."""
    return message.split(": ", 1)[1] if message.startswith("<") else message


def parse_settings(form: dict[str, str]) -> dict[str, Any]:
    """The prediction settings a request gives, checked against their declarations.

    Raises `UploadError` (422) naming the setting and the problem.

    >>> parse_settings({"threshold": "0.4", "tta": "false"})
    {'threshold': 0.4, 'tta': False}
    """
    fields = {item.name: item for item in dataclasses.fields(PredictConfig)}
    unknown = sorted(set(form) - set(REQUEST_SETTINGS))
    if unknown:
        raise UploadError(
            f"unknown setting {unknown[0]!r}; known: {', '.join(REQUEST_SETTINGS)}", status=422
        )
    settings: dict[str, Any] = {}
    for key, text in form.items():
        settings[key] = _parse_one(fields[key], str(text).strip())
    return settings


def _parse_one(item: dataclasses.Field, text: str) -> Any:
    if item.type is bool:
        if text.lower() in ("true", "1", "on", "yes"):
            return True
        if text.lower() in ("false", "0", "off", "no"):
            return False
        raise UploadError(f"{item.name}: expected true or false, got {text!r}", status=422)
    try:
        value = value_parser(item)(text)
    except argparse.ArgumentTypeError as error:
        raise UploadError(f"{item.name}: {error}", status=422) from None
    choices = item.metadata["choices"]
    if choices and value not in choices:
        raise UploadError(f"{item.name}: {text!r} is not one of {', '.join(choices)}", status=422)
    return value


class Segmenter:
    """The model, loaded once, and the one image at a time it segments.

    ``device`` was chosen by the server's start (`pipeline.stages.serve`); ``engine``
    None keeps the model's own (`PredictConfig.engine`)."""

    def __init__(self, model_dir: Path, device: str = "auto", engine: str | None = None) -> None:
        self.model = NucleusModel.load(model_dir, {"engine": engine}, device=device)
        self.lock = threading.Lock()

    def defaults(self) -> dict[str, Any]:
        """The model's own (tuned) values of the settings a request may change."""
        return {key: getattr(self.model.config.predict, key) for key in REQUEST_SETTINGS}

    def segment(self, data: bytes, name: str, settings: dict[str, Any]) -> Segmentation:
        """Decode, predict and measure one uploaded image (one at a time)."""
        if settings.get("diameter") and not self.model.scale_policy.takes_diameter:
            raise UploadError(
                "diameter: this model resizes every image to its crop size; it cannot "
                "rescale by a nucleus diameter",
                status=422,
            )
        rgb, original = decode_upload(data, name)
        started = time.perf_counter()
        with self.lock:
            labels = self.model.predict_labels([rgb], **settings)[0]
        return Segmentation(
            name=name,
            image=rgb,
            labels=labels,
            measurements=measure_nuclei(labels, original),
            encodings=encode_labels(labels),
            settings={**self.defaults(), **settings},
            seconds=time.perf_counter() - started,
        )
