"""predict on a plain folder of images or one image file, with label images and measurements.

Through the real command line, with the session's tiny model (conftest's `tiny_model`,
trained on `tiny_demo`): a folder of mixed PNG, JPEG, 16-bit TIFF and grey images, whose
label images must hold exactly the instances of the CSV rows and whose measurements one row
per nucleus; a single file; names and files that are refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image
from skimage.draw import disk

from pipeline.cli import main as cli_main
from pipeline.data.dataset import image_path, list_image_files, list_image_ids, read_image
from pipeline.data.images import MAX_PNG_LABEL, read_pixels
from pipeline.data.rle import decode_labels
from pipeline.data.submission import group_rows, read_submission
from pipeline.inference.measure import COLUMNS
from pipeline.inference.predict import write_label_image
from pipeline.stages.predict import default_out_csv


def disc_image(shape=(72, 80)) -> np.ndarray:
    """A grey uint8 image: bright discs on a dark background."""
    image = np.full(shape, 12, dtype=np.uint8)
    for centre, radius in (((18, 20), 8), ((45, 55), 10), ((55, 18), 7)):
        image[disk(centre, radius, shape=shape)] = 190
    return image


@pytest.fixture(scope="module")
def mixed_folder(tiny_demo, tmp_path_factory) -> Path:
    """PNG (colour), JPEG, 16-bit TIFF and grey PNG, plus a text file to be ignored."""
    folder = tmp_path_factory.mktemp("mixed")
    rgb = [
        read_image(image_path(tiny_demo.test_dir, i)) for i in list_image_ids(tiny_demo.test_dir)
    ]
    Image.fromarray(rgb[0]).save(folder / "colour.png")
    Image.fromarray(rgb[1]).save(folder / "photo.JPG", quality=95)
    tifffile.imwrite(folder / "deep.tif", rgb[2][:, :, 0].astype(np.uint16) * 257 + 40)
    Image.fromarray(disc_image()).save(folder / "grey.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def predicted(tiny_model, mixed_folder, tmp_path_factory) -> Path:
    """The mixed folder predicted, with label images and measurements."""
    out = tmp_path_factory.mktemp("predicted")
    status = cli_main(
        [
            "predict",
            "--model",
            str(tiny_model),
            "--images",
            str(mixed_folder),
            "--out",
            str(out / "plain.csv"),
            "--labels-out",
            str(out / "labels"),
            "--measurements",
            str(out / "nuclei.csv"),
        ]
    )
    assert status == 0
    return out


def test_label_images_hold_the_instances_of_the_csv_rows(predicted, mixed_folder):
    rows = group_rows(read_submission(predicted / "plain.csv"))
    assert set(rows) == {"colour", "photo", "deep", "grey"}
    assert sorted(path.name for path in (predicted / "labels").iterdir()) == [
        "colour.png",
        "deep.png",
        "grey.png",
        "photo.png",
        "pipeline-labels.json",  # what the pipeline wrote there (replaced without --force)
    ]
    found = 0
    for image_id, image_rows in rows.items():
        with Image.open(predicted / "labels" / f"{image_id}.png") as written:
            assert written.mode.startswith("I;16")
            labels = np.asarray(written).astype(np.int32)
        assert labels.shape == read_pixels(next(mixed_folder.glob(f"{image_id}.*"))).shape[:2]
        from_csv = decode_labels([rle for _, rle in image_rows if rle], labels.shape)
        assert np.array_equal(from_csv, labels)  # row k of the image is label k
        found += int(from_csv.max())
    assert found > 0  # the tiny model does find nuclei
    metadata = (predicted / "plain.json").read_text()
    assert '"layout": "folder"' in metadata


def test_measurements_have_a_row_per_nucleus_with_its_area(predicted, mixed_folder):
    table = pd.read_csv(predicted / "nuclei.csv")
    assert list(table.columns) == ["image", *COLUMNS]
    rows = group_rows(read_submission(predicted / "plain.csv"))
    for image_id, image_rows in rows.items():
        with Image.open(predicted / "labels" / f"{image_id}.png") as written:
            labels = np.asarray(written).astype(np.int32)
        mine = table[table["image"] == image_id]
        assert len(mine) == sum(1 for _, rle in image_rows if rle)
        for label, area in zip(mine["label"], mine["area"], strict=True):
            assert area == np.count_nonzero(labels == label)
    assert set(table["image"]) <= set(rows)
    # Intensities are measured on the stored values: the TIFF's are 16-bit.
    deep = table[table["image"] == "deep"]
    assert len(deep) > 0
    stored = tifffile.imread(mixed_folder / "deep.tif")
    with Image.open(predicted / "labels" / "deep.png") as written:
        labels = np.asarray(written).astype(np.int32)
    for label, mean_intensity in zip(deep["label"], deep["mean_intensity"], strict=True):
        assert mean_intensity == pytest.approx(stored[labels == label].mean())


def test_a_single_file_is_predicted(tiny_model, mixed_folder, tmp_path):
    out = tmp_path / "one.csv"
    measurements = tmp_path / "one-nuclei.csv"
    args = ["predict", "--model", str(tiny_model), "--images", str(mixed_folder / "deep.tif")]
    assert cli_main([*args, "--out", str(out), "--measurements", str(measurements)]) == 0
    assert set(group_rows(read_submission(out))) == {"deep"}
    assert set(pd.read_csv(measurements)["image"]) <= {"deep"}
    assert not (tmp_path / "labels").exists()  # label images only when asked


def test_default_outputs_are_named_after_the_model_and_the_images(mixed_folder, tiny_demo):
    model = Path("models/default")
    assert default_out_csv(list_image_files(mixed_folder), model).name == (
        f"default-{mixed_folder.name}.csv"
    )
    assert default_out_csv(list_image_files(mixed_folder / "deep.tif"), model).name == (
        "default-deep.csv"
    )
    assert default_out_csv(list_image_files(tiny_demo.test_dir), model).name == "default.csv"


def test_two_files_with_the_same_name_are_refused(tmp_path, capsys):
    Image.fromarray(disc_image()).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "a.tif", disc_image())
    status = cli_main(["predict", "--images", str(tmp_path), "--out", str(tmp_path / "x.csv")])
    assert status == 2
    assert "a.png and a.tif have the same name without extension" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_an_unreadable_file_is_refused_with_its_name(tiny_model, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(disc_image()).save(images / "good.png")
    (images / "broken.tif").write_bytes(b"II*\x00" + b"\x00" * 20)
    out = tmp_path / "x.csv"
    args = ["predict", "--model", str(tiny_model), "--images", str(images), "--out", str(out)]
    assert cli_main(args) == 2
    assert "broken.tif: not a readable TIFF image" in capsys.readouterr().err
    assert not out.exists()  # nothing half-written


def test_more_nuclei_than_a_16_bit_png_holds_go_to_a_32_bit_tiff(tmp_path):
    labels = np.arange(MAX_PNG_LABEL + 3, dtype=np.int32).reshape(2, -1)
    path = write_label_image(tmp_path, "crowded", labels)
    assert path.name == "crowded.tif"
    assert np.array_equal(tifffile.imread(path), labels)
    small = write_label_image(tmp_path, "sparse", np.array([[0, 1], [2, 300]], np.int32))
    assert small.name == "sparse.png"
    with Image.open(small) as written:
        assert np.asarray(written).tolist() == [[0, 1], [2, 300]]


def test_the_progress_bar_moves_image_by_image_within_a_chunk(tiny_model, tiny_demo, monkeypatch):
    """Half an image when the network is done with it, the other half when its nuclei are
    found: the bar moves through a chunk of 32 images instead of jumping at its end."""
    from pipeline.inference import predict
    from pipeline.inference.model import NucleusModel

    positions: list[float] = []

    class Bar:
        def __init__(self, *args, initial=0, **kwargs):
            self.n = initial

        def update(self, amount):
            self.n += amount
            positions.append(self.n)

        def close(self):
            pass

    monkeypatch.setattr(predict, "tqdm", Bar)
    model = NucleusModel.load(tiny_model, device="cpu")
    files = list_image_files(tiny_demo.test_dir).files
    at_yield = [positions[-1] for _ in predict.iter_file_predictions(model, files)]
    assert positions == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert at_yield == [2.0, 2.5, 3.0]


def test_bfloat16_prediction_writes_a_valid_submission_and_says_so(
    tiny_demo, tiny_model, tmp_path, capsys
):
    """``predict --precision bfloat16`` (mixed: bfloat16 compute, float32 weights)."""
    import json

    import keras
    from conftest import run_cli

    out = tmp_path / "bf16.csv"
    argv = ["predict", "--model", str(tiny_model), "--images", str(tiny_demo.test_dir)]
    status, _, err = run_cli([*argv, "--out", str(out), "--precision", "bfloat16"], capsys)
    assert keras.config.dtype_policy().name == "float32"  # the network's own, not the process's
    assert status == 0, err
    assert "device: CPU, bfloat16" in err and "valid submission" in err
    assert json.loads(out.with_suffix(".json").read_text())["predict"]["precision"] == "bfloat16"
