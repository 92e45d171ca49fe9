"""Issue 15, kind 3: one ``error:`` line instead of a traceback, and before the work when
the failure can be foreseen. Through the real command line (and ``run.sh`` itself for a
broken virtual environment)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from conftest import one_error_line, predict_argv, run_cli
from PIL import Image

from pipeline.core.model_store import mark_complete

pytest.importorskip("keras")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def unwritable(tmp_path: Path) -> Path:
    """A folder this process cannot create files in."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    # root writes anywhere on an ordinary file system; sysfs refuses it new files
    probe = Path("/sys/.pipeline-probe")
    try:
        probe.touch()
    except OSError:
        yield Path("/sys")
        return
    probe.unlink()
    pytest.skip("no folder this process cannot write to")


def test_an_out_that_is_a_folder_is_refused_before_predicting(
    model_copy, tiny_demo, tmp_path, capsys
):
    status, _, err = run_cli(
        predict_argv(model_copy, tiny_demo.test_dir, "--out", str(tmp_path)), capsys
    )
    assert status == 2
    assert f"{tmp_path}: is a folder; --out takes a file name" in one_error_line(err)
    assert "predicting" not in err  # refused before the model was even loaded


def test_an_out_that_cannot_be_written_is_refused_before_predicting(
    model_copy, tiny_demo, unwritable, capsys
):
    out = unwritable / "sub.csv"
    status, _, err = run_cli(
        predict_argv(model_copy, tiny_demo.test_dir, "--out", str(out)), capsys
    )
    assert status == 2
    line = one_error_line(err)
    assert f"{out}: cannot be written (--out)" in line
    assert "predicting" not in err


def test_an_image_whose_name_cannot_be_an_image_id_is_refused_before_predicting(
    model_copy, tmp_path, capsys
):
    folder = tmp_path / "plain"
    folder.mkdir()
    Image.new("L", (32, 32)).save(folder / "well1.png")
    Image.new("L", (32, 32)).save(folder / "plate 1,well 2.png")
    out = tmp_path / "sub.csv"
    status, _, err = run_cli(predict_argv(model_copy, folder, "--out", str(out)), capsys)
    assert status == 2
    line = one_error_line(err)
    assert "plate 1,well 2.png: 'plate 1,well 2' cannot be an ImageId" in line
    assert "rename the file" in line and "predicting" not in err


def test_a_leaderboard_that_cannot_be_written_still_shows_the_score(
    tiny_demo, unwritable, tmp_path, capsys
):
    from pipeline.data.dataset import list_image_ids

    submission = tmp_path / "sub.csv"
    rows = [f"{image_id}," for image_id in list_image_ids(tiny_demo.test_dir)]
    submission.write_text("\n".join(["ImageId,EncodedPixels", *rows]) + "\n")
    board = unwritable / "leaderboard.csv"
    argv = ["score", str(submission), "--solution", str(tiny_demo.solution_csv)]
    status, out, err = run_cli([*argv, "--leaderboard", str(board)], capsys)
    assert status == 2
    assert out.startswith("score 0.000000  (3 images)")
    assert f"{board}: cannot add the score to the leaderboard" in one_error_line(err)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["model"].update(base_filters="wide"), "model.base_filters = 'wide'"),
        (lambda c: c.update(model=3), "'model' must be a JSON object of settings"),
        (lambda c: c["predict"].update(threshold=[0.5]), "predict.threshold"),
        (lambda c: c["train"].update(epochs=-2), "train.epochs"),
    ],
    ids=["a string for a number", "a number for a section", "a list", "out of range"],
)
def test_a_config_json_with_wrong_types_is_refused_naming_it(
    change, message, model_copy, tiny_demo, tmp_path, capsys
):
    path = model_copy / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))
    status, _, err = run_cli(
        predict_argv(model_copy, tiny_demo.test_dir, "--out", str(tmp_path / "s.csv")), capsys
    )
    assert status == 2
    line = one_error_line(err)
    assert f"{path}" in line and message in line


def test_weights_that_do_not_fit_the_config_give_one_line_without_keras_dumps(
    model_copy, tiny_demo, tmp_path, capfd
):
    path = model_copy / "config.json"
    config = json.loads(path.read_text())
    config["model"]["base_filters"] *= 2
    path.write_text(json.dumps(config))
    mark_complete(model_copy, tuned=True)  # edited before it was finished: covered as it is
    from pipeline.cli import main as cli_main

    status = cli_main(
        predict_argv(model_copy, tiny_demo.test_dir, "--out", str(tmp_path / "s.csv"))
    )
    err = capfd.readouterr().err
    assert status == 2
    line = one_error_line(err)
    assert "cannot load these weights into the network that" in line
    assert "UserWarning" not in err and len(err.splitlines()) <= 4, err


