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
