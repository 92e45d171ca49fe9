"""Stage ``predict``: a folder of images (Kaggle layout or plain) or one image file to a
submission CSV, and on request a label image per input and a table of measurements.

Per image: normalise, predict at the scales of the model's input-scale policy
(``pipeline.core.scale_policy``: at its own scale padded to the network's multiple, resized
to the crop size, rescaled by its estimated nucleus size, or at each of ``--scales`` with
the most confident kept), in overlapping tiles when a side is longer than ``tile_size``
(``pipeline.inference.tiling``), bring the probabilities back to the image's own size,
turn them into instances (``pipeline.inference.postprocess``) and stream them into the
outputs (`PredictionOutputs`: the submission writer, label images, measurements). Images
of the same size are predicted in batches; only a bounded chunk of images is in memory at
once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from pipeline.config import Config
from pipeline.core.scale_policy import ScalePolicy, scale_policy, settle_prediction_scale
from pipeline.errors import PipelineError
from pipeline.inference.engines import OnnxNetwork, load_network

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.data.dataset import ImageFile
    from pipeline.data.rle_csv import Problem

log = logging.getLogger(__name__)

CHUNK_IMAGES = 32  # images read and predicted together; bounds memory
# The network's activations grow with the pixels of a batch (about 1.8 GiB a megapixel
# for the default U-Net on the CPU): a batch holds at most this many pixels, or one image
# or tile.
MAX_BATCH_PIXELS = 1024 * 1024


def _images_per_batch(batch_size: int, height: int, width: int) -> int:
    """``batch_size``, lowered so that a batch stays within ``MAX_BATCH_PIXELS``.

    >>> [_images_per_batch(4, side, side) for side in (256, 544, 1024, 2048)]
    [4, 3, 1, 1]
    """
    return max(1, min(batch_size, MAX_BATCH_PIXELS // max(1, height * width)))


def _tta_variants(batch: np.ndarray) -> list[tuple[np.ndarray, callable]]:
    """The 8 flips/rotations of a (N, H, W, C) batch with the inverse of each."""
    variants = []
    for k in range(4):
        for flip in (False, True):

            def forward(x, k=k, flip=flip):
                x = np.rot90(x, k, axes=(1, 2))
                return x[:, :, ::-1] if flip else x

            def inverse(y, k=k, flip=flip):
                y = y[:, :, ::-1] if flip else y
                return np.rot90(y, -k, axes=(1, 2))

            variants.append((forward(batch), inverse))
    return variants


def _run_model(model, batch: np.ndarray, heads: str = "all") -> np.ndarray:
    """The network's probabilities for a batch; a model with several output heads
    (U-Net++) gives the mean of its heads, or the one head ``heads`` names."""
    # predict_on_batch, not a direct call: the backend compiles the network (a traced
    # graph on TensorFlow, whose convolutions, batch norms and activations are fused; jit
    # on JAX), 1.2 to 1.4 times as fast as running it op by op (bench/bench_speed.py).
    # A new image size costs one tracing (TensorFlow generalises the sizes after a few).
    # Within a data-parallel training (its validation), predict_on_batch would split the
    # batch over the devices: the network is called directly there.
    # ONNX Runtime (`pipeline.inference.engines`) gives numpy arrays, and needs no Keras.
    if isinstance(model, OnnxNetwork):
        return _mean_of_heads(model.outputs(batch, heads))
    from pipeline.core.distribute import distributing
    from pipeline.core.models import select_heads

    network = select_heads(model, heads)
    if distributing():
        outputs = network(batch, training=False)
    else:
        outputs = network.predict_on_batch(batch)
    if not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
    import keras

    return _mean_of_heads([keras.ops.convert_to_numpy(output) for output in outputs])


def _mean_of_heads(outputs: Sequence[np.ndarray]) -> np.ndarray:
    """The mean of a network's output heads, float32 (the one head itself when alone)."""
    total = None
    for output in outputs:
        prob = np.asarray(output).astype(np.float32)
        total = prob if total is None else total + prob
    return total / len(outputs) if len(outputs) > 1 else total


