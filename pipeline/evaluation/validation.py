"""Stage ``evaluate``: a model's competition score on its own validation split.

    ./run.sh evaluate --model models/default [--untuned] [--threshold 0.5 ...] [--json]

Predicts the validation images recorded in the model's ``split.json`` (never the
stage-1 test set) with the model's saved post-processing settings, or the ones given on
the command line, and prints the score overall and per image kind. With ``--json`` the
last line printed is ``{"score": ..., "per_kind": {...}, "per_image": {...},
"settings": {...}}``. This is how settings are compared honestly; ``./run.sh score``
then gives the leaderboard number.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)


def kind_means(per_image: Mapping[str, float], samples: Sequence) -> dict[str, float]:
    """Mean score per image kind (fluorescence, brightfield, histology) of ``samples``."""
    kinds = sorted({s.kind for s in samples})
    return {
        kind: float(np.mean([per_image[s.image_id] for s in samples if s.kind == kind]))
        for kind in kinds
    }


def score_samples(model, samples: Sequence, config) -> dict[str, Any]:
    """Competition score of ``model`` on labelled samples: overall, per kind and per image."""
    from pipeline.evaluation.metric import score_images
    from pipeline.inference.predict import predict_labels

    predicted: dict[str, np.ndarray] = {}
    for start in range(0, len(samples), 16):
        chunk = samples[start : start + 16]
        labels = predict_labels(model, [s.image for s in chunk], config)
        predicted.update({s.image_id: lab for s, lab in zip(chunk, labels, strict=True)})
    result = score_images({s.image_id: (s.labels, predicted[s.image_id]) for s in samples})
    per_image = {k: float(v) for k, v in result.per_image.items()}
    return {
        "score": float(result.score),
        "per_kind": kind_means(per_image, samples),
        "per_image": per_image,
    }


def validation_samples(model_dir: Path, images_dir: Path | None = None) -> list:
    """The labelled validation images of a model, as its ``split.json`` records them."""
    from pipeline.data.dataset import load_samples
    from pipeline.learning.model_store import SPLIT_FILE, read_json, training_images_dir

    split = read_json(Path(model_dir) / SPLIT_FILE)
    if not split.get("val"):
        raise PipelineError(f"{Path(model_dir) / SPLIT_FILE}: no validation split recorded")
    images_dir = Path(images_dir or training_images_dir(model_dir))
    if not images_dir.is_dir():
        raise PipelineError(
            f"{images_dir}: the training images of {model_dir} are not there (--images DIR)"
        )
    return load_samples(images_dir, with_labels=True, ids=split["val"])


def evaluate_model(
    model_dir: Path,
    overrides: dict | None = None,
    tuned: bool = True,
    images_dir: Path | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Score ``model_dir`` on its validation split; see the module docstring for the keys."""
    from pipeline.learning import device as device_module

    device_module.select_device(device)
    from pipeline.inference.predict import load_for_prediction, postprocess_params
    from pipeline.learning.model_store import SPLIT_FILE, read_json

    model, config = load_for_prediction(Path(model_dir), overrides, device, tuned)
    samples = validation_samples(model_dir, images_dir)
    result = score_samples(model, samples, config)
    held_out = read_json(Path(model_dir) / SPLIT_FILE).get("held_out_conditions")
    return {
        "score": result["score"],
        # "conditions": whole acquisition conditions held out (generalisation), or "random"
        "split": "conditions" if held_out else "random",
        "held_out_conditions": held_out or [],
        "per_kind": result["per_kind"],
        "images": len(samples),
        "settings": {
            **postprocess_params(config),
            "tta": config.predict.tta,
            "heads": config.predict.heads,
            "scales": config.predict.scales,
            "precision": config.predict.precision,
        },
        "per_image": result["per_image"],
    }
