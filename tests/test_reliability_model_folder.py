"""Issue 23, item 14: every file of a model folder that decides a prediction is covered.

``complete.json`` records the SHA-256 of the weights, ``config.json`` and
``thresholds.json``; an edited one is refused with one line naming it, and
``--force-edited`` predicts with it on purpose. A complete.json written before (the
shipped model's) covers the weights only and still loads; the thresholds' structure is
checked by the settings' declarations in any case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import one_error_line, predict_argv, run_cli

from pipeline.core.model_store import check_finished, file_sha256, load_config

pytest.importorskip("keras")

ROOT = Path(__file__).resolve().parents[1]


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2) + "\n")


def old_style(model: Path) -> None:
    """Make complete.json as it was before the config and thresholds were covered."""
    edit_json(
        model / "complete.json", lambda d: [d.pop("config_sha256"), d.pop("thresholds_sha256")]
    )


def test_complete_json_records_every_file_that_decides_a_prediction(model_copy):
    record = json.loads((model_copy / "complete.json").read_text())
    assert record == {
        "weights_sha256": file_sha256(model_copy / "model.weights.h5"),
        "tuned": True,
        "config_sha256": file_sha256(model_copy / "config.json"),
        "thresholds_sha256": file_sha256(model_copy / "thresholds.json"),
    }


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("config.json", lambda d: d["train"].update(resize_policy="resize")),
        ("thresholds.json", lambda d: d["params"].update(threshold=0.9)),
    ],
    ids=["resize_policy", "threshold"],
)
def test_an_edited_file_is_refused_naming_it_unless_force_edited(
    model_copy, tiny_demo, tmp_path, capsys, name, change
):
    edit_json(model_copy / name, change)
    out = tmp_path / "sub.csv"
    status, _, err = run_cli(
        predict_argv(model_copy, tiny_demo.test_dir, "--out", str(out)), capsys
    )
    assert status == 2
    assert one_error_line(err) == (
        f"error: {model_copy / name}: edited since the model was finished (its SHA-256 is not the "
        "one recorded in complete.json); --force-edited predicts with it as it is now"
    )
    assert not out.exists()
    status, _, err = run_cli(
        predict_argv(model_copy, tiny_demo.test_dir, "--out", str(out), "--force-edited"), capsys
    )
    assert status == 0, err
    assert f"{model_copy / name}: edited since the model was finished" in err  # a warning
    assert "predicting with it as it is now (--force-edited)" in err


@pytest.mark.parametrize(
    ("file", "change", "expected"),
    [
        (
            "thresholds.json",
            lambda d: d.update(params={}),
            "thresholds.json: 'params' is empty, though the model was tuned; ./run.sh tune --model",
        ),
        (
            "thresholds.json",
            lambda d: d["params"].update(treshold=0.4),
            "thresholds.json: unknown keys in 'params': ['treshold']; the tunable settings "
            "are method, threshold",
        ),
        (
            "thresholds.json",
            lambda d: d["params"].update(tta="yes"),
            "thresholds.json: predict.tta = 'yes' is not true or false",
        ),
        ("complete.json", lambda d: d.update(tuned="no"), "complete.json: tuned = 'no' is not"),
    ],
    ids=["empty-params", "unknown-key", "tta-text", "tuned-text"],
)
@pytest.mark.parametrize("style", ["old", "new"])
def test_what_the_declarations_refuse_is_refused_with_either_complete_json(
    model_copy, tiny_demo, tmp_path, capsys, file, change, expected, style
):
    """Named before any checksum, and refused even with --force-edited."""
    if style == "old":
        old_style(model_copy)
    edit_json(model_copy / file, change)
    out = tmp_path / "s.csv"
    status, _, err = run_cli(
        predict_argv(model_copy, tiny_demo.test_dir, "--out", str(out), "--force-edited"), capsys
    )
    assert status == 2
    assert f"error: {model_copy / file}: " in one_error_line(err)
    assert expected in one_error_line(err)
    assert not out.exists()


def test_an_old_complete_json_covers_the_weights_only_and_loads(
    model_copy, tiny_demo, tmp_path, capsys
):
    old_style(model_copy)
    before = {p.name: p.read_bytes() for p in model_copy.iterdir() if p.is_file()}
    edit_json(model_copy / "thresholds.json", lambda d: d["params"].update(threshold=0.45))
    status, _, err = run_cli(
        predict_argv(model_copy, tiny_demo.test_dir, "--out", str(tmp_path / "s.csv")), capsys
    )
    assert status == 0, err
    assert load_config(model_copy).predict.threshold == 0.45
    after = {p.name: p.read_bytes() for p in model_copy.iterdir() if p.is_file()}
    assert after.keys() == before.keys()
    assert after["complete.json"] == before["complete.json"]  # nothing written on load


def test_the_shipped_model_still_loads():
    shipped = ROOT / "models" / "default"
    if not (shipped / "complete.json").is_file():
        pytest.skip("no shipped model in this checkout")
    check_finished(shipped)
    assert load_config(shipped).predict.threshold == 0.6


def test_tune_records_the_new_thresholds_in_complete_json(model_copy, tiny_demo, tmp_path, capsys):
    old_style(model_copy)
    status, _, err = run_cli(["tune", "--model", str(model_copy)], capsys)
    assert status == 0, err
    record = json.loads((model_copy / "complete.json").read_text())
    assert record["thresholds_sha256"] == file_sha256(model_copy / "thresholds.json")
    assert record["config_sha256"] == file_sha256(model_copy / "config.json")
    status, _, err = run_cli(
        predict_argv(model_copy, tiny_demo.test_dir, "--out", str(tmp_path / "s.csv")), capsys
    )
    assert status == 0, err
