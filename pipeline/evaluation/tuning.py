"""Stage ``tune``: choose post-processing settings on the validation split, save them.

The model predicts its validation images once without and once with test-time
augmentation; a grid search over the post-processing settings (method, thresholds,
minimum size; `tune_postprocess`) maximises the competition score on them, and the best
settings, TTA only where it helped, go to the model's ``thresholds.json``. ``predict`` uses
them unless a flag overrides them. Training runs this at its end; ``./run.sh tune --model
DIR`` re-runs it (for example with another grid). The stage-1 test set is never looked at here.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.core.model_store import (
    SCORES_FILE,
    THRESHOLDS_FILE,
    is_complete,
    mark_complete,
    read_json,
    write_json,
)
from pipeline.evaluation.metric import score_image, score_images
from pipeline.evaluation.validation import kind_means, validation_samples
from pipeline.inference.model import NucleusModel
from pipeline.inference.postprocess import (
    PARAM_NAMES,
    ChannelMaps,
    instances_from_channels,
    maps_from_channels,
    remove_small_instances,
    resolve_params,
)

log = logging.getLogger(__name__)


def default_grid(channels: tuple[str, ...]) -> list[dict[str, list[Any]]]:
    """Grids of candidate settings, one per post-processing method the channels allow."""
    grids: list[dict[str, list[Any]]] = [
        {
            "method": ["components"],
            "threshold": [0.3, 0.4, 0.5, 0.6, 0.7],
            "min_size": [0, 10, 20, 40],
        }
    ]
    if "border" in channels:
        grids.append(
            {
                "method": ["watershed"],
                "threshold": [0.3, 0.4, 0.5, 0.6],
                "marker_threshold": [0.3, 0.5, 0.7],
                "border_weight": [0.5, 1.0],
                "min_size": [10, 25],
            }
        )
    else:
        # Without a border channel the watershed's markers come from the mask's own
        # distance-to-edge map (pipeline.inference.postprocess), which still splits some nuclei.
        grids.append(
            {
                "method": ["watershed"],
                "threshold": [0.4, 0.5, 0.6],
                "marker_threshold": [0.3, 0.5, 0.7],
                "min_size": [10, 20],
            }
        )
    return grids


def covers(grid: dict[str, list[Any]], setting: dict[str, Any]) -> bool:
    """Whether ``grid`` tries ``setting`` (a key the grid leaves out takes the setting's
    value).

    >>> covers({"threshold": [0.4, 0.5]}, {"threshold": 0.5, "min_size": 10})
    True
    """
    return all(value in grid.get(key, [value]) for key, value in setting.items())


def _grid_settings(grid: Mapping[str, Any], channels: Sequence[str]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in order, over the defaults."""
    names = list(grid)
    unknown = sorted(set(names) - set(PARAM_NAMES))
    if unknown:
        raise ValueError(f"unknown post-processing parameters {unknown}; known: {PARAM_NAMES}")
    values = []
    for name in names:
        options = grid[name]
        if isinstance(options, str) or not isinstance(options, Sequence):
            options = [options]  # a single value
        if len(options) == 0:
            raise ValueError(f"grid[{name!r}] is empty")
        values.append(list(options))
    return [
        resolve_params(channels, dict(zip(names, combination, strict=True)))
        for combination in itertools.product(*values)
    ]


def _score_settings(
    maps: ChannelMaps, truth: np.ndarray, settings: list[dict[str, Any]]
) -> np.ndarray:
    """The score of each setting on one image, sharing the work between settings."""
    scores = np.zeros(len(settings), dtype=np.float64)
    # Settings grouped by their labels before filling: one watershed per group, and
    # only one group's label images held at a time.
    groups: dict[tuple, list[int]] = {}
    for setting_index, setting in enumerate(settings):
        groups.setdefault(maps.raw_key(setting), []).append(setting_index)
    for members in groups.values():
        raw = maps.raw_labels(settings[members[0]])
        filled: dict[bool, np.ndarray] = {}
        scored: dict[tuple[bool, int], float] = {}
        for setting_index in members:
            fill = bool(settings[setting_index]["fill_holes"])
            key = (fill, int(settings[setting_index]["min_size"]))
            if key not in scored:
                if fill not in filled:
                    threshold = float(settings[setting_index]["threshold"])
                    filled[fill] = maps.fill_holes(raw, threshold) if fill else raw
                labels = remove_small_instances(filled[fill], key[1])
                scored[key] = score_image(truth, labels).score
            scores[setting_index] = scored[key]
    return scores


