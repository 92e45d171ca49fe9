"""Reading the data: images as RGB uint8, instance labels from masks and RLE CSVs, kinds.

Unit tests run on tiny PNGs written in tmp_path; the real-data tests read stage 1 once per
session (``real_train_samples``) and check every image.
"""

from __future__ import annotations

import collections
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image
from skimage.draw import disk

from pipeline.data.dataset import (
    KINDS,
    ImageFile,
    Sample,
    image_kind,
    image_path,
    iter_images,
    labels_from_rle_csv,
    list_image_files,
    list_image_ids,
    load_samples,
    mask_paths,
    read_image,
    read_image_shape,
    read_mask_labels,
)
from pipeline.data.images import read_pixels
from pipeline.data.rle import decode_labels, encode_labels
from pipeline.errors import PipelineError


def disc(shape: tuple[int, int], center: tuple[int, int], radius: float) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[disk(center, radius, shape=shape)] = True
    return mask


def write_png(path: Path, pixels: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels) if mode is None else Image.fromarray(pixels).convert(mode)
    image.save(path)
    return path


def write_sample(
    images_dir: Path, image_id: str, image: np.ndarray, masks: dict[str, np.ndarray]
) -> Path:
    """One image in Kaggle layout; ``masks`` maps file names to boolean masks."""
    write_png(image_path(images_dir, image_id), image)
    (images_dir / image_id / "masks").mkdir(parents=True, exist_ok=True)
    for name, mask in masks.items():
        write_png(images_dir / image_id / "masks" / name, mask.astype(np.uint8) * 255)
    return images_dir / image_id


def dark_grey_image(shape=(20, 24)) -> np.ndarray:
    image = np.full((*shape, 3), 10, dtype=np.uint8)
    image[disc(shape, (6, 6), 4)] = 200
    return image


def histology_image(shape=(20, 24)) -> np.ndarray:
    image = np.zeros((*shape, 3), dtype=np.uint8)
    image[:] = (235, 215, 235)  # pale pink background
    image[disc(shape, (10, 12), 5)] = (110, 60, 170)  # purple nucleus
    return image


# --------------------------------------------------------------------------- read_image

GREY = np.array([[0, 7], [128, 255]], dtype=np.uint8)


def test_grey_png_is_repeated_over_three_channels(tmp_path):
    image = read_image(write_png(tmp_path / "grey.png", GREY))
    assert image.dtype == np.uint8 and image.shape == (2, 2, 3)
    for channel in range(3):
        assert image[:, :, channel].tolist() == [[0, 7], [128, 255]]


def test_rgb_png_is_read_as_is(tmp_path):
    rgb = np.array([[[1, 2, 3], [4, 5, 6]]], dtype=np.uint8)
    assert read_image(write_png(tmp_path / "rgb.png", rgb)).tolist() == rgb.tolist()


def test_rgba_png_loses_its_alpha_channel(tmp_path):
    rgba = np.array([[[10, 20, 30, 255], [40, 50, 60, 0]]], dtype=np.uint8)
    image = read_image(write_png(tmp_path / "rgba.png", rgba))
    assert image.tolist() == [[[10, 20, 30], [40, 50, 60]]]


def test_grey_with_alpha_png_becomes_grey_rgb(tmp_path):
    grey_alpha = np.array([[[9, 255], [200, 0]]], dtype=np.uint8)
    image = read_image(write_png(tmp_path / "la.png", grey_alpha))
    assert image.tolist() == [[[9, 9, 9], [200, 200, 200]]]


