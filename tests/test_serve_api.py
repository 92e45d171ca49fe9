"""The web API (``./run.sh serve``): answers, refusals, and nothing written to disk.

A tiny model trained on the synthetic set serves through FastAPI's test client.
"""

import base64
import io
import tempfile

import numpy as np
import pytest
from PIL import Image

from pipeline.data.rle import decode_labels

pytest.importorskip("keras")
pytest.importorskip("fastapi")
# The test client's transport (httpx) is what FastAPI documents; starlette prefers httpx2.
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with")


@pytest.fixture(scope="module")
def model_dir(tiny_model):
    """The session's tiny model (conftest); the server only reads it."""
    return tiny_model


@pytest.fixture(scope="module")
def segmenter(model_dir):
    from pipeline.serving.segmenter import Segmenter

    return Segmenter(model_dir, "cpu")


@pytest.fixture(scope="module")
def client(segmenter):
    from fastapi.testclient import TestClient

    from pipeline.serving.app import create_app

    return TestClient(create_app(segmenter, max_megapixels=0.01))


def _nuclei_image(height=80, width=96) -> np.ndarray:
    """Bright discs on a dark ground, grey (H, W) uint8."""
    from skimage.draw import disk

    image = np.full((height, width), 12, np.uint8)
    for centre in ((20, 20), (30, 60), (60, 40)):
        image[disk(centre, 8, shape=image.shape)] = 200
    return image


def _encoded(pixels: np.ndarray, kind: str) -> bytes:
    buffer = io.BytesIO()
    if kind == "TIFF":
        import tifffile

        tifffile.imwrite(buffer, pixels)
    else:
        Image.fromarray(pixels).save(buffer, format=kind)
    return buffer.getvalue()


def _post(client, data: bytes, name="cells.png", include="", **settings):
    files = {"image": (name, data, "application/octet-stream")}
    url = "/api/segment" + (f"?include={include}" if include else "")
    return client.post(url, files=files, data={k: str(v) for k, v in settings.items()})


def test_health_and_model(client, model_dir):
    assert client.get("/api/health").json() == {"status": "ok", "model": "tiny", "waiting": 0}
    model = client.get("/api/model").json()
    assert model["name"] == "tiny" and model["config"]["name"] == "demo"
    assert set(model["settings"]) == {
        "method", "threshold", "marker_threshold", "min_size", "tta", "diameter"
    }  # fmt: skip
    assert isinstance(model["validation_score"], float)


def test_segment_answers_the_count_measurements_and_encodings_of_the_prediction(client, segmenter):
    image = _nuclei_image()
    answer = _post(client, _encoded(image, "PNG"), threshold=0.4, tta="false")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    rgb = np.repeat(image[:, :, None], 3, axis=2)
    expected = segmenter.model.predict_labels([rgb], threshold=0.4, tta=False)[0]
    assert body["count"] == int(expected.max()) == len(body["nuclei"])
    assert (body["height"], body["width"], body["image_id"]) == (80, 96, "cells")
    assert body["settings"]["threshold"] == 0.4 and body["settings"]["tta"] is False
    decoded = decode_labels([n["rle"] for n in body["nuclei"]], (80, 96))
    assert np.array_equal(decoded, expected)
    for nucleus in body["nuclei"]:
        mask = expected == nucleus["label"]
        assert nucleus["area"] == int(mask.sum())
        assert nucleus["mean_intensity"] == pytest.approx(float(image[mask].mean()))


def test_files_are_the_page_pictures_and_downloads(client):
    body = _post(client, _encoded(_nuclei_image(), "PNG"), include="files").json()
    files = body["files"]
    labels = np.asarray(Image.open(io.BytesIO(base64.b64decode(files["labels_file"]))))
    assert files["labels_name"] == "cells-labels.png" and labels.dtype == np.uint16
    assert len(np.unique(labels[labels > 0])) == body["count"]
    rows = files["rle_csv"].splitlines()
    assert rows[0] == "ImageId,EncodedPixels" and len(rows) == 1 + max(1, body["count"])
    measurements = files["measurements_csv"].splitlines()
    assert (
        measurements[0].startswith("image,label,area,") and len(measurements) == 1 + body["count"]
    )
    picture = Image.open(io.BytesIO(base64.b64decode(files["image_png"])))
    outlines = Image.open(io.BytesIO(base64.b64decode(files["outlines_png"])))
    assert picture.size == outlines.size == (96, 80) and outlines.mode == "RGBA"