def _score_table(prob_maps, true_labels, channels, settings, progress: bool) -> np.ndarray:
    """Scores of every setting (columns) on every image (rows)."""
    scores = np.zeros((len(prob_maps), len(settings)), dtype=np.float64)
    pairs = zip(prob_maps, true_labels, strict=True)
    for image_index, (prob, truth) in enumerate(
        tqdm(pairs, total=len(prob_maps), desc="tune", unit="img", disable=not progress)
    ):
        maps = maps_from_channels(prob, channels)
        if np.shape(truth) != maps.foreground.shape:
            raise ValueError(
                f"image {image_index}: labels {np.shape(truth)} but probabilities "
                f"{maps.foreground.shape}"
            )
        scores[image_index] = _score_settings(maps, truth, settings)
    return scores


def tune_postprocess(
    prob_maps: Sequence[np.ndarray],
    true_labels: Sequence[np.ndarray],
    channels: Sequence[str],
    grid: Mapping[str, Any],
    progress: bool = False,
) -> tuple[dict[str, Any], float, list[dict[str, Any]]]:
    """Grid search of the post-processing parameters for the best competition score.

    Each setting of the grid turns every probability map into instances
    (`instances_from_channels`) and is scored by the mean of
    `pipeline.evaluation.metric.score_image` over the images. Work is shared: per image,
    the mask and its components are made once per threshold, the watershed once per
    distinct (threshold, marker parameters), hole filling once per watershed, and settings
    that differ only in parameters their method ignores are scored once.

    Parameters
    ----------
    prob_maps, true_labels : sequence of np.ndarray
        ``(H, W, C)`` probabilities and true ``(H, W)`` instance labels of each image.
    channels : sequence of str
        The channel names of ``prob_maps``, ``"foreground"`` first.
    grid : mapping of str to sequence
        Values to try for each of `PARAM_NAMES`, e.g. ``{"threshold": [0.4, 0.5],
        "min_size": [0, 10]}``; a parameter not in the grid takes its default.
    progress : bool
        Show a progress bar over the images.

    Returns
    -------
    best_params, best_score, table : dict, float, list of dict
        Every parameter of the best setting (the first in grid order on a tie), its mean
        score, and one row per setting, in grid order: its parameters and ``"score"``.

    Examples
    --------
    >>> prob = np.zeros((8, 8, 1)); prob[2:6, 2:6, 0] = 0.9; prob[1, 2:6, 0] = 0.6
    >>> truth = np.zeros((8, 8), np.int32); truth[2:6, 2:6] = 1
    >>> best, score, table = tune_postprocess(
    ...     [prob], [truth], ("foreground",), {"threshold": [0.5, 0.7], "min_size": 0}
    ... )
    >>> best["threshold"], score, [row["score"] for row in table]
    (0.7, 1.0, [0.6, 1.0])
    """
    if len(prob_maps) != len(true_labels):
        raise ValueError(f"{len(prob_maps)} probability maps but {len(true_labels)} label images")
    if len(prob_maps) == 0:
        raise ValueError("no image to tune on")
    settings = _grid_settings(grid, channels)
    scores = _score_table(prob_maps, true_labels, channels, settings, progress)
    means = scores.mean(axis=0)
    best = int(np.argmax(means))
    table = [
        {**setting, "score": float(score)} for setting, score in zip(settings, means, strict=True)
    ]
    log.debug("best post-processing %s: score %.4f", settings[best], means[best])
    return dict(settings[best]), float(means[best]), table


