"""Prediction runs over image files: a model's nuclei for each file, streamed into the
outputs a run writes.

`iter_file_predictions` reads a bounded chunk of images at a time, has the model
(`pipeline.inference.model.NucleusModel`) find their nuclei, and yields them with a
progress bar; `PredictionOutputs` writes them: the submission CSV, and on request a label
image, an ImageJ ROI set and a QuPath GeoJSON file per image and one measurements table.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from skimage.segmentation import relabel_sequential
from tqdm import tqdm

from pipeline.data.dataset import ImageFile, image_path
from pipeline.data.images import MAX_PNG_LABEL, encode_label_image, read_pixels, to_rgb_uint8
from pipeline.data.submission import ResumableSubmissionWriter, SubmissionWriter
from pipeline.errors import PipelineError
from pipeline.fileio import atomic_path, atomic_write_text
from pipeline.inference.measure import COLUMNS, measure_nuclei
from pipeline.inference.outlines import geojson_text, imagej_roi_set

if TYPE_CHECKING:
    from pipeline.inference.model import NucleusModel

log = logging.getLogger(__name__)

CHUNK_IMAGES = 32  # images read and predicted together; bounds memory

#: A prediction's progress bar moves half an image when the network is done with it and
#: the other half when its nuclei are found, so that it moves image by image through both.
PROGRESS_FORMAT = "{l_bar}{bar}| {n:.0f}/{total_fmt} img [{elapsed}<{remaining}]"


def iter_predictions(
    model: NucleusModel, images_dir: Path, ids: Sequence[str], progress: bool = True
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(image_id, labels)`` for each id of a Kaggle-layout folder, a bounded chunk of
    images at a time."""
    image_files = [ImageFile(image_id, image_path(images_dir, image_id)) for image_id in ids]
    for image_file, labels, _ in iter_file_predictions(model, image_files, progress):
        yield image_file.image_id, labels


def progress_bar(total: int, done: int, progress: bool) -> tqdm:
    """The bar of a prediction run of ``total`` images, ``done`` of them before (a resumed
    run): it starts there."""
    return tqdm(
        total=total,
        initial=done,
        desc="predict",
        unit="img",
        disable=not progress,
        bar_format=PROGRESS_FORMAT,
    )


def iter_file_predictions(
    model: NucleusModel,
    image_files: Sequence[ImageFile],
    progress: bool = True,
    done: int = 0,
    chunk_images: int = CHUNK_IMAGES,
) -> Iterator[tuple[ImageFile, np.ndarray, np.ndarray]]:
    """Yield ``(image_file, labels, pixels)`` for each image file, ``chunk_images`` at a time.

    ``pixels`` are the image's values as stored (`pipeline.data.images.read_pixels`); the
    network sees their 8-bit RGB version (`pipeline.data.images.to_rgb_uint8`). ``done``
    images of the run were predicted before (a resumed run): the bar starts there.
    """
    # The bar is closed however the loop ends (an image that cannot be read, an error in
    # the caller that closes this generator), so that an error is a line of its own.
    bar = progress_bar(done + len(image_files), done, progress)
    try:
        for start in range(0, len(image_files), chunk_images):
            chunk = image_files[start : start + chunk_images]
            stored = [read_pixels(image_file.path) for image_file in chunk]
            images = [to_rgb_uint8(pixels) for pixels in stored]
            probs = model.predict_probabilities(images, on_image=lambda: bar.update(0.5))
            del images
            for image_file, prob, pixels in zip(chunk, probs, stored, strict=True):
                labels = model.labels_from_probabilities(prob)
                bar.update(0.5)
                yield image_file, labels, pixels
    finally:
        bar.close()


def write_label_image(labels_dir: Path, image_id: str, labels: np.ndarray) -> Path:
    """Write one image's instance labels as ``<labels_dir>/<image_id>.png`` (16-bit grey,
    0 = background, ``1..n`` the nuclei), or as ``<image_id>.tif`` (32-bit) when a label is
    above ``MAX_PNG_LABEL`` (`pipeline.data.images.encode_label_image`); atomically.
    Returns the path written."""
    suffix, data = encode_label_image(labels)
    if suffix != ".png":
        log.info(
            "%s: %d nuclei, over a 16-bit PNG's %d: writing a 32-bit TIFF",
            image_id, int(labels.max()), MAX_PNG_LABEL,
        )  # fmt: skip
    target = Path(labels_dir) / f"{image_id}{suffix}"
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return target


