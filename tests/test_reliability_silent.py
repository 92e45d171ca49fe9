"""Issue 15, kind 1: no silent wrong result.

Each case that once ended in exit status 0 with a garbage submission (or a model that
looked finished) now ends in exit status 2 and one ``error:`` line naming the source and
the value, through the real command line.
"""

from __future__ import annotations

import json

import pytest
from conftest import TINY_FLAGS, one_error_line, predict_argv, run_cli

pytest.importorskip("keras")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--threshold", "7.5"], "argument --threshold: 7.5 is not in [0, 1]"),
        (["--threshold", "-1"], "argument --threshold: -1 is not in [0, 1]"),
        (["--min-size", "-3"], "argument --min-size: expected a whole number >= 0, got '-3'"),
    ],
)
def test_out_of_range_prediction_flags_are_refused(
    flags, message, model_copy, tiny_demo, tmp_path, capsys
):
    out = tmp_path / "sub.csv"
    status, _, err = run_cli(
        predict_argv(model_copy, tiny_demo.test_dir, "--out", str(out), *flags), capsys
    )
    assert status == 2
    assert message in one_error_line(err)
    assert not out.exists()


def test_thresholds_json_out_of_range_is_refused_naming_the_file(
    model_copy, tiny_demo, tmp_path, capsys
):
    thresholds = model_copy / "thresholds.json"
    record = json.loads(thresholds.read_text())
    record["params"]["threshold"] = 7.5
    thresholds.write_text(json.dumps(record))
    out = tmp_path / "sub.csv"
    status, _, err = run_cli(
        predict_argv(model_copy, tiny_demo.test_dir, "--out", str(out)), capsys
    )
    assert status == 2
    line = one_error_line(err)
    assert str(thresholds) in line and "threshold" in line and "7.5" in line
    assert not out.exists()


def test_a_negative_learning_rate_is_refused_before_anything_is_written(
    tiny_demo, tmp_path, capsys
):
    out = tmp_path / "model"
    argv = ["train", *TINY_FLAGS, "--learning-rate", "-1", "--images", str(tiny_demo.train_dir)]
    status, _, err = run_cli([*argv, "--out", str(out)], capsys)
    assert status == 2
    assert "argument --learning-rate: -1 is not in [1e-07, 1]" in one_error_line(err)
    assert not out.exists()


def test_weights_with_flipped_bytes_are_refused(model_copy, tiny_demo, tmp_path, capsys):
    weights = model_copy / "model.weights.h5"
    data = bytearray(weights.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 2048] = bytes(b ^ 0xFF for b in data[middle : middle + 2048])
    weights.write_bytes(bytes(data))
    out = tmp_path / "sub.csv"
    status, _, err = run_cli(
        predict_argv(model_copy, tiny_demo.test_dir, "--out", str(out)), capsys
    )
    assert status == 2
    assert f"{weights}: damaged or replaced" in one_error_line(err)
    assert not out.exists()


def test_a_missing_thresholds_json_of_a_tuned_model_is_refused(
    model_copy, tiny_demo, tmp_path, capsys
):
    (model_copy / "thresholds.json").unlink()
    out = tmp_path / "sub.csv"
    status, _, err = run_cli(
        predict_argv(model_copy, tiny_demo.test_dir, "--out", str(out)), capsys
    )
    assert status == 2
    line = one_error_line(err)
    assert "thresholds.json: missing, though the model was tuned" in line
    assert f"./run.sh tune --model {model_copy}" in line
    # --untuned says the defaults are wanted: then it predicts
    status, _, _ = run_cli(
        predict_argv(model_copy, tiny_demo.test_dir, "--out", str(out), "--untuned"), capsys
    )
    assert status == 0 and out.is_file()


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("none", "missing: no row for this image (an image with no nucleus is"),  # header only
        ("first two", "missing: no row for this image (an image with no nucleus is"),
        ("all and one more", "not-an-image: unknown ImageId: no such image (1 row(s)"),
    ],
    ids=["header only", "missing ids", "unknown ids"],
)
def test_score_refuses_what_the_checker_rejects_and_never_ranks_it_unchecked(
    rows, message, tiny_demo, tmp_path, capsys
):
    from pipeline.data.dataset import list_image_ids

    ids = list_image_ids(tiny_demo.test_dir)
    lines = {
        "first two": [f"{i},1 1" for i in ids[:2]],
        "all and one more": [f"{i},1 1" for i in ids] + ["not-an-image,1 1"],
    }.get(rows, [])
    submission = tmp_path / "sub.csv"
    submission.write_text("\n".join(["ImageId,EncodedPixels", *lines]) + "\n")
    board = tmp_path / "leaderboard.csv"
    argv = ["score", str(submission), "--solution", str(tiny_demo.solution_csv)]
    argv += ["--leaderboard", str(board)]
    status, _, err = run_cli(argv, capsys)
    assert status == 2
    assert message in one_error_line(err)
    status, out, _ = run_cli([*argv, "--unchecked"], capsys)
    assert status == 0 and out.startswith("score ")
    assert not board.exists()  # never on the leaderboard


def test_a_diverging_training_fails_and_leaves_nothing_that_looks_like_a_model(
    tiny_demo, tmp_path, capsys, monkeypatch
):
    """A loss that is not a number from the first step (what a learning rate far too high
    gives); the run ends in an error and leaves no model. Growth past twice the first
    epoch's loss is the other sign (`pipeline.learning.callbacks.diverged`)."""
    from pipeline.learning import losses

    original = losses.LOSSES["bce_dice"]

    def not_a_number(y_true, y_pred):
        return original(y_true, y_pred) * float("nan")

    monkeypatch.setitem(losses.LOSSES, "bce_dice", not_a_number)
    out = tmp_path / "model"
    argv = ["train", "--preset", "demo", *TINY_FLAGS, "--epochs", "3"]
    status, _, err = run_cli(
        [*argv, "--images", str(tiny_demo.train_dir), "--out", str(out)], capsys
    )
    assert status == 2, err
    line = one_error_line(err)
    assert "the training diverged at epoch 1 (loss nan" in line
    assert "Try a lower --learning-rate than 0.001" in line
    for name in ("model.weights.h5", "complete.json", "scores.json", "checkpoint"):
        assert not (out / name).exists(), name
    # the folder is not a dead end: a rerun with a working loss starts over and finishes
    monkeypatch.setitem(losses.LOSSES, "bce_dice", original)
    status, _, err = run_cli(
        [*argv, "--images", str(tiny_demo.train_dir), "--out", str(out)], capsys
    )
    assert status == 0, err
    assert "starting over" in err
    assert (out / "complete.json").is_file()
