"""Stage ``train``: a network from ``stage1_train`` (or the demo set) to a model folder.

- a seeded train/validation split, stratified by image kind, saved with the model;
- joint image and label augmentation (``pipeline.learning.augment``), random crops at the images'
  own scale, at a scale normalised by nucleus size (``pipeline.inference.scale``), or of whole
  images resized (the seeds' baseline);
- the best checkpoint chosen by the competition metric on the validation images,
  computed every ``eval_every`` epochs, with early stopping on it;
- ``--resume`` continues from the last epoch's checkpoint after a kill;
- ``--max-minutes`` gives the training a wall-clock budget (architectures compared on
  equal time: ``bench/compare_architectures.py``).

Any architecture of ``pipeline.learning.models`` trains here; a model with several output heads
(U-Net++'s deep supervision) learns the same targets at every head (the loss is their sum).

The folder layout is described in ``pipeline.learning.model_store``.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import RESIZE_POLICIES, Config
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)


def split_ids(kinds: dict[str, str], val_fraction: float, seed: int) -> dict[str, list[str]]:
    """A seeded train/validation split of image ids, stratified by image kind.

    Every kind with at least two images puts at least one in validation.

    >>> split = split_ids({"a": "x", "b": "x", "c": "y", "d": "y"}, 0.5, seed=0)
    >>> sorted(map(len, split.values()))
    [2, 2]
    """
    if not 0 < val_fraction < 1:
        raise PipelineError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    rng = np.random.default_rng(seed)
    train: list[str] = []
    val: list[str] = []
    for kind in sorted(set(kinds.values())):
        ids = sorted(image_id for image_id, k in kinds.items() if k == kind)
        ids = [ids[i] for i in rng.permutation(len(ids))]
        n_val = int(round(len(ids) * val_fraction))
        if len(ids) >= 2:
            n_val = min(max(n_val, 1), len(ids) - 1)
        else:
            n_val = 0
        val += ids[:n_val]
        train += ids[n_val:]
    return {"train": sorted(train), "val": sorted(val)}


def condition_of(sample) -> str:
    """A sample's acquisition condition: its size and kind, e.g. ``"256x256 fluorescence"``."""
    height, width = sample.image.shape[:2]
    return f"{height}x{width} {sample.kind}"


def split_by_condition(
    conditions: dict[str, str], val_fraction: float, seed: int
) -> dict[str, list[str]]:
    """A seeded split that holds out whole acquisition conditions (size and kind).

    The validation images come from conditions the training never sees, so their score
    measures generalisation to unseen conditions, as stage 2 and a user's own images ask.
    The largest condition always trains; the others, in a seeded order, are held out
    while the validation share stays below ``val_fraction``, skipping one that would
    take it past twice that.

    >>> conditions = {"a": "big", "b": "big", "c": "big", "d": "x", "e": "y"}
    >>> split = split_by_condition(conditions, 0.2, seed=0)
    >>> len(split["val"]), all(conditions[i] != "big" for i in split["val"])
    (1, True)
    """
    if not 0 < val_fraction < 1:
        raise PipelineError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    members: dict[str, list[str]] = {}
    for image_id, condition in sorted(conditions.items()):
        members.setdefault(condition, []).append(image_id)
    names = sorted(members, key=lambda name: (-len(members[name]), name))
    target = val_fraction * len(conditions)
    rng = np.random.default_rng(seed)
    held_out: list[str] = []
    held = 0
    for index in rng.permutation(len(names) - 1) + 1:  # the largest (names[0]) trains
        size = len(members[names[index]])
        if held >= target:
            break
        if held + size <= 2 * target:
            held_out.append(names[index])
            held += size
    val = sorted(i for name in held_out for i in members[name])
    train = sorted(i for i in conditions if i not in set(val))
    return {"train": train, "val": val, "held_out_conditions": sorted(held_out)}


def _resized_to_crop(samples, size: int):
    """The seeds' way: every image and its labels resized to ``size`` x ``size``."""
    from skimage.transform import resize

    prepared = []
    for sample in samples:
        image = resize(
            sample.image, (size, size), order=1, preserve_range=True, anti_aliasing=True
        ).astype(np.uint8)
        labels = resize(
            sample.labels, (size, size), order=0, preserve_range=True, anti_aliasing=False
        ).astype(np.int32)
        prepared.append(dataclasses.replace(sample, image=image, labels=labels))
    return prepared


