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

from pipeline import paths
from pipeline.core.model_store import SPLIT_FILE, read_json, training_images_dir
from pipeline.data.extra import KNOWN_SETS, load_extra_set, load_labelled
from pipeline.errors import PipelineError
from pipeline.evaluation.metric import score_images
from pipeline.inference.model import NucleusModel

log = logging.getLogger(__name__)


def kind_means(per_image: Mapping[str, float], samples: Sequence) -> dict[str, float]:
    """Mean score per image kind (fluorescence, brightfield, histology) of ``samples``."""
    kinds = sorted({s.kind for s in samples})
    return {
        kind: float(np.mean([per_image[s.image_id] for s in samples if s.kind == kind]))
        for kind in kinds
    }


def score_samples(model: NucleusModel, samples: Sequence) -> dict[str, Any]:
    """Competition score of ``model`` on labelled samples: overall, per kind and per image."""
    predicted: dict[str, np.ndarray] = {}
    for start in range(0, len(samples), 16):
        chunk = samples[start : start + 16]
        labels = model.predict_labels([s.image for s in chunk])
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
    split = read_json(Path(model_dir) / SPLIT_FILE)
    if not split.get("val"):
        raise PipelineError(f"{Path(model_dir) / SPLIT_FILE}: no validation split recorded")
    images_dir = Path(images_dir or training_images_dir(model_dir))
    if not images_dir.exists():
        raise PipelineError(
            f"{images_dir}: the training images of {model_dir} are not there (--images DIR)"
        )
    return load_labelled(images_dir, ids=split["val"])


def evaluate_model(
    model_dir: Path,
    overrides: dict | None = None,
    tuned: bool = True,
    images_dir: Path | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Score ``model_dir`` on its validation split; see the module docstring for the keys.

    ``device`` was chosen by the entry point (`pipeline.core.device.select_device`)."""
    model = NucleusModel.load(model_dir, overrides, device=device, tuned=tuned)
    config = model.config
    samples = validation_samples(model_dir, images_dir)
    result = score_samples(model, samples)
    held_out = read_json(Path(model_dir) / SPLIT_FILE).get("held_out_conditions")
    return {
        "score": result["score"],
        # "conditions": whole acquisition conditions held out (generalisation), or "random"
        "split": "conditions" if held_out else "random",
        "held_out_conditions": held_out or [],
        "per_kind": result["per_kind"],
        "images": len(samples),
        "settings": {
            **model.postprocess_params(),
            "tta": config.predict.tta,
            "heads": config.predict.heads,
            "scales": config.predict.scales,
            "precision": config.predict.precision,
        },
        "per_image": result["per_image"],
    }


def score_extra_sets(
    model_dir: Path, tuned: bool = True, device: str = "auto", overrides: dict | None = None
) -> dict[str, dict[str, Any]]:
    """Score a model on each extra set's held-out images (``split.json``'s ``extra_val``).

    These scores are reported beside the validation score and never used to choose. A set
    held out whole (``held_out_sources``, the conditions split) says so.

    Returns
    -------
    dict
        Set name -> ``{"score", "images", "held_out_whole", "per_image"}``.

    ``device`` was chosen by the entry point (`pipeline.core.device.select_device`).
    """
    split = read_json(Path(model_dir) / SPLIT_FILE)
    held_val = split.get("extra_val", {})
    if not held_val:
        return {}
    model = NucleusModel.load(model_dir, overrides, device=device, tuned=tuned)
    records = {item["name"]: item for item in split.get("extra_sets", [])}
    results = {}
    for name, ids in sorted(held_val.items()):
        if not ids:
            continue
        extra_set = load_extra_set(_recorded_location(records.get(name, {"entry": name})))
        by_id = {sample.image_id: sample for sample in extra_set.samples}
        samples = [by_id[image_id] for image_id in ids if image_id in by_id]
        result = score_samples(model, samples)
        results[name] = {
            "score": result["score"],
            "images": len(samples),
            "held_out_whole": name in split.get("held_out_sources", []),
            "per_image": result["per_image"],
        }
        log.info("extra set %s, held-out images: %.4f (%d)", name, result["score"], len(samples))
    return results


def _recorded_location(record: dict) -> str:
    """Where to read a recorded extra set again: a known set by its name (it lives in
    ``input/external``), another by its recorded path (relative to the repository)."""
    if record["entry"] in KNOWN_SETS:
        return record["entry"]
    return str(paths.REPO_ROOT / record.get("location", record["entry"]))
