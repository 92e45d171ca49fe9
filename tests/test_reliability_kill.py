"""Issue 15: ``./run.sh`` after ``kill -9`` at any point of the main job completes on the
next call, without a hand-made fix.

The main job runs in its own process on a small demo (a driver sets the demo's size, a
short training and the folders, then calls the real command line, ``--demo``); it is
killed with SIGKILL when a chosen point is reached (watched from the files it writes),
then run again to the end. Killed during prediction, the finished submission is
byte-identical to an uninterrupted run's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("keras")

ROOT = Path(__file__).resolve().parents[1]

DRIVER = """
import sys
from pathlib import Path

from pipeline import paths

work = Path(sys.argv[1])
paths.INPUT_DIR, paths.MODELS_DIR = work / "input", work / "models"
paths.SUBMISSIONS_DIR, paths.LEADERBOARD_CSV = work / "submissions", work / "leaderboard.csv"

from pipeline import cli, config  # noqa: E402
from pipeline.stages import main_job  # noqa: E402

main_job.DEMO_SET.update(n_train=12, n_test=40, size_range=(64, 96))
demo = config.PRESETS["demo"]


def small():
    made = demo()
    made.model.base_filters, made.model.depth = 4, 2
    made.train.epochs, made.train.steps_per_epoch, made.train.eval_every = 4, 3, 1
    made.train.crop_size, made.train.batch_size = 64, 4
    made.train.precision = "float32"
    return made


config.PRESETS["demo"] = small
sys.exit(cli.main(["--demo", *sys.argv[2:]]))
"""


def start(work: Path) -> subprocess.Popen:
    driver = work / "driver.py"
    driver.write_text(DRIVER)
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    environment["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return subprocess.Popen(
        [sys.executable, str(driver), str(work)],
        cwd=work,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_to_the_end(work: Path) -> tuple[str, str]:
    process = start(work)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    return out, err


def kill_when(work: Path, reached: Callable[[Path], bool]) -> bool:
    """Start the main job and SIGKILL it once ``reached(work)``; False if it ended first."""
    process = start(work)
    deadline = time.monotonic() + 600
    while process.poll() is None and time.monotonic() < deadline:
        if reached(work):
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.05)
    process.kill()
    process.communicate()
    return False


def model_dir(work: Path) -> Path:
    return work / "models" / "demo"


POINTS: dict[str, Callable[[Path], bool]] = {
    # while the images load and the network is built: config.json, no checkpoint yet
    "before the first checkpoint": lambda w: (model_dir(w) / "split.json").is_file(),
    # training under way: a checkpoint of epoch 1 or 2 of 4
    "during training": lambda w: (model_dir(w) / "checkpoint" / "state.json").is_file(),
    # training done, tuning its post-processing: scores.json written, not complete.json
    "during tuning": lambda w: (model_dir(w) / "scores.json").is_file(),
    # predicting the 40 test images: some rows in the partial submission
    "during prediction": lambda w: (w / "submissions" / "demo.csv.partial.json").is_file(),
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("uninterrupted")
    out, _ = run_to_the_end(work)
    assert "score" in out
    return work


@pytest.mark.parametrize("point", list(POINTS))
def test_the_main_job_completes_after_a_kill(point, uninterrupted, tmp_path):
    if point == "during prediction":
        # a finished model, as the uninterrupted run left it: only prediction is killed
        import shutil

        shutil.copytree(uninterrupted / "models", tmp_path / "models")
        shutil.copytree(uninterrupted / "input", tmp_path / "input")
    if not kill_when(tmp_path, POINTS[point]):
        pytest.fail(f"the run ended before it was killed {point}")
    out, err = run_to_the_end(tmp_path)
    assert "score" in out and "error:" not in err, err
    assert (model_dir(tmp_path) / "complete.json").is_file()
    leftovers = [p.name for p in (tmp_path / "submissions").iterdir() if ".tmp" in p.name]
    assert leftovers == []
    assert not (tmp_path / "submissions" / "demo.csv.partial").exists()
    if point == "during prediction":
        expected = (uninterrupted / "submissions" / "demo.csv").read_bytes()
        assert (tmp_path / "submissions" / "demo.csv").read_bytes() == expected
        assert "resuming after" in err
