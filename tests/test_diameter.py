"""``predict --diameter PX``: the user's typical nucleus size, the Cellpose way.

Through the real command line and the API, with the tests' tiny model (trained at the
images' own scale, so its folder records its training nuclei in ``nuclei.json``).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import one_error_line, predict_argv, run_cli

from pipeline.core.model_store import read_json
from pipeline.core.nucleus_size import (
    NUCLEI_FILE,
    STAGE1_TRAIN_MEDIAN_DIAMETER,
    median_nucleus_diameter,
)
from pipeline.core.scale_policy import training_median_diameter
from pipeline.data.extra import load_labelled

pytest.importorskip("keras")


def test_a_training_records_the_median_diameter_of_its_training_nuclei(tiny_model, tiny_demo):
    record = read_json(tiny_model / NUCLEI_FILE)
    split = read_json(tiny_model / "split.json")
    samples = load_labelled(tiny_demo.train_dir, split["train"])
    median, count = median_nucleus_diameter(sample.labels for sample in samples)
    assert record == {"median_diameter": median, "nuclei": count, "images": len(samples)}
    assert 5 < median < 40


def test_a_model_without_the_record_falls_back_to_stage1_trains_median(model_copy, tmp_path):
    from pipeline.core.model_store import load_config

    config = load_config(model_copy)
    assert (
        training_median_diameter(model_copy, config)[0]
        == read_json(model_copy / NUCLEI_FILE)["median_diameter"]
    )
    (model_copy / NUCLEI_FILE).unlink()  # not covered by complete.json: the model stays finished
    assert training_median_diameter(model_copy, config)[0] == STAGE1_TRAIN_MEDIAN_DIAMETER == 19.9


def test_the_training_diameter_gives_the_same_submission_as_no_diameter(
    tiny_model, tiny_demo, tmp_path, capsys
):
    """A factor of 1 predicts each image as without the flag: byte for byte."""
    trained = read_json(tiny_model / NUCLEI_FILE)["median_diameter"]
    plain, same = tmp_path / "plain.csv", tmp_path / "same.csv"
    assert (
        run_cli(predict_argv(tiny_model, tiny_demo.test_dir, "--out", str(plain)), capsys)[0] == 0
    )
    argv = predict_argv(
        tiny_model, tiny_demo.test_dir, "--out", str(same), "--diameter", repr(trained)
    )
    status, _, err = run_cli(argv, capsys)
    assert status == 0, err
    assert f"rescaled to the {trained:.3g} pixels the model was trained on" in err
    assert same.read_bytes() == plain.read_bytes()
    assert json.loads(same.with_suffix(".json").read_text())["predict"]["diameter"] == trained
    assert json.loads(plain.with_suffix(".json").read_text())["predict"]["diameter"] == 0.0


def test_a_diameter_rescales_and_the_labels_come_back_at_the_images_size(
    tiny_model, tiny_demo, tmp_path, capsys
):
    from PIL import Image

    trained = read_json(tiny_model / NUCLEI_FILE)["median_diameter"]
    out, labels = tmp_path / "big.csv", tmp_path / "labels"
    argv = predict_argv(
        tiny_model, tiny_demo.test_dir, "--out", str(out), "--labels-out", str(labels)
    )
    status, _, err = run_cli([*argv, "--diameter", str(2 * trained)], capsys)
    assert status == 0, err
    assert "valid submission" in err  # every row decodes within its image's own size
    for path in sorted(labels.glob("*.png")):
        image = next(tiny_demo.test_dir.glob(f"{path.stem}/images/*.png"))
        with Image.open(path) as written, Image.open(image) as source:
            assert written.size == source.size


@pytest.mark.parametrize("value", ["0", "-3", "nan", "inf", "1001", "big"])
def test_a_bad_diameter_gets_one_error_line(tiny_model, tiny_demo, tmp_path, capsys, value):
    out = tmp_path / "s.csv"
    status, _, err = run_cli(
        predict_argv(tiny_model, tiny_demo.test_dir, "--out", str(out), f"--diameter={value}"),
        capsys,
    )
    assert status == 2
    line = one_error_line(err)
    assert "diameter must be a typical nucleus diameter in pixels, above 0" in line
    assert not out.exists()


def test_diameter_and_scales_are_refused_together(tiny_model, tiny_demo, tmp_path, capsys):
    argv = predict_argv(
        tiny_model, tiny_demo.test_dir, "--out", str(tmp_path / "s.csv"), "--diameter", "30"
    )
    status, _, err = run_cli([*argv, "--scales", "0.5,1"], capsys)
    assert status == 2
    assert "--diameter sets the scale itself: leave out --scales" in one_error_line(err)


# ------------------------------------------------------------------------ the API


@pytest.fixture(scope="module")
def client(tiny_model):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from pipeline.serving.app import create_app
    from pipeline.serving.segmenter import Segmenter

    return TestClient(create_app(Segmenter(tiny_model, "cpu")))


@pytest.mark.filterwarnings("ignore:Using `httpx` with")
def test_the_api_takes_a_diameter_and_answers_what_predict_does(
    client, tiny_model, tiny_demo, tmp_path, capsys
):
    from pipeline.data.submission import group_rows, read_submission

    trained = read_json(tiny_model / NUCLEI_FILE)["median_diameter"]
    image = next(tiny_demo.test_dir.glob("*/images/*.png"))
    folder = tmp_path / "one"
    shutil.copytree(image.parent.parent, folder / image.stem)
    out = tmp_path / "one.csv"
    argv = predict_argv(tiny_model, folder, "--out", str(out), "--diameter", str(2 * trained))
    assert run_cli(argv, capsys)[0] == 0
    expected = [rle for _, rle in group_rows(read_submission(out))[image.stem] if rle]
    files = {"image": (image.name, image.read_bytes(), "image/png")}
    answer = client.post("/api/segment", files=files, data={"diameter": str(2 * trained)})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["settings"]["diameter"] == 2 * trained
    assert [nucleus["rle"] for nucleus in body["nuclei"]] == expected
    refused = client.post("/api/segment", files=files, data={"diameter": "0"})
    assert refused.status_code == 422
    assert "diameter must be a typical nucleus diameter" in refused.json()["error"]


@pytest.mark.filterwarnings("ignore:Using `httpx` with")
def test_the_page_has_a_diameter_field_left_empty(client):
    page = client.get("/").text
    assert 'id="diameter" min="0" step="any"' in page
    assert "chosen.diameter = diameter" in page  # sent only when filled in


def test_median_nucleus_diameter_is_exact_on_discs():
    labels = np.zeros((10, 10), np.int32)
    labels[0:2, 0:2] = 1  # 4 pixels
    labels[5:8, 5:8] = 2  # 9 pixels
    labels[9, 9] = 3  # 1 pixel
    median, count = median_nucleus_diameter([labels])
    assert count == 3 and median == pytest.approx(2 * np.sqrt(4 / np.pi))