def twelve_bit_values() -> tuple[np.ndarray, np.ndarray]:
    """201 12-bit values whose 0.5 and 99.5 percentiles are exactly 100 and 2140 (the 2nd and
    200th sorted values), and the 8-bit values they must become: 100 + 8m -> m exactly
    (255 / 2040 = 1 / 8), the lowest and highest values clipped to 0 and 255."""
    steps = np.round(np.linspace(0, 255, 197)).astype(np.int64)
    levels = np.concatenate([[0], [0], steps, [255], [255]])  # 2nd and 200th: 0 and 255
    values = np.concatenate([[0], 100 + 8 * levels[1:-1], [4095]])
    expected = np.concatenate([[0], levels[1:-1], [255]])
    return values.astype(np.uint16).reshape(3, 67), expected.astype(np.uint8).reshape(3, 67)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_12_bit_image_is_normalised_by_percentiles_not_shifted(tmp_path, suffix):
    values, expected = twelve_bit_values()
    path = tmp_path / f"deep{suffix}"
    if suffix == ".png":
        write_png(path, values)
        with Image.open(path) as written:
            assert written.mode.startswith("I")  # really a 16-bit PNG
    else:
        tifffile.imwrite(path, values)
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == (3, 67, 3)
    assert image[:, :, 0].tolist() == expected.tolist()
    assert (image[:, :, 0] == image[:, :, 2]).all()
    assert len(np.unique(image)) > 16 * 10  # a shift by 8 bits would leave 16 levels
    assert read_pixels(path).tolist() == values.tolist()  # as stored, for measurements