def test_a_damaged_weights_file_gives_one_line(model_copy, tiny_demo, tmp_path, capsys):
    """Damaged before it was finished (its checksum is of the damaged file)."""
    weights = model_copy / "model.weights.h5"
    weights.write_bytes(weights.read_bytes()[:3000])
    mark_complete(model_copy, tuned=True)
    status, _, err = run_cli(
        predict_argv(model_copy, tiny_demo.test_dir, "--out", str(tmp_path / "s.csv")), capsys
    )
    assert status == 2
    assert f"{weights}: cannot load these weights" in one_error_line(err)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--val-fraction", "0.95"], "argument --val-fraction: 0.95 is not in [0.01, 0.9]"),
        (["--dropout", "1.5"], "argument --dropout: 1.5 is not in [0, 0.9]"),
        (["--depth", "0"], "argument --depth: expected a whole number >= 1, got '0'"),
        (["--scale-min", "2", "--scale-max", "1"], "train.scale_min 2 is above train.scale_max 1"),
    ],
)
def test_training_settings_that_make_no_sense_are_refused(
    argv, message, tiny_demo, tmp_path, capsys
):
    out = tmp_path / "model"
    argv = ["train", *argv, "--images", str(tiny_demo.train_dir), "--out", str(out)]
    status, _, err = run_cli(argv, capsys)
    assert status == 2
    assert message in one_error_line(err)
    assert not out.exists()


def test_a_zip_with_a_symbolic_link_is_refused(tmp_path, capsys):
    source = tmp_path / "from"
    source.mkdir()
    link = zipfile.ZipInfo("stage1_test/abc/images/abc.png")
    link.external_attr = (0o120777 << 16) | 0x20  # a symbolic link
    with zipfile.ZipFile(source / "stage1_test.zip", "w") as archive:
        archive.writestr(link, "../../../../etc/passwd")
    input_dir = tmp_path / "input"
    argv = ["download", "--from", str(source), "--input", str(input_dir)]
    status, _, err = run_cli(argv, capsys)
    assert status == 2
    assert "is a symbolic link" in one_error_line(err)
    assert not (input_dir / "stage1_test").exists()


def test_run_sh_makes_a_broken_virtual_environment_again(tmp_path):
    """A ``.venv`` whose python is a link to nowhere (a moved checkout): rebuilt, with a
    message, instead of a cryptic failure."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    shutil.copy(ROOT / "run.sh", checkout / "run.sh")
    (checkout / "requirements.lock").write_text("")  # nothing to install: stays offline
    (checkout / ".venv" / "bin").mkdir(parents=True)
    (checkout / ".venv" / "bin" / "python").symlink_to(tmp_path / "gone" / "python3")
    result = subprocess.run(
        ["bash", str(checkout / "run.sh"), "--help"],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert "is broken (its python does not run); making it again" in result.stderr
    rebuilt = subprocess.run(
        [str(checkout / ".venv" / "bin" / "python"), "-c", "print('ok')"],
        capture_output=True,
        text=True,
    )
    assert rebuilt.stdout == "ok\n"


def test_tensorflow_loads_without_its_start_up_lines(tmp_path):
    """TensorFlow 2.21 writes its oneDNN and absl lines before it reads
    TF_CPP_MIN_LOG_LEVEL; the pipeline loads it with them filtered out, and whatever else
    is written still shows."""
    import sys

    root = Path(__file__).resolve().parents[1]
    code = (
        "import sys\n"
        "from pipeline.core import device\n"
        "device.select_device('cpu')\n"
        "import keras\n"
        "print('after loading', file=sys.stderr)\n"
    )
    environment = {**os.environ, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "2"}
    environment["KERAS_BACKEND"] = "tensorflow"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=environment, capture_output=True,
        text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == "after loading\n"


@pytest.mark.parametrize("stage", ["predict", "evaluate"])
def test_a_model_folder_that_is_not_there_is_named_as_such(stage, tiny_demo, tmp_path, capsys):
    missing = tmp_path / "no-model"
    images = ["--images", str(tiny_demo.test_dir)] if stage == "predict" else []
    status, _, err = run_cli([stage, "--model", str(missing), *images], capsys)
    assert status == 2
    assert one_error_line(err) == (
        f"error: {missing}: no such model folder (train one with ./run.sh train)"
    )


def test_train_resume_shows_no_tensorflow_start_up_lines(model_copy, tmp_path):
    """``train --resume`` looked at the checkpoint through a module that imported Keras
    before the device was chosen, so TensorFlow's start-up lines were printed (issue 23,
    case 13); the checkpoint's name now lives with the model folder's other names."""
    import sys

    from pipeline.core.device import STARTUP_NOISE

    root = Path(__file__).resolve().parents[1]
    environment = {**os.environ, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "2"}
    environment["KERAS_BACKEND"] = "tensorflow"
    command = [sys.executable, "-m", "pipeline", "train", "--resume", "--out", str(model_copy)]
    result = subprocess.run(
        [*command, "--epochs", "3", "--no-tune"], cwd=tmp_path, env=environment,
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "resuming after epoch 2" in result.stderr
    noise = [
        line for line in result.stderr.splitlines() if any(p.match(line) for p in STARTUP_NOISE)
    ]
    assert noise == []