def prepare_training_samples(samples, config: Config):
    """The training samples as ``config.train.resize_policy`` wants them seen."""
    policy = config.train.resize_policy
    if policy == "native":
        return samples
    if policy == "resize":
        return _resized_to_crop(samples, config.train.crop_size)
    if policy == "nucleus":
        if config.train.nucleus_diameter <= 0:
            raise PipelineError(
                f"nucleus_diameter must be > 0, got {config.train.nucleus_diameter}"
            )
        from pipeline.inference.scale import rescale_labelled

        prepared = []
        for sample in samples:
            image, labels = rescale_labelled(
                sample.image, sample.labels, config.train.nucleus_diameter
            )
            prepared.append(dataclasses.replace(sample, image=image, labels=labels))
        return prepared
    raise PipelineError(f"resize_policy must be one of {RESIZE_POLICIES}, got {policy!r}")


def make_batch_source(samples, config: Config, steps: int, seed: int, outputs: int = 1):
    """A ``keras.utils.PyDataset`` of augmented (images, targets) batches, seeded per epoch.

    For a model with ``outputs`` heads (``pipeline.learning.models.model_outputs``) the targets
    are repeated, one copy per head.
    """
    import keras

    from pipeline.learning.augment import augment, build_augmentation, dim_nuclei
    from pipeline.learning.model_store import target_channels
    from pipeline.learning.preprocess import normalise_image
    from pipeline.learning.targets import labels_to_targets

    channels = target_channels(config)
    crop = config.train.crop_size
    transform = build_augmentation(
        crop,
        config.train.augment_strength if config.train.augment else "none",
        scale_range=(config.train.scale_min, config.train.scale_max),
    )
    batch_size = config.train.batch_size
    dim_share = config.train.dim_nuclei if config.train.augment else 0.0

    class Batches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.epoch = 0

        def __len__(self) -> int:
            return steps

        def on_epoch_end(self) -> None:
            self.epoch += 1

        def __getitem__(self, index: int):
            rng = np.random.default_rng([seed, self.epoch, index])
            picks = rng.integers(0, len(samples), size=batch_size)
            images, targets = [], []
            for pick in picks:
                sample = samples[pick]
                image, labels = augment(
                    transform, sample.image, sample.labels, int(rng.integers(2**31))
                )
                if dim_share and rng.random() < dim_share:
                    image = dim_nuclei(image, labels, rng)
                images.append(
                    normalise_image(
                        image, config.model.invert_light_background, config.model.input_space
                    )
                )
                targets.append(labels_to_targets(labels, channels))
            batch_targets = np.stack(targets)
            if outputs > 1:
                return np.stack(images), tuple([batch_targets] * outputs)
            return np.stack(images), batch_targets

    return Batches()


def out_of_time(seconds: float, epochs_done: int, max_minutes: float) -> bool:
    """Whether another epoch, as long as the mean one so far, would end past the budget.

    >>> out_of_time(50.0, 2, 1.0), out_of_time(40.0, 2, 1.0), out_of_time(99.0, 1, 0)
    (True, False, False)
    """
    if max_minutes <= 0 or epochs_done <= 0:
        return False
    return seconds + seconds / epochs_done > max_minutes * 60