def _predict_batch(model, batch: np.ndarray, tta: bool, heads: str = "all") -> np.ndarray:
    if not tta:
        return _run_model(model, batch, heads)
    total = None
    for variant, inverse in _tta_variants(batch):
        # rot90 of a non-square batch swaps H and W; the network takes any size.
        prob = inverse(_run_model(model, np.ascontiguousarray(variant), heads))
        total = prob.astype(np.float32) if total is None else total + prob
    return total / 8.0


def predict_probabilities(
    model,
    images: Sequence[np.ndarray],
    config: Config,
    tta: bool | None = None,
    on_image: Callable[[], None] | None = None,
) -> list[np.ndarray]:
    """Per-pixel probabilities (H, W, C) float32 for each RGB uint8 image, at its own size.

    A model with several output heads gives the mean of its heads, or the one head that
    ``config.predict.heads`` names. Each image is seen at the scales of the model's
    input-scale policy (`pipeline.core.scale_policy.scale_policy`: its own, the crop
    size, its estimated nucleus size, test-time ``--scales`` or a user's ``--diameter``).
    ``on_image`` is called once per image as soon as its probabilities are done (a
    progress bar's tick).
    """
    tta = config.predict.tta if tta is None else tta

    def network(scaled: Sequence[np.ndarray], tta: bool, on_image=None) -> list[np.ndarray]:
        if on_image is None:
            return _predict_as_trained(model, scaled, config, tta)
        return _predict_as_trained(model, scaled, config, tta, on_image)

    def instances(prob: np.ndarray) -> np.ndarray:
        return labels_from_probabilities(prob, config)

    return scale_policy(config).probabilities(images, network, tta, on_image, instances)


def _network_input(
    image: np.ndarray, config: Config, policy: ScalePolicy, multiple: int
) -> np.ndarray:
    """An RGB uint8 image as the network takes it: normalised, then as the input-scale
    ``policy`` has it (`pipeline.core.scale_policy.ScalePolicy.before`)."""
    from pipeline.core.preprocess import normalise_image

    x = normalise_image(image, config.model.invert_light_background, config.model.input_space)
    return policy.before(x, multiple).astype(np.float32)