def test_16_bit_colour_png_keeps_its_16_bits_and_channel_order(tmp_path):
    values, expected = twelve_bit_values()
    rgb = np.stack([values, values // 2, np.full_like(values, 7)], axis=2)  # R, G, B
    path = tmp_path / "colour16.png"
    path.write_bytes(cv2.imencode(".png", rgb[:, :, ::-1])[1].tobytes())  # OpenCV is BGR
    assert read_pixels(path).dtype == np.uint16
    assert read_pixels(path).tolist() == rgb.tolist()
    image = read_image(path)
    # One pair of percentiles over all channels: the colours keep their balance.
    assert image[:, :, 2].max() == 0 and image[:, :, 0].max() == 255
    assert image[:, :, 0].tolist() != image[:, :, 1].tolist()


def test_float_tiff_and_colour_tiffs_are_read(tmp_path):
    values, expected = twelve_bit_values()
    tifffile.imwrite(tmp_path / "float.tif", values.astype(np.float32) / 4095)
    assert read_image(tmp_path / "float.tif")[:, :, 1].tolist() == expected.tolist()
    rgb = np.dstack([values, values, values])
    tifffile.imwrite(tmp_path / "chunky.tif", rgb)
    tifffile.imwrite(
        tmp_path / "planar.tif", np.moveaxis(rgb, 2, 0), photometric="rgb", planarconfig="separate"
    )
    for name in ("chunky.tif", "planar.tif"):
        assert read_pixels(tmp_path / name).shape == (3, 67, 3)
        assert read_image(tmp_path / name)[:, :, 2].tolist() == expected.tolist()
        assert read_image_shape(tmp_path / name) == (3, 67)


def test_lzw_tiff_falls_back_to_pillow(tmp_path):
    values, expected = twelve_bit_values()
    Image.fromarray(values).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    assert read_image(tmp_path / "lzw.tif")[:, :, 0].tolist() == expected.tolist()


def test_an_8_bit_image_is_not_stretched(tmp_path):
    dim = np.array([[10, 11], [12, 13]], dtype=np.uint8)
    assert read_image(write_png(tmp_path / "dim.png", dim))[:, :, 0].tolist() == dim.tolist()


def test_a_constant_deep_image_becomes_black(tmp_path):
    tifffile.imwrite(tmp_path / "flat.tif", np.full((4, 4), 3000, np.uint16))
    assert read_image(tmp_path / "flat.tif").max() == 0


def test_bad_image_files_are_named_with_their_problem(tmp_path):
    rgb = np.zeros((40, 40, 3), np.uint8)
    write_png(tmp_path / "whole.png", rgb)
    whole = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])
    tifffile.imwrite(tmp_path / "whole.tif", np.zeros((64, 64), np.uint16))
    tiff = (tmp_path / "whole.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(tiff[: len(tiff) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("just text")
    tifffile.imwrite(tmp_path / "complex.tif", np.zeros((4, 4), np.complex64))
    for name, problem in (
        ("cut.png", "not a readable image"),
        ("cut.tif", "not a readable TIFF image"),
        ("empty.png", "empty file"),
        ("notes.jpg", "not a PNG, JPEG or TIFF image"),
        ("complex.tif", "unsupported pixel type complex64"),
    ):
        with pytest.raises(PipelineError, match=f"{name}: .*{problem}"):
            read_image(tmp_path / name)


def test_list_image_files_finds_each_layout(tmp_path):
    kaggle, plain = tmp_path / "kaggle", tmp_path / "plain"
    write_png(image_path(kaggle, "k1"), GREY)
    write_png(kaggle / "loose.png", GREY)  # beside a Kaggle layout: ignored
    for name in ("b.TIF", "a.png", "c.jpeg", ".hidden.png", "notes.txt"):
        write_png(plain / name, GREY) if name != "notes.txt" else (plain / name).write_text("")
    (plain / "sub").mkdir()
    write_png(plain / "sub" / "deeper.png", GREY)  # sub-folders are not searched

    found = list_image_files(kaggle)
    assert found.layout == "kaggle" and [f.image_id for f in found.files] == ["k1"]
    assert found.files[0].path == image_path(kaggle, "k1")
    found = list_image_files(plain)
    assert found.layout == "folder" and found.name == "plain"
    assert [(f.image_id, f.path.name) for f in found.files] == [
        ("a", "a.png"),
        ("b", "b.TIF"),
        ("c", "c.jpeg"),
    ]
    found = list_image_files(plain / "b.TIF")
    assert found.layout == "file" and found.name == "b"
    assert found.files == (ImageFile("b", plain / "b.TIF"),)


def test_list_image_files_refuses_what_it_cannot_name(tmp_path):
    write_png(tmp_path / "same" / "x.png", GREY)
    write_png(tmp_path / "same" / "x.tiff", GREY)
    with pytest.raises(PipelineError, match="x.png and x.tiff have the same name"):
        list_image_files(tmp_path / "same")
    write_png(tmp_path / "comma" / "a,b.png", GREY)
    with pytest.raises(PipelineError, match="a,b.png: 'a,b' cannot be an ImageId"):
        list_image_files(tmp_path / "comma")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(PipelineError, match="nothing: no images found"):
        list_image_files(tmp_path / "nothing")
    with pytest.raises(PipelineError, match="absent: no such file or folder"):
        list_image_files(tmp_path / "absent")


def test_palette_png_is_expanded_to_its_colours(tmp_path):
    palette_image = Image.new("P", (3, 1))
    palette_image.putpalette([0, 0, 0, 255, 0, 0, 12, 34, 56] + [0] * (256 * 3 - 9))
    palette_image.putdata([2, 1, 0])
    palette_image.save(tmp_path / "palette.png")
    image = read_image(tmp_path / "palette.png")
    assert image.tolist() == [[[12, 34, 56], [255, 0, 0], [0, 0, 0]]]


def test_bilevel_png_becomes_0_and_255(tmp_path):
    bits = np.array([[True, False]])
    Image.fromarray(bits).save(tmp_path / "bits.png")
    assert read_image(tmp_path / "bits.png")[:, :, 1].tolist() == [[255, 0]]


def test_unreadable_image_names_the_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"not a png at all")
    with pytest.raises(PipelineError, match="broken.png: not a readable image"):
        read_image(path)
    with pytest.raises(PipelineError, match="missing.png: not a readable image"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(PipelineError, match="broken.png"):
        read_image_shape(path)


def test_read_image_shape_reads_height_then_width(tmp_path):
    path = write_png(tmp_path / "wide.png", np.zeros((3, 5), dtype=np.uint8))
    assert read_image_shape(path) == (3, 5)


def test_list_image_ids_keeps_only_kaggle_layout(tmp_path):
    write_png(image_path(tmp_path, "bbb"), GREY)
    write_png(image_path(tmp_path, "aaa"), GREY)
    (tmp_path / "not_an_image").mkdir()
    (tmp_path / ".unpacked.json").write_text("{}")
    assert list_image_ids(tmp_path) == ["aaa", "bbb"]
    with pytest.raises(PipelineError, match="no images in Kaggle layout"):
        list_image_ids(tmp_path / "not_an_image")
    with pytest.raises(PipelineError, match="no such folder"):
        list_image_ids(tmp_path / "absent")


# --------------------------------------------------------------------------- mask labels

SHAPE = (20, 24)


def test_masks_become_labels_in_sorted_file_name_order(tmp_path):
    first, second, third = disc(SHAPE, (5, 5), 3), disc(SHAPE, (12, 15), 4), disc(SHAPE, (4, 18), 2)
    # Written in another order than their names sort in.
    sample = write_sample(
        tmp_path, "img", dark_grey_image(), {"c.png": third, "a.png": first, "b.png": second}
    )
    assert [path.name for path in mask_paths(sample)] == ["a.png", "b.png", "c.png"]
    labels = read_mask_labels(sample)
    expected = first * 1 + second * 2 + third * 3
    assert labels.dtype == np.int32 and labels.shape == SHAPE
    assert np.array_equal(labels, expected)
    assert [int(np.count_nonzero(labels == k)) for k in (1, 2, 3)] == [25, 45, 9]


def test_overlapping_pixels_stay_with_the_first_mask_and_are_reported(tmp_path, caplog):
    first = np.zeros(SHAPE, dtype=bool)
    first[2:6, 2:8] = True  # 4 x 6
    second = np.zeros(SHAPE, dtype=bool)
    second[4:9, 5:10] = True  # 5 x 5, shares rows 4-5 and columns 5-7 with the first: 6 pixels
    sample = write_sample(
        tmp_path, "overlapping", dark_grey_image(), {"m1.png": first, "m2.png": second}
    )
    with caplog.at_level(logging.WARNING, logger="pipeline.data.dataset"):
        labels = read_mask_labels(sample)
    assert np.count_nonzero(labels == 1) == 24
    assert np.count_nonzero(labels == 2) == 25 - 6
    assert (labels[4:6, 5:8] == 1).all()
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1
    assert "overlapping" in warnings[0] and "6 pixel(s)" in warnings[0]


@pytest.mark.parametrize("write_order", [("a.png", "b.png"), ("b.png", "a.png")])
def test_overlapping_discs_resolve_by_name_whatever_the_write_order(tmp_path, caplog, write_order):
    left, right = disc(SHAPE, (10, 9), 5), disc(SHAPE, (10, 15), 5)
    shared = int(np.count_nonzero(left & right))
    assert shared == 17  # counted by hand: (r-10)**2 + (c-9)**2 < 25 and (r-10)**2 + (c-15)**2 < 25
    masks = {"a.png": left, "b.png": right}
    sample = write_sample(tmp_path, "img", dark_grey_image(), {n: masks[n] for n in write_order})
    with caplog.at_level(logging.WARNING, logger="pipeline.data.dataset"):
        labels = read_mask_labels(sample)
    assert np.array_equal(labels, np.where(left, 1, np.where(right, 2, 0)))
    assert "img: 17 pixel(s) belong to more than one mask" in caplog.text


@pytest.mark.parametrize("mode", ["L", "1", "RGB", "P"])
def test_masks_in_any_png_mode_give_the_same_labels(tmp_path, mode):
    mask = disc(SHAPE, (9, 9), 4)
    sample_dir = tmp_path / "img"
    write_png(image_path(tmp_path, "img"), dark_grey_image())
    write_png(sample_dir / "masks" / "m.png", mask.astype(np.uint8) * 255, mode=mode)
    assert np.array_equal(read_mask_labels(sample_dir), mask.astype(np.int32))


def test_shape_can_be_given_instead_of_reading_the_image(tmp_path):
    mask = disc(SHAPE, (9, 9), 4)
    write_png(tmp_path / "img" / "masks" / "m.png", mask.astype(np.uint8) * 255)
    labels = read_mask_labels(tmp_path / "img", shape=SHAPE)  # no images/img.png here
    assert np.array_equal(labels, mask.astype(np.int32))


def test_mask_of_another_shape_is_an_error_naming_it(tmp_path):
    sample = write_sample(tmp_path, "img", dark_grey_image(), {"ok.png": disc(SHAPE, (5, 5), 3)})
    write_png(sample / "masks" / "small.png", np.zeros((10, 24), dtype=np.uint8))
    with pytest.raises(
        PipelineError, match=r"small\.png: mask is 10x24 but its image img is 20x24"
    ):
        read_mask_labels(sample)


def test_unreadable_mask_is_an_error_naming_it(tmp_path):
    sample = write_sample(tmp_path, "img", dark_grey_image(), {"a.png": disc(SHAPE, (5, 5), 3)})
    (sample / "masks" / "b.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(PipelineError, match=r"b\.png: not a readable mask image"):
        read_mask_labels(sample)


def test_missing_masks_folder_is_an_error(tmp_path):
    write_png(image_path(tmp_path, "img"), dark_grey_image())
    with pytest.raises(PipelineError, match="no masks folder"):
        read_mask_labels(tmp_path / "img")


def test_empty_mask_keeps_the_numbering_and_warns(tmp_path, caplog):
    masks = {"a.png": np.zeros(SHAPE, dtype=bool), "b.png": disc(SHAPE, (9, 9), 3)}
    sample = write_sample(tmp_path, "img", dark_grey_image(), masks)
    with caplog.at_level(logging.WARNING, logger="pipeline.data.dataset"):
        labels = read_mask_labels(sample)
    assert sorted(np.unique(labels).tolist()) == [0, 2]
    assert "a.png: empty mask" in caplog.text


# --------------------------------------------------------------------------- RLE CSV


def write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_train_labels_csv_needs_shapes_and_numbers_rows_in_file_order(tmp_path):
    # 3x3 image; pixels are numbered down the columns: 1 4 7 / 2 5 8 / 3 6 9.
    path = write_csv(
        tmp_path / "train.csv",
        ["ImageId,EncodedPixels", "a,1 2", "b,5 1", "a,8 2", "a,", "empty,"],
    )
    labels = labels_from_rle_csv(path, shapes={"a": (3, 3), "b": (2, 4), "empty": (1, 2)})
    assert list(labels) == ["a", "b", "empty"]
    assert labels["a"].tolist() == [[1, 0, 0], [1, 0, 2], [0, 0, 2]]
    assert labels["a"].dtype == np.int32
    assert labels["b"].tolist() == [[0, 0, 1, 0], [0, 0, 0, 0]]
    assert labels["empty"].tolist() == [[0, 0]]


def test_solution_csv_carries_its_shapes_and_usage(tmp_path):
    path = write_csv(
        tmp_path / "solution.csv",
        [
            "ImageId,EncodedPixels,Height,Width,Usage",
            "x,1 1,2,3,Public",
            "x,5 2,2,3,Public",
            "y,2 1,1,2,Private",
        ],
    )
    labels = labels_from_rle_csv(path)
    assert labels["x"].tolist() == [[1, 0, 2], [0, 0, 2]]
    assert labels["y"].tolist() == [[0, 1]]


def test_overlapping_rows_stay_with_the_first_and_warn(tmp_path, caplog):
    # 3x2 image, pixels 1 2 3 down the first column, 4 5 6 down the second: the second row
    # covers 3, 4 and 5, of which 3 and 4 are the first row's.
    path = write_csv(tmp_path / "over.csv", ["ImageId,EncodedPixels", "img,1 4", "img,3 3"])
    with caplog.at_level(logging.WARNING, logger="pipeline.data.dataset"):
        labels = labels_from_rle_csv(path, shapes={"img": (3, 2)})
    assert labels["img"].tolist() == [[1, 1], [1, 2], [1, 0]]
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "over.csv" in message and "img" in message and "2 pixel(s)" in message


@pytest.mark.parametrize(
    ("lines", "shapes", "message"),
    [
        (["ImageId,EncodedPixels", "a,1 1", "a,2 x"], {"a": (2, 2)}, r"line 3: bad EncodedPixels"),
        (
            ["ImageId,EncodedPixels", "a,1 1", "a,3 9"],
            {"a": (2, 2)},
            r"line 3: .*outside the image",
        ),
        (["ImageId,EncodedPixels", "a,1 1", "b,2 1"], {"a": (2, 2)}, r"line 3: no Height/Width"),
        (["ImageId,EncodedPixels", "a,1 1"], None, r"line 2: no Height/Width columns"),
        (["ImageId,Pixels", "a,1 1"], None, r"line 1: missing column\(s\) EncodedPixels"),
        (["ImageId,EncodedPixels,Height", "a,1 1,2"], None, r"line 1: has only one of"),
        (
            ["ImageId,EncodedPixels,Height,Width", "a,1 1,2,2", "a,2 1,2,3"],
            None,
            r"line 3: ImageId a is 2x3 here but 2x2",
        ),
        (["ImageId,EncodedPixels,Height,Width", "a,1 1,two,2"], None, r"line 2: Height/Width"),
        (["ImageId,EncodedPixels,Height,Width", "a,1 1,2,2"], {"a": (3, 3)}, r"2x2 in the file"),
        (["ImageId,EncodedPixels", "a"], None, r"line 2: 1 field\(s\)"),
    ],
)
def test_bad_csv_errors_name_the_file_and_line(tmp_path, lines, shapes, message):
    path = write_csv(tmp_path / "bad.csv", lines)
    with pytest.raises(PipelineError, match=message) as error:
        labels_from_rle_csv(path, shapes=shapes)
    assert str(error.value).startswith(str(path))


def test_missing_csv_is_an_error(tmp_path):
    with pytest.raises(PipelineError, match="no such CSV file"):
        labels_from_rle_csv(tmp_path / "absent.csv", shapes={})


def test_csv_written_from_mask_labels_reads_back_the_same(tmp_path):
    masks = {
        f"{k}.png": disc(SHAPE, center, 3) for k, center in enumerate([(4, 4), (14, 18), (4, 14)])
    }
    sample = write_sample(tmp_path / "train", "img", dark_grey_image(), masks)
    labels = read_mask_labels(sample)
    lines = ["ImageId,EncodedPixels"] + [f"img,{rle}" for rle in encode_labels(labels)]
    from_csv = labels_from_rle_csv(write_csv(tmp_path / "labels.csv", lines), {"img": SHAPE})
    assert np.array_equal(from_csv["img"], labels)


# --------------------------------------------------------------------------- image kinds


def test_image_kinds_of_synthetic_images():
    assert image_kind(dark_grey_image()) == "fluorescence"
    green = np.zeros((20, 24, 3), dtype=np.uint8)
    green[disc((20, 24), (10, 10), 6)] = (0, 180, 0)
    assert image_kind(green) == "fluorescence"  # single-colour fluorescence
    bright = np.full((20, 24, 3), 210, dtype=np.uint8)
    bright[disc((20, 24), (10, 10), 6)] = 90
    assert image_kind(bright) == "brightfield"
    assert image_kind(histology_image()) == "histology"
    assert image_kind(np.full((5, 5), 230, dtype=np.uint8)) == "brightfield"  # 2-D grey
    assert set(KINDS) == {"fluorescence", "brightfield", "histology"}


def test_image_kind_thresholds_are_inclusive_for_fluorescence():
    at_threshold = np.full((4, 4, 3), 100, dtype=np.uint8)
    assert image_kind(at_threshold) == "fluorescence"
    assert image_kind(at_threshold + 1) == "brightfield"
    tinted = np.full((4, 4, 3), 200, dtype=np.uint8)
    tinted[:, :, 2] = 205  # spread 5: still grey
    assert image_kind(tinted) == "brightfield"
    tinted[:, :, 2] = 206
    assert image_kind(tinted) == "histology"


def test_image_kind_refuses_other_shapes():
    with pytest.raises(ValueError, match="got shape"):
        image_kind(np.zeros((4, 4, 4), dtype=np.uint8))


# --------------------------------------------------------------------------- samples


@pytest.fixture()
def tiny_train_dir(tmp_path) -> Path:
    images_dir = tmp_path / "stage1_train"
    write_sample(images_dir, "b_histo", histology_image(), {"n.png": disc(SHAPE, (10, 12), 5)})
    write_sample(
        images_dir,
        "a_fluo",
        dark_grey_image(),
        {"1.png": disc(SHAPE, (6, 6), 4), "2.png": disc(SHAPE, (14, 18), 3)},
    )
    return images_dir


def test_load_samples_reads_images_labels_and_kinds(tiny_train_dir):
    samples = load_samples(tiny_train_dir)
    assert [sample.image_id for sample in samples] == ["a_fluo", "b_histo"]
    assert [sample.kind for sample in samples] == ["fluorescence", "histology"]
    first = samples[0]
    assert isinstance(first, Sample) and first.shape == SHAPE
    assert np.array_equal(first.image, dark_grey_image())
    expected = disc(SHAPE, (6, 6), 4) * 1 + disc(SHAPE, (14, 18), 3) * 2
    assert np.array_equal(first.labels, expected)


def test_load_samples_without_labels_and_with_chosen_ids(tiny_train_dir):
    samples = load_samples(tiny_train_dir, with_labels=False, ids=["b_histo", "a_fluo"])
    assert [sample.image_id for sample in samples] == ["b_histo", "a_fluo"]
    assert all(sample.labels is None for sample in samples)
    with pytest.raises(PipelineError, match="1 requested image"):
        load_samples(tiny_train_dir, ids=["a_fluo", "zzz"])


def test_iter_images_yields_one_sample_at_a_time(tiny_train_dir):
    images = iter_images(tiny_train_dir)
    first = next(images)
    assert (first.image_id, first.kind, first.labels) == ("a_fluo", "fluorescence", None)
    assert [sample.image_id for sample in images] == ["b_histo"]
    # Unknown ids are refused when the iterator is made, not half-way through.
    with pytest.raises(PipelineError, match="zzz"):
        iter_images(tiny_train_dir, ids=["zzz"])


# --------------------------------------------------------------------------- real data

N_TRAIN_IMAGES = 596
N_TRAIN_NUCLEI = 26302
# Stage-1 masks that share pixels (the README says they do not; these three do), with the
# number of pixels shared. The RLE CSV holds the same overlaps.
OVERLAPPING_TRAIN_IMAGES = {
    "1609b1b8480ee52652a644403b3f7d5511410a016750aa3b9a4c8ddb3e893e8e": 1,
    "547ef286ee5f4e5dce533e982e6992ada67b7d727fdd3cfa6576f24c631a7ae6": 2,
    "72e8c49dea44787114fd191f9e97e260f961c6e7ae4715bc95cc91db8d91a4e3": 2,
}


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _overlap_counts(messages: list[str]) -> dict[str, int]:
    """ImageId -> overlapping pixel count, from the overlap warnings."""
    counts = {}
    for message in messages:
        for image_id in OVERLAPPING_TRAIN_IMAGES:
            if image_id in message and "pixel(s)" in message:
                counts[image_id] = int(message.split(" pixel(s)")[0].rsplit(" ", 1)[-1])
    assert len(counts) == len(messages), messages
    return counts


@pytest.fixture(scope="session")
def real_train_samples(real_train_dir) -> tuple[list[Sample], list[str]]:
    """All of stage1_train loaded once (images, mask labels, kinds), with the warnings."""
    handler = _Records()
    logger = logging.getLogger("pipeline.data.dataset")
    logger.addHandler(handler)
    try:
        samples = load_samples(real_train_dir)
    finally:
        logger.removeHandler(handler)
    return samples, handler.messages


@pytest.mark.realdata
def test_every_train_image_has_one_label_per_mask(real_train_dir, real_train_samples):
    samples, warnings = real_train_samples
    assert len(samples) == N_TRAIN_IMAGES
    total = 0
    for sample in samples:
        assert sample.labels.dtype == np.int32 and sample.labels.shape == sample.shape
        n_masks = len(mask_paths(real_train_dir / sample.image_id))
        # Every mask keeps at least one pixel: labels are exactly 1..n_masks.
        assert np.unique(sample.labels).tolist() == list(range(n_masks + 1)), sample.image_id
        total += n_masks
    assert total == N_TRAIN_NUCLEI
    assert _overlap_counts(warnings) == OVERLAPPING_TRAIN_IMAGES


@pytest.mark.realdata
def test_rle_round_trip_on_every_train_image(real_train_samples):
    samples, _ = real_train_samples
    for sample in samples:
        rles = encode_labels(sample.labels)
        assert len(rles) == sample.labels.max()
        assert np.array_equal(decode_labels(rles, sample.shape), sample.labels), sample.image_id


@pytest.mark.realdata
def test_train_labels_csv_matches_the_masks(real_train_samples, real_train_labels_csv, caplog):
    samples, _ = real_train_samples
    shapes = {sample.image_id: sample.shape for sample in samples}
    with caplog.at_level(logging.WARNING, logger="pipeline.data.dataset"):
        from_csv = labels_from_rle_csv(real_train_labels_csv, shapes)
    assert sorted(from_csv) == sorted(shapes)
    # The CSV lists each image's nuclei in the sorted order of the mask file names, so the
    # labels (overlaps resolved the same way) are identical, not merely the same set.
    for sample in samples:
        assert np.array_equal(from_csv[sample.image_id], sample.labels), sample.image_id
    assert _overlap_counts([r.getMessage() for r in caplog.records]) == OVERLAPPING_TRAIN_IMAGES


@pytest.mark.realdata
def test_image_kinds_on_stage1_train(real_train_samples):
    samples, _ = real_train_samples
    counts = collections.Counter(sample.kind for sample in samples)
    # Checked by eye: the 96 stained images are the purple 256x320 slides, the 14
    # brightfield ones the grey 1024x1024 cells on a light background.
    assert counts == {"fluorescence": 486, "histology": 96, "brightfield": 14}
    sizes = {sample.shape for sample in samples if sample.kind == "brightfield"}
    assert sizes == {(1024, 1024)}


@pytest.mark.realdata
def test_solution_csv_fits_the_test_images(real_test_dir, real_solution_csv):
    kinds = collections.Counter()
    shapes = {}
    for sample in iter_images(real_test_dir):
        kinds[sample.kind] += 1
        shapes[sample.image_id] = sample.shape
    assert len(shapes) == 65
    assert kinds == {"fluorescence": 53, "histology": 12}
    labels = labels_from_rle_csv(real_solution_csv)
    assert sorted(labels) == sorted(shapes)
    assert all(labels[image_id].shape == shape for image_id, shape in shapes.items())
    assert sum(int(image_labels.max()) for image_labels in labels.values()) == 4152
