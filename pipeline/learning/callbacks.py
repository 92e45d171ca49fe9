"""What a training does between epochs, as Keras callbacks over one `TrainingState`.

In the order they run after each epoch:

- `DivergenceGuard` stops a training whose loss is not finite, or has grown to more than
  ``DIVERGED_FACTOR`` times its first epoch's (the caller then refuses to finish it);
- `TrainingClock` keeps the training time of all epochs (across ``--resume``);
- `WallClockBudget` stops before an epoch that would end past ``max_minutes``;
- `ValidationScore` scores the validation images with the competition metric every
  ``eval_every`` epochs (and after the last one), puts it in the logs as ``val_score``,
  and writes the best weights; the scoring function is handed to it (by the ``train``
  stage: `pipeline.stages.train.score_network`), since learning does not import
  evaluation;
- `ResumableEarlyStopping`: Keras' own ``EarlyStopping`` on ``val_score`` (it counts only
  the epochs that were scored), carried over a ``--resume``;
- `ResumeCheckpoint` writes the full model (weights and optimiser) and the state, for
  ``--resume``.

Keras' ``ModelCheckpoint`` and ``BackupAndRestore`` are not used: they write their files
in place, and a kill while writing would leave a damaged model; here every file is
written to a temporary name and renamed (`pipeline.fileio.atomic_path`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from pipeline.config import Config
from pipeline.core.distribute import agree
from pipeline.core.model_store import (
    CHECKPOINT_DIR,
    LAST_MODEL_FILE,
    WEIGHTS_FILE,
    read_json,
    write_json,
)
from pipeline.fileio import atomic_path

log = logging.getLogger(__name__)

#: ``(network, samples, config) -> {"score": ..., ...}``: the competition score on
#: validation samples of the network being trained (`ValidationScore`).
ScoreSamples = Callable[[Any, Any, Config], dict[str, Any]]

STATE_FILE = "state.json"
#: A training whose epoch loss grows past this many times its first epoch's has diverged.
DIVERGED_FACTOR = 2.0


@dataclass
class TrainingState:
    """What a training knows between epochs; ``checkpoint/state.json`` for ``--resume``."""

    epoch: int = 0  # epochs done
    best_score: float = -1.0  # best validation score so far
    best_epoch: int = 0
    best_eval: dict[str, Any] | None = None  # score_samples' result at the best epoch
    evals_without_improvement: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch
    seconds: float = 0.0  # training time of all epochs
    stopped_by: str | None = None  # "early stopping", "time budget", "diverged" or None
    first_loss: float | None = None  # the first epoch's mean loss (divergence is against it)
    # the random state of each dropout layer: Keras' .keras file leaves it out
    seed_states: list[list[int]] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> TrainingState:
        known = {item.name for item in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in read_json(path).items() if k in known})

    def save(self, path: Path) -> None:
        write_json(path, dataclasses.asdict(self))


def _seed_generators(model: keras.Model) -> list:
    return [
        generator
        for layer in model._flatten_layers()  # noqa: SLF001 - Keras' own layer walk
        for generator in getattr(layer, "_seed_generators", [])
    ]


def seed_states(model: keras.Model) -> list[list[int]]:
    """The states of the model's random generators (dropout), for a checkpoint."""
    return [[int(v) for v in generator.state.numpy()] for generator in _seed_generators(model)]


def restore_seed_states(model: keras.Model, states: list[list[int]]) -> None:
    """Put back the generators' states of `seed_states`, so that a resumed training draws
    the dropout masks the uninterrupted one would have."""
    generators = _seed_generators(model)
    if len(states) != len(generators):
        log.warning("checkpoint without the dropout's random state: it starts afresh")
        return
    for generator, state in zip(generators, states, strict=True):
        generator.state.assign(np.asarray(state, dtype=generator.state.dtype))


def out_of_time(seconds: float, epochs_done: int, max_minutes: float) -> bool:
    """Whether another epoch, as long as the mean one so far, would end past the budget.

    >>> out_of_time(50.0, 2, 1.0), out_of_time(40.0, 2, 1.0), out_of_time(99.0, 1, 0)
    (True, False, False)
    """
    if max_minutes <= 0 or epochs_done <= 0:
        return False
    return seconds + seconds / epochs_done > max_minutes * 60


def diverged(loss: float, first_loss: float | None) -> bool:
    """Whether an epoch's loss says the training diverged.

    >>> diverged(float("nan"), 0.9), diverged(2.5, 0.9), diverged(1.2, 0.9), diverged(3.0, None)
    (True, True, False, False)
    """
    if not math.isfinite(loss):
        return True
    return first_loss is not None and loss > DIVERGED_FACTOR * first_loss


class DivergenceGuard(keras.callbacks.Callback):
    """Stops at the first batch whose loss is not finite, and after an epoch whose loss
    says the training diverged (`diverged`); ``state.stopped_by`` is then "diverged"."""

    def __init__(self, state: TrainingState) -> None:
        super().__init__()
        self.state = state

    def _stop(self, epoch: int, loss: float) -> None:
        log.error("epoch %d: the training diverged (loss %s)", epoch, f"{loss:.4g}")
        self.state.stopped_by = "diverged"
        self.state.history.append({"epoch": epoch, "loss": loss})
        self.model.stop_training = True

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = float((logs or {}).get("loss", 0.0))
        if self.state.stopped_by != "diverged" and diverged(loss, None):
            self._stop(self.state.epoch + 1, loss)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.state.stopped_by == "diverged":
            return
        loss = float((logs or {}).get("loss", float("nan")))
        if self.state.first_loss is None and epoch == 0:
            self.state.first_loss = loss
        if diverged(loss, self.state.first_loss):
            self._stop(epoch + 1, loss)


