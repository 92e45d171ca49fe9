"""Nuclei as Fiji ROIs and QuPath GeoJSON: ``predict --rois-out DIR --geojson-out DIR``.

The polygons run along the nuclei's pixel edges (`pipeline.inference.outlines`): read back
with `roifile` or as GeoJSON and rasterised with ``skimage.draw.polygon`` at the pixel
centres, each gives back its nucleus pixel for pixel (IoU 1, whatever its size) when the
nucleus is one piece without holes; holes are interior rings in GeoJSON and covered by a
ROI; a nucleus in pieces that touch by a corner keeps its largest piece.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import shapely
from conftest import one_error_line, predict_argv, run_cli
from PIL import Image
from roifile import ROI_TYPE, roiread
from shapely.geometry import shape
from skimage.draw import disk
from skimage.draw import polygon as draw_polygon

from pipeline.data.dataset import image_path, list_image_ids, read_image
from pipeline.data.rle import decode_labels
from pipeline.data.submission import group_rows, read_submission
from pipeline.inference.measure import measure_nuclei
from pipeline.inference.outlines import (
    imagej_roi_set,
    nucleus_polygons,
    qupath_feature_collection,
)

pytest.importorskip("keras")


def rasterise(rings: list, shape_: tuple[int, int]) -> np.ndarray:
    """The pixels whose centres lie inside a polygon given as ``[exterior, *holes]`` of
    ``(x, y)`` pixel-corner coordinates (a pixel's centre is at ``(col + 0.5, row + 0.5)``)."""
    mask = np.zeros(shape_, bool)
    for number, ring in enumerate(rings):
        xy = np.asarray(ring, dtype=float)
        rr, cc = draw_polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape_)
        mask[rr, cc] = number == 0  # the exterior fills, a hole empties
    return mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def roi_masks(path: Path, shape_: tuple[int, int]) -> list[tuple[str, np.ndarray]]:
    rois = roiread(path)
    assert all(roi.roitype == ROI_TYPE.POLYGON for roi in rois)
    return [(roi.name, rasterise([roi.coordinates()], shape_)) for roi in rois]


def geojson_masks(path: Path, shape_: tuple[int, int]) -> list[tuple[str, np.ndarray]]:
    collection = json.loads(path.read_text())
    assert collection["type"] == "FeatureCollection"
    masks = []
    for feature in collection["features"]:
        assert feature["geometry"]["type"] == "Polygon"
        assert shapely.is_valid(shape(feature["geometry"])), feature["properties"]["name"]
        masks.append(
            (feature["properties"]["name"], rasterise(feature["geometry"]["coordinates"], shape_))
        )
    return masks


def disc_labels(shape_=(64, 80)) -> np.ndarray:
    """Discs of radius 1 to 12, some on the border and in the corner, numbered 1..n."""
    labels = np.zeros(shape_, np.int32)
    centres = [((8, 8), 1), ((8, 20), 2), ((10, 36), 4), ((30, 20), 8), ((34, 55), 12),
               ((0, 70), 6), ((63, 0), 5), ((63, 79), 9), ((50, 34), 3)]  # fmt: skip
    for label, (centre, radius) in enumerate(centres, start=1):
        labels[disk(centre, radius + 0.5, shape=shape_)] = label
    labels[3, 60] = len(centres) + 1  # one pixel
    return labels


# ------------------------------------------------------------------ the polygons


def test_every_one_piece_nucleus_comes_back_pixel_for_pixel_from_its_roi_and_feature(
    tmp_path,
):
    labels = disc_labels()
    n = int(labels.max())
    (tmp_path / "discs_rois.zip").write_bytes(imagej_roi_set(labels))
    from_rois = roi_masks(tmp_path / "discs_rois.zip", labels.shape)
    collection = qupath_feature_collection(labels, measure_nuclei(labels, labels))
    (tmp_path / "discs.geojson").write_text(json.dumps(collection))
    from_features = geojson_masks(tmp_path / "discs.geojson", labels.shape)
    for masks in (from_rois, from_features):
        assert [name for name, _ in masks] == [str(label) for label in range(1, n + 1)]
        for name, mask in masks:
            assert np.array_equal(mask, labels == int(name)), name  # IoU 1, 1 to 460 pixels


def test_a_nucleus_on_the_border_runs_along_the_image_edge():
    labels = np.zeros((5, 6), np.int32)
    labels[3:, 4:] = 1  # the bottom-right corner
    [(label, polygon)] = nucleus_polygons(labels)
    assert label == 1
    assert sorted(set(polygon.exterior.coords)) == [(4, 3), (4, 5), (6, 3), (6, 5)]
    assert polygon.bounds == (4.0, 3.0, 6.0, 5.0)  # x up to the width, y up to the height