def _predict_as_trained(
    model,
    images: Sequence[np.ndarray],
    config: Config,
    tta: bool,
    on_image: Callable[[], None] | None = None,
) -> list[np.ndarray]:
    """`predict_probabilities` of each image as it is given (no rescaling), brought back to
    its size by the policy's `pipeline.core.scale_policy.ScalePolicy.after`."""
    from pipeline.core.models import input_multiple
    from pipeline.inference.tiling import predict_in_tiles

    batch_size = max(1, config.predict.batch_size)
    multiple = input_multiple(config.model)
    policy = scale_policy(config)
    prepared = [_network_input(image, config, policy, multiple) for image in images]
    results: list[np.ndarray | None] = [None] * len(images)

    def finish(i: int, prob: np.ndarray) -> None:
        prob = policy.after(prob, images[i].shape[:2])
        results[i] = np.ascontiguousarray(prob, dtype=np.float32)
        if on_image is not None:
            on_image()

    tile = config.predict.tile_size // multiple * multiple
    if config.predict.tile_size > 0:  # a tile smaller than the network's multiple: one multiple
        tile = max(tile, multiple)
    # A margin too wide for the tile is narrowed so that windows still advance.
    margin = max(0, min(config.predict.tile_margin, (tile - multiple) // 2))
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for index, x in enumerate(prepared):
        if tile > 0 and max(x.shape[:2]) > tile:
            # Large images go through in overlapping windows: memory stays bounded.
            finish(
                index,
                predict_in_tiles(
                    lambda batch: _predict_batch(model, batch, tta, config.predict.heads),
                    x,
                    tile,
                    margin,
                    multiple,
                    _images_per_batch(batch_size, min(tile, x.shape[0]), min(tile, x.shape[1])),
                ),
            )
        else:
            by_shape.setdefault(x.shape, []).append(index)
    for shape, indices in by_shape.items():
        per_batch = _images_per_batch(batch_size, shape[0], shape[1])
        for start in range(0, len(indices), per_batch):
            chunk = indices[start : start + per_batch]
            probs = _predict_batch(
                model, np.stack([prepared[i] for i in chunk]), tta, config.predict.heads
            )
            for i, prob in zip(chunk, probs, strict=True):
                finish(i, prob)
    return results  # type: ignore[return-value]


def postprocess_params(config: Config) -> dict:
    """The post-processing settings of ``config`` as ``instances_from_channels`` takes them."""
    from pipeline.core.model_store import TUNABLE

    return {key: getattr(config.predict, key) for key in TUNABLE if key != "tta"}


def labels_from_probabilities(prob: np.ndarray, config: Config) -> np.ndarray:
    """Instances from the network's output channels, with the config's thresholds."""
    from pipeline.core.model_store import target_channels
    from pipeline.inference.postprocess import instances_from_channels

    return instances_from_channels(prob, target_channels(config), postprocess_params(config))


def predict_labels(
    model, images: Sequence[np.ndarray], config: Config, tta: bool | None = None
) -> list[np.ndarray]:
    """Instance labels for each image (at its own size)."""
    probs = predict_probabilities(model, images, config, tta=tta)
    return [labels_from_probabilities(prob, config) for prob in probs]


#: A prediction's progress bar moves half an image when the network is done with it and
#: the other half when its nuclei are found, so that it moves image by image through both.
PROGRESS_FORMAT = "{l_bar}{bar}| {n:.0f}/{total_fmt} img [{elapsed}<{remaining}]"


def iter_predictions(
    model, images_dir: Path, ids: Sequence[str], config: Config, progress: bool = True
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(image_id, labels)`` for each id of a Kaggle-layout folder, a bounded chunk of
    images at a time."""
    from pipeline.data.dataset import ImageFile, image_path

    image_files = [ImageFile(image_id, image_path(images_dir, image_id)) for image_id in ids]
    for image_file, labels, _ in iter_file_predictions(model, image_files, config, progress):
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
    model,
    image_files: Sequence[ImageFile],
    config: Config,
    progress: bool = True,
    done: int = 0,
    chunk_images: int = CHUNK_IMAGES,
) -> Iterator[tuple[ImageFile, np.ndarray, np.ndarray]]:
    """Yield ``(image_file, labels, pixels)`` for each image file, ``chunk_images`` at a time.

    ``pixels`` are the image's values as stored (`pipeline.data.images.read_pixels`); the
    network sees their 8-bit RGB version (`pipeline.data.images.to_rgb_uint8`). ``done``
    images of the run were predicted before (a resumed run): the bar starts there.
    """
    from pipeline.data.images import read_pixels, to_rgb_uint8

    # The bar is closed however the loop ends (an image that cannot be read, an error in
    # the caller that closes this generator), so that an error is a line of its own.
    bar = progress_bar(done + len(image_files), done, progress)
    try:
        for start in range(0, len(image_files), chunk_images):
            chunk = image_files[start : start + chunk_images]
            stored = [read_pixels(image_file.path) for image_file in chunk]
            images = [to_rgb_uint8(pixels) for pixels in stored]
            probs = predict_probabilities(model, images, config, on_image=lambda: bar.update(0.5))
            del images
            for image_file, prob, pixels in zip(chunk, probs, stored, strict=True):
                labels = labels_from_probabilities(prob, config)
                bar.update(0.5)
                yield image_file, labels, pixels
    finally:
        bar.close()


def write_label_image(labels_dir: Path, image_id: str, labels: np.ndarray) -> Path:
    """Write one image's instance labels as ``<labels_dir>/<image_id>.png`` (16-bit grey,
    0 = background, ``1..n`` the nuclei), or as ``<image_id>.tif`` (32-bit) when a label is
    above ``MAX_PNG_LABEL`` (`pipeline.data.images.encode_label_image`); atomically.
    Returns the path written."""
    from pipeline.data.images import MAX_PNG_LABEL, encode_label_image
    from pipeline.fileio import atomic_path

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
    from pipeline.fileio import atomic_path, atomic_write_text

    if rois_dir is not None:
        from pipeline.inference.outlines import imagej_roi_set

        with atomic_path(Path(rois_dir) / f"{image_id}_rois.zip") as tmp:
            tmp.write_bytes(imagej_roi_set(labels))
    if geojson_dir is not None:
        from pipeline.inference.outlines import geojson_text

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
    from skimage.segmentation import relabel_sequential

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
        from pipeline.data.submission import ResumableSubmissionWriter, SubmissionWriter

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
            from pipeline.inference.measure import measure_nuclei

            table = measure_nuclei(labels, pixels)
        write_outline_files(self.rois_dir, self.geojson_dir, image_id, labels, table)
        if self.measurements_csv is not None:
            table.insert(0, "image", image_id)
            self._tables.append(table)
        return n_nuclei

    def _write_measurements(self) -> None:
        import pandas as pd

        from pipeline.fileio import atomic_path
        from pipeline.inference.measure import COLUMNS

        columns = ["image", *COLUMNS]
        tables = [table for table in self._tables if not table.empty]
        table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=columns)
        with atomic_path(self.measurements_csv) as tmp:
            table[columns].to_csv(tmp, index=False)
        log.info("wrote %s (%d nuclei)", self.measurements_csv, len(table))


def prediction_config(
    model_dir: Path, overrides: dict | None, tuned: bool, edited_ok: bool = False
) -> Config:
    """The config a prediction with a finished model runs with: the model's (its tuned
    ``predict`` settings when ``tuned``), the overrides applied. ``edited_ok``: a config
    or thresholds file edited since the model was finished is taken, with a warning."""
    from pipeline.core.model_store import check_finished, load_config

    check_finished(model_dir, edited_ok)
    config = load_config(model_dir, tuned=tuned)
    for key, value in (overrides or {}).items():
        if value is not None:
            setattr(config.predict, key, value)
    settle_prediction_scale(model_dir, config, (overrides or {}).get("scales"))
    return config


def load_for_prediction(
    model_dir: Path, overrides: dict | None, device: str, tuned: bool, edited_ok: bool = False
):
    """The model and its config (`prediction_config`) on the chosen device, in the
    precision the config asks for (``predict.precision``), run by the engine it asks for
    (``predict.engine``: a Keras model, or an ONNX Runtime session,
    `pipeline.inference.engines.load_network`)."""
    from pipeline.core import device as device_module

    config = prediction_config(model_dir, overrides, tuned, edited_ok)
    if config.predict.engine == "keras":
        device_module.configure(device, config.predict.precision)
    elif device == "gpu":
        raise PipelineError("--engine onnxruntime runs on the CPU: leave out --device gpu")
    model = load_network(model_dir, config.predict.engine, config.predict.precision, edited_ok)
    return model, config


def check_predictions(out_csv: Path, image_files: Sequence[ImageFile]) -> list[Problem]:
    """Every problem of a submission written for ``image_files`` (any layout), as
    ``check-submission`` finds them (`pipeline.data.reconcile`): the file itself, a missing
    or unknown ImageId, an invalid encoding, nuclei sharing pixels; the image shapes come
    from the files' headers."""
    from pipeline.data.reconcile import images_of_files, reconcile

    return reconcile(out_csv, images_of_files(image_files)).problems()
