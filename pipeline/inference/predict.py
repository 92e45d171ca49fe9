"""Stage ``predict``: a folder of images in Kaggle layout to a submission CSV.

Per image: normalise, predict (whole image padded to the network's multiple, in
overlapping tiles when a side is longer than ``tile_size`` (``pipeline.inference.tiling``),
resized to the training size for ``resize_policy="resize"``, or rescaled by its estimated
nucleus size for ``resize_policy="nucleus"`` (``pipeline.inference.scale``)), bring the
probabilities back to the image's own size, turn them into instances
(``pipeline.inference.postprocess``) and stream them into the submission writer. Images of the
same size are predicted in batches; only a bounded chunk of images is in memory at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from skimage.transform import resize
from tqdm import tqdm

from pipeline.config import Config

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
    # A direct call, not predict_on_batch: images come in many sizes, and a traced
    # function would be re-traced for each new size.
    import keras

    from pipeline.learning.models import select_heads

    outputs = select_heads(model, heads)(batch, training=False)
    if not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
    total = None
    for output in outputs:
        prob = keras.ops.convert_to_numpy(output).astype(np.float32)
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
    model, images: Sequence[np.ndarray], config: Config, tta: bool | None = None
) -> list[np.ndarray]:
    """Per-pixel probabilities (H, W, C) float32 for each RGB uint8 image, at its own size.

    A model with several output heads gives the mean of its heads, or the one head that
    ``config.predict.heads`` names. A model trained with ``resize_policy="nucleus"`` sees
    each image rescaled by its estimated nucleus size (`_predict_nucleus_scaled`).
    """
    tta = config.predict.tta if tta is None else tta
    if config.train.resize_policy == "nucleus":
        return _predict_nucleus_scaled(model, images, config, tta)
    return _predict_as_trained(model, images, config, tta)


def _predict_nucleus_scaled(
    model, images: Sequence[np.ndarray], config: Config, tta: bool
) -> list[np.ndarray]:
    """Probabilities with each image rescaled so that its nuclei have the training size.

    The median nucleus diameter is measured on the model's own instances: first at the
    image's own scale, then ``REFINE_PASSES`` times at the scale the last pass suggested
    (without TTA); the last scale is predicted (with TTA if asked, reusing the last pass
    when it is the same) and brought back to the image's own size.
    """
    from pipeline.inference.scale import (
        REFINE_PASSES,
        limit_factor,
        median_diameter,
        next_factor,
        rescale_image,
        restore_size,
    )

    target = config.train.nucleus_diameter
    factors = [1.0] * len(images)
    probs: list[np.ndarray] = []
    for _ in range(1 + REFINE_PASSES):
        measured = factors
        scaled = [rescale_image(image, f) for image, f in zip(images, measured, strict=True)]
        probs = _predict_as_trained(model, scaled, config, tta=False)
        factors = [
            limit_factor(
                next_factor(f, median_diameter(labels_from_probabilities(prob, config)), target),
                image.shape,
            )
            for f, prob, image in zip(measured, probs, images, strict=True)
        ]
    redo = [i for i, (f, g) in enumerate(zip(factors, measured, strict=True)) if tta or f != g]
    if redo:
        again = _predict_as_trained(
            model, [rescale_image(images[i], factors[i]) for i in redo], config, tta
        )
        for i, prob in zip(redo, again, strict=True):
            probs[i] = prob
    return [restore_size(prob, image.shape[:2]) for prob, image in zip(probs, images, strict=True)]


def _predict_as_trained(
    model, images: Sequence[np.ndarray], config: Config, tta: bool
) -> list[np.ndarray]:
    """`predict_probabilities` for the ``native`` and ``resize`` policies."""
    from pipeline.inference.tiling import predict_in_tiles
    from pipeline.learning.models import input_multiple
    from pipeline.learning.preprocess import crop_to_shape, normalise_image, pad_to_multiple

    batch_size = max(1, config.predict.batch_size)
    size = config.train.crop_size
    multiple = input_multiple(config.model)
    prepared: list[np.ndarray] = []
    for image in images:
        x = normalise_image(image, config.model.invert_light_background, config.model.input_space)
        if config.train.resize_policy == "resize":
            x = resize(x, (size, size), order=1, preserve_range=True, anti_aliasing=True)
        else:
            x = pad_to_multiple(x, multiple)
        prepared.append(x.astype(np.float32))
    results: list[np.ndarray | None] = [None] * len(images)

    def finish(i: int, prob: np.ndarray) -> None:
        shape = images[i].shape[:2]
        if config.train.resize_policy == "resize":
            prob = resize(prob, shape, order=1, preserve_range=True)
        else:
            prob = crop_to_shape(prob, shape)
        results[i] = np.ascontiguousarray(prob, dtype=np.float32)

    tile = config.predict.tile_size // multiple * multiple
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
    from pipeline.learning.model_store import TUNABLE

    return {key: getattr(config.predict, key) for key in TUNABLE if key != "tta"}


def labels_from_probabilities(prob: np.ndarray, config: Config) -> np.ndarray:
    """Instances from the network's output channels, with the config's thresholds."""
    from pipeline.inference.postprocess import instances_from_channels
    from pipeline.learning.model_store import target_channels

    return instances_from_channels(prob, target_channels(config), postprocess_params(config))


def predict_labels(
    model, images: Sequence[np.ndarray], config: Config, tta: bool | None = None
) -> list[np.ndarray]:
    """Instance labels for each image (at its own size)."""
    probs = predict_probabilities(model, images, config, tta=tta)
    return [labels_from_probabilities(prob, config) for prob in probs]


def iter_predictions(
    model, images_dir: Path, ids: Sequence[str], config: Config, progress: bool = True
) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(image_id, labels)`` for each id, a bounded chunk of images at a time."""
    from pipeline.data.dataset import image_path, read_image

    bar = tqdm(total=len(ids), desc="predict", unit="img", disable=not progress)
    for start in range(0, len(ids), CHUNK_IMAGES):
        chunk_ids = ids[start : start + CHUNK_IMAGES]
        images = [read_image(image_path(images_dir, image_id)) for image_id in chunk_ids]
        for image_id, labels in zip(chunk_ids, predict_labels(model, images, config), strict=True):
            bar.update(1)
            yield image_id, labels
    bar.close()