def write_outline_files(
    rois_dir: Path | None,
    geojson_dir: Path | None,
    image_id: str,
    labels: np.ndarray,
    measurements: pd.DataFrame | None,
) -> None:
    """Write one image's nuclei (labels ``1..n``) as an ImageJ ROI set
    ``<rois_dir>/<image_id>_rois.zip`` and as QuPath GeoJSON
    ``<geojson_dir>/<image_id>.geojson`` with their ``measurements``
    (`pipeline.inference.outlines`); each only when its folder is given, atomically."""
    if rois_dir is not None:
        with atomic_path(Path(rois_dir) / f"{image_id}_rois.zip") as tmp:
            tmp.write_bytes(imagej_roi_set(labels))
    if geojson_dir is not None:
        atomic_write_text(
            Path(geojson_dir) / f"{image_id}.geojson", geojson_text(labels, measurements)
        )


def consecutive_labels(labels: np.ndarray) -> np.ndarray:
    """``labels`` numbered ``1..n`` in their order (unchanged when they already are).

    >>> consecutive_labels(np.array([[0, 4], [9, 4]])).tolist()
    [[0, 1], [2, 1]]
    """
    present = np.unique(labels)
    present = present[present != 0]
    if present.size == 0 or present[-1] == present.size:
        return labels

    return relabel_sequential(labels)[0]


class PredictionOutputs:
    """Where each image's nuclei go: the submission CSV (always), and optionally a label
    image per image (`write_label_image`), one measurements table (a CSV, one row per
    nucleus, ``image`` first, then `pipeline.inference.measure.COLUMNS`), an ImageJ ROI set
    per image (``<rois_dir>/<image_id>_rois.zip``) and a QuPath GeoJSON file per image
    (``<geojson_dir>/<image_id>.geojson``, `write_outline_files`).

    A ``with`` block: the CSV and the table appear, atomically, when it ends without an
    error; label images are written one by one as they come.
    """

    def __init__(
        self,
        out_csv: Path,
        labels_dir: Path | None = None,
        measurements_csv: Path | None = None,
        resume_key: str | None = None,
        rois_dir: Path | None = None,
        geojson_dir: Path | None = None,
    ) -> None:
        if resume_key is not None and measurements_csv is not None:
            raise PipelineError(
                "--resume keeps the submission and label images across an interruption, "
                "not the measurements table: leave out --measurements or --resume"
            )
        self.writer = (
            SubmissionWriter(out_csv)
            if resume_key is None
            else ResumableSubmissionWriter(out_csv, resume_key)
        )
        self.labels_dir = labels_dir
        self.measurements_csv = measurements_csv
        self.rois_dir = rois_dir
        self.geojson_dir = geojson_dir
        self._tables: list[pd.DataFrame] = []

    @property
    def needs_pixels(self) -> bool:
        """Whether an image's stored pixels are needed (its nuclei are measured)."""
        return self.measurements_csv is not None or self.geojson_dir is not None

    def __enter__(self) -> PredictionOutputs:
        self.writer.__enter__()
        return self

    @property
    def done(self) -> set[str]:
        """The images a resumed run already wrote (none for a fresh one)."""
        return set(getattr(self.writer, "done", ()))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        suppressed = self.writer.__exit__(exc_type, exc, traceback)
        if exc_type is None and self.measurements_csv is not None:
            self._write_measurements()
        return suppressed

    def add(self, image_id: str, labels: np.ndarray, pixels: np.ndarray) -> int:
        """Add one image's labels (``pixels``: its values as stored, for the measurements);
        returns its number of nuclei."""
        n_nuclei = self.writer.add(image_id, labels)
        folders = (self.labels_dir, self.rois_dir, self.geojson_dir)
        if self.measurements_csv is not None or any(f is not None for f in folders):
            labels = consecutive_labels(labels)  # the k-th CSV row of the image is label k
        if self.labels_dir is not None:
            write_label_image(self.labels_dir, image_id, labels)
        table = None
        if self.needs_pixels:
            table = measure_nuclei(labels, pixels)
        write_outline_files(self.rois_dir, self.geojson_dir, image_id, labels, table)
        if self.measurements_csv is not None:
            table.insert(0, "image", image_id)
            self._tables.append(table)
        return n_nuclei

    def _write_measurements(self) -> None:
        columns = ["image", *COLUMNS]
        tables = [table for table in self._tables if not table.empty]
        table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=columns)
        with atomic_path(self.measurements_csv) as tmp:
            table[columns].to_csv(tmp, index=False)
        log.info("wrote %s (%d nuclei)", self.measurements_csv, len(table))
