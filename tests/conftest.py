"""Shared fixtures.

Real-data fixtures unpack the competition files from ``../shared/dsb2018`` once per test
run into a temporary folder, and skip (with the reason) when that folder is absent. What is
made once per run (the real data, the tiny demo set and the tiny trained model) is shared by
the pytest-xdist workers (`shared_folder`): never change it; copy it (`model_copy`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.paths import SHARED_DATA_DIR


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (pyproject.toml): one pytest-xdist worker per core and one more, at most
    4. Many tests wait on processes they start; on 2 cores 3 workers ran the suite in 313 s
    of pytest where 2 took 380 s."""
    return min(len(os.sched_getaffinity(0)) + 1, 4)


@contextlib.contextmanager
def shared_folder(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Path]:
    """``name``, a folder of this test run that every pytest-xdist worker shares (the run's
    base folder, above each worker's own), while holding its lock: the first worker to ask
    makes its content, the others wait and find it made."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield base / name


def _shared_file(name: str) -> Path:
    path = SHARED_DATA_DIR / name
    if not path.is_file():
        pytest.skip(f"real data absent: {path} not found (the stage-1 files live in ../shared)")
    return path


def _unzip_once(tmp_path_factory: pytest.TempPathFactory, zip_name: str) -> Path:
    source = _shared_file(zip_name)
    with shared_folder(tmp_path_factory, zip_name.replace(".", "_")) as target:
        done = target.with_name(f"{target.name}.done")  # beside it: the folder stays the zip's
        if not done.is_file():
            with zipfile.ZipFile(source) as archive:
                archive.extractall(target)
            done.touch()
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
    """A small synthetic set in Kaggle layout: 10 training and 3 test images (made once per
    test run; never change it)."""
    from pipeline.data.synthetic import make_demo_dataset

    with shared_folder(tmp_path_factory, "tiny_demo") as root:
        return make_demo_dataset(root, n_train=10, n_test=3, size_range=(64, 96))


@pytest.fixture(scope="session")
def tiny_model(tiny_demo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished model folder (trained two epochs and tuned), trained once per test run
    and shared by every worker: use `model_copy` to change it."""
    from pipeline.cli import main as cli_main

    with shared_folder(tmp_path_factory, "tiny_models") as root:
        model_dir = root / "tiny"
        if not (model_dir / "complete.json").is_file():
            argv = ["train", "--preset", "demo", *TINY_FLAGS, "--epochs", "2"]
            argv += ["--images", str(tiny_demo.train_dir), "--out", str(model_dir)]
            assert cli_main(argv) == 0
        return model_dir


@pytest.fixture
def model_copy(tiny_model: Path, tmp_path: Path) -> Path:
    """A copy of the tiny finished model in ``tmp_path / "model"``, free to damage."""
    return Path(shutil.copytree(tiny_model, tmp_path / "model"))


def predict_argv(model: Path, images: Path, *flags: str) -> list[str]:
    """The arguments of ``./run.sh predict --model MODEL --images IMAGES FLAGS...``."""
    return ["predict", "--model", str(model), "--images", str(images), *flags]


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
