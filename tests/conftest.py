"""Shared fixtures.

Real-data fixtures unpack the competition files from ``../shared/dsb2018`` once per test
session into a temporary folder, and skip (with the reason) when that folder is absent.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from pipeline.paths import SHARED_DATA_DIR


def _shared_file(name: str) -> Path:
    path = SHARED_DATA_DIR / name
    if not path.is_file():
        pytest.skip(f"real data absent: {path} not found (the stage-1 files live in ../shared)")
    return path


def _unzip_once(tmp_path_factory: pytest.TempPathFactory, zip_name: str) -> Path:
    source = _shared_file(zip_name)
    target = tmp_path_factory.mktemp(zip_name.replace(".", "_"))
    with zipfile.ZipFile(source) as archive:
        archive.extractall(target)
    return target


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The folder of competition zips, as the Kaggle API delivers them."""
    _shared_file("stage1_train.zip")
    return SHARED_DATA_DIR


@pytest.fixture(scope="session")
def real_train_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """stage1_train unpacked: 596 images with masks, Kaggle layout."""
    return _unzip_once(tmp_path_factory, "stage1_train.zip")


@pytest.fixture(scope="session")
def real_test_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """stage1_test unpacked: 65 images, Kaggle layout."""
    return _unzip_once(tmp_path_factory, "stage1_test.zip")


@pytest.fixture(scope="session")
def real_solution_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """stage1_solution.csv: ImageId,EncodedPixels,Height,Width,Usage."""
    return _unzip_once(tmp_path_factory, "stage1_solution.csv.zip") / "stage1_solution.csv"


@pytest.fixture(scope="session")
def real_train_labels_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """stage1_train_labels.csv: ImageId,EncodedPixels."""
    folder = _unzip_once(tmp_path_factory, "stage1_train_labels.csv.zip")
    return folder / "stage1_train_labels.csv"


# ------------------------------------------------------------- a tiny trained model

#: Flags that make a network small and a training short: seconds, not minutes.
TINY_FLAGS = [
    "--base-filters", "4", "--depth", "2", "--crop-size", "64", "--batch-size", "4",
    "--steps-per-epoch", "3", "--eval-every", "1", "--precision", "float32",
]  # fmt: skip


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory):
    """A small synthetic set in Kaggle layout: 10 training and 3 test images."""
    from pipeline.data.synthetic import make_demo_dataset

    return make_demo_dataset(
        tmp_path_factory.mktemp("tiny_demo"), n_train=10, n_test=3, size_range=(64, 96)
    )


@pytest.fixture(scope="session")
def tiny_model(tiny_demo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished model folder (trained two epochs and tuned); copy it before changing it."""
    from pipeline.cli import main as cli_main

    model_dir = tmp_path_factory.mktemp("tiny_models") / "tiny"
    argv = ["train", "--preset", "demo", *TINY_FLAGS, "--epochs", "2"]
    argv += ["--images", str(tiny_demo.train_dir), "--out", str(model_dir)]
    assert cli_main(argv) == 0
    return model_dir


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``./run.sh ARGV`` in this process: (exit status, stdout, stderr). An option that
    argparse refuses exits with status 2, as the real command does."""
    from pipeline.cli import main as cli_main

    capsys.readouterr()
    try:
        status = cli_main(argv)
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 2
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def one_error_line(err: str) -> str:
    """The single ``error:`` line of a failed command's stderr (asserting there is one and
    no traceback)."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    return errors[0]