def _make_callbacks(model_dir: Path, val_samples, config: Config, state: dict[str, Any]):
    import keras

    from pipeline.evaluation.validation import score_samples
    from pipeline.fileio import atomic_path
    from pipeline.learning.model_store import CHECKPOINT_DIR, WEIGHTS_FILE, write_json

    class TrainingClock(keras.callbacks.Callback):
        """Keeps ``state["seconds"]``, the training time of all epochs, up to date."""

        def on_train_begin(self, logs: dict | None = None) -> None:
            self.started = time.time()
            self.seconds_before = state.get("seconds", 0.0)

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            state["seconds"] = self.seconds_before + time.time() - self.started

    class CompetitionMetricCheckpoint(keras.callbacks.Callback):
        """Every ``eval_every`` epochs (and the last one): score validation, keep the best
        weights, stop early."""

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs if logs is not None else {}
            done = epoch + 1
            row = {"epoch": done, **{k: float(v) for k, v in logs.items()}}
            evaluate_now = (
                done % config.train.eval_every == 0
                or done == config.train.epochs
                or state.get("stopped_by") == "time budget"
            )
            if evaluate_now and val_samples:
                started = time.time()
                result = score_samples(self.model, val_samples, config)
                row["val_score"] = result["score"]
                logs["val_score"] = result["score"]
                improved = result["score"] > state["best_score"]
                log.info(
                    "epoch %d: validation score %.4f%s (%.0f s)",
                    done,
                    result["score"],
                    " (best so far)" if improved else "",
                    time.time() - started,
                )
                if improved:
                    state.update(
                        best_score=result["score"],
                        best_epoch=done,
                        best_eval=result,
                        evals_without_improvement=0,
                    )
                    with atomic_path(model_dir / WEIGHTS_FILE) as tmp:
                        self.model.save_weights(str(tmp.with_suffix(".weights.h5")))
                        tmp.with_suffix(".weights.h5").replace(tmp)
                else:
                    state["evals_without_improvement"] += 1
                    if state["evals_without_improvement"] >= config.train.patience:
                        log.info(
                            "stopping early: no improvement in %d evaluations",
                            config.train.patience,
                        )
                        state["stopped_by"] = "early stopping"
                        self.model.stop_training = True
            state["history"].append(row)
            state["epoch"] = done
            # The full state (weights and optimiser) for --resume, then the bookkeeping.
            checkpoint = model_dir / CHECKPOINT_DIR
            checkpoint.mkdir(parents=True, exist_ok=True)
            with atomic_path(checkpoint / "last.keras") as tmp:
                keras_tmp = tmp.with_suffix(".keras")
                self.model.save(keras_tmp)
                keras_tmp.replace(tmp)
            write_json(checkpoint / "state.json", state)

    class WallClockBudget(keras.callbacks.Callback):
        """Stop before an epoch that would end past ``max_minutes`` of training.

        Runs before the checkpoint callback, which then evaluates this last epoch.
        """

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            # state["seconds"]: all epochs so far, this one included (TrainingClock).
            if out_of_time(state["seconds"], epoch + 1, config.train.max_minutes):
                log.info(
                    "stopping: %.1f of the %g minutes of the time budget spent, "
                    "not enough for another epoch",
                    state["seconds"] / 60,
                    config.train.max_minutes,
                )
                state["stopped_by"] = "time budget"
                self.model.stop_training = True

    # In this order: the clock, the budget, then the checkpoint that evaluates a last epoch.
    callbacks: list[Any] = [TrainingClock(), WallClockBudget(), CompetitionMetricCheckpoint()]
    if keras.config.backend() == "tensorflow":
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(model_dir / "logs")))
    return callbacks


