"""A trained model as one object: `NucleusModel`, the one way to predict with it.

`NucleusModel.load` checks a finished model folder and owns what it holds: the network
(Keras, or ONNX Runtime with ``predict.engine``), the config with its tuned post-processing
settings (``thresholds.json``), the output channels, and the input-scale policy
(`pipeline.core.scale_policy`). `NucleusModel.predict_probabilities` and
`NucleusModel.predict_labels` take RGB uint8 images of any size and give the
probabilities and instance labels at each image's own size. The CLI's runs over folders
(`pipeline.inference.predict`), the Dask workers (`pipeline.inference.dask_predict`), the
web page (`pipeline.serving.segmenter`), validation, tuning and the benches all predict
through it.

It pickles as its folder and settings (never its network): a Dask worker receives the
object and loads the network itself, once (`pipeline.inference.dask_predict`). A network
still being trained is wrapped with `NucleusModel.of_network` for its validation score.

Per image: normalise, predict at the scales of the model's input-scale policy (at its own
scale padded to the network's multiple, resized to the crop size, rescaled by its
estimated nucleus size, or at each of ``--scales`` with the most confident kept), in
overlapping tiles when a side is longer than ``tile_size`` (`pipeline.inference.tiling`),
bring the probabilities back to the image's own size, and turn them into instances
(`pipeline.inference.postprocess`). Images of the same size are predicted in batches.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import Config, PredictConfig
from pipeline.core.device import check_device, precision_scope
from pipeline.core.distribute import distributing
from pipeline.core.model_store import (
    TUNABLE,
    check_finished,
    check_model_files,
    load_config,
    target_channels,
)
from pipeline.core.preprocess import normalise_image
from pipeline.core.scale_policy import ScalePolicy, scale_policy, settle_prediction_scale
from pipeline.errors import PipelineError
from pipeline.inference.engines import OnnxNetwork, load_network
from pipeline.inference.postprocess import instances_from_channels
from pipeline.inference.tiling import predict_in_tiles

# The network's activations grow with the pixels of a batch (about 1.8 GiB a megapixel
# for the default U-Net on the CPU): a batch holds at most this many pixels, or one image
# or tile.
MAX_BATCH_PIXELS = 1024 * 1024
#: The prediction settings a model's copy may change (`NucleusModel.with_settings`).
PREDICT_SETTINGS = tuple(item.name for item in dataclasses.fields(PredictConfig))


class NucleusModel:
    """A trained model: its network, settings and output channels, and the one way to
    predict with it.

    Make one with `load` (a model folder) or `of_network` (a network in memory). The
    network of a loaded model is read on first use (or by `load` itself, unless
    ``network=False``), in the precision and by the engine its settings ask for.

    Examples
    --------
    >>> model = NucleusModel.load("models/default")  # doctest: +SKIP
    >>> labels = model.predict_labels([rgb_image], threshold=0.6)[0]  # doctest: +SKIP
    """

    def __init__(
        self,
        folder: Path | None,
        overrides: dict[str, Any] | None = None,
        device: str = "auto",
        tuned: bool = True,
        edited_ok: bool = False,
        finished: bool = True,
    ) -> None:
        self.folder = None if folder is None else Path(folder)
        self.overrides = _given_settings(overrides or {})
        self.device = device
        self.tuned = tuned
        self.edited_ok = edited_ok
        self.finished = finished
        self._config: Config | None = None
        self._network: Any = None
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        folder: Path | str,
        overrides: dict[str, Any] | None = None,
        *,
        device: str = "auto",
        tuned: bool = True,
        edited_ok: bool = False,
        finished: bool = True,
        network: bool = True,
    ) -> NucleusModel:
        """The model in ``folder``, checked.

        Parameters
        ----------
        folder : path
            A model folder (`pipeline.core.model_store`).
        overrides : dict, optional
            Prediction settings (`pipeline.config.PredictConfig`) that replace the saved
            ones; None values are ignored.
        device : str
            The device the entry point chose (`pipeline.core.device.select_device`).
        tuned : bool
            Use the tuned post-processing settings of ``thresholds.json``.
        edited_ok : bool
            Take a config or thresholds file edited since the model was finished, with a
            warning.
        finished : bool
            The folder must be a finished model whose files match their checksums; False
            only for training's own steps (tuning before the model is finished).
        network : bool
            Load the network now; False where only the settings are needed here (a Dask
            client: its workers load the network).

        Raises
        ------
        PipelineError
            Naming what is missing or wrong in the folder, or a setting the model cannot
            take (``--scales`` or ``--diameter`` against its input-scale policy).
        """
        model = cls(Path(folder), overrides, device, tuned, edited_ok, finished)
        model._config = model._read_config()
        if network:
            model._load_network()
        return model

    @classmethod
    def of_network(cls, network: Any, config: Config) -> NucleusModel:
        """A network in memory (one being trained) with its config; it does not pickle."""
        model = cls(None)
        model._config, model._network = config, network
        return model

    # -- what it owns ---------------------------------------------------------------

    @property
    def config(self) -> Config:
        """The settings it predicts with: its config, tuned and overridden."""
        if self._config is None:  # an unpickled model reads its folder on first use
            with self._lock:
                if self._config is None:
                    self._config = self._read_config()
        return self._config

    @property
    def network(self) -> Any:
        """The network: a Keras model, or an `OnnxNetwork` (``predict.engine``)."""
        if self._network is None and self.folder is not None:
            self._load_network()
        return self._network

    @property
    def channels(self) -> tuple[str, ...]:
        """The network's output channels, ``"foreground"`` first."""
        return target_channels(self.config)

    @property
    def scale_policy(self) -> ScalePolicy:
        """The input-scale policy its settings choose (`pipeline.core.scale_policy`)."""
        return scale_policy(self.config)

    def postprocess_params(self) -> dict[str, Any]:
        """Its post-processing settings, as `instances_from_channels` takes them."""
        return {key: getattr(self.config.predict, key) for key in TUNABLE if key != "tta"}

    def with_settings(self, **overrides: Any) -> NucleusModel:
        """The same model (the same network, loaded once) with other prediction settings;
        None values are ignored. Raises TypeError for a name that is not a setting."""
        given = _given_settings(overrides)
        other = copy.copy(self)
        other.overrides = {**self.overrides, **given}
        other._config = copy.deepcopy(self.config)
        for key, value in given.items():
            setattr(other._config.predict, key, value)
        return other

    def _read_config(self) -> Config:
        if self.folder is None:
            raise PipelineError("a network in memory has no model folder to read")
        if self.finished:
            check_finished(self.folder, self.edited_ok)
        else:
            check_model_files(self.folder)
        config = load_config(self.folder, tuned=self.tuned)
        for key, value in self.overrides.items():
            setattr(config.predict, key, value)
        settle_prediction_scale(self.folder, config, self.overrides.get("scales"))
        return config

    def _load_network(self) -> None:
        with self._lock:
            if self._network is not None:
                return
            config = self._config if self._config is not None else self._read_config()
            self._config = config
            engine, precision = config.predict.engine, config.predict.precision
            if engine != "keras":
                if self.device == "gpu":
                    message = "--engine onnxruntime runs on the CPU: leave out --device gpu"
                    raise PipelineError(message)
                self._network = load_network(self.folder, engine, precision, self.edited_ok)
                return
            # The network is built in the precision its settings ask for; the process-wide
            # dtype policy is left as it was.
            with precision_scope(check_device(self.device, precision)):
                self._network = load_network(
                    self.folder, engine, precision, self.edited_ok, self.finished
                )

    # -- pickling: the folder and settings, never the network ------------------------

    def __copy__(self) -> NucleusModel:
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)  # the network and its lock shared
        return other

    def __getstate__(self) -> dict[str, Any]:
        if self.folder is None:
            raise TypeError("a NucleusModel of a network in memory cannot be pickled")
        return {
            "folder": str(self.folder.resolve()),
            "overrides": self.overrides,
            "device": self.device,
            "tuned": self.tuned,
            "finished": self.finished,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(
            Path(state["folder"]),
            state["overrides"],
            state["device"],
            state["tuned"],
            finished=state["finished"],
        )

    @property
    def key(self) -> tuple:
        """What makes two loaded models the same (a Dask worker keeps one per key)."""
        overrides = sorted((k, repr(v)) for k, v in self.overrides.items())
        return (str(self.folder), tuple(overrides), self.device, self.tuned, self.finished)

    def __repr__(self) -> str:
        where = self.folder if self.folder is not None else "a network in memory"
        return f"NucleusModel({where}, {self.overrides or 'its own settings'})"

    # -- prediction -----------------------------------------------------------------

    def predict_probabilities(
        self, images: Sequence[np.ndarray], on_image: Callable[[], None] | None = None
    ) -> list[np.ndarray]:
        """Per-pixel probabilities (H, W, C) float32 for each RGB uint8 image, at its own
        size.

        A network with several output heads gives the mean of its heads, or the one head
        that ``predict.heads`` names. Each image is seen at the scales of the input-scale
        policy (its own, the crop size, its estimated nucleus size, test-time ``scales``
        or a user's ``diameter``). ``on_image`` is called once per image as soon as its
        probabilities are done (a progress bar's tick).
        """
        config = self.config

        def network(scaled: Sequence[np.ndarray], tta: bool, on_image=None) -> list[np.ndarray]:
            if on_image is None:
                return _predict_as_trained(self.network, scaled, config, tta)
            return _predict_as_trained(self.network, scaled, config, tta, on_image)

        return self.scale_policy.probabilities(
            images, network, config.predict.tta, on_image, self.labels_from_probabilities
        )

    def labels_from_probabilities(self, prob: np.ndarray) -> np.ndarray:
        """Instances (H, W) int32 from the network's output channels, with its settings."""
        return instances_from_channels(prob, self.channels, self.postprocess_params())

    def predict_labels(self, images: Sequence[np.ndarray], **overrides: Any) -> list[np.ndarray]:
        """Instance labels for each RGB uint8 image, at its own size; ``overrides``
        change prediction settings for this call (`with_settings`)."""
        model = self.with_settings(**overrides) if overrides else self
        probs = model.predict_probabilities(images)
        return [model.labels_from_probabilities(prob) for prob in probs]


def _given_settings(overrides: dict[str, Any]) -> dict[str, Any]:
    """The prediction settings given (None values dropped); TypeError for a name that is
    not a `PredictConfig` field."""
    given = {key: value for key, value in overrides.items() if value is not None}
    unknown = sorted(set(given) - set(PREDICT_SETTINGS))
    if unknown:
        raise TypeError(f"unknown prediction setting {unknown[0]!r}")
    return given


def _images_per_batch(batch_size: int, height: int, width: int) -> int:
    """``batch_size``, lowered so that a batch stays within ``MAX_BATCH_PIXELS``.

    >>> [_images_per_batch(4, side, side) for side in (256, 544, 1024, 2048)]
    [4, 3, 1, 1]
    """
    return max(1, min(batch_size, MAX_BATCH_PIXELS // max(1, height * width)))


def _tta_variants(batch: np.ndarray) -> list[tuple[np.ndarray, Callable]]:
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


def _run_network(network: Any, batch: np.ndarray, heads: str = "all") -> np.ndarray:
    """The network's probabilities for a batch; a network with several output heads
    (U-Net++) gives the mean of its heads, or the one head ``heads`` names."""
    # predict_on_batch, not a direct call: the backend compiles the network (a traced
    # graph on TensorFlow, whose convolutions, batch norms and activations are fused; jit
    # on JAX), 1.2 to 1.4 times as fast as running it op by op (bench/bench_speed.py).
    # A new image size costs one tracing (TensorFlow generalises the sizes after a few).
    # Within a data-parallel training (its validation), predict_on_batch would split the
    # batch over the devices: the network is called directly there.
    # ONNX Runtime (`pipeline.inference.engines`) gives numpy arrays, and needs no Keras.
    if isinstance(network, OnnxNetwork):
        return _mean_of_heads(network.outputs(batch, heads))
    # Lazy: an ONNX Runtime prediction and a Dask client never load Keras.
    import keras

    from pipeline.core.models import select_heads

    selected = select_heads(network, heads)
    if distributing():
        outputs = selected(batch, training=False)
    else:
        outputs = selected.predict_on_batch(batch)
    if not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
    return _mean_of_heads([keras.ops.convert_to_numpy(output) for output in outputs])


def _mean_of_heads(outputs: Sequence[np.ndarray]) -> np.ndarray:
    """The mean of a network's output heads, float32 (the one head itself when alone)."""
    total = None
    for output in outputs:
        prob = np.asarray(output).astype(np.float32)
        total = prob if total is None else total + prob
    return total / len(outputs) if len(outputs) > 1 else total


def _predict_batch(network: Any, batch: np.ndarray, tta: bool, heads: str = "all") -> np.ndarray:
    if not tta:
        return _run_network(network, batch, heads)
    total = None
    for variant, inverse in _tta_variants(batch):
        # rot90 of a non-square batch swaps H and W; the network takes any size.
        prob = inverse(_run_network(network, np.ascontiguousarray(variant), heads))
        total = prob.astype(np.float32) if total is None else total + prob
    return total / 8.0


def _network_input(
    image: np.ndarray, config: Config, policy: ScalePolicy, multiple: int
) -> np.ndarray:
    """An RGB uint8 image as the network takes it: normalised, then as the input-scale
    ``policy`` has it (`pipeline.core.scale_policy.ScalePolicy.before`)."""
    x = normalise_image(image, config.model.invert_light_background, config.model.input_space)
    return policy.before(x, multiple).astype(np.float32)


def _predict_as_trained(
    network: Any,
    images: Sequence[np.ndarray],
    config: Config,
    tta: bool,
    on_image: Callable[[], None] | None = None,
) -> list[np.ndarray]:
    """The probabilities of each image as it is given (no rescaling), brought back to its
    size by the policy's `pipeline.core.scale_policy.ScalePolicy.after`."""
    # Lazy: pipeline.core.models imports Keras, which an ONNX Runtime prediction does not need.
    from pipeline.core.models import input_multiple

    batch_size = max(1, config.predict.batch_size)
    multiple = input_multiple(config.model)
    policy = scale_policy(config)
    heads = config.predict.heads
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
                    lambda batch: _predict_batch(network, batch, tta, heads),
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
            probs = _predict_batch(network, np.stack([prepared[i] for i in chunk]), tta, heads)
            for i, prob in zip(chunk, probs, strict=True):
                finish(i, prob)
    return results  # type: ignore[return-value]