def test_a_hole_is_an_interior_ring_in_geojson_and_covered_by_the_roi(tmp_path):
    labels = np.zeros((9, 9), np.int32)
    labels[1:8, 1:8] = 1
    labels[3:6, 3:6] = 0  # a hole of 9 pixels, inside 40
    [feature] = qupath_feature_collection(labels, measure_nuclei(labels, labels))["features"]
    rings = feature["geometry"]["coordinates"]
    assert len(rings) == 2 and shape(feature["geometry"]).area == 40
    assert np.array_equal(rasterise(rings, labels.shape), labels == 1)
    (tmp_path / "hole_rois.zip").write_bytes(imagej_roi_set(labels))
    [(_, covered)] = roi_masks(tmp_path / "hole_rois.zip", labels.shape)
    assert covered.sum() == 49 and iou(covered, labels == 1) == 40 / 49


def test_pieces_touching_by_a_corner_are_joined_by_a_pixel_and_pieces_apart_keep_the_largest(
    tmp_path,
):
    labels = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]], np.int32)
    [(_, polygon)] = nucleus_polygons(labels)
    assert polygon.is_valid and polygon.area == 6  # 5 pixels and one bridging them
    assert np.array_equal(
        rasterise([polygon.exterior.coords], labels.shape), [[1, 1, 0], [1, 1, 1], [0, 0, 1]]
    )
    apart = np.array([[1, 1, 0, 1], [1, 1, 0, 0]], np.int32)
    [(_, polygon)] = nucleus_polygons(apart)
    assert polygon.area == 4 and polygon.bounds == (0.0, 0.0, 2.0, 2.0)


def test_ragged_blobs_come_back_with_an_iou_of_0_97_from_30_pixels_and_0_8_below():
    """Blobs of thresholded smoothed noise, 8-connected and far more ragged than nuclei:
    from 30 pixels every polygon's IoU is at least 0.97 (0.9 asked), below 30 at least 0.8
    (a 5-pixel blob gaining one bridging pixel), and most are exact."""
    from scipy import ndimage
    from skimage.measure import label

    noise = ndimage.gaussian_filter(np.random.default_rng(0).normal(size=(256, 256)), 2)
    labels = label(noise > 0.05, connectivity=2)
    large, small = [], []
    for number, polygon in nucleus_polygons(labels):
        assert polygon.is_valid
        rings = [polygon.exterior.coords, *(ring.coords for ring in polygon.interiors)]
        nucleus = labels == number
        value = iou(rasterise(rings, labels.shape), nucleus)
        (large if nucleus.sum() >= 30 else small).append(value)
    assert len(large) > 100 and len(small) > 50
    assert min(large) >= 0.97 and min(small) >= 0.8
    assert np.mean(np.equal(small, 1.0)) > 0.95 and np.mean(np.equal(large, 1.0)) > 0.85


def test_the_feature_carries_its_qupath_kind_class_and_measurements():
    labels = np.zeros((6, 6), np.int32)
    labels[1:3, 1:4] = 1
    image = np.full((6, 6), 50, np.uint8)
    [feature] = qupath_feature_collection(labels, measure_nuclei(labels, image))["features"]
    properties = feature["properties"]
    assert properties["objectType"] == "detection"
    assert properties["classification"]["name"] == "Nucleus"
    assert properties["name"] == "1"
    assert properties["measurements"]["area"] == 6.0
    assert properties["measurements"]["mean_intensity"] == 50.0
    assert properties["measurements"]["centroid_row"] == 1.5


def test_the_same_labels_give_the_same_roi_set_bytes():
    assert imagej_roi_set(disc_labels()) == imagej_roi_set(disc_labels().copy())


# -------------------------------------------------------------- through ./run.sh predict


@pytest.fixture(scope="module")
def plain_folder(tiny_demo, tmp_path_factory) -> Path:
    """The tiny demo's test images as a plain folder, and grey discs touching the border."""
    folder = tmp_path_factory.mktemp("plain")
    for image_id in list_image_ids(tiny_demo.test_dir):
        image = read_image(image_path(tiny_demo.test_dir, image_id))
        Image.fromarray(image).save(folder / f"{image_id}.png")
    discs = np.full((72, 80), 12, np.uint8)
    for centre, radius in (((0, 20), 9), ((40, 40), 11), ((71, 79), 8), ((30, 70), 6)):
        discs[disk(centre, radius, shape=discs.shape)] = 200
    Image.fromarray(discs).save(folder / "border.png")
    return folder


@pytest.fixture(scope="module")
def exported(tiny_model, plain_folder, tmp_path_factory) -> Path:
    from pipeline.cli import main as cli_main

    out = tmp_path_factory.mktemp("exported")
    argv = ["predict", "--model", str(tiny_model), "--images", str(plain_folder)]
    argv += ["--out", str(out / "s.csv"), "--rois-out", str(out / "rois")]
    argv += ["--geojson-out", str(out / "geojson"), "--measurements", str(out / "m.csv")]
    assert cli_main(argv) == 0
    return out


