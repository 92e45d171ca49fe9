"""Data-parallel training on several devices (``train --devices N`` or ``all``).

Every device holds a copy of the weights; each step's global batch (``--batch-size``) is
split evenly across them and their gradients are averaged, so that a step on N devices
computes what a step on one device computes on the same global batch. Batch
normalisation uses the statistics of the whole global batch on both backends, so the
equality holds for the U-Net without dropout (a test checks it to float tolerance); with
dropout, the random masks differ from one device's.

- JAX backend: Keras 3's distribution API (`keras.distribution.DataParallel`), which
  shards each batch over a one-axis device mesh.
- TensorFlow backend: `tf.distribute.MirroredStrategy`, with the batch normalisation
  layers ``synchronized`` across the replicas.

The devices are the GPUs when the backend sees any, else the CPU: on a CPU, N > 1 splits
it into N virtual devices (JAX: ``--xla_force_host_platform_device_count``, TensorFlow:
logical devices). That is how the tests run it here; it is no faster than one device,
since the N devices share the same cores.

The learning-rate rule: the learning rate belongs to the global batch. ``--devices N``
with the same ``--batch-size`` trains the same model, N times wider per step on N
devices; raising ``--batch-size`` k times to fill the devices calls for about k times
the learning rate (the linear scaling rule), with the warm-up the cosine schedule lacks
for very large batches.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

ALL = 0  # --devices all


def parse_devices(text: str) -> int:
    """``--devices``: a number of devices, or ``all`` (`ALL`).

    >>> parse_devices("2"), parse_devices("all")
    (2, 0)
    >>> parse_devices("0")
    Traceback (most recent call last):
    ...
    pipeline.errors.PipelineError: --devices 0: give a number of devices (1 or more) or all
    """
    if text == "all":
        return ALL
    if not text.isdigit() or int(text) < 1:
        raise PipelineError(f"--devices {text}: give a number of devices (1 or more) or all")
    return int(text)


def _backend() -> str:
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def prepare_host_devices(count: int) -> None:
    """Before the backend loads: let a CPU-only JAX show ``count`` virtual CPU devices
    (the flag only touches the host platform; GPUs are unaffected)."""
    if count > 1 and _backend() == "jax":
        flags = re.sub(
            r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", "")
        )
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def split_tensorflow_cpu(count: int) -> None:
    """After TensorFlow loads and before it runs anything: ``count`` logical CPU devices,
    when it sees no GPU (a GPU machine replicates over its GPUs instead)."""
    # Lazy: TensorFlow loads in select_device, after the environment is set
    import tensorflow as tf

    if count <= 1 or tf.config.list_physical_devices("GPU"):
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError:  # TensorFlow already started: the devices it has stay
        log.debug("TensorFlow already initialised; its CPU devices stay as they are")


#: The variables that make a training one process of several (`join_processes`), read by
#: `keras.distribution.initialize`.
PROCESS_VARIABLES = (
    "KERAS_DISTRIBUTION_JOB_ADDRESSES",
    "KERAS_DISTRIBUTION_NUM_PROCESSES",
    "KERAS_DISTRIBUTION_PROCESS_ID",
)


def _declared_processes() -> tuple[int, int]:
    """``(process id, number of processes)`` as the `PROCESS_VARIABLES` declare them
    (``(0, 1)`` when they do not)."""
    values = []
    for name, default in (
        ("KERAS_DISTRIBUTION_PROCESS_ID", "0"),
        ("KERAS_DISTRIBUTION_NUM_PROCESSES", "1"),
    ):
        text = os.environ.get(name) or default
        if not text.isdigit():
            raise PipelineError(f"{name}={text}: not a number")
        values.append(int(text))
    return values[0], values[1]


def join_processes() -> tuple[int, int]:
    """``(this process's index, the number of processes)``: with
    ``KERAS_DISTRIBUTION_NUM_PROCESSES`` above 1 (and the two other `PROCESS_VARIABLES`),
    this process joins the others first (`keras.distribution.initialize`, which calls
    ``jax.distributed.initialize``), so that the devices are those of every process.
    JAX only. Must come before the backend lists its devices."""
    _, count = _declared_processes()
    if count <= 1:
        return 0, 1
    if _backend() != "jax":
        raise PipelineError(
            f"KERAS_DISTRIBUTION_NUM_PROCESSES={count}: training over several processes "
            "needs KERAS_BACKEND=jax"
        )
    missing = [name for name in PROCESS_VARIABLES if not os.environ.get(name)]
    if missing:
        raise PipelineError(f"training over {count} processes: set {', '.join(missing)} too")
    # Lazy: the jax backend only; JAX and Keras load after select_device
    import jax
    import keras

    keras.distribution.initialize()
    log.info("process %d of %d joined", jax.process_index(), jax.process_count())
    return jax.process_index(), jax.process_count()


def process_share() -> tuple[int, int]:
    """``(this process's index, the number of processes)`` of the training (``(0, 1)``
    unless `join_processes` joined several)."""
    if _backend() != "jax":
        return 0, 1
    # Lazy: the jax backend's own library, loaded after select_device
    import jax

    return jax.process_index(), jax.process_count()


def agree(decision: bool) -> bool:
    """The first process's ``decision``, in every process of a training over several
    (their own would differ where it rests on a clock: one stopping while the others wait
    for it in the next step would hang them); ``decision`` itself in a single process."""
    if process_share()[1] <= 1:
        return decision
    # Lazy: the jax backend's own library, loaded after select_device
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.array(decision)))


def process_model_dir(model_dir):
    """Where this process writes its model: ``model_dir`` for the first process (or a
    single one), ``<model_dir>-process<K>`` for process K of several, so that processes
    sharing a disk never write the same folder (each ends with the same weights)."""
    process, count = _declared_processes()
    if count <= 1 or process == 0:
        return Path(model_dir)
    return Path(model_dir).with_name(f"{Path(model_dir).name}-process{process}")


def local_batches(batches: Iterator, process: int, processes: int) -> Iterator:
    """This process's share of each global batch: its contiguous 1/``processes`` of the
    rows (the processes' devices come in process order on the mesh, and the backend puts
    the shares together into the global batch). Every leaf of a batch (inputs, targets
    of each output) is cut the same way.

    >>> import numpy as np
    >>> batch = (np.arange(4), {"a": np.arange(4) * 10})
    >>> [(x.tolist(), y["a"].tolist()) for x, y in local_batches(iter([batch]), 1, 2)]
    [([2, 3], [20, 30])]
    """
    if processes <= 1:
        yield from batches
        return

    def share(leaf):
        if isinstance(leaf, dict):
            return {key: share(value) for key, value in leaf.items()}
        if isinstance(leaf, (list, tuple)):
            return type(leaf)(share(value) for value in leaf)
        size = len(leaf) // processes
        return leaf[process * size : (process + 1) * size]

    for batch in batches:
        yield share(batch)


def available_devices() -> list[str]:
    """The devices data-parallel training can use: the GPUs, else the CPU devices."""
    if _backend() == "jax":
        # Lazy: the jax backend's own library, loaded after select_device
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        return [f"{d.platform}:{d.id}" for d in (gpus or jax.devices("cpu"))]
    if _backend() == "tensorflow":
        # Lazy: the tensorflow backend's own library, loaded after select_device
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        return [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    return ["default"]


def choose_devices(requested: int, batch_size: int) -> list[str]:
    """The devices for ``--devices requested`` (of every process, after `join_processes`):
    refused when there are fewer, or when the global batch does not split evenly across
    them."""
    if requested != ALL and batch_size % requested:
        _refuse_uneven(requested, batch_size)
    devices = available_devices()
    processes = process_share()[1]
    if processes > 1 and requested not in (ALL, len(devices)):
        raise PipelineError(
            f"--devices {requested}: a training over {processes} processes uses every "
            f"device of every process ({len(devices)}): give --devices all"
        )
    if requested == ALL:
        requested = len(devices)
    if requested > 1 and _backend() not in ("jax", "tensorflow"):
        raise PipelineError(
            f"--devices {requested}: data-parallel training needs the jax or tensorflow "
            f"Keras backend, not {_backend()}"
        )
    if requested > len(devices):
        raise PipelineError(
            f"--devices {requested}: the {_backend()} backend sees {len(devices)} device(s) "
            f"here ({', '.join(devices)})"
        )
    if batch_size % requested:
        _refuse_uneven(requested, batch_size)
    return devices[:requested]


def _refuse_uneven(requested: int, batch_size: int) -> None:
    raise PipelineError(
        f"--devices {requested}: the batch of {batch_size} does not split evenly over "
        f"{requested} devices; choose a --batch-size that is a multiple of {requested}"
    )


@contextlib.contextmanager
def training_scope(devices: list[str]) -> Iterator[None]:
    """Build, compile and fit inside this to train on ``devices`` (nothing for one)."""
    if len(devices) <= 1:
        yield
        return
    log.info("data-parallel training on %d devices: %s", len(devices), ", ".join(devices))
    if _backend() == "jax":
        # Lazy: Keras loads only after select_device, in the stage's main()
        import keras

        distribution = keras.distribution.DataParallel(
            devices=[d for d in keras.distribution.list_devices() if _jax_name(d) in devices],
            auto_shard_dataset=False,  # each process feeds its own share (`local_batches`)
        )
        with distribution.scope():
            yield
        return
    # Lazy: the tensorflow backend's own library, loaded after select_device
    import tensorflow as tf

    logging.getLogger("tensorflow").setLevel(logging.WARNING)  # a line per reduction
    strategy = tf.distribute.MirroredStrategy(
        devices, cross_device_ops=tf.distribute.ReductionToOneDevice()
    )
    with strategy.scope():
        yield


def distributing() -> bool:
    """Whether a data-parallel training is running here (inside `training_scope` with
    several devices): the network's batches are then split over its devices."""
    if _backend() == "jax":
        # Lazy: Keras loads only after select_device, in the stage's main()
        import keras

        return keras.distribution.distribution() is not None
    if _backend() == "tensorflow":
        # Lazy: the tensorflow backend's own library, loaded after select_device
        import tensorflow as tf

        return tf.distribute.has_strategy()
    return False


def _jax_name(keras_device: str) -> str:
    """Keras' name of a JAX device (``cpu:0``, ``gpu:1``) as `available_devices` gives it.

    >>> _jax_name("cpu:1"), _jax_name("CUDA:0")
    ('cpu:1', 'gpu:0')
    """
    platform, index = keras_device.lower().split(":")
    return f"{'gpu' if platform in ('cuda', 'gpu', 'rocm') else platform}:{index}"


def synchronise_batch_norm(model, devices: list[str]) -> None:
    """On TensorFlow over several devices, batch normalisation takes the statistics of the
    whole global batch (each replica's own half would differ from one device's)."""
    if len(devices) <= 1 or _backend() != "tensorflow":
        return
    # Lazy: Keras loads only after select_device, in the stage's main()
    import keras

    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
