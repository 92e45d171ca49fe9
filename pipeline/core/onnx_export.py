"""A finished model's network as an ONNX file, for the onnxruntime engine.

The ONNX file is exported once from the model's weights with Keras' own exporter
(``model.export(format="onnx")``, tf2onnx under the TensorFlow backend), after one call
of the network so that every layer is built. Its input ``image`` is the normalised image
(N, H, W, C) float32 with any batch size and any sides that are multiples of the
network's stride; its outputs are the heads' probabilities (N, H, W, channels).

Two places hold it:

- ``<model>/model.onnx``, written by ``./run.sh export --model DIR --onnx``, its SHA-256
  recorded in ``complete.json`` (`ONNX_KEY`) beside the weights' and checked on every
  load, as the weights are;
- for a model folder without one (``models/default``), the cache (`cache_dir`):
  ``onnx/<weights SHA-256>-<network SHA-256>.onnx``, exported on first use. A model folder
  is never written when it is loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.model_store import (
    COMPLETE_FILE,
    check_complete,
    file_sha256,
    load_config,
    load_trained_network,
    write_json,
)
from pipeline.errors import PipelineError
from pipeline.fileio import atomic_path

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
#: The key of the ONNX file's SHA-256 in ``complete.json``.
ONNX_KEY = "onnx_sha256"
#: Environment variable naming the cache folder (default: ``$XDG_CACHE_HOME/dsb2018``).
CACHE_VARIABLE = "DSB2018_CACHE"


def cache_dir() -> Path:
    """Where exported files of model folders that lack them are kept: ``$DSB2018_CACHE``,
    else ``$XDG_CACHE_HOME/dsb2018``, else ``~/.cache/dsb2018``; read at each call."""
    override = os.environ.get(CACHE_VARIABLE, "").strip()
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base).expanduser() / "dsb2018"


def export_onnx(model, target: Path) -> Path:
    """Write ``model`` (a Keras model) to ``target`` as ONNX, atomically; return ``target``.

    The network is called once on a small batch first: the exporter needs its layers
    built. The exporter's own output (tf2onnx's progress lines) is kept out of the log.
    """
    side = 32
    model.predict_on_batch(np.zeros((1, side, side, model.input_shape[-1]), np.float32))
    target = Path(target)
    with atomic_path(target) as tmp:
        onnx_tmp = tmp.with_suffix(".onnx")
        try:
            with _quiet():
                model.export(str(onnx_tmp), format="onnx", verbose=False)
        except ImportError as error:
            raise PipelineError(
                f"exporting to ONNX needs tf2onnx and onnx ({error}); ./run.sh installs "
                "them from requirements.lock"
            ) from None
        finally:
            if onnx_tmp.exists():
                onnx_tmp.replace(tmp)
    return target


@contextlib.contextmanager
def _quiet():
    """Silence tf2onnx's and TensorFlow's chatter (logs, prints, warnings) during an export."""
    loggers = [logging.getLogger(name) for name in ("tf2onnx", "tensorflow")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf2onnx's FutureWarning on np.object
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def network_key(model_dir: Path, record: dict[str, Any]) -> str:
    """What decides the exported network: the weights' SHA-256 and the config's ``model``
    section (the architecture), as a file name."""
    config = load_config(Path(model_dir), tuned=False)
    section = json.dumps(vars(config.model), sort_keys=True, default=str)
    network = hashlib.sha256(section.encode()).hexdigest()[:12]
    return f"{record['weights_sha256']}-{network}"


def add_onnx(model_dir: Path) -> Path:
    """Export a finished model's network into its folder (`ONNX_FILE`) and record the
    file's SHA-256 in its ``complete.json``; ``./run.sh export --onnx``. Returns the file.

    Refuses an unfinished model or one whose files changed since it was finished.
    """
    model_dir = Path(model_dir)
    record = check_complete(model_dir)
    model = load_trained_network(model_dir)
    target = export_onnx(model, model_dir / ONNX_FILE)
    record[ONNX_KEY] = file_sha256(target)
    write_json(model_dir / COMPLETE_FILE, record)
    log.info("wrote %s (SHA-256 recorded in %s)", target, COMPLETE_FILE)
    return target


def onnx_file(model_dir: Path, edited_ok: bool = False) -> Path:
    """The ONNX file of a finished model: its folder's (`ONNX_FILE`, checked against the
    SHA-256 in ``complete.json``), else the cache's, exported there on first use.

    Raises ``PipelineError`` for an unfinished model, changed files, or a ``model.onnx``
    that is not the recorded one.
    """
    model_dir = Path(model_dir)
    record = check_complete(model_dir, edited_ok)
    in_folder = model_dir / ONNX_FILE
    if in_folder.is_file() or ONNX_KEY in record:
        if not in_folder.is_file():
            raise PipelineError(
                f"{in_folder}: missing, though {COMPLETE_FILE} records it; ./run.sh export "
                f"--model {model_dir} --onnx writes it again"
            )
        if file_sha256(in_folder) != record.get(ONNX_KEY):
            raise PipelineError(
                f"{in_folder}: damaged or replaced: its SHA-256 is not the one recorded in "
                f"{COMPLETE_FILE}; ./run.sh export --model {model_dir} --onnx writes it again"
            )
        return in_folder
    cached = cache_dir() / "onnx" / f"{network_key(model_dir, record)}.onnx"
    if not cached.is_file():
        log.info(
            "%s has no %s: exporting its network to %s once (./run.sh export --model %s "
            "--onnx stores it in the model folder)",
            model_dir, ONNX_FILE, cached, model_dir,
        )  # fmt: skip
        model = load_trained_network(model_dir, edited_ok=edited_ok)
        export_onnx(model, cached)
    return cached