def search(
    probs: list[np.ndarray],
    true_labels: list[np.ndarray],
    channels: tuple[str, ...],
    grids: list[dict[str, list[Any]]],
    base: dict[str, Any],
) -> tuple[dict[str, Any], float, list[dict[str, Any]]]:
    """Best settings over every grid: ``(params, mean score, table)``.

    Settings a grid leaves out take their value from ``base`` (the config's), and
    ``base`` itself is always a candidate, so the result never scores below it.
    """
    if not any(covers(grid, base) for grid in grids):
        grids = [*grids, {key: [value] for key, value in base.items()}]
    table: list[dict[str, Any]] = []
    for grid in grids:
        full = {key: [value] for key, value in base.items()} | grid
        _, _, rows = tune_postprocess(probs, true_labels, channels, full)
        table += rows
    best = max(table, key=lambda row: row["score"])  # the first of equals, in grid order
    params = {key: value for key, value in best.items() if key != "score"}
    return params, float(best["score"]), table


def _search_both(model: NucleusModel, samples, base: dict[str, Any]) -> dict[bool, tuple]:
    """The grid search without and with TTA: ``{tta: (params, score, table, probs)}``."""
    channels = model.channels
    truths = [s.labels for s in samples]
    results = {}
    for tta in (False, True):
        started = time.time()
        probs = model.with_settings(tta=tta).predict_probabilities([s.image for s in samples])
        params, score, table = search(probs, truths, channels, default_grid(channels), base)
        results[tta] = (params, score, table, probs)
        log.info(
            "tune: best validation score %.4f %s TTA (%s) in %.0f s",
            score,
            "with" if tta else "without",
            params,
            time.time() - started,
        )
    return results


def _untuned_score(table: list[dict[str, Any]], base: dict[str, Any]) -> float:
    """The score of the config's own settings in a search's table (always a candidate)."""
    rows = (r["score"] for r in table if all(r.get(k) == v for k, v in base.items()))
    return next(rows, float("nan"))


def _tuned_record(
    results: dict[bool, tuple], samples, model: NucleusModel, base: dict[str, Any]
) -> dict:
    """What thresholds.json holds: the best settings, TTA only where it helped."""
    use_tta = results[True][1] > results[False][1]
    params, score, table, probs = results[use_tta]
    channels = model.channels
    predicted = {
        s.image_id: (s.labels, instances_from_channels(prob, channels, params))
        for s, prob in zip(samples, probs, strict=True)
    }
    per_kind = kind_means(score_images(predicted).per_image, samples)
    return {
        "params": {**params, "tta": use_tta},
        "heads": model.config.predict.heads,  # the output heads the settings were tuned with
        "validation_score": round(score, 6),
        "validation_score_without_tta": round(results[False][1], 6),
        "validation_score_with_tta": round(results[True][1], 6),
        "validation_per_kind": {k: round(v, 6) for k, v in per_kind.items()},
        "validation_images": len(samples),
        "untuned_validation_score": round(_untuned_score(results[False][2], base), 6),
        "grid": sorted(table, key=lambda row: -row["score"])[:20],
    }


def tune_model(model_dir: Path, images_dir: Path | None = None, device: str = "auto") -> dict:
    """Tune ``model_dir``'s post-processing on its validation split; write thresholds.json
    (and the tuned score into scores.json). ``device`` was chosen by the entry point
    (`pipeline.core.device.select_device`)."""
    model_dir = Path(model_dir)
    # A finished model's weights are checked; training tunes its own before finishing it.
    # Tuned in float32 by Keras, whatever the model's own prediction settings say.
    model = NucleusModel.load(
        model_dir,
        {"engine": "keras", "precision": "float32"},
        device=device,
        tuned=False,
        finished=is_complete(model_dir),
    )
    samples = validation_samples(model_dir, images_dir)
    base = model.postprocess_params()
    tuned = _tuned_record(_search_both(model, samples, base), samples, model, base)
    write_json(model_dir / THRESHOLDS_FILE, tuned)
    if model.finished:  # complete.json covers thresholds.json: record the new one
        mark_complete(model_dir, tuned=True)
    scores = read_json(model_dir / SCORES_FILE)
    if scores:
        scores["tuned_validation_score"] = tuned["validation_score"]
        scores["tuned_validation_per_kind"] = tuned["validation_per_kind"]
        write_json(model_dir / SCORES_FILE, scores)
    log.info(
        "tune: wrote %s (validation score %.4f, TTA %s)",
        model_dir / THRESHOLDS_FILE,
        tuned["validation_score"],
        "on" if tuned["params"]["tta"] else "off",
    )
    return tuned