def _write_history(model_dir: Path, history: list[dict[str, Any]]) -> None:
    from pipeline.fileio import atomic_path
    from pipeline.learning.model_store import CURVES_FILE, HISTORY_FILE

    columns = sorted({key for row in history for key in row}, key=lambda k: (k != "epoch", k))
    with atomic_path(model_dir / HISTORY_FILE) as tmp:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(history)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, score_ax) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [row["epoch"] for row in history]
    loss_ax.plot(epochs, [row.get("loss", np.nan) for row in history], label="training loss")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.legend()
    scored = [row for row in history if "val_score" in row]
    score_ax.plot(
        [r["epoch"] for r in scored],
        [r["val_score"] for r in scored],
        "o-",
        label="validation score (competition metric)",
    )
    score_ax.set_xlabel("epoch")
    score_ax.set_ylabel("score")
    score_ax.set_ylim(0, 1)
    score_ax.legend()
    fig.tight_layout()
    with atomic_path(model_dir / CURVES_FILE) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def train_model(
    config: Config,
    images_dir: Path,
    model_dir: Path,
    resume: bool = False,
    device: str = "auto",
    command: str | None = None,
    tune: bool = True,
) -> dict[str, Any]:
    """Train ``config`` on the labelled images of ``images_dir`` into ``model_dir``.

    Returns the contents of the model's ``scores.json``.
    """
    from pipeline.learning import device as device_module

    device_module.select_device(device)
    import keras

    from pipeline.data.dataset import load_samples
    from pipeline.learning.losses import get_loss
    from pipeline.learning.model_store import (
        CHECKPOINT_DIR,
        CONFIG_FILE,
        SCORES_FILE,
        SPLIT_FILE,
        WEIGHTS_FILE,
        compact_weights,
        portable_path,
        read_json,
        target_channels,
        write_json,
    )
    from pipeline.learning.models import build_model, custom_objects, model_outputs
    from pipeline.provenance import git_commit

    model_dir = Path(model_dir)
    checkpoint = model_dir / CHECKPOINT_DIR
    if resume:
        if not (checkpoint / "last.keras").is_file():
            raise PipelineError(f"{model_dir}: nothing to resume (no {CHECKPOINT_DIR}/last.keras)")
        config = Config.load(model_dir / CONFIG_FILE)
    elif model_dir.exists() and any(model_dir.iterdir()):
        raise PipelineError(
            f"{model_dir}: folder exists and is not empty; use --resume to continue it, "
            "or --out for a new folder"
        )
    device_description = device_module.configure(device, config.train.precision)
    keras.utils.set_random_seed(config.train.seed)
    if resume:
        from pipeline.learning.losses import bce_dice_loss, soft_dice_loss

        model = keras.saving.load_model(
            checkpoint / "last.keras",
            custom_objects={
                "bce_dice_loss": bce_dice_loss,
                "soft_dice_loss": soft_dice_loss,
                **custom_objects(),
            },
        )
    else:
        # Before anything is written: a model that cannot be built (pretrained weights
        # that cannot be downloaded) leaves no half-made folder behind.
        model = build_model(config.model, out_channels=len(target_channels(config)))
    model_dir.mkdir(parents=True, exist_ok=True)

    samples = load_samples(images_dir, with_labels=True)
    kinds = {s.image_id: s.kind for s in samples}
    if resume:
        split = read_json(model_dir / SPLIT_FILE)
    else:
        if config.train.split == "conditions":
            conditions = {s.image_id: condition_of(s) for s in samples}
            split = split_by_condition(conditions, config.train.val_fraction, config.train.seed)
        else:
            split = split_ids(kinds, config.train.val_fraction, config.train.seed)
        config.save(model_dir / CONFIG_FILE)
        write_json(
            model_dir / SPLIT_FILE,
            {
                "seed": config.train.seed,
                "images_dir": portable_path(images_dir),
                **split,
                "kinds": kinds,
            },
        )
    by_id = {s.image_id: s for s in samples}
    if split.get("held_out_conditions"):
        log.info("held-out conditions: %s", ", ".join(split["held_out_conditions"]))
    train_samples = [by_id[i] for i in split["train"]]
    val_samples = [by_id[i] for i in split["val"]]
    train_samples = prepare_training_samples(train_samples, config)
    log.info(
        "training on %d images, validating on %d (%s)",
        len(train_samples),
        len(val_samples),
        device_description,
    )

    steps = config.train.steps_per_epoch or max(1, len(train_samples) // config.train.batch_size)
    batches = make_batch_source(
        train_samples, config, steps, config.train.seed, outputs=model_outputs(model)
    )
    state: dict[str, Any] = {
        "epoch": 0,
        "best_score": -1.0,
        "best_epoch": 0,
        "best_eval": None,
        "evals_without_improvement": 0,
        "history": [],
        "seconds": 0.0,
    }
    if resume:
        state = read_json(checkpoint / "state.json")
        batches.epoch = state["epoch"]
        log.info(
            "resuming after epoch %d (best validation score %.4f at epoch %d)",
            state["epoch"],
            state["best_score"],
            state["best_epoch"],
        )
    else:
        schedule = keras.optimizers.schedules.CosineDecay(
            config.train.learning_rate, decay_steps=steps * config.train.epochs, alpha=0.05
        )
        model.compile(optimizer=keras.optimizers.Adam(schedule), loss=get_loss(config.train.loss))
    started = time.time()
    seconds_before = state.get("seconds", 0.0)
    if (
        state["epoch"] < config.train.epochs
        and state["evals_without_improvement"] < config.train.patience
        and not out_of_time(state.get("seconds", 0.0), state["epoch"], config.train.max_minutes)
    ):
        state.pop("stopped_by", None)  # a resumed run goes on (its budget or patience grew)
        model.fit(
            batches,
            epochs=config.train.epochs,
            initial_epoch=state["epoch"],
            callbacks=_make_callbacks(model_dir, val_samples, config, state),
            verbose=1 if sys.stderr.isatty() else 2,
        )
    state["seconds"] = seconds_before + (time.time() - started)
    if not (model_dir / WEIGHTS_FILE).is_file():
        # No evaluation happened (no validation images): keep the last weights.
        model.save_weights(str(model_dir / WEIGHTS_FILE))
    compact_weights(model_dir)
    _write_history(model_dir, state["history"])
    best = state.get("best_eval") or {}
    scores = {
        "validation_score": state["best_score"] if best else None,
        "validation_per_kind": best.get("per_kind", {}),
        "validation_images": len(val_samples),
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "train_seconds": round(state["seconds"], 1),
        "seconds_per_epoch": round(state["seconds"] / max(1, len(state["history"])), 1),
        "stopped_by": state.get("stopped_by")
        or ("epochs" if state["epoch"] >= config.train.epochs else None),
        "max_minutes": config.train.max_minutes or None,
        "parameters": int(model.count_params()),
        "device": device_description,
        "target_channels": list(target_channels(config)),
        "training_fingerprint": config.training_fingerprint(),
        "commit": git_commit(),
        "command": command,
        "validation_per_image": best.get("per_image", {}),
    }
    write_json(model_dir / SCORES_FILE, scores)
    log.info(
        "model written to %s (validation score %s)",
        model_dir,
        f"{scores['validation_score']:.4f}" if best else "n/a",
    )
    if val_samples and tune:
        from pipeline.evaluation.tuning import tune_model

        tune_model(model_dir, images_dir, device)
        scores = read_json(model_dir / SCORES_FILE)
    return scores