class TrainingClock(keras.callbacks.Callback):
    """Keeps ``state.seconds``, the training time of all epochs, up to date."""

    def __init__(self, state: TrainingState) -> None:
        super().__init__()
        self.state = state

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.started = time.time()
        self.seconds_before = self.state.seconds

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.state.seconds = self.seconds_before + time.time() - self.started


class WallClockBudget(keras.callbacks.Callback):
    """Stop before an epoch that would end past ``max_minutes`` of training.

    Runs before `ValidationScore`, which then scores this last epoch.
    """

    def __init__(self, state: TrainingState, max_minutes: float) -> None:
        super().__init__()
        self.state = state
        self.max_minutes = max_minutes

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        # state.seconds: all epochs so far, this one included (TrainingClock).
        spent = self.state.seconds
        late = out_of_time(spent, epoch + 1, self.max_minutes)
        # Several processes stop together, when the first says so: clocks differ.
        if self.state.stopped_by != "diverged" and agree(late):
            log.info(
                "stopping: %.1f of the %g minutes of the time budget spent, "
                "not enough for another epoch",
                self.state.seconds / 60,
                self.max_minutes,
            )
            self.state.stopped_by = "time budget"
            self.model.stop_training = True


class ValidationScore(keras.callbacks.Callback):
    """Every ``eval_every`` epochs (and the last one): the competition score on the
    validation images, as ``val_score`` in the logs; the best weights are written.
    ``score_samples(network, samples, config)`` gives the score, a dict with ``"score"``."""

    def __init__(
        self,
        state: TrainingState,
        model_dir: Path,
        val_samples,
        config: Config,
        score_samples: ScoreSamples,
    ):
        super().__init__()
        self.state = state
        self.model_dir = model_dir
        self.val_samples = val_samples
        self.config = config
        self.score_samples = score_samples

    def _due(self, done: int) -> bool:
        return bool(self.val_samples) and (
            done % self.config.train.eval_every == 0
            or done == self.config.train.epochs
            or self.state.stopped_by == "time budget"
        )

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.state.stopped_by == "diverged":
            return
        logs = logs if logs is not None else {}
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}}
        if self._due(epoch + 1):
            started = time.time()
            result = self.score_samples(self.model, self.val_samples, self.config)
            row["val_score"] = logs["val_score"] = result["score"]
            improved = result["score"] > self.state.best_score
            log.info(
                "epoch %d: validation score %.4f%s (%.0f s)",
                epoch + 1,
                result["score"],
                " (best so far)" if improved else "",
                time.time() - started,
            )
            if improved:
                self.state.best_score = result["score"]
                self.state.best_epoch = epoch + 1
                self.state.best_eval = result
                with atomic_path(self.model_dir / WEIGHTS_FILE) as tmp:
                    self.model.save_weights(str(tmp.with_suffix(".weights.h5")))
                    tmp.with_suffix(".weights.h5").replace(tmp)
        self.state.history.append(row)
        self.state.epoch = epoch + 1


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """Keras' ``EarlyStopping`` on ``val_score`` (higher is better), its count of scored
    epochs without improvement carried over a ``--resume`` in the state."""

    def __init__(self, state: TrainingState, patience: int) -> None:
        super().__init__(monitor="val_score", mode="max", patience=patience)
        self.state = state

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)
        self.wait = self.state.evals_without_improvement
        self.best = self.state.best_score if self.state.best_eval is not None else None

    def get_monitor_value(self, logs: dict | None) -> float | None:
        # Only every eval_every-th epoch is scored: the others are not a reason to warn.
        return (logs or {}).get(self.monitor)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        super().on_epoch_end(epoch, logs)
        self.state.evals_without_improvement = self.wait
        if self.stopped_epoch:
            log.info("stopping early: no improvement in %d evaluations", self.patience)
            self.state.stopped_by = "early stopping"


class ResumeCheckpoint(keras.callbacks.Callback):
    """After each epoch: the full model (weights and optimiser) and the state."""

    def __init__(self, state: TrainingState, model_dir: Path) -> None:
        super().__init__()
        self.state = state
        self.folder = model_dir / CHECKPOINT_DIR

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.state.stopped_by == "diverged":
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self.state.seed_states = seed_states(self.model)
        with atomic_path(self.folder / LAST_MODEL_FILE) as tmp:
            keras_tmp = tmp.with_suffix(".keras")
            self.model.save(keras_tmp)
            keras_tmp.replace(tmp)
        self.state.save(self.folder / STATE_FILE)


def training_callbacks(
    state: TrainingState,
    model_dir: Path,
    val_samples,
    config: Config,
    score_samples: ScoreSamples,
) -> list[keras.callbacks.Callback]:
    """The callbacks of a training, in the order they must run (module docstring)."""
    callbacks: list[keras.callbacks.Callback] = [
        DivergenceGuard(state),
        TrainingClock(state),
        WallClockBudget(state, config.train.max_minutes),
        ValidationScore(state, model_dir, val_samples, config, score_samples),
        ResumableEarlyStopping(state, config.train.patience),
        ResumeCheckpoint(state, model_dir),
    ]
    if keras.config.backend() == "tensorflow":
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(model_dir / "logs")))
    return callbacks