def test_predict_writes_a_roi_set_and_a_geojson_per_image_matching_the_csv(exported, plain_folder):
    import pandas as pd

    rows = group_rows(read_submission(exported / "s.csv"))
    table = pd.read_csv(exported / "m.csv")
    total, ious = 0, []
    for image_id, image_rows in rows.items():
        encodings = [rle for _, rle in image_rows if rle]
        shape_ = read_image(plain_folder / f"{image_id}.png").shape[:2]
        labels = decode_labels(encodings, shape_)  # row k of the CSV is label k
        rois = roi_masks(exported / "rois" / f"{image_id}_rois.zip", shape_)
        features = geojson_masks(exported / "geojson" / f"{image_id}.geojson", shape_)
        assert len(rois) == len(features) == len(encodings) == int(labels.max())
        for masks in (rois, features):
            assert [name for name, _ in masks] == [str(k) for k in range(1, len(encodings) + 1)]
            ious += [(iou(mask, labels == int(k)), (labels == int(k)).sum()) for k, mask in masks]
        collection = json.loads((exported / "geojson" / f"{image_id}.geojson").read_text())
        areas = [f["properties"]["measurements"]["area"] for f in collection["features"]]
        assert areas == table[table["image"] == image_id]["area"].astype(float).tolist()
        total += len(encodings)
    assert total > 0  # the tiny model finds nuclei
    assert len(rows) == 4
    # The tiny model's nuclei are ragged: where pixels touch only by a corner, a pixel
    # joins them (0.94 the lowest IoU here); the issue asks for 0.9 from 30 pixels.
    assert min(value for value, area in ious if area >= 30) >= 0.9
    assert min(value for value, _ in ious) >= 0.9
    manifests = sorted(p.name for p in (exported / "rois").iterdir())
    assert "pipeline-rois.json" in manifests


def test_a_second_run_replaces_its_own_files_and_refuses_a_foreign_one(
    tiny_model, plain_folder, tmp_path, capsys
):
    images = tmp_path / "images"
    shutil.copytree(plain_folder, images)
    argv = predict_argv(
        tiny_model, images, "--out", str(tmp_path / "s.csv"), "--rois-out", str(tmp_path / "rois")
    )
    assert run_cli(argv, capsys)[0] == 0
    first = (tmp_path / "rois" / "border_rois.zip").read_bytes()
    assert run_cli(argv, capsys)[0] == 0  # its own files: replaced without --force
    assert (tmp_path / "rois" / "border_rois.zip").read_bytes() == first
    (tmp_path / "geojson").mkdir()
    (tmp_path / "geojson" / "border.geojson").write_text("{}")  # someone else's
    argv = predict_argv(
        tiny_model,
        images,
        "--out",
        str(tmp_path / "s.csv"),
        "--geojson-out",
        str(tmp_path / "geojson"),
    )
    status, _, err = run_cli(argv, capsys)
    assert status == 2
    assert "border.geojson: exists and was not written by this pipeline" in one_error_line(err)
    assert (tmp_path / "geojson" / "border.geojson").read_text() == "{}"
    assert run_cli([*argv, "--force"], capsys)[0] == 0
    assert json.loads((tmp_path / "geojson" / "border.geojson").read_text())["features"]


@pytest.mark.parametrize(
    ("option", "where", "message"),
    [
        ("--rois-out", "file", "is a file; --rois-out takes a folder"),
        ("--rois-out", "under-a-file", "cannot be written (--rois-out)"),
        ("--rois-out", "images", "the inputs: choose another --rois-out"),
        ("--geojson-out", "images", "the inputs: choose another --geojson-out"),
        ("--geojson-out", "same-as-rois", "choose another --geojson-out"),
    ],
)
def test_bad_output_folders_are_refused_before_predicting(
    tiny_model, plain_folder, tmp_path, capsys, option, where, message
):
    images = tmp_path / "images"
    shutil.copytree(plain_folder, images)
    (tmp_path / "a-file").write_text("x")
    folder = {
        "file": tmp_path / "a-file",
        "under-a-file": tmp_path / "a-file" / "rois",
        "images": images / "rois",
        "same-as-rois": tmp_path / "rois",
    }[where]
    flags = [option, str(folder)]
    if where == "same-as-rois":
        flags += ["--rois-out", str(tmp_path / "rois")]
    status, _, err = run_cli(
        predict_argv(tiny_model, images, "--out", str(tmp_path / "s.csv"), *flags), capsys
    )
    assert status == 2
    assert message in one_error_line(err)
    assert "predicting" not in err
    assert not (tmp_path / "s.csv").exists() and not (images / "rois").exists()


def test_a_folder_this_process_cannot_write_to_is_refused(
    tiny_model, plain_folder, tmp_path, capsys
):
    import os

    if os.geteuid() == 0:
        folder = Path("/sys/rois")  # root writes anywhere else; sysfs refuses new files
    else:
        folder = tmp_path / "read-only" / "rois"
        folder.parent.mkdir()
        folder.parent.chmod(0o555)
    argv = predict_argv(
        tiny_model, plain_folder, "--out", str(tmp_path / "s.csv"), "--rois-out", str(folder)
    )
    status, _, err = run_cli(argv, capsys)
    assert status == 2
    assert f"{folder}: cannot be written (--rois-out)" in one_error_line(err)