def run_prediction(
    model_dir: Path,
    images_dir: Path,
    out_csv: Path,
    overrides: dict | None = None,
    device: str = "auto",
    tuned: bool = True,
) -> Path:
    """Predict every image of ``images_dir`` with the model in ``model_dir``; write ``out_csv``.

    ``overrides`` replaces fields of the model's saved prediction settings (threshold,
    min_size, fill_holes, tta, heads, batch_size). Writes the submission atomically, with a
    sidecar ``.json`` naming the model, config and commit; returns the CSV path.
    """
    from pipeline.learning import device as device_module

    device_module.select_device(device)
    from pipeline.data.dataset import list_image_ids
    from pipeline.data.submission import SubmissionWriter, write_submission_metadata
    from pipeline.learning.model_store import load_model
    from pipeline.provenance import git_commit

    ids = list_image_ids(images_dir)
    device_module.configure(device, "float32")
    model, config = load_model(model_dir, tuned=tuned)
    for key, value in (overrides or {}).items():
        if value is not None:
            setattr(config.predict, key, value)
    log.info("predicting %d images of %s with %s", len(ids), images_dir, model_dir)
    out_csv = Path(out_csv)
    with SubmissionWriter(out_csv) as writer:
        for image_id, labels in iter_predictions(model, images_dir, ids, config):
            writer.add(image_id, labels)
    write_submission_metadata(
        out_csv,
        {
            "model": str(model_dir),
            "config": config.name,
            "commit": git_commit(),
            "images": str(images_dir),
            "predict": vars(config.predict),
        },
    )
    log.info("wrote %s", out_csv)
    return out_csv
