"""Issue 23, item 1: two runs that write one output exclude each other.

Real processes: the first run is stopped (SIGSTOP) as soon as it holds its output's lock,
the second one runs meanwhile and must refuse with one line naming the first one's
process; then the first goes on and completes. The output is valid and no ``.partial``
or lock is left behind. A run killed while holding the lock leaves its lock file, and
the next run takes it over.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_FLAGS, one_error_line, run_cli

from pipeline.locks import lock_path
from pipeline.paths import SHARED_DATA_DIR

pytest.importorskip("keras")

ROOT = Path(__file__).resolve().parents[1]
COMMAND = [sys.executable, "-m", "pipeline"]


def start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [*COMMAND, *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_lock(process: subprocess.Popen, lock: Path, timeout: float = 180) -> None:
    """Wait until ``process`` holds ``lock`` (its process id is in it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lock.is_file() and lock.read_text().strip() == str(process.pid):
            return
        if process.poll() is not None:
            pytest.fail(f"the first run ended before taking its lock: {process.communicate()}")
        time.sleep(0.02)
    process.kill()
    pytest.fail(f"no lock {lock} within {timeout} s")


def run_beside_a_stopped_first(first: list[str], second: list[str], lock: Path) -> str:
    """Run ``first`` until it holds ``lock``, stop it, run ``second`` to its end, let the
    first finish (it must succeed); return the second's standard error."""
    process = start(first)
    try:
        wait_for_lock(process, lock)
        os.kill(process.pid, signal.SIGSTOP)
        try:
            result = subprocess.run(
                [*COMMAND, *second], cwd=ROOT, capture_output=True, text=True, timeout=300
            )
        finally:
            os.kill(process.pid, signal.SIGCONT)
        _, first_err = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, first_err
    assert result.returncode == 2, result.stderr
    return result.stderr


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".lock", ".partial")))


def assert_valid_submission(out: Path, images: Path, capsys) -> None:
    status, text, _ = run_cli(["check-submission", str(out), "--images", str(images)], capsys)
    assert status == 0, text
    assert f"{out}: valid, " in text


@pytest.mark.slow
@pytest.mark.parametrize("resume", [["--resume"], []], ids=["resume", "plain"])
def test_two_predictions_into_one_out_exclude_each_other(
    tiny_model, tiny_demo, tmp_path, capsys, resume
):
    out = tmp_path / "sub.csv"
    argv = ["predict", "--model", str(tiny_model), "--images", str(tiny_demo.test_dir)]
    argv += ["--out", str(out), *resume]
    err = run_beside_a_stopped_first(argv, argv, lock_path(out))
    line = one_error_line(err)
    assert f"error: {out}: another run is writing it (process " in line
    assert f", lock {lock_path(out)}); wait for it to end, or choose another --out" in line
    assert_valid_submission(out, tiny_demo.test_dir, capsys)
    blocks = [image_id for image_id, _ in itertools.groupby(_ids(out))]
    assert blocks == ["demo-test-000", "demo-test-001", "demo-test-002"]  # each image once
    assert leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub.csv", "sub.json"]


def _ids(out: Path) -> list[str]:
    return [line.split(",")[0] for line in out.read_text().splitlines()[1:]]


@pytest.mark.slow
def test_a_killed_predictions_lock_is_taken_over(tiny_model, tiny_demo, tmp_path, capsys):
    out = tmp_path / "sub.csv"
    argv = ["predict", "--model", str(tiny_model), "--images", str(tiny_demo.test_dir)]
    argv += ["--out", str(out), "--resume"]
    process = start(argv)
    wait_for_lock(process, lock_path(out))
    process.kill()
    process.communicate()
    assert lock_path(out).read_text() == f"{process.pid}\n"  # left by the killed run
    status, _, err = run_cli(argv, capsys)
    assert status == 0, err
    assert_valid_submission(out, tiny_demo.test_dir, capsys)
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_two_trainings_into_one_out_exclude_each_other(tiny_demo, tmp_path, capsys):
    out = tmp_path / "model"
    argv = ["train", "--preset", "demo", *TINY_FLAGS, "--epochs", "1", "--no-tune"]
    argv += ["--images", str(tiny_demo.train_dir), "--out", str(out)]
    err = run_beside_a_stopped_first(argv, argv, lock_path(out))
    assert f"error: {out}: another run is writing it (process " in one_error_line(err)
    assert (out / "complete.json").is_file()
    assert leftovers(tmp_path) == []
    sub = tmp_path / "sub.csv"
    predict = ["predict", "--model", str(out), "--images", str(tiny_demo.test_dir)]
    assert run_cli([*predict, "--out", str(sub)], capsys)[0] == 0


@pytest.mark.slow
def test_two_tunings_of_one_model_exclude_each_other(model_copy, tiny_demo, tmp_path):
    argv = ["tune", "--model", str(model_copy), "--images", str(tiny_demo.train_dir)]
    err = run_beside_a_stopped_first(argv, argv, lock_path(model_copy))
    line = one_error_line(err)
    assert f"error: {model_copy}: another run is writing it (process " in line
    assert "choose another --model" in line
    assert (model_copy / "thresholds.json").is_file()
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_two_downloads_into_one_input_exclude_each_other(tmp_path, capsys):
    source = SHARED_DATA_DIR / "stage1_test.zip"
    if not source.is_file():
        pytest.skip(f"real data absent: {source} not found")
    input_dir = tmp_path / "input"
    argv = ["download", "--from", str(source), "--input", str(input_dir)]
    err = run_beside_a_stopped_first(argv, argv, lock_path(input_dir))
    assert f"error: {input_dir}: another run is writing it (process " in one_error_line(err)
    assert len([p for p in (input_dir / "stage1_test").iterdir() if p.is_dir()]) == 65
    assert leftovers(tmp_path) == []
