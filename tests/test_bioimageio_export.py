"""``export --out NAME.bioimageio.zip``: a bioimage.io model package that
``bioimageio.spec`` validates with every file check and the network switched off, whose
ONNX weights pass bioimage.io's model test, and that holds
what a user needs (both weights, synthetic test tensors, a cover, a README naming the
tuned thresholds); bad input is one error line and leaves no file.

``bioimageio.core``'s ``test_model`` runs on the ONNX weights, as the Model Zoo does.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import one_error_line, run_cli

pytest.importorskip("bioimageio.spec", reason="bioimageio.spec is not installed")
pytest.importorskip("bioimageio.core", reason="bioimageio.core is not installed")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
pytest.importorskip("tf2onnx", reason="tf2onnx is not installed")

PACKAGE_FILES = {
    "rdf.yaml", "weights.keras", "weights.onnx", "test_input.npy", "test_output.npy",
    "sample_input.tif", "sample_output.tif", "cover.png", "README.md",
}  # fmt: skip


@contextlib.contextmanager
def network_switched_off():
    """Every connection and name lookup fails in this block, so that anything that needs
    the network fails instead of reaching it."""

    def refuse(*args, **kwargs):
        raise OSError("the network is switched off in this test")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "getaddrinfo", refuse)
        yield


def not_inverting_copy(tiny_model: Path, folder: Path) -> Path:
    """A finished copy of the tiny model that does not invert light backgrounds (the same
    network and weights): its normalisation is bioimage.io's ``zero_mean_unit_variance``."""
    from pipeline.core.model_store import mark_complete, read_json

    model_dir = folder / "plain"
    shutil.copytree(tiny_model, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["model"]["invert_light_background"] = False
    (model_dir / "config.json").write_text(json.dumps(config, indent=2))
    mark_complete(model_dir, tuned=read_json(model_dir / "complete.json")["tuned"])
    return model_dir


@pytest.fixture(scope="module")
def packages(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Packages written by ``export --out`` with the network switched off: ``inverting``
    (the tiny model, which inverts light backgrounds, something bioimage.io cannot say) and
    ``plain`` (a copy that does not)."""
    from pipeline.cli import main as cli_main

    folder = tmp_path_factory.mktemp("bioimageio")
    models = {"inverting": tiny_model, "plain": not_inverting_copy(tiny_model, folder)}
    written = {}
    with network_switched_off():
        for name, model_dir in models.items():
            out = folder / f"{name}.bioimageio.zip"
            assert cli_main(["export", "--model", str(model_dir), "--out", str(out)]) == 0
            written[name] = out
    assert {path.name for path in folder.iterdir()} == {
        "plain",
        *(f"{n}.bioimageio.zip" for n in models),
    }
    return written


@pytest.fixture(scope="module")
def unpacked(packages: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """Each package's files, unzipped."""
    folders = {}
    for name, package in packages.items():
        folders[name] = tmp_path_factory.mktemp(f"unpacked_{name}")
        with zipfile.ZipFile(package) as archive:
            archive.extractall(folders[name])
    return folders


def load_offline(package: Path):
    """The package's description, validated by bioimageio.spec with every file check
    (``perform_io_checks``: checksums, test tensors against the axes) and no network."""
    from bioimageio.spec import InvalidDescr, load_description

    with network_switched_off():
        description = load_description(package, perform_io_checks=True)
    assert not isinstance(description, InvalidDescr), description.validation_summary.errors
    return description


@pytest.mark.parametrize("name", ["inverting", "plain"])
def test_bioimageio_spec_validates_the_package_offline(packages, name: str) -> None:
    description = load_offline(packages[name])
    assert description.validation_summary.status in ("valid-format", "passed")
    assert description.type == "model" and description.format_version.startswith("0.5")
    assert {"keras_v3", "onnx"} <= {key for key, entry in description.weights if entry}
    with zipfile.ZipFile(packages[name]) as archive:
        rdf = archive.read("rdf.yaml").decode()
    assert "http" not in rdf  # nothing that validation would have to look up online


@pytest.mark.parametrize("name", ["inverting", "plain"])
def test_bioimageio_cores_model_test_passes_on_the_onnx_weights(packages, name: str) -> None:
    """bioimage.io's own model test, as the Model Zoo runs it before accepting a model: the
    test input, preprocessed as declared, gives the test output within the declared
    tolerance, and inputs of batch 1 and 2 at the three smallest valid sizes give outputs of
    the declared shape (ONNX Runtime, the network switched off)."""
    from bioimageio.core import test_model

    with network_switched_off():
        summary = test_model(packages[name], weight_format="onnx")
    failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", failed
    assert any("Reproduce test outputs from test inputs (onnx)" in d.name for d in summary.details)


def test_the_keras_weights_give_the_test_output(unpacked) -> None:
    import keras

    folder = unpacked["inverting"]  # its test input is the network's input as it is
    network = keras.saving.load_model(folder / "weights.keras")
    output = network.predict_on_batch(np.load(folder / "test_input.npy"))
    np.testing.assert_allclose(output, np.load(folder / "test_output.npy"), atol=1e-5)


def test_the_normalisation_is_declared_or_done_and_said(unpacked) -> None:
    from bioimageio.spec.utils import read_yaml

    plain = read_yaml(unpacked["plain"] / "rdf.yaml")
    steps = {step["id"]: step.get("kwargs", {}) for step in plain["inputs"][0]["preprocessing"]}
    assert steps["zero_mean_unit_variance"]["axes"] == ["y", "x", "channel"]
    raw = np.load(unpacked["plain"] / "test_input.npy")
    assert raw.shape == (1, 96, 96, 3) and raw.max() > 1 and raw.min() >= 0  # the image
    assert plain["config"]["dsb2018"]["preprocessing_in_rdf"] is True
    inverting = read_yaml(unpacked["inverting"] / "rdf.yaml")
    steps = [step["id"] for step in inverting["inputs"][0].get("preprocessing", [])]
    assert "zero_mean_unit_variance" not in steps
    assert inverting["config"]["dsb2018"]["preprocessing_in_rdf"] is False
    normalised = np.load(unpacked["inverting"] / "test_input.npy")
    assert abs(normalised.mean()) < 1e-4 and abs(normalised.std() - 1) < 1e-3
    readme = (unpacked["inverting"] / "README.md").read_text()
    assert "not one of bioimage.io's preprocessing operations" in readme


def test_the_package_holds_what_a_user_needs(packages, unpacked, tiny_model: Path) -> None:
    from PIL import Image

    with zipfile.ZipFile(packages["inverting"]) as archive:
        assert set(archive.namelist()) == PACKAGE_FILES
    folder = unpacked["inverting"]
    with Image.open(folder / "cover.png") as cover:
        assert cover.format == "PNG" and cover.size[0] == 2 * cover.size[1]
    readme = (folder / "README.md").read_text()
    params = json.loads((tiny_model / "thresholds.json").read_text())["params"]
    for key, value in params.items():
        shown = str(value).lower() if isinstance(value, bool) else str(value)
        assert f"| `{key}` | {shown} |" in readme, key
    for needed in ("does **not** output nuclei", "this pipeline's", "## Validation",
                   "## Training data and licences", "## Citation", "10.1038/s41592-019-0612-7",
                   "Plugins > DeepImageJ", "ilastik", "napari"):  # fmt: skip
        assert needed in readme, needed


def folder_files(folder: Path) -> dict[str, int]:
    """Every file under ``folder``, hidden ones (locks, temporaries) included, by size."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "problem, expected",
    [
        ("unfinished", "not a finished model"),
        ("weights", "damaged or replaced"),
        ("not_zip", "a bioimage.io package is a .zip file"),
        ("exists", "exists and was not written by this pipeline"),
        ("locked", "another run is writing it"),
    ],
)
def test_a_refused_export_is_one_error_line_and_leaves_no_file(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], problem, expected
) -> None:
    from pipeline.locks import output_lock

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model, model_dir)
    out = tmp_path / "out" / ("model.tar" if problem == "not_zip" else "model.bioimageio.zip")
    out.parent.mkdir()
    if problem == "unfinished":
        (model_dir / "complete.json").unlink()
    elif problem == "weights":
        with open(model_dir / "model.weights.h5", "ab") as handle:
            handle.write(b"\0")
    elif problem == "exists":
        out.write_text("someone's own file\n")
    before = folder_files(tmp_path)
    with output_lock(out, "--out") if problem == "locked" else contextlib.nullcontext():
        status, _, err = run_cli(["export", "--model", str(model_dir), "--out", str(out)], capsys)
    assert status == 2
    assert expected in one_error_line(err)
    assert folder_files(tmp_path) == before


def test_only_a_package_this_pipeline_wrote_is_replaced_without_force(
    packages, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.learning.bioimageio_package import is_exported_package

    assert is_exported_package(packages["plain"])
    foreign = tmp_path / "foreign.bioimageio.zip"
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("rdf.yaml", "type: model\nname: someone else's\n")
    assert not is_exported_package(foreign)
    argv = ["export", "--model", str(tiny_model), "--out", str(foreign), "--force"]
    status, _, err = run_cli(argv, capsys)
    assert status == 0, err
    assert is_exported_package(foreign)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["foreign.bioimageio.zip"]


@pytest.mark.parametrize("heads", ["all", "2"])
def test_a_network_with_several_heads_is_exported_as_one_output(heads: str) -> None:
    from pipeline.config import ModelConfig
    from pipeline.core.models import build_unetpp
    from pipeline.learning.bioimageio_package import package_network

    model = build_unetpp(ModelConfig(arch="unetpp", base_filters=2, depth=2))
    batch = np.random.default_rng(0).normal(size=(1, 8, 8, 3)).astype(np.float32)
    heads_out = [np.asarray(output) for output in model.predict_on_batch(batch)]
    expected = np.mean(heads_out, axis=0) if heads == "all" else heads_out[int(heads) - 1]
    network = package_network(model, heads)
    assert len(network.outputs) == 1
    np.testing.assert_allclose(network.predict_on_batch(batch), expected, atol=1e-6)
