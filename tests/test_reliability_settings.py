"""Issue 23, items 5 to 8: every setting means what it says. Settings that hung a
training, meant the opposite of what was asked, could never refuse, or silently lost to
another flag are refused with one line, before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_FLAGS, one_error_line, run_cli

pytest.importorskip("keras")


def train(images: Path, out: Path, *flags: str) -> list[str]:
    return ["train", *TINY_FLAGS, "--images", str(images), "--out", str(out), *flags]


def test_a_network_deeper_than_its_crop_is_refused_with_the_numbers(tiny_demo, tmp_path, capsys):
    """Item 5: --depth 20 hung for minutes before its first epoch."""
    out = tmp_path / "model"
    status, _, err = run_cli(train(tiny_demo.train_dir, out, "--depth", "20"), capsys)
    assert status == 2
    assert one_error_line(err) == (
        "error: the training settings: model.depth 20 halves the 64-pixel crop 20 times, to "
        "6.10352e-05 pixels at the bottom of the U (under 1); at most depth 6 for this crop, "
        "or a --crop-size of at least 1048576"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        (
            "--base-filters",
            "100000",
            "argument --base-filters: expected a whole number in [1, 256]",
        ),
        ("--crop-size", "100000", "argument --crop-size: expected a whole number in [16, 2048]"),
    ],
)
def test_architecture_settings_have_an_upper_bound(
    tiny_demo, tmp_path, capsys, flag, value, message
):
    out = tmp_path / "model"
    status, _, err = run_cli(train(tiny_demo.train_dir, out, flag, value), capsys)
    assert status == 2
    assert message in one_error_line(err)
    assert not out.exists()


def test_a_config_json_deeper_than_its_crop_is_refused_naming_it(
    model_copy, tiny_demo, tmp_path, capsys
):
    config = json.loads((model_copy / "config.json").read_text())
    config["model"]["depth"] = 7
    (model_copy / "config.json").write_text(json.dumps(config))
    argv = ["predict", "--model", str(model_copy), "--images", str(tiny_demo.test_dir)]
    status, _, err = run_cli([*argv, "--out", str(tmp_path / "s.csv")], capsys)
    assert status == 2
    assert one_error_line(err).startswith(
        f"error: {model_copy / 'config.json'}: model.depth 7 halves the 64-pixel crop 7 times"
    )


@pytest.mark.parametrize("value", ["1", "15", "-3"])
def test_a_tile_size_under_16_is_refused_not_read_as_never(
    tiny_model, tiny_demo, tmp_path, capsys, value
):
    """Item 6: 1 once meant "never tile", the opposite of what was asked."""
    out = tmp_path / "s.csv"
    argv = ["predict", "--model", str(tiny_model), "--images", str(tiny_demo.test_dir)]
    status, _, err = run_cli([*argv, "--out", str(out), "--tile-size", value], capsys)
    assert status == 2
    assert one_error_line(err).endswith(
        f"argument --tile-size: tile_size must be 0 (never tile) or at least 16 pixels, got "
        f"{value!r}"
    )
    assert not out.exists()


def test_the_smallest_tile_size_tiles(tiny_model, tiny_demo, tmp_path, capsys):
    """16 pixels (under the network's multiple for deeper models) tiles rather than not."""
    argv = ["predict", "--model", str(tiny_model), "--images", str(tiny_demo.test_dir)]
    status, _, err = run_cli([*argv, "--out", str(tmp_path / "s.csv"), "--tile-size", "16"], capsys)
    assert status == 0, err


@pytest.mark.parametrize(
    "argv",
    [
        ["submit", "sub.csv", "--max-mib", "nan"],
        ["submit", "sub.csv", "--max-mib", "inf"],
        ["serve", "--max-megapixels", "nan"],
        ["train", "--nucleus-diameter", "inf"],
        ["train", "--max-minutes", "nan"],
        ["predict", "--threshold", "nan"],
    ],
    ids=[
        "max-mib-nan",
        "max-mib-inf",
        "max-megapixels",
        "nucleus-diameter",
        "max-minutes",
        "threshold",
    ],
)
def test_nan_and_infinities_are_refused_for_every_float_setting(tmp_path, capsys, argv):
    """Item 7: a limit of NaN can never refuse anything."""
    status, _, err = run_cli(argv, capsys)
    assert status == 2
    flag, value = argv[-2], argv[-1]
    line = one_error_line(err)
    assert f"argument {flag}: " in line
    assert line.endswith((f"'{value}' is not a finite number", f"{value} is not in [0, 1]"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--preset", "default", "--demo"], "--demo and --preset do not go together"),
        (
            ["train", "--preset", "demo", "--config", "c.json"],
            "--preset and --config do not go together",
        ),
        (["train", "--demo", "--images", "x"], "--demo and --images do not go together"),
        (["train", "--demo", "--config", "c.json"], "--demo and --config do not go together"),
        (["predict", "--demo", "--images", "x"], "--demo and --images do not go together"),
    ],
    ids=["preset-demo", "preset-config", "train-demo-images", "demo-config", "predict-demo-images"],
)
def test_conflicting_flags_are_refused(tmp_path, capsys, monkeypatch, argv, message):
    """Item 8: one of them silently won."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.json").write_text("{}")
    before = sorted(p.name for p in tmp_path.iterdir())
    status, _, err = run_cli(argv, capsys)
    assert status == 2
    assert one_error_line(err) == f"error: {message}: each says what to use; give one"
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_an_unknown_target_set_flag_is_refused_with_the_choices(tmp_path, capsys):
    """``--targets`` had no choices: a bad value passed and failed after the data loaded."""
    out = tmp_path / "model"
    status, _, err = run_cli(["train", "--targets", "nonsense", "--out", str(out)], capsys)
    assert status == 2
    assert one_error_line(err).endswith(
        "argument --targets: invalid choice: 'nonsense' (choose from 'foreground', 'border', "
        "'border_centre')"
    )
    assert not out.exists()


def test_a_config_json_with_an_unknown_target_set_is_refused_naming_it(tmp_path, capsys):
    config = tmp_path / "config.json"
    data = json.loads((Path(__file__).parents[1] / "models/default/config.json").read_text())
    data["model"]["targets"] = "nonsense"
    config.write_text(json.dumps(data))
    out = tmp_path / "model"
    status, _, err = run_cli(["train", "--config", str(config), "--out", str(out)], capsys)
    assert status == 2
    assert one_error_line(err) == (
        f"error: {config}: model.targets = 'nonsense' is not one of foreground, border, "
        "border_centre"
    )
    assert not out.exists()
