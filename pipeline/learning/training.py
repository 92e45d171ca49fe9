"""Training: a network from labelled images (``stage1_train`` or the demo set) to a
model folder (``pipeline.core.model_store``), in named steps (`train_model`).

- a seeded train/validation split (``pipeline.learning.splits``), saved with the model;
- joint image and label augmentation (``pipeline.learning.augment``), random crops at the
  images' own scale, at a scale normalised by nucleus size (``pipeline.core.scale``),
  or of whole images resized (the seeds' baseline);
- the best checkpoint chosen by the competition metric on the validation images,
  computed every ``eval_every`` epochs, with early stopping on it
  (``pipeline.learning.callbacks``);
- ``resume`` continues from the last epoch's checkpoint after a kill;
- ``max_minutes`` gives the training a wall-clock budget (architectures compared on
  equal time: ``bench/compare_architectures.py``).

Any architecture of ``pipeline.core.models`` trains here; a model with several output
heads (U-Net++'s deep supervision) learns the same targets at every head (the loss is
their sum).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import itertools
import logging
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from pipeline.config import Config, split_list
from pipeline.core import device as device_module
from pipeline.core import distribute
from pipeline.core.distribute import local_batches, process_model_dir, process_share
from pipeline.core.model_store import (
    CHECKPOINT_DIR,
    COMPLETE_FILE,
    CONFIG_FILE,
    CURVES_FILE,
    HISTORY_FILE,
    LAST_MODEL_FILE,
    LOGS_DIR,
    SCORES_FILE,
    SPLIT_FILE,
    WEIGHTS_FILE,
    check_finished,
    compact_weights,
    file_sha256,
    is_complete,
    load_config,
    mark_complete,
    portable_path,
    read_json,
    target_channels,
    write_json,
)
from pipeline.core.nucleus_size import record_training_nuclei
from pipeline.core.preprocess import normalise_image
from pipeline.core.scale_policy import scale_policy
from pipeline.core.targets import labels_to_targets
from pipeline.data.dataset import labels_from_rle_csv, load_samples
from pipeline.data.extra import group_of, load_extra_set, load_labelled
from pipeline.errors import PipelineError
from pipeline.fileio import atomic_path
from pipeline.learning.augment import (
    augment,
    build_augmentation,
    dim_nuclei,
    paste_touching_nuclei,
    stain_like_tissue,
)
from pipeline.learning.data_card import write_data_card
from pipeline.learning.splits import make_split, split_extra
from pipeline.provenance import git_commit

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Scoring:
    """What a training asks of evaluation, handed in by the stage (learning does not
    import evaluation): ``samples(network, samples, config)``, the validation score of the
    network being trained, between epochs (`pipeline.learning.callbacks.ValidationScore`);
    ``tune(model_dir, images_dir, device)``, the post-processing tuned on the written
    folder; ``extra_sets(model_dir, tuned=, device=)``, each extra set's score of the
    finished model."""

    samples: Callable[[Any, Any, Config], dict[str, Any]]
    tune: Callable[[Path, Path, str], Any]
    extra_sets: Callable[..., dict[str, Any]]


def prepare_training_samples(samples, config: Config):
    """The training samples as the model's input-scale policy has the network see them
    (`pipeline.core.scale_policy.ScalePolicy.training_samples`)."""
    return scale_policy(config).training_samples(samples)


def source_probabilities(
    sources: list[str], weighting: str, groups: list[str] | None = None
) -> np.ndarray | None:
    """How likely each training image is to be drawn, from the source it comes from
    (``TrainConfig.source_weighting``); None when all come from one source.

    A source of ``n`` images is drawn in proportion to ``sqrt(n)`` (sqrt), ``n`` (size) or
    ``1`` (equal), its images alike within it. With ``groups`` (the image each sample was
    cut from, `pipeline.data.extra.group_of`), ``n`` counts source images, not tiles: the
    9 tiles of one image are not 9 independent images.

    >>> source_probabilities(["", "", "", "", "x"], "equal").round(3).tolist()
    [0.125, 0.125, 0.125, 0.125, 0.5]
    >>> source_probabilities(["", "x", "x"], "size", ["a", "b", "b"]).round(3).tolist()
    [0.5, 0.25, 0.25]
    >>> source_probabilities(["", ""], "sqrt") is None
    True
    """
    names, inverse, counts = np.unique(sources, return_inverse=True, return_counts=True)
    if len(names) < 2:
        return None
    images = counts.astype(float)
    if groups is not None:
        pairs = set(zip(sources, groups, strict=True))
        images = np.array([sum(1 for source, _ in pairs if source == name) for name in names])
    weight = {"sqrt": np.sqrt(images), "size": images.astype(float), "equal": np.ones(len(names))}
    if weighting not in weight:
        raise PipelineError(f"source_weighting must be one of {sorted(weight)}, got {weighting!r}")
    share = weight[weighting] / weight[weighting].sum()
    return share[inverse] / counts[inverse]


class BatchSource:
    """Augmented (images, targets) batches: batch ``index`` of epoch ``epoch`` is a pure
    function of ``(seed, epoch, index)`` (`batch`), and `stream` yields them in training
    order from any epoch on.

    A stream, not a ``keras.utils.PyDataset`` with an epoch counter: Keras fetches a
    PyDataset's batches ahead and out of order around its ``on_epoch_end``, so that which
    epoch a batch was drawn for depended on timing, and a resumed training saw other
    batches than an uninterrupted one. A generator is consumed in order, so a training
    resumed after epoch ``k`` sees exactly the batches the uninterrupted one saw.

    For a model with ``outputs`` heads (``pipeline.core.models.model_outputs``) the
    targets are repeated, one copy per head.
    """

    def __init__(self, samples, config: Config, steps: int, seed: int, outputs: int = 1):
        self.samples, self.config, self.steps = samples, config, steps
        self.seed, self.outputs = seed, outputs
        self.channels = target_channels(config)
        train = config.train
        self.transform = build_augmentation(
            train.crop_size,
            train.augment_strength if train.augment else "none",
            scale_range=(train.scale_min, train.scale_max),
        )

        self.probabilities = source_probabilities(
            [sample.source for sample in samples],
            train.source_weighting,
            [group_of(sample.image_id) for sample in samples],
        )
        self.dim_share = train.dim_nuclei if train.augment else 0.0
        self.stain_share = train.stain_tissue if train.augment else 0.0
        self.paste_share = train.paste_nuclei if train.augment else 0.0

    def batch(self, epoch: int, index: int):
        """Batch ``index`` (0-based) of epoch ``epoch`` (0-based)."""
        model = self.config.model
        rng = np.random.default_rng([self.seed, epoch, index])
        size = self.config.train.batch_size
        if self.probabilities is None:  # one source: every image alike (as before sources)
            picks = rng.integers(0, len(self.samples), size=size)
        else:
            picks = rng.choice(len(self.samples), size=size, p=self.probabilities)
        images, targets = [], []
        for pick in picks:
            sample = self.samples[pick]
            image, labels = augment(
                self.transform, sample.image, sample.labels, int(rng.integers(2**31))
            )
            if self.paste_share and rng.random() < self.paste_share:
                image, labels = paste_touching_nuclei(image, labels, rng)
            if self.dim_share and rng.random() < self.dim_share:
                image = dim_nuclei(image, labels, rng)
            if self.stain_share and rng.random() < self.stain_share:
                image = stain_like_tissue(image, rng)
            images.append(normalise_image(image, model.invert_light_background, model.input_space))
            targets.append(labels_to_targets(labels, self.channels))
        batch_targets = np.stack(targets)
        if self.outputs > 1:
            return np.stack(images), tuple([batch_targets] * self.outputs)
        return np.stack(images), batch_targets

    def stream(self, first_epoch: int = 0):
        """Every batch from epoch ``first_epoch`` on, in order, without end."""
        for epoch in itertools.count(first_epoch):
            for index in range(self.steps):
                yield self.batch(epoch, index)


def _write_history(model_dir: Path, history: list[dict[str, Any]]) -> None:
    columns = sorted({key for row in history for key in row}, key=lambda k: (k != "epoch", k))
    with atomic_path(model_dir / HISTORY_FILE) as tmp:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(history)

    matplotlib.use("Agg")
    # Lazy: pyplot loads after matplotlib.use("Agg") has chosen its backend
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


#: What a training writes into its model folder, removed when a run starts over.
_RUN_FILES = (
    "config.json",
    "split.json",
    "model.weights.h5",
    "scores.json",
    "thresholds.json",
    "history.csv",
    "curves.png",
    "complete.json",
    "nuclei.json",
)


def folder_state(model_dir: Path) -> str:
    """What a model folder holds: ``new`` (absent or empty), ``complete`` (a finished
    model), ``checkpoint`` (an unfinished run that can be resumed), ``started`` (a run
    stopped before its first checkpoint, or one that diverged) or ``other`` (not a
    model folder)."""
    if not model_dir.exists() or not any(model_dir.iterdir()):
        return "new"
    if (model_dir / CHECKPOINT_DIR / LAST_MODEL_FILE).is_file():
        return "complete" if is_complete(model_dir) else "checkpoint"
    if is_complete(model_dir):
        return "complete"
    return "started" if (model_dir / CONFIG_FILE).is_file() else "other"


def _start_over(model_dir: Path) -> None:
    """Remove what a stopped run wrote (only the training's own files)."""
    for name in _RUN_FILES:
        (model_dir / name).unlink(missing_ok=True)
    for name in (CHECKPOINT_DIR, LOGS_DIR):
        shutil.rmtree(model_dir / name, ignore_errors=True)


def _resume_or_start(config: Config, model_dir: Path, resume: bool) -> tuple[Config, bool]:
    """``(config, resume)`` for the folder as it is: a killed run is resumed or started
    over (saying which); a finished model or a foreign folder is refused."""
    state = folder_state(model_dir)
    if state == "complete" and resume:
        _reopen_finished(model_dir)
        return Config.load(model_dir / CONFIG_FILE), True
    if state == "checkpoint":
        if not resume:
            raise PipelineError(
                f"{model_dir}: holds an unfinished training; --resume continues it, or "
                "choose another --out"
            )
        return Config.load(model_dir / CONFIG_FILE), True
    if state == "started":
        if resume:
            config = Config.load(model_dir / CONFIG_FILE)
        log.warning(
            "%s: a training stopped before its first checkpoint: starting over%s",
            model_dir,
            " with its config.json" if resume else "",
        )
        _start_over(model_dir)
        return config, False
    if state == "complete":
        raise PipelineError(
            f"{model_dir}: holds a finished model; choose another --out (or delete it)"
        )
    if resume:
        check_resumable(model_dir)
    if state == "other":
        raise PipelineError(
            f"{model_dir}: folder exists, is not empty and is not a model folder; "
            "choose another --out"
        )
    return config, False


def check_resumable(model_dir: Path) -> None:
    """Refuse ``--resume`` on a folder where no training was ever started (checked before
    anything else, the training images included)."""
    if folder_state(model_dir) in ("new", "other"):
        raise PipelineError(f"{model_dir}: nothing to resume (no training was started there)")


def _reopen_finished(model_dir: Path) -> None:
    """Make a finished model an unfinished run again, to train it further (``--resume``
    after raising its epochs): refused without its checkpoint."""
    if not (model_dir / CHECKPOINT_DIR / LAST_MODEL_FILE).is_file():
        raise PipelineError(
            f"{model_dir}: a finished model without its {CHECKPOINT_DIR}/ (a shipped or "
            "copied model): nothing to resume"
        )
    log.info("%s: continuing a finished model; it is unfinished until this run ends", model_dir)
    (model_dir / COMPLETE_FILE).unlink()


def _build_or_resume(
    config: Config,
    model_dir: Path,
    resume: bool,
    device: str,
    devices: int,
    stack: contextlib.ExitStack,
    init: Path | None = None,
):
    """The model to train and its config: a new one, or the checkpoint of a killed run;
    on ``devices`` devices (`pipeline.core.distribute`), whose scope is entered into
    ``stack`` (the compiling and fitting happen in it).

    Returns ``(model, config, resume, device description)``; see `_resume_or_start`.
    ``device`` (and ``devices``) were chosen by the entry point
    (`pipeline.core.device.select_device`).
    """
    distribute.join_processes()
    # Lazy: Keras loads only after select_device; the train stage imports this module first
    import keras

    from pipeline.core.models import build_model

    config, resume = _resume_or_start(config, model_dir, resume)
    choice = device_module.check_device(device, config.train.precision)
    device_description = choice.description
    # The network is built, compiled and fitted in its precision; the process-wide dtype
    # policy is restored when the training's stack closes.
    stack.enter_context(device_module.precision_scope(choice))
    replicas = distribute.choose_devices(devices, config.train.batch_size)
    if len(replicas) > 1:
        device_description += f", data-parallel on {len(replicas)} devices"
    stack.enter_context(distribute.training_scope(replicas))
    keras.utils.set_random_seed(config.train.seed)
    if resume:
        # Lazy: both import Keras, which loads only after select_device
        from pipeline.core.models import custom_objects
        from pipeline.learning.losses import bce_dice_loss, soft_dice_loss

        losses = {"bce_dice_loss": bce_dice_loss, "soft_dice_loss": soft_dice_loss}
        last = model_dir / CHECKPOINT_DIR / LAST_MODEL_FILE
        model = keras.saving.load_model(last, custom_objects={**losses, **custom_objects()})
    else:
        # Before anything is written: a model that cannot be built (pretrained weights
        # that cannot be downloaded) leaves no half-made folder behind.
        model = build_model(config.model, out_channels=len(target_channels(config)))
        if init is not None:
            model.load_weights(str(Path(init) / WEIGHTS_FILE))
            log.info("starting from the weights of %s", init)
    distribute.synchronise_batch_norm(model, replicas)
    return model, config, resume, device_description


#: Model settings a fine-tuning (``--init``) may change: they shape no weight.
_INIT_FREE = ("dropout", "encoder_weights", "encoder_trainable")


def check_init(config: Config, init: Path) -> None:
    """Refuse, in one line, to start ``config``'s training from the finished model ``init``
    unless its network is the same (architecture, size, input space, targets)."""
    check_finished(init)
    theirs = load_config(init, tuned=False).model
    for item in dataclasses.fields(theirs):
        if item.name in _INIT_FREE:
            continue
        mine, other = getattr(config.model, item.name), getattr(theirs, item.name)
        if mine != other:
            raise PipelineError(
                f"--init {init}: its {item.name} is {other!r}, this training's is {mine!r}: "
                "a model can only start from one of the same network (leave the model "
                "settings out to take them from it)"
            )


def _stage1_test_samples(images_dir: Path, train_ids: set[str]):
    """The stage-1 test images with their released labels, for ``--with-stage1-test``.

    Taken from ``stage1_test/`` and ``stage1_solution.csv`` beside the training folder
    (``input/`` for ``input/stage1_train``). Returns ``(samples, record)``, the record saying
    where they came from for ``split.json``.
    """
    test_dir, solution = (
        images_dir.parent / "stage1_test",
        images_dir.parent / "stage1_solution.csv",
    )
    for needed in (test_dir, solution):
        if not needed.exists():
            raise PipelineError(
                f"--with-stage1-test: {needed} not found (the stage-1 test images and their "
                f"labels are read beside the training folder {images_dir}; ./run.sh download "
                "fetches them)"
            )
    labels = labels_from_rle_csv(solution)
    ids = sorted(labels)
    clashes = sorted(train_ids.intersection(ids))
    if clashes:
        raise PipelineError(
            f"--with-stage1-test: {len(clashes)} image(s) of {solution} are training images "
            f"already, such as {clashes[0]}"
        )
    samples = []
    for sample in load_samples(test_dir, with_labels=False, ids=ids):
        if sample.shape != labels[sample.image_id].shape:
            raise PipelineError(
                f"{solution}: {sample.image_id}: labels of size {labels[sample.image_id].shape}"
                f" for an image of size {sample.shape}"
            )
        samples.append(dataclasses.replace(sample, labels=labels[sample.image_id]))
    record = {"images_dir": portable_path(test_dir), "labels": portable_path(solution), "ids": ids}
    log.info("with the stage-1 test set: %d images added to the training side", len(ids))
    return samples, record


def load_extra_sets(config: Config, taken: set[str]):
    """The extra annotated sets of ``config.train.extra`` (`pipeline.data.extra`), read;
    refused when two share a name or an image id is already taken."""
    extra_sets = []
    for entry in split_list(config.train.extra):
        extra_set = load_extra_set(entry)
        if any(earlier.name == extra_set.name for earlier in extra_sets):
            raise PipelineError(
                f"--extra {entry}: a second set named {extra_set.name!r} (rename its folder)"
            )
        for sample in extra_set.samples:
            if sample.image_id in taken:
                raise PipelineError(
                    f"--extra {entry}: image id {sample.image_id!r} is already a training "
                    "image (an extra set must hold other images)"
                )
            taken.add(sample.image_id)
        extra_sets.append(extra_set)
    return extra_sets


def _extra_split(extra_sets, config: Config, own_train: list[str]) -> dict:
    """What ``split.json`` adds for extra sets: their training ids joined to ``own_train``,
    each set's held-out ids (``extra_val``), the wholly held-out sets and each set's record."""
    sources = {
        item.name: {s.image_id: group_of(s.image_id) for s in item.samples} for item in extra_sets
    }
    kinds = {
        item.name: Counter(s.kind for s in item.samples).most_common(1)[0][0] for item in extra_sets
    }
    train = config.train
    part = split_extra(sources, kinds, train.val_fraction, train.seed, train.split)
    for item in extra_sets:
        log.info(
            "extra set %s: %d images train, %d held out%s",
            item.name,
            len(item.samples) - len(part["val"][item.name]),
            len(part["val"][item.name]),
            " (the whole set: a held-out source)" if item.name in part["held_out_sources"] else "",
        )
    return {
        "train": sorted([*own_train, *part["train"]]),
        "extra_val": part["val"],
        "held_out_sources": part["held_out_sources"],
        "extra_sets": [
            {**item.record(), "location": portable_path(item.location)} for item in extra_sets
        ],
    }


def _check_same_extra_sets(split: dict, extra_sets, model_dir: Path) -> None:
    """A resumed run must see the extra sets it started with, file for file."""
    recorded = {item["name"]: item["sha256"] for item in split.get("extra_sets", [])}
    current = {item.name: item.sha256 for item in extra_sets}
    if recorded != current:
        changed = sorted(set(recorded.items()) ^ set(current.items()))
        raise PipelineError(
            f"{model_dir}: the extra sets differ from those the run started with "
            f"({changed[0][0]} changed, added or missing); start again without --resume"
        )


def _split_samples(config: Config, images_dir: Path, model_dir: Path, resume: bool):
    """The training and validation samples; a new run saves its config and split first.

    With ``with_stage1_test`` the stage-1 test images join the training side after the
    split of ``images_dir`` is drawn, so the validation images are the same as without.
    """
    model_dir.mkdir(parents=True, exist_ok=True)
    samples = load_labelled(images_dir)
    extra, extra_record = [], None
    if config.train.with_stage1_test:
        extra, extra_record = _stage1_test_samples(images_dir, {s.image_id for s in samples})
    extra_sets = load_extra_sets(config, {s.image_id for s in [*samples, *extra]})
    others = [sample for extra_set in extra_sets for sample in extra_set.samples]
    if resume:
        split = read_json(model_dir / SPLIT_FILE)
        _check_same_extra_sets(split, extra_sets, model_dir)
    else:
        train = config.train
        split = make_split(samples, train.val_fraction, train.seed, train.split)
        if extra_record is not None:
            split = {**split, "train": sorted([*split["train"], *extra_record["ids"]])}
            split["stage1_test"] = extra_record
        if extra_sets:
            split = {**split, **_extra_split(extra_sets, config, split["train"])}
        config.save(model_dir / CONFIG_FILE)
        kinds = {s.image_id: s.kind for s in [*samples, *extra, *others]}
        record = {"seed": train.seed, "images_dir": portable_path(images_dir), **split}
        write_json(model_dir / SPLIT_FILE, {**record, "kinds": kinds})
    if split.get("held_out_conditions"):
        log.info("held-out conditions: %s", ", ".join(split["held_out_conditions"]))
    if split.get("held_out_sources"):
        log.info("held-out extra sets: %s", ", ".join(split["held_out_sources"]))
    by_id = {s.image_id: s for s in [*samples, *extra, *others]}
    train_samples = prepare_training_samples([by_id[i] for i in split["train"]], config)
    return train_samples, [by_id[i] for i in split["val"]]


def _fit(model, config: Config, samples, model_dir: Path, resume: bool, scoring: Scoring):
    """Train on ``samples`` (training, validation) until the epochs, the patience or the
    time budget run out; the state."""
    # Lazy: Keras loads only after select_device; the train stage imports this module first
    import keras

    from pipeline.core.models import model_outputs
    from pipeline.learning.callbacks import (
        STATE_FILE,
        TrainingState,
        out_of_time,
        restore_seed_states,
        training_callbacks,
    )
    from pipeline.learning.losses import get_loss

    train = config.train
    train_samples, val_samples = samples
    # An epoch is one pass over the --images set's training images: extra sets change what
    # is drawn, not how long an epoch takes.
    own = sum(1 for sample in train_samples if not sample.source) or len(train_samples)
    steps = train.steps_per_epoch or max(1, own // train.batch_size)
    batches = BatchSource(train_samples, config, steps, train.seed, outputs=model_outputs(model))
    state = TrainingState()
    if resume:
        state = TrainingState.load(model_dir / CHECKPOINT_DIR / STATE_FILE)
        restore_seed_states(model, state.seed_states)
        log.info(
            "resuming after epoch %d (best validation score %.4f at epoch %d)",
            state.epoch,
            state.best_score,
            state.best_epoch,
        )
    else:
        schedule = keras.optimizers.schedules.CosineDecay(
            train.learning_rate, decay_steps=steps * train.epochs, alpha=0.05
        )
        model.compile(optimizer=keras.optimizers.Adam(schedule), loss=get_loss(train.loss))
    started, seconds_before = time.time(), state.seconds
    if (
        state.epoch < train.epochs
        and state.evals_without_improvement < train.patience
        and not out_of_time(state.seconds, state.epoch, train.max_minutes)
    ):
        state.stopped_by = None  # a resumed run goes on (its budget or patience grew)
        model.fit(
            local_batches(batches.stream(first_epoch=state.epoch), *process_share()),
            steps_per_epoch=steps,
            epochs=train.epochs,
            initial_epoch=state.epoch,
            shuffle=False,  # BatchSource shuffles, by (seed, epoch)
            callbacks=training_callbacks(state, model_dir, val_samples, config, scoring.samples),
            verbose=1 if sys.stderr.isatty() else 2,
        )
    state.seconds = seconds_before + (time.time() - started)
    return state


def _write_results(model, config: Config, model_dir: Path, state, n_val: int, run: dict):
    """The finished model folder: compact weights, curves and ``scores.json`` (last)."""
    if not (model_dir / WEIGHTS_FILE).is_file():
        # No evaluation happened (no validation images): keep the last weights.
        model.save_weights(str(model_dir / WEIGHTS_FILE))
    compact_weights(model_dir)
    _write_history(model_dir, state.history)
    best = state.best_eval or {}
    scores = {
        "validation_score": state.best_score if best else None,
        "validation_per_kind": best.get("per_kind", {}),
        "validation_images": n_val,
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "train_seconds": round(state.seconds, 1),
        "seconds_per_epoch": round(state.seconds / max(1, len(state.history)), 1),
        "stopped_by": state.stopped_by
        or ("epochs" if state.epoch >= config.train.epochs else None),
        "max_minutes": config.train.max_minutes or None,
        "parameters": int(model.count_params()),
        "device": run["device"],
        "target_channels": list(target_channels(config)),
        "training_fingerprint": config.training_fingerprint(),
        "commit": git_commit(),
        "command": run["command"],
        "validation_per_image": best.get("per_image", {}),
    }
    if run.get("init") is not None:
        init = Path(run["init"])
        scores["init"] = {
            "model": portable_path(init),
            "weights_sha256": file_sha256(init / WEIGHTS_FILE),
        }
    if config.train.with_stage1_test:
        scores["trained_on_stage1_test"] = True  # its stage1_test score is not a test
    write_json(model_dir / SCORES_FILE, scores)
    shown = f"{scores['validation_score']:.4f}" if best else "n/a"
    log.info("model written to %s (validation score %s)", model_dir, shown)
    return scores


def train_model(
    config: Config,
    images_dir: Path,
    model_dir: Path,
    resume: bool = False,
    device: str = "auto",
    command: str | None = None,
    tune: bool = True,
    devices: int = 1,
    init: Path | None = None,
    *,
    scoring: Scoring,
) -> dict[str, Any]:
    """Train ``config`` on the labelled images of ``images_dir`` into ``model_dir``.

    The steps: build the model (or resume a killed run), split the images, fit, write the
    model folder, then tune its post-processing on the validation images, and score each
    extra set's held-out images (``config.train.extra``). ``devices`` (> 1, or
    `pipeline.core.distribute.ALL`) trains data-parallel; ``init``, a finished model
    folder of the same network (`check_init`), gives the starting weights (fine-tuning).
    ``scoring`` holds the validation, tuning and extra-set scoring (evaluation's
    functions, which learning does not import). Returns the contents of ``scores.json``.
    """
    model_dir = process_model_dir(model_dir)
    with contextlib.ExitStack() as stack:
        if init is not None and not resume:
            check_init(config, Path(init))
        model, config, resume, device_description = _build_or_resume(
            config, model_dir, resume, device, devices, stack, None if resume else init
        )
        train_samples, val_samples = _split_samples(config, images_dir, model_dir, resume)
        record_training_nuclei(model_dir, train_samples)  # for predict --diameter
        log.info(
            "training on %d images, validating on %d (%s)",
            len(train_samples),
            len(val_samples),
            device_description,
        )
        state = _fit(model, config, (train_samples, val_samples), model_dir, resume, scoring)
    if state.stopped_by == "diverged":
        _refuse_diverged(model_dir, state, config)
    run = {"device": device_description, "command": command, "init": init}
    scores = _write_results(model, config, model_dir, state, len(val_samples), run)
    tuned = bool(val_samples) and tune
    if tuned:
        scoring.tune(model_dir, images_dir, device)
        scores = read_json(model_dir / SCORES_FILE)
    if config.train.extra or init is not None:
        write_data_card(model_dir)
    mark_complete(model_dir, tuned=tuned)  # from now on the folder is a model
    if config.train.extra:  # measured on the finished model, reported beside validation
        scores["extra_validation"] = scoring.extra_sets(model_dir, tuned=tuned, device=device)
        write_json(model_dir / SCORES_FILE, scores)
    return scores


def _refuse_diverged(model_dir: Path, state, config: Config) -> None:
    """Remove the diverged weights and checkpoint (nothing that looks like a model is
    left) and raise, saying what to change."""
    (model_dir / WEIGHTS_FILE).unlink(missing_ok=True)
    shutil.rmtree(model_dir / CHECKPOINT_DIR, ignore_errors=True)
    last = state.history[-1] if state.history else {}
    first = state.first_loss if state.first_loss is not None else float("nan")
    raise PipelineError(
        f"{model_dir}: the training diverged at epoch {last.get('epoch', '?')} (loss "
        f"{last.get('loss', float('nan')):.4g}, first epoch {first:.4g});"
        f" no model was written. Try a lower --learning-rate than {config.train.learning_rate:g}"
        " (a rerun into this folder starts over)"
    )