def test_files_hold_the_fiji_rois_and_qupath_geojson_of_the_labels(client, tmp_path):
    """The page's fourth and fifth downloads: as ``predict --rois-out/--geojson-out``
    write them, one polygon per nucleus in label order, each giving its nucleus back."""
    import json

    from roifile import roiread

    from pipeline.inference.measure import measure_nuclei
    from pipeline.inference.outlines import geojson_text, imagej_roi_set

    body = _post(client, _encoded(_nuclei_image(), "PNG"), include="files").json()
    files = body["files"]
    labels = np.asarray(Image.open(io.BytesIO(base64.b64decode(files["labels_file"]))))
    labels = labels.astype(np.int32)
    assert body["count"] > 0
    assert (files["rois_name"], files["geojson_name"]) == ("cells_rois.zip", "cells.geojson")
    rois_zip = base64.b64decode(files["rois_zip"])
    assert rois_zip == imagej_roi_set(labels)
    (tmp_path / "cells_rois.zip").write_bytes(rois_zip)
    names = [roi.name for roi in roiread(tmp_path / "cells_rois.zip")]
    assert names == [str(k) for k in range(1, body["count"] + 1)]
    features = json.loads(files["geojson"])["features"]
    assert [f["properties"]["name"] for f in features] == names
    areas = [f["properties"]["measurements"]["area"] for f in features]
    assert areas == [float(n["area"]) for n in body["nuclei"]]
    assert files["geojson"] == geojson_text(labels, measure_nuclei(labels, _nuclei_image()))


@pytest.mark.parametrize(
    ("kind", "pixels"),
    [
        ("JPEG", _nuclei_image()),
        ("TIFF", (_nuclei_image().astype(np.uint16) * 16)),  # 12-bit values in 16 bits
        ("PNG", np.repeat(_nuclei_image()[:, :, None], 3, axis=2)),
    ],
    ids=["jpeg", "tiff-16-bit", "png-rgb"],
)
def test_other_types_and_depths_are_segmented(client, kind, pixels):
    answer = _post(client, _encoded(pixels, kind), name=f"cells.{kind.lower()}")
    assert answer.status_code == 200, answer.text
    assert answer.json()["height"] == 80


def _truncated_png() -> bytes:
    return _encoded(_nuclei_image(), "PNG")[:60]


def _gif() -> bytes:
    return _encoded(_nuclei_image(), "GIF")


@pytest.mark.parametrize(
    ("data", "settings", "status", "message"),
    [
        (b"plain text, not a picture", {}, 415, "notes.png: not a PNG, JPEG or TIFF image"),
        (b"", {}, 400, "notes.png: the file is empty"),
        (_truncated_png(), {}, 400, "notes.png: not a readable"),
        (_gif(), {}, 415, "notes.png: not a PNG, JPEG or TIFF image"),
        (np.zeros((200, 100), np.uint8), {}, 413, "200 is 0.0 megapixels, over the limit of 0.01"),
        ("ok", {"threshold": "7.5"}, 422, "threshold: 7.5 is not in [0, 1]"),
        ("ok", {"min_size": "-1"}, 422, "min_size: expected a whole number >= 0, got '-1'"),
        ("ok", {"tta": "maybe"}, 422, "tta: expected true or false, got 'maybe'"),
        ("ok", {"method": "magic"}, 422, "method: 'magic' is not one of components, watershed"),
        ("ok", {"colour": "red"}, 422, "unknown setting 'colour'"),
    ],
    ids=["not-an-image", "empty", "truncated", "gif", "too-large", "threshold", "min-size",
         "tta", "method", "unknown-setting"],
)  # fmt: skip
def test_bad_uploads_get_a_4xx_that_names_the_problem(client, data, settings, status, message):
    if isinstance(data, np.ndarray):
        data = _encoded(data, "PNG")
    elif data == "ok":
        data = _encoded(_nuclei_image(), "PNG")
    answer = _post(client, data, name="notes.png", **settings)
    assert answer.status_code == status
    assert message in answer.json()["error"]
    assert _post(client, _encoded(_nuclei_image(), "PNG")).status_code == 200  # still serving


def test_a_request_without_a_file_is_refused(client):
    for answer in (
        client.post("/api/segment"),
        client.post("/api/segment", data={"threshold": "0.5"}),
        client.post("/api/segment", files={"picture": ("x.png", b"x")}),
    ):
        assert answer.status_code == 400
        assert answer.json()["error"].startswith("no image in the request")


def test_nothing_is_written_to_disk(client, tmp_path, monkeypatch):
    """Uploads, even large ones, stay in memory: no temporary file appears."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    noise = np.random.default_rng(0).integers(0, 255, (80, 96, 3), dtype=np.uint8)
    big = _encoded(noise, "TIFF") + b"\0" * (3 << 20)  # past starlette's 1 MB spool
    assert _post(client, big, name="big.tif").status_code == 200
    assert _post(client, b"", name="empty.png").status_code == 400
    assert list(tmp_path.iterdir()) == []


def test_the_page_shows_the_model_and_its_tuned_settings(client, segmenter):
    page = client.get("/").text
    assert "Model <code>tiny</code>" in page
    threshold = segmenter.model.config.predict.threshold
    assert f'id="threshold" min="0" max="1" step="0.05"\n         value="{threshold}"' in page
    assert 'id="files" multiple' in page
