"""Issue 15, kind 2: no dead end. A folder left by a killed or failed run is resumed from
what it has or started over, with a message saying which; never "nothing to resume" and
"folder exists" at once. Through the real command line."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import TINY_FLAGS, one_error_line, run_cli

pytest.importorskip("keras")


def train_argv(tiny_demo, out: Path, *flags: str) -> list[str]:
    argv = ["train", "--preset", "demo", *TINY_FLAGS, "--epochs", "2", *flags]
    return [*argv, "--images", str(tiny_demo.train_dir), "--out", str(out)]


@pytest.fixture
def killed_before_first_checkpoint(tiny_model: Path, tmp_path: Path) -> Path:
    """What a ``train`` killed while loading its images leaves: config.json and split.json."""
    folder = tmp_path / "killed"
    folder.mkdir()
    for name in ("config.json", "split.json"):
        shutil.copy(tiny_model / name, folder / name)
    return folder


@pytest.mark.parametrize("resume", [True, False], ids=["--resume", "plain rerun"])
def test_a_run_killed_before_its_first_checkpoint_is_started_over(
    resume, killed_before_first_checkpoint, tiny_demo, capsys
):
    folder = killed_before_first_checkpoint
    argv = ["train", "--out", str(folder), "--resume"] if resume else train_argv(tiny_demo, folder)
    status, _, err = run_cli(argv, capsys)
    assert status == 0, err
    assert f"{folder}: a training stopped before its first checkpoint: starting over" in err
    assert (folder / "complete.json").is_file()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--epochs", "0", "argument --epochs: expected a whole number >= 1, got '0'"),
        ("--batch-size", "0", "argument --batch-size: expected a whole number >= 1, got '0'"),
        (
            "--crop-size",
            "7",
            "argument --crop-size: expected a whole number in [16, 2048], got '7'",
        ),
    ],
)
def test_settings_that_crashed_a_training_are_refused_before_anything_is_written(
    flag, value, message, tiny_demo, tmp_path, capsys
):
    out = tmp_path / "model"
    status, _, err = run_cli(train_argv(tiny_demo, out, flag, value), capsys)
    assert status == 2
    assert message in one_error_line(err)
    assert not out.exists()


def test_a_kill_during_tuning_leaves_no_model_and_is_finished_by_resume(
    tiny_model, tiny_demo, tmp_path, capsys
):
    """Weights and scores.json, no thresholds.json nor complete.json: predict refuses the
    folder, saying how to finish it, and ``--resume`` finishes it (tunes, marks it)."""
    folder = Path(shutil.copytree(tiny_model, tmp_path / "tuning"))
    (folder / "thresholds.json").unlink()
    (folder / "complete.json").unlink()
    out = tmp_path / "sub.csv"
    argv = ["predict", "--model", str(folder), "--images", str(tiny_demo.test_dir)]
    status, _, err = run_cli([*argv, "--out", str(out)], capsys)
    assert status == 2
    line = one_error_line(err)
    assert "not a finished model (complete.json missing" in line
    assert f"./run.sh train --resume --out {folder} finishes it" in line
    status, _, err = run_cli(["train", "--out", str(folder), "--resume"], capsys)
    assert status == 0, err
    assert (folder / "thresholds.json").is_file() and (folder / "complete.json").is_file()
    # the epochs were all done: nothing was trained again, the weights are the same
    assert json.loads((folder / "scores.json").read_text())["epochs_run"] == 2
    status, _, err = run_cli([*argv, "--out", str(out)], capsys)
    assert status == 0, err


def test_a_finished_or_foreign_folder_is_refused_and_an_unfinished_one_named(
    tiny_model, tiny_demo, tmp_path, capsys
):
    status, _, err = run_cli(train_argv(tiny_demo, tiny_model), capsys)
    assert status == 2
    assert "holds a finished model; choose another --out" in one_error_line(err)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"\xff\xd8\xff")
    status, _, err = run_cli(train_argv(tiny_demo, foreign), capsys)
    assert status == 2
    assert "is not a model folder; choose another --out" in one_error_line(err)
    assert (foreign / "holiday.jpg").is_file()
    status, _, err = run_cli(["train", "--out", str(foreign), "--resume"], capsys)
    assert status == 2
    assert "nothing to resume (no training was started there)" in one_error_line(err)
    shipped = Path(shutil.copytree(tiny_model, tmp_path / "shipped"))
    shutil.rmtree(shipped / "checkpoint")  # as models/default is shipped
    status, _, err = run_cli(["train", "--out", str(shipped), "--resume"], capsys)
    assert status == 2
    assert "a finished model without its checkpoint/" in one_error_line(err)
    assert (shipped / "complete.json").is_file()  # still a model
    unfinished = Path(shutil.copytree(tiny_model, tmp_path / "unfinished"))
    (unfinished / "complete.json").unlink()
    status, _, err = run_cli(train_argv(tiny_demo, unfinished), capsys)
    assert status == 2
    assert "holds an unfinished training; --resume continues it" in one_error_line(err)


def test_leftovers_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    from pipeline.fileio import atomic_dir, atomic_write_text

    dead = 2**22 + 12345  # above Linux's default pid_max: no such process
    stale_file = tmp_path / f".out.csv.{dead}.x1y2.tmp"
    stale_file.write_text("")  # the 0-byte CSV a kill left
    stale_dir = tmp_path / f".stage1_train.{dead}.abcd.tmp"
    (stale_dir / "half").mkdir(parents=True)
    (stale_dir / "half" / "image.png").write_bytes(b"\x89PNG" + bytes(1000))
    alive = tmp_path / f".out.csv.{os.getpid()}.zz.tmp"  # another run writing now
    alive.write_text("")
    atomic_write_text(tmp_path / "out.csv", "ImageId,EncodedPixels\n")
    assert not stale_file.exists() and alive.exists()
    with atomic_dir(tmp_path / "stage1_train") as folder:
        (folder / "a.txt").write_text("a")
    assert not stale_dir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["out.csv", "stage1_train", alive.name]
    )


def test_a_folder_swap_killed_between_its_renames_gets_its_old_folder_back(tmp_path):
    from pipeline.fileio import atomic_dir

    target = tmp_path / "stage1_test"
    old = tmp_path / ".stage1_test.old"
    old.mkdir()
    (old / "kept.txt").write_text("old data")
    with atomic_dir(target) as folder:
        (folder / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage1_test"]
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]


def test_the_main_job_refuses_resume_when_nothing_was_interrupted(tmp_path, monkeypatch):
    from pipeline.config import preset
    from pipeline.errors import PipelineError
    from pipeline.stages import main_job

    monkeypatch.setattr(main_job, "DEMO_SET", {"n_train": 4, "n_test": 2})
    with pytest.raises(PipelineError, match="--resume: nothing was interrupted"):
        main_job.run_main_job(
            preset("demo"),
            demo=True,
            input_dir=tmp_path / "input",
            models_dir=tmp_path / "models",
            submissions_dir=tmp_path / "submissions",
            leaderboard_csv=tmp_path / "leaderboard.csv",
            resume=True,
        )
    assert not (tmp_path / "models").exists()


def _weights(path: Path) -> dict:
    import h5py

    found: dict = {}
    with h5py.File(path) as handle:
        handle.visititems(
            lambda name, item: (
                found.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None
            )
        )
    return found


def test_a_resumed_training_gives_the_weights_of_an_uninterrupted_one(
    tiny_demo, tmp_path, capsys, monkeypatch
):
    """Interrupted (Ctrl-C) after its first epoch's checkpoint, then resumed: the same
    losses and exactly the same weights as a run that was never stopped, dropout
    included (its random state is in the checkpoint)."""
    import numpy as np

    from pipeline.learning import callbacks

    flags = ["--epochs", "3", "--dropout", "0.1", "--no-tune"]
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert run_cli(train_argv(tiny_demo, whole, *flags), capsys)[0] == 0
    original = callbacks.ResumeCheckpoint.on_epoch_end

    def interrupted(self, epoch, logs=None):
        original(self, epoch, logs)
        raise KeyboardInterrupt

    monkeypatch.setattr(callbacks.ResumeCheckpoint, "on_epoch_end", interrupted)
    assert run_cli(train_argv(tiny_demo, stopped, *flags), capsys)[0] == 130
    monkeypatch.setattr(callbacks.ResumeCheckpoint, "on_epoch_end", original)
    status, _, err = run_cli(["train", "--out", str(stopped), "--resume", "--no-tune"], capsys)
    assert status == 0, err
    assert "resuming after epoch 1" in err
    history = [(p / "history.csv").read_text() for p in (whole, stopped)]
    assert history[0] == history[1]
    expected, resumed = _weights(whole / "model.weights.h5"), _weights(stopped / "model.weights.h5")
    assert expected.keys() == resumed.keys()
    for name, values in expected.items():
        np.testing.assert_array_equal(values, resumed[name], err_msg=name)
