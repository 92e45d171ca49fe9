"""Stage ``predict``'s run: one place that chooses between this process and a Dask cluster.

`run_prediction` checks the outputs, takes their locks, loads the model
(`pipeline.inference.model.NucleusModel`; with ``dask``, only its settings: the workers
receive the object and load the network) and streams every image's nuclei into the
outputs, predicted here (`pipeline.inference.predict.iter_file_predictions`) or on the
cluster's workers (`pipeline.inference.dask_predict.iter_dask_predictions`). It sits
above both, so that neither imports the other's caller: ``dask_predict`` uses
``predict``'s functions on the workers, and nothing it imports imports it back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import PredictConfig
from pipeline.data.dataset import list_image_files
from pipeline.data.submission import write_submission_metadata
from pipeline.errors import PipelineError
from pipeline.inference.dask_predict import iter_dask_predictions, open_client
from pipeline.inference.model import NucleusModel
from pipeline.inference.output_checks import check_outputs, record_label_folder
from pipeline.inference.predict import CHUNK_IMAGES, PredictionOutputs, iter_file_predictions
from pipeline.locks import output_locks
from pipeline.provenance import git_commit

if TYPE_CHECKING:
    from pipeline.data.dataset import ImageFile

log = logging.getLogger(__name__)


def _run_key(folder: Path, settings: PredictConfig, image_files: Sequence[ImageFile]) -> str:
    """What makes two prediction runs the same: the model, its settings and the images."""
    weights = Path(folder) / "model.weights.h5"
    stat = weights.stat()
    payload = {
        "model": str(Path(folder).resolve()),
        "weights": [stat.st_size, stat.st_mtime_ns],
        "predict": vars(settings),
        "images": [[f.image_id, str(Path(f.path).resolve())] for f in image_files],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _predict_into(
    outputs: PredictionOutputs,
    model: NucleusModel,
    image_files: Sequence[ImageFile],
    dask: str | None,
    chunk_images: int,
) -> None:
    """`run_prediction`'s work: every image not done yet, predicted here or on the Dask
    cluster ``dask`` names (whose workers receive the model), into ``outputs`` in image
    order."""
    todo = [f for f in image_files if f.image_id not in outputs.done]
    done = len(image_files) - len(todo)
    if dask is None:
        predictions = iter_file_predictions(model, todo, True, done, chunk_images)
        with contextlib.closing(predictions):  # its bar closed before an error is shown
            for image_file, labels, pixels in predictions:
                outputs.add(image_file.image_id, labels, pixels)
        return
    with_pixels = outputs.needs_pixels
    with open_client(dask) as client:
        predictions = iter_dask_predictions(client, model, todo, chunk_images, with_pixels, done)
        with contextlib.closing(predictions):
            for image_file, labels, pixels in predictions:
                outputs.add(image_file.image_id, labels, pixels)


def _write_metadata(out_csv: Path, model: NucleusModel, images_dir: Path, layout: str) -> None:
    """The submission's sidecar ``.json``: the model, config, commit, images, settings."""
    write_submission_metadata(
        out_csv,
        {
            "model": str(model.folder),
            "config": model.config.name,
            "commit": git_commit(),
            "images": str(images_dir),
            "layout": layout,
            "predict": vars(model.config.predict),
        },
    )


def _load_model(
    model_dir: Path, overrides: dict | None, device: str, tuned: bool, dask, edited_ok: bool
) -> NucleusModel:
    """The model, checked; with ``dask`` the workers load its network, so only its
    settings are read here."""
    if dask is not None and edited_ok:
        raise PipelineError("--force-edited does not reach Dask workers: leave out --dask")
    return NucleusModel.load(
        model_dir, overrides, device=device, tuned=tuned, edited_ok=edited_ok, network=dask is None
    )


def _folder_outputs(*folders: Path | None) -> list[tuple[Path, str]]:
    """The outputs asked for that write a file per image into a folder, each with its
    option: ``labels_dir``, ``rois_dir``, ``geojson_dir`` in that order."""
    options = ("--labels-out", "--rois-out", "--geojson-out")
    return [(Path(f), o) for f, o in zip(folders, options, strict=True) if f is not None]


def run_prediction(
    model_dir: Path,
    images_dir: Path,
    out_csv: Path,
    overrides: dict | None = None,
    device: str = "auto",
    tuned: bool = True,
    labels_dir: Path | None = None,
    measurements_csv: Path | None = None,
    resume: bool = False,
    force: bool = False,
    dask: str | None = None,
    chunk_images: int = CHUNK_IMAGES,
    edited_ok: bool = False,
    rois_dir: Path | None = None,
    geojson_dir: Path | None = None,
) -> Path:
    """Predict every image of ``images_dir`` with the model in ``model_dir``; write ``out_csv``.

    ``images_dir`` is a folder in Kaggle layout, a plain folder of images or one image file
    (`pipeline.data.dataset.list_image_files`). ``overrides`` replaces the model's saved
    prediction settings (threshold, min_size, tta, diameter, ...). Writes the submission
    atomically, with a sidecar ``.json`` naming the model, config and commit; with
    ``labels_dir`` a label image, ``rois_dir`` an ImageJ ROI set, ``geojson_dir``
    a QuPath GeoJSON file per image, ``measurements_csv`` one table (`PredictionOutputs`).
    ``resume`` goes on after the last complete image of an interrupted run with the same
    model, settings and images (`pipeline.data.submission.ResumableSubmissionWriter`).
    The outputs are checked before any work (`check_outputs`): ``out_csv`` replaces only a
    submission this pipeline wrote, unless ``force``. With ``dask`` (``local:N`` or an
    address) the images go to a Dask cluster's workers (`pipeline.inference.dask_predict`),
    ``chunk_images`` at a time; the outputs are the same. ``edited_ok`` takes a model edited
    since it was finished, with a warning (`pipeline.core.model_store.check_complete`).
    ``device`` was chosen by the entry point (`pipeline.core.device.select_device`).
    """
    found = list_image_files(images_dir)
    out_csv = Path(out_csv)
    ids = [image_file.image_id for image_file in found.files]
    inputs = [(images_dir, "--images"), (model_dir, "the model")]
    check_outputs(out_csv, labels_dir, measurements_csv, force, inputs, ids, rois_dir, geojson_dir)
    folders = _folder_outputs(labels_dir, rois_dir, geojson_dir)
    locks = [(out_csv, "--out"), (measurements_csv, "--measurements"), *folders]
    with output_locks(locks):
        model = _load_model(model_dir, overrides, device, tuned, dask, edited_ok)
        log.info("predicting %d images of %s with %s", len(found.files), images_dir, model_dir)
        key = _run_key(model.folder, model.config.predict, found.files) if resume else None
        for folder, option in folders:
            record_label_folder(folder, ids, option)
        outputs = PredictionOutputs(
            out_csv, labels_dir, measurements_csv, key, rois_dir, geojson_dir
        )
        with outputs:
            _predict_into(outputs, model, found.files, dask, chunk_images)
        _write_metadata(out_csv, model, images_dir, found.layout)
    log.info("wrote %s%s", out_csv, "".join(f", {option} {folder}" for folder, option in folders))
    return out_csv
