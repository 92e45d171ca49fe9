"""A trained model's folder: what is in it, and loading it back.

``models/<run>/`` holds

- ``config.json``: the full ``Config`` it was trained with;
- ``model.weights.h5``: the weights of the best checkpoint (by the competition metric on
  the validation split);
- ``thresholds.json``: post-processing settings tuned on the validation split (``tune``
  stage); they replace the config's ``predict`` defaults, and command-line flags replace
  them in turn;
- ``split.json``: the train/validation split of ``stage1_train`` image ids, by kind;
- ``scores.json``: validation scores (overall and per image kind), the best epoch, the
  time taken, the git commit and the command that trained it; the stage1_test score is
  added by the main job;
- ``history.csv`` and ``curves.png``: the training curves; ``logs/``: TensorBoard logs;
- ``checkpoint/``: the last epoch's full state, for ``train --resume``;
- ``complete.json``: written last, when training and tuning are done: the SHA-256 of
  ``model.weights.h5``, of ``config.json`` and of ``thresholds.json`` (`COVERED_FILES`:
  every file that decides a prediction) and whether ``thresholds.json`` was tuned.

A folder without ``complete.json`` is an unfinished run: loading refuses it (``train
--resume`` finishes it), and refuses weights, a config or thresholds whose checksum is not
the recorded one (``predict --force-edited`` predicts with an edited config or thresholds
on purpose). A complete.json written before the config and thresholds were covered checks
the weights only; nothing is ever written into a model folder when it is loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any

from pipeline.config import TARGET_SETS, TUNABLE, Config, check_section
from pipeline.errors import PipelineError
from pipeline.fileio import atomic_path, atomic_write_text
from pipeline.paths import REPO_ROOT, TRAIN_DIR

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
SPLIT_FILE = "split.json"
THRESHOLDS_FILE = "thresholds.json"
SCORES_FILE = "scores.json"
HISTORY_FILE = "history.csv"
CURVES_FILE = "curves.png"
CHECKPOINT_DIR = "checkpoint"
#: The last epoch's full state in ``checkpoint/``, for ``--resume``.
LAST_MODEL_FILE = "last.keras"
LOGS_DIR = "logs"
COMPLETE_FILE = "complete.json"


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PipelineError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: not a JSON object")
    return data


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def is_complete(model_dir: Path) -> bool:
    """Whether ``model_dir`` holds a finished model (its ``complete.json`` written last)."""
    model_dir = Path(model_dir)
    return all((model_dir / name).is_file() for name in (CONFIG_FILE, WEIGHTS_FILE, COMPLETE_FILE))


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


#: The files besides the weights that decide a prediction, and their key in
#: ``complete.json``. A complete.json written before a key existed lacks it; that file is
#: then not checked (the shipped model's covers the weights only).
COVERED_FILES = {CONFIG_FILE: "config_sha256", THRESHOLDS_FILE: "thresholds_sha256"}


def _sha256_or_none(path: Path) -> str | None:
    return file_sha256(path) if path.is_file() else None


def mark_complete(model_dir: Path, tuned: bool) -> None:
    """Make ``model_dir`` a model: its ``complete.json``, written last, with the checksums
    of the weights and of every file that decides a prediction (`COVERED_FILES`; None for
    a ``thresholds.json`` that is not there), and whether ``thresholds.json`` holds tuned
    settings."""
    model_dir = Path(model_dir)
    record: dict[str, Any] = {
        "weights_sha256": file_sha256(model_dir / WEIGHTS_FILE),
        "tuned": tuned,
    }
    for name, key in COVERED_FILES.items():
        record[key] = _sha256_or_none(model_dir / name)
    write_json(model_dir / COMPLETE_FILE, record)


def _check_covered_files(model_dir: Path, record: dict[str, Any], edited_ok: bool) -> None:
    """Refuse a config.json or thresholds.json whose checksum is not the recorded one (a
    missing tuned thresholds.json is `load_config`'s to refuse, and so is a value that
    the settings' declarations refuse, even with ``edited_ok``); with ``edited_ok``, warn."""
    for name, key in COVERED_FILES.items():
        if key not in record or not (model_dir / name).is_file():
            continue
        if _sha256_or_none(model_dir / name) == record[key]:
            continue
        # What the settings' declarations refuse is named first (a value out of range).
        load_config(model_dir, tuned=name == THRESHOLDS_FILE)
        message = (
            f"{model_dir / name}: edited since the model was finished (its SHA-256 is not "
            f"the one recorded in {COMPLETE_FILE})"
        )
        if not edited_ok:
            raise PipelineError(f"{message}; --force-edited predicts with it as it is now")
        log.warning("%s; predicting with it as it is now (--force-edited)", message)


def check_complete(model_dir: Path, edited_ok: bool = False) -> dict[str, Any]:
    """``complete.json`` of a finished model whose weights, config and thresholds are the
    recorded ones (`COVERED_FILES`; with ``edited_ok`` an edited config or thresholds file
    is only warned about).

    Raises ``PipelineError`` for an unfinished folder or files that changed since.
    """
    model_dir = Path(model_dir)
    if not (model_dir / COMPLETE_FILE).is_file():
        raise PipelineError(
            f"{model_dir}: not a finished model ({COMPLETE_FILE} missing: its training or "
            f"tuning was interrupted); ./run.sh train --resume --out {model_dir} finishes it"
        )
    record = read_json(model_dir / COMPLETE_FILE)
    recorded = record.get("weights_sha256") if isinstance(record, dict) else None
    if not isinstance(recorded, str):
        raise PipelineError(f"{model_dir / COMPLETE_FILE}: no weights_sha256 recorded")
    if not isinstance(record.get("tuned", False), bool):
        raise PipelineError(
            f"{model_dir / COMPLETE_FILE}: tuned = {record['tuned']!r} is not true or false"
        )
    if file_sha256(model_dir / WEIGHTS_FILE) != recorded:
        raise PipelineError(
            f"{model_dir / WEIGHTS_FILE}: damaged or replaced: its SHA-256 is not the one "
            f"recorded in {COMPLETE_FILE} when the model was finished"
        )
    _check_covered_files(model_dir, record, edited_ok)
    return record


def load_config(model_dir: Path, tuned: bool = True) -> Config:
    """The model's config; with ``tuned``, its ``predict`` settings from thresholds.json.

    A model recorded as tuned (``complete.json``) whose ``thresholds.json`` is missing is
    refused rather than silently predicted with untuned settings.
    """
    model_dir = Path(model_dir)
    config = Config.load(model_dir / CONFIG_FILE)
    if tuned:
        thresholds = model_dir / THRESHOLDS_FILE
        if not thresholds.is_file():
            if read_json(model_dir / COMPLETE_FILE).get("tuned", False):
                raise PipelineError(
                    f"{thresholds}: missing, though the model was tuned; ./run.sh tune "
                    f"--model {model_dir} tunes it again"
                )
            log.warning("%s: no tuned settings; predicting with the defaults", model_dir)
        saved = _saved_params(model_dir)
        for key in TUNABLE:
            if key in saved:
                setattr(config.predict, key, saved[key])
        check_section("predict", config.predict, str(thresholds))
    return config


def _saved_params(model_dir: Path) -> dict[str, Any]:
    """The tuned settings of ``thresholds.json`` (``{}`` when there is none), refused when
    they are not an object, name a setting that is not tunable, or are empty though the
    model was tuned (their values are checked by the settings' declarations)."""
    thresholds = model_dir / THRESHOLDS_FILE
    if not thresholds.is_file():
        return {}
    saved = read_json(thresholds).get("params")
    if not isinstance(saved, dict):
        raise PipelineError(f"{thresholds}: 'params' must be a JSON object of settings")
    unknown = sorted(set(saved) - set(TUNABLE))
    if unknown:
        raise PipelineError(
            f"{thresholds}: unknown keys in 'params': {unknown}; the tunable settings are "
            f"{', '.join(TUNABLE)}"
        )
    if not saved and read_json(model_dir / COMPLETE_FILE).get("tuned", False):
        raise PipelineError(
            f"{thresholds}: 'params' is empty, though the model was tuned; ./run.sh tune "
            f"--model {model_dir} tunes it again"
        )
    return saved


def portable_path(path: Path) -> str:
    """A path to record in a model folder: relative to the repository when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def training_images_dir(model_dir: Path) -> Path:
    """Where the model's training images are: as recorded in split.json, else input/."""
    recorded = read_json(Path(model_dir) / SPLIT_FILE).get("images_dir")
    if recorded:
        candidate = REPO_ROOT / recorded  # an absolute path stays absolute
        if candidate.exists():  # a folder, or a zip of labelled images
            return candidate
    return TRAIN_DIR


def target_channels(config: Config) -> tuple[str, ...]:
    """The output channels of the model that ``config`` describes."""
    try:
        return TARGET_SETS[config.model.targets]
    except KeyError:
        raise PipelineError(
            f"unknown target set {config.model.targets!r}; choose from {sorted(TARGET_SETS)}"
        ) from None


def check_model_files(model_dir: Path) -> None:
    """Refuse a folder that is not there, or lacks the config or the weights."""
    if not model_dir.is_dir():
        raise PipelineError(f"{model_dir}: no such model folder (train one with ./run.sh train)")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (model_dir / name).is_file():
            raise PipelineError(f"{model_dir}: {name} is missing; is the training finished?")


def check_finished(model_dir: Path, edited_ok: bool = False) -> None:
    """Refuse anything but a finished model: a missing folder or file, an interrupted
    training or tuning, weights, config or thresholds changed since (`check_complete`;
    ``edited_ok``: the last two are only warned about)."""
    check_model_files(Path(model_dir))
    check_complete(Path(model_dir), edited_ok)


def load_trained_network(model_dir: Path, finished: bool = True, edited_ok: bool = False):
    """The Keras network that ``config.json`` describes, with ``model.weights.h5`` loaded.

    With ``finished`` (all but training's own steps), the folder must be a finished model
    whose files match their recorded checksums (``edited_ok``: an edited config or
    thresholds file is only warned about). Raises ``PipelineError`` naming what is missing
    or wrong. Prediction uses a model through `pipeline.inference.model.NucleusModel`;
    this is the network alone, for the exports and the engines.
    """
    # Lazy: pipeline.core.models imports Keras; stages import this module before select_device
    from pipeline.core.models import build_model

    model_dir = Path(model_dir)
    if finished:
        check_finished(model_dir, edited_ok)
    else:
        check_model_files(model_dir)
    config = load_config(model_dir, tuned=False)
    # No pretrained encoder weights (nor their download): the trained ones replace them.
    model = build_model(config.model, out_channels=len(target_channels(config)), pretrained=False)
    try:
        with warnings.catch_warnings():  # Keras warns once per layer it cannot fill
            warnings.simplefilter("ignore")
            model.load_weights(model_dir / WEIGHTS_FILE)
    except Exception as error:  # noqa: BLE001 - h5py and Keras raise many kinds
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise PipelineError(
            f"{model_dir / WEIGHTS_FILE}: cannot load these weights into the network that "
            f"{model_dir / CONFIG_FILE} describes; is it the config they were trained with? "
            f"({type(error).__name__}: {first_line[:160]})"
        ) from error
    return model


def compact_weights(model_dir: Path) -> None:
    """Rewrite ``model.weights.h5`` without the optimiser's state.

    Keras saves a compiled model's optimiser variables with its weights (three times the
    size for Adam); prediction needs none of them, and the shipped model must stay small.
    """
    model = load_trained_network(model_dir, finished=False)
    with atomic_path(Path(model_dir) / WEIGHTS_FILE) as tmp:
        keras_tmp = tmp.with_suffix(".weights.h5")
        model.save_weights(str(keras_tmp))
        keras_tmp.replace(tmp)
