"""The onnxruntime engine: the network exported once from a model's weights, run by ONNX
Runtime, gives Keras' probabilities and labels; ``export --onnx`` records the file in
complete.json; a model folder is never written on load; bad input is one error line."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import one_error_line, run_cli

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
pytest.importorskip("tf2onnx", reason="tf2onnx is not installed")


def folder_state(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file of a folder with its size and modification time."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache folder of this test's own."""
    monkeypatch.setenv("DSB2018_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def onnx_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny model with model.onnx written by ``export --onnx``."""
    from pipeline.cli import main as cli_main

    model_dir = tmp_path_factory.mktemp("onnx_model") / "tiny"
    shutil.copytree(tiny_model, model_dir)
    assert cli_main(["export", "--model", str(model_dir), "--onnx"]) == 0
    return model_dir


def synthetic_images() -> list[np.ndarray]:
    """Three RGB images of bright discs on a dark background, of three sizes."""
    from skimage.draw import disk

    rng = np.random.default_rng(5)
    images = []
    for height, width in ((64, 64), (70, 90), (100, 48)):
        image = rng.integers(0, 30, (height, width, 3)).astype(np.uint8)
        for _ in range(4):
            centre = (rng.integers(8, height - 8), rng.integers(8, width - 8))
            rows, cols = disk(centre, 6, shape=(height, width))
            image[rows, cols] = 200
        images.append(image)
    return images


def test_export_records_the_onnx_file_in_complete_json(onnx_model: Path) -> None:
    from pipeline.core.model_store import file_sha256

    record = json.loads((onnx_model / "complete.json").read_text())
    assert record["onnx_sha256"] == file_sha256(onnx_model / "model.onnx")
    assert record["weights_sha256"] == file_sha256(onnx_model / "model.weights.h5")


@pytest.mark.parametrize("tta", [False, True])
def test_onnxruntime_gives_the_probabilities_and_labels_of_keras(
    onnx_model: Path, tta: bool
) -> None:
    from pipeline.inference.model import NucleusModel

    images = synthetic_images()
    keras_model = NucleusModel.load(onnx_model, {"engine": "keras", "tta": tta}, device="cpu")
    onnx_model = NucleusModel.load(onnx_model, {"engine": "onnxruntime", "tta": tta}, device="cpu")
    assert type(onnx_model.network).__name__ == "OnnxNetwork"
    expected = keras_model.predict_probabilities(images)
    got = onnx_model.predict_probabilities(images)
    for want, have in zip(expected, got, strict=True):
        assert have.shape == want.shape and have.dtype == np.float32
        assert np.abs(have - want).max() < 1e-5
        assert np.array_equal(
            keras_model.labels_from_probabilities(have), keras_model.labels_from_probabilities(want)
        )


def test_a_model_without_onnx_exports_into_the_cache_not_its_folder(
    tiny_model: Path, cache: Path
) -> None:
    from pipeline.inference.engines import OnnxNetwork
    from pipeline.inference.model import NucleusModel

    before = folder_state(tiny_model)
    settings = {"engine": "onnxruntime"}
    network = NucleusModel.load(tiny_model, settings, device="cpu").network
    assert isinstance(network, OnnxNetwork)
    assert network.path.parent == cache / "onnx" and network.path.is_file()
    assert folder_state(tiny_model) == before
    exported = network.path.stat().st_mtime_ns
    again = NucleusModel.load(tiny_model, settings, device="cpu").network
    assert again.path == network.path and network.path.stat().st_mtime_ns == exported
    # A Dask worker or a page gets it as its file and opens its own session.
    copy = pickle.loads(pickle.dumps(network))
    batch = np.zeros((1, 16, 16, 3), np.float32)
    assert np.array_equal(copy.outputs(batch)[0], network.outputs(batch)[0])


def test_predict_engine_onnxruntime_writes_the_keras_submission(
    onnx_model: Path, tiny_demo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = {}
    for engine in ("keras", "onnxruntime"):
        out = tmp_path / f"{engine}.csv"
        argv = ["predict", "--model", str(onnx_model), "--images", str(tiny_demo.test_dir)]
        status, _, err = run_cli([*argv, "--out", str(out), "--engine", engine], capsys)
        assert status == 0, err
        runs[engine] = out.read_text()
        sidecar = json.loads(out.with_suffix(".json").read_text())
        assert sidecar["predict"]["engine"] == engine
    assert runs["onnxruntime"] == runs["keras"]


def test_a_changed_model_onnx_is_refused(
    onnx_model: Path, tiny_demo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir = tmp_path / "changed"
    shutil.copytree(onnx_model, model_dir)
    with open(model_dir / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    argv = ["predict", "--model", str(model_dir), "--engine", "onnxruntime"]
    argv += ["--images", str(tiny_demo.test_dir)]  # a fresh clone has no input/stage1_test
    status, _, err = run_cli([*argv, "--out", str(tmp_path / "x.csv")], capsys)
    assert status == 2
    assert "model.onnx: damaged or replaced" in one_error_line(err)
    (model_dir / "model.onnx").unlink()
    status, _, err = run_cli([*argv, "--out", str(tmp_path / "x.csv")], capsys)
    assert status == 2
    assert "model.onnx: missing, though complete.json records it" in one_error_line(err)


def test_onnxruntime_refuses_bfloat16_in_one_line(
    onnx_model: Path, tiny_demo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["predict", "--model", str(onnx_model), "--engine", "onnxruntime"]
    argv += ["--images", str(tiny_demo.test_dir)]  # a fresh clone has no input/stage1_test
    argv += ["--precision", "bfloat16", "--out", str(tmp_path / "x.csv")]
    status, _, err = run_cli(argv, capsys)
    assert status == 2
    assert "runs the network in float32" in one_error_line(err)


@pytest.mark.parametrize("damage", ["unfinished", "weights"])
def test_export_refuses_an_unfinished_or_changed_model_in_one_line(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model, model_dir)
    if damage == "unfinished":
        (model_dir / "complete.json").unlink()
    else:
        with open(model_dir / "model.weights.h5", "ab") as handle:
            handle.write(b"\0")
    before = folder_state(model_dir)
    status, _, err = run_cli(["export", "--model", str(model_dir), "--onnx"], capsys)
    assert status == 2
    line = one_error_line(err)
    assert ("not a finished model" if damage == "unfinished" else "damaged or replaced") in line
    assert folder_state(model_dir) == before
