"""A trained model's folder: what is in it, and loading it back.

``models/<run>/`` holds

- ``config.json``: the full ``Config`` it was trained with;
- ``model.weights.h5``: the weights of the best checkpoint (by the competition metric on
  the validation split);
- ``split.json``: the train/validation split of ``stage1_train`` image ids, by kind;
- ``scores.json``: validation scores (overall and per image kind), the best epoch, the
  time taken, the git commit and the command that trained it; the stage1_test score is
  added by the main job;
- ``history.csv`` and ``curves.png``: the training curves; ``logs/``: TensorBoard logs;
- ``checkpoint/``: the last epoch's full state, for ``train --resume``.

``scores.json`` is written last: a folder without it is an unfinished training run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.errors import PipelineError
from pipeline.fileio import atomic_write_text

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
SPLIT_FILE = "split.json"
SCORES_FILE = "scores.json"
HISTORY_FILE = "history.csv"
CURVES_FILE = "curves.png"
CHECKPOINT_DIR = "checkpoint"
LOGS_DIR = "logs"


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as error:
        raise PipelineError(f"{path}: not valid JSON ({error})") from error


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def is_complete(model_dir: Path) -> bool:
    """Whether ``model_dir`` holds a finished model (config, weights and scores)."""
    model_dir = Path(model_dir)
    return all((model_dir / name).is_file() for name in (CONFIG_FILE, WEIGHTS_FILE, SCORES_FILE))


def load_config(model_dir: Path) -> Config:
    return Config.load(Path(model_dir) / CONFIG_FILE)


def load_model(model_dir: Path):
    """Build the network from ``config.json`` and load ``model.weights.h5``.

    Returns ``(model, config)``. Raises ``PipelineError`` naming what is missing.
    """
    from pipeline.models import build_model
    from pipeline.targets import TARGET_CHANNELS

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise PipelineError(f"{model_dir}: no such model folder (train one with ./run.sh train)")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (model_dir / name).is_file():
            raise PipelineError(f"{model_dir}: {name} is missing; is the training finished?")
    config = load_config(model_dir)
    channels = read_json(model_dir / SCORES_FILE).get("target_channels", list(TARGET_CHANNELS))
    model = build_model(config.model, out_channels=len(channels))
    try:
        model.load_weights(model_dir / WEIGHTS_FILE)
    except (ValueError, OSError) as error:
        raise PipelineError(
            f"{model_dir / WEIGHTS_FILE}: cannot load these weights into the model of "
            f"{model_dir / CONFIG_FILE} ({error})"
        ) from error
    return model, config
