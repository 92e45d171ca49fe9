"""Choosing the compute device and numeric precision, for any Keras backend.

``select_device`` must run before Keras is imported: hiding the GPUs from TensorFlow
(``--device cpu``) only works through the environment. It sets process-wide state, so it is
called once, at an entry point (a stage's ``main``, a Dask worker's first chunk); library
functions take the chosen device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

from pipeline.config import PRECISIONS
from pipeline.core import distribute
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "gpu")


def select_device(device: str, replicas: int = 1) -> None:
    """Apply ``--device`` before Keras loads: ``cpu`` hides every GPU. ``replicas`` > 1
    (``train --devices``) makes a CPU without GPUs show that many virtual devices
    (`pipeline.core.distribute`)."""
    if device not in DEVICES:
        raise PipelineError(f"unknown device {device!r}; choose from {DEVICES}")
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    distribute.prepare_host_devices(replicas)
    # Keras loads TensorFlow for its data adapters on the other backends too, when present.
    have_tensorflow = import_tensorflow_quietly()
    if have_tensorflow and os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
        distribute.split_tensorflow_cpu(replicas)


# TensorFlow's C++ start-up lines, which TF_CPP_MIN_LOG_LEVEL no longer hides: they are
# written before its logging is set up.
STARTUP_NOISE = (
    re.compile(r"WARNING: All log messages before absl::InitializeLog\(\) is called"),
    re.compile(r"I\d{4} [\d:. ]+\d+ port\.cc:\d+\] oneDNN custom operations are on"),
)


def import_tensorflow_quietly() -> bool:
    """Import TensorFlow with its C++ start-up lines (`STARTUP_NOISE`) left out of the
    terminal; anything else it writes while loading (an error) still shows. Returns
    whether TensorFlow is installed (a machine with JAX alone has none).

    Its standard error is caught in a file while it loads, then passed on without them
    (so a process killed while TensorFlow loads, by a CPU it cannot run on, loses that
    output; `pipeline.core.device` is then the place to look, with ``--verbose``).
    """
    if "tensorflow" in sys.modules:
        return True
    if importlib.util.find_spec("tensorflow") is None:
        return False
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as caught:
            os.dup2(caught.fileno(), 2)
            try:
                # Lazy: TensorFlow loads here, once select_device has set the environment
                import tensorflow  # noqa: F401
            finally:
                os.dup2(saved, 2)
                caught.seek(0)
                lines = caught.read().decode("utf-8", "replace").splitlines(keepends=True)
                sys.stderr.write(
                    "".join(line for line in lines if not any(p.match(line) for p in STARTUP_NOISE))
                )
    finally:
        os.close(saved)
    return True


def gpu_available() -> bool:
    """Whether the active Keras backend sees a GPU."""
    # Lazy: Keras loads only after select_device, in the stage's main()
    import keras

    backend = keras.config.backend()
    try:
        if backend == "tensorflow":
            # Lazy: the tensorflow backend's own library, loaded after select_device
            import tensorflow as tf

            return bool(tf.config.list_physical_devices("GPU"))
        if backend == "jax":
            # Lazy: the jax backend's own library, loaded after select_device
            import jax

            return any(d.platform == "gpu" for d in jax.devices())
        if backend == "torch":
            # Lazy: the torch backend's own library, loaded after select_device
            import torch

            return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - a backend that cannot list devices has no GPU for us
        return False
    return False


@dataclasses.dataclass(frozen=True)
class DeviceChoice:
    """A checked device and precision: a line saying which, and Keras' dtype policy."""

    description: str
    policy: str  # "float32" or "mixed_bfloat16"


def check_device(device: str, precision: str) -> DeviceChoice:
    """Check the device and the precision; log and return them (`DeviceChoice`). Nothing
    process-wide is set: a network takes its precision from `precision_scope`.

    ``precision``: "float32", "bfloat16" (mixed: bfloat16 compute, float32 weights) or
    "auto" (mixed precision on a GPU, float32 on a CPU).
    """
    if precision not in PRECISIONS:
        raise PipelineError(f"unknown precision {precision!r}; choose from {PRECISIONS}")
    # Lazy: Keras loads only after select_device, in the stage's main()
    import keras

    on_gpu = gpu_available()
    if device == "gpu" and not on_gpu:
        raise PipelineError(
            f"--device gpu: the Keras backend {keras.config.backend()!r} sees no GPU "
            "(use --device auto or cpu)"
        )
    if precision == "auto":
        precision = "bfloat16" if on_gpu else "float32"
    where = "GPU" if on_gpu and device != "cpu" else "CPU"
    description = f"{where}, {precision}, Keras backend {keras.config.backend()}"
    log.info("device: %s", description)
    return DeviceChoice(description, "mixed_bfloat16" if precision == "bfloat16" else "float32")


@contextlib.contextmanager
def precision_scope(choice: DeviceChoice) -> Iterator[None]:
    """Keras' dtype policy ``choice.policy`` for the layers built (or loaded) inside; each
    layer keeps the policy it was built with, and the process-wide one is restored after,
    so that two networks of one process can differ in precision."""
    # Lazy: Keras loads only after select_device, in the stage's main()
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(choice.policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
