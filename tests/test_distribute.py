"""``train --devices N``: data-parallel training on 2 virtual CPU devices, on both Keras
backends. Each case runs in its own process: the backend and the number of devices are
fixed when the backend loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_FLAGS, one_error_line, run_cli

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ["tensorflow", "jax"]

pytestmark = pytest.mark.slow

# One step of the project's U-Net (batch normalisation, no dropout) with the same global
# batch of 4, on 1 device and on 2; prints the largest weight difference and weight.
ONE_STEP = """
import json
import numpy as np
from pipeline.core import device, distribute
device.select_device("cpu", 2)
import keras
from pipeline.config import preset
from pipeline.core.models import build_model
config = preset("demo").model
config.base_filters, config.depth, config.dropout = 4, 2, 0.0
rng = np.random.default_rng(0)
x = rng.random((4, 32, 32, 3), dtype=np.float32)
y = (rng.random((4, 32, 32, 1)) > 0.5).astype(np.float32)

def one_step(devices):
    keras.utils.set_random_seed(1)
    with distribute.training_scope(devices):
        model = build_model(config, out_channels=1)
        distribute.synchronise_batch_norm(model, devices)
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
        before = [np.array(w) for w in model.get_weights()]
        model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    after = [np.array(w) for w in model.get_weights()]
    return before, after

devices = distribute.choose_devices(2, 4)
(start_1, one), (start_2, two) = one_step(devices[:1]), one_step(devices)
print(json.dumps({
    "devices": devices,
    "same_start": all(np.array_equal(a, b) for a, b in zip(start_1, start_2)),
    "moved": max(float(np.abs(a - b).max()) for a, b in zip(start_1, one)),
    "difference": max(float(np.abs(a - b).max()) for a, b in zip(one, two)),
}))
"""


def _environment(backend: str) -> dict[str, str]:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    environment.update(KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
    return environment


def _run(argv: list[str], backend: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *argv], cwd=cwd, env=_environment(backend), capture_output=True,
        text=True, timeout=600, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_step_on_two_devices_gives_the_weights_of_one_device(backend, tmp_path):
    result = _run(["-c", ONE_STEP], backend, tmp_path)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(found["devices"]) == 2
    assert found["same_start"]
    assert found["moved"] > 1e-3  # the step changed the weights...
    assert found["difference"] < 1e-4  # ...and the same way on 2 devices as on 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_demo_training_on_two_devices_trains_tunes_and_predicts(backend, tiny_demo, tmp_path):
    model_dir, out = tmp_path / "model", tmp_path / "out.csv"
    train = ["-m", "pipeline", "train", "--preset", "demo", *TINY_FLAGS, "--epochs", "2",
             "--images", str(tiny_demo.train_dir), "--out", str(model_dir),
             "--devices", "2"]  # fmt: skip
    result = _run(train, backend, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "data-parallel training on 2 devices" in result.stderr
    scores = json.loads((model_dir / "scores.json").read_text())
    assert scores["device"].endswith(", data-parallel on 2 devices")
    assert (model_dir / "thresholds.json").is_file() and (model_dir / "complete.json").is_file()
    predict = ["-m", "pipeline", "predict", "--model", str(model_dir),
               "--images", str(tiny_demo.test_dir), "--out", str(out)]  # fmt: skip
    result = _run(predict, backend, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "valid submission" in result.stderr


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        ("0", "--devices 0: give a number of devices (1 or more) or all"),
        ("two", "--devices two: give a number of devices (1 or more) or all"),
        ("3", "--devices 3: the batch of 4 does not split evenly over 3 devices; choose a "
              "--batch-size that is a multiple of 3"),
    ],
)  # fmt: skip
def test_impossible_devices_are_one_error_line(devices, message, tiny_demo, tmp_path, capsys):
    argv = ["train", "--preset", "demo", *TINY_FLAGS, "--images", str(tiny_demo.train_dir),
            "--out", str(tmp_path / "model"), "--devices", devices]  # fmt: skip
    status, _, err = run_cli(argv, capsys)
    assert status == 2
    assert one_error_line(err) == f"error: {message}"


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _weights(path: Path) -> dict[str, bytes]:
    import h5py

    found: dict[str, bytes] = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(
            lambda name, item: found.__setitem__(name, item[()].tobytes())
            if isinstance(item, h5py.Dataset) else None
        )  # fmt: skip
    return found


def test_two_processes_train_one_model_together(tiny_demo, tmp_path):
    """Multi-host training as docs/scaling.md gives it, with both hosts on this machine: two
    JAX processes of one CPU device each join on a coordinator address, each feeds its
    half of every global batch; both end with the weights of one process training on 2
    devices, process 1 in its own ``-process1`` folder beside the shared ``--out``."""
    common = ["-m", "pipeline", "train", "--preset", "demo", *TINY_FLAGS, "--epochs", "1",
              "--images", str(tiny_demo.train_dir), "--no-tune"]  # fmt: skip
    alone = _run([*common, "--devices", "2", "--out", str(tmp_path / "alone")], "jax", tmp_path)
    assert alone.returncode == 0, alone.stderr
    port, processes = _free_port(), []
    for index in range(2):
        environment = _environment("jax")
        environment.update(
            KERAS_DISTRIBUTION_JOB_ADDRESSES=f"127.0.0.1:{port}",
            KERAS_DISTRIBUTION_NUM_PROCESSES="2",
            KERAS_DISTRIBUTION_PROCESS_ID=str(index),
        )
        argv = [sys.executable, *common, "--devices", "all", "--out", str(tmp_path / "model")]
        processes.append(
            subprocess.Popen(
                argv,
                cwd=tmp_path,
                env=environment,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )  # fmt: skip
        )
    errors = [process.communicate(timeout=600)[1] for process in processes]
    for process, err in zip(processes, errors, strict=True):
        assert process.returncode == 0, err
    assert "process 1 of 2 joined" in errors[1]
    assert "data-parallel training on 2 devices" in errors[0]
    first, second, one = (
        _weights(tmp_path / name / "model.weights.h5")
        for name in ("model", "model-process1", "alone")
    )
    assert first.keys() == second.keys() == one.keys() and len(first) > 10
    assert first == second
    import numpy as np

    for name, data in one.items():
        a, b = (np.frombuffer(d, dtype=np.float32) for d in (data, first[name]))
        assert np.allclose(a, b, atol=1e-4), name
