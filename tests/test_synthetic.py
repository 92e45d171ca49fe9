"""Tests of the synthetic demo data set (pipeline/synthetic.py)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.data.dataset import list_image_ids, read_image
from pipeline.data.rle import decode_labels
from pipeline.data.synthetic import (
    KINDS,
    MARKER_NAME,
    DemoPaths,
    demo_image_id,
    demo_sample,
    draw_sample,
    make_demo_dataset,
    make_sample,
)
from pipeline.errors import PipelineError

# A tiny set: small images, a few of each split; written in well under a second.
TINY = {"n_train": 4, "n_test": 3, "seed": 5, "size_range": (64, 96)}


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> DemoPaths:
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), **TINY)


def _adjacent_pairs(labels: np.ndarray, diagonal: bool) -> set[tuple[int, int]]:
    """Pairs of different instances with 4-adjacent (or also diagonal) pixels."""
    shifts = [(labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])]
    if diagonal:
        shifts += [(labels[:-1, :-1], labels[1:, 1:]), (labels[:-1, 1:], labels[1:, :-1])]
    pairs = set()
    for first, second in shifts:
        contact = (first != second) & (first > 0) & (second > 0)
        for a, b in zip(first[contact].tolist(), second[contact].tolist(), strict=True):
            pairs.add((min(a, b), max(a, b)))
    return pairs


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


# --- one sample ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_make_sample_types_and_consecutive_labels(kind: str) -> None:
    image, labels = make_sample(np.random.default_rng(3), 70, 90, kind)
    assert image.shape == (70, 90, 3) and image.dtype == np.uint8
    assert labels.shape == (70, 90) and labels.dtype == np.int32
    count = int(labels.max())
    assert count >= 3
    np.testing.assert_array_equal(np.unique(labels), np.arange(count + 1))


def test_kinds_look_like_their_microscopy() -> None:
    rng = np.random.default_rng(11)
    fluo_image, fluo_labels = make_sample(rng, 96, 96, "fluorescence")
    hist_image, hist_labels = make_sample(rng, 96, 96, "histology")
    # Fluorescence: grey, bright nuclei on a dark background.
    assert (fluo_image[..., 0] == fluo_image[..., 1]).all()
    assert (fluo_image[..., 0] == fluo_image[..., 2]).all()
    grey = fluo_image[..., 0].astype(float)
    assert grey[fluo_labels > 0].mean() > grey[fluo_labels == 0].mean() + 40
    # Histology: coloured (blue above green in the nuclei), darker nuclei on light.
    brightness = hist_image.astype(float).mean(axis=2)
    assert brightness[hist_labels == 0].mean() > 180
    assert brightness[hist_labels > 0].mean() < brightness[hist_labels == 0].mean() - 30
    nuclei = hist_image[hist_labels > 0].astype(float)
    assert nuclei[:, 2].mean() > nuclei[:, 1].mean() + 20


def test_same_generator_state_same_sample_other_state_other_sample() -> None:
    first = draw_sample(np.random.default_rng(7), 80, 100, "histology")
    again = draw_sample(np.random.default_rng(7), 80, 100, "histology")
    other = draw_sample(np.random.default_rng(8), 80, 100, "histology")
    assert first.image.tobytes() == again.image.tobytes()
    assert first.labels.tobytes() == again.labels.tobytes()
    assert first.touching_pairs == again.touching_pairs
    assert first.labels.tobytes() != other.labels.tobytes()


def test_touching_pairs_touch_and_all_other_nuclei_keep_apart() -> None:
    total_pairs = 0
    for index in range(36):
        sample = demo_sample("train", index, seed=0)
        drawn = set(sample.touching_pairs)
        total_pairs += len(drawn)
        # Exactly the drawn pairs share a boundary (4-adjacent pixels) ...
        assert _adjacent_pairs(sample.labels, diagonal=False) == drawn
        # ... and no other pair comes even diagonally close.
        assert _adjacent_pairs(sample.labels, diagonal=True) == drawn
    assert total_pairs >= 100  # touching pairs are common, not a rarity


def test_nucleus_sizes_are_varied() -> None:
    sample = demo_sample("train", 0, seed=0, size_range=(192, 192))
    areas = np.bincount(sample.labels.ravel())[1:]
    assert areas.min() >= 12
    assert areas.max() <= np.pi * 14 * 14 * 1.16**2  # largest semi-axes, widest outline wave
    assert np.percentile(areas, 90) > 2 * np.percentile(areas, 10)


@pytest.mark.parametrize(
    ("height", "width", "kind"), [(15, 40, "histology"), (40, 40, "brightfield")]
)
def test_make_sample_rejects_bad_arguments(height: int, width: int, kind: str) -> None:
    with pytest.raises(ValueError):
        make_sample(np.random.default_rng(0), height, width, kind)


def test_demo_image_ids() -> None:
    assert demo_image_id("train", 0) == "demo-train-000"
    assert demo_image_id("test", 11, count=12) == "demo-test-011"
    assert demo_image_id("train", 5, count=2000) == "demo-train-0005"
    with pytest.raises(ValueError):
        demo_image_id("valid", 0)


# --- the data set on disk -----------------------------------------------------------------


def test_layout_images_and_masks(tiny_set: DemoPaths) -> None:
    root = tiny_set.root
    assert tiny_set.train_dir == root / "stage1_train"
    assert tiny_set.test_dir == root / "stage1_test"
    assert tiny_set.solution_csv == root / "stage1_solution.csv"
    assert list_image_ids(tiny_set.train_dir) == [f"demo-train-00{i}" for i in range(4)]
    assert list_image_ids(tiny_set.test_dir) == [f"demo-test-00{i}" for i in range(3)]
    assert not any(
        (tiny_set.test_dir / image_id / "masks").exists()
        for image_id in list_image_ids(tiny_set.test_dir)
    )
    sizes = set()
    for index, image_id in enumerate(list_image_ids(tiny_set.train_dir)):
        sample = demo_sample("train", index, TINY["seed"], TINY["size_range"])
        folder = tiny_set.train_dir / image_id
        np.testing.assert_array_equal(
            read_image(folder / "images" / f"{image_id}.png"), sample.image
        )
        mask_files = sorted((folder / "masks").glob("*.png"))
        assert len(mask_files) == sample.labels.max()
        stacked = np.zeros(sample.labels.shape, dtype=np.int32)
        for number, mask_file in enumerate(mask_files, start=1):
            mask = np.asarray(Image.open(mask_file))
            assert mask.dtype == np.uint8 and mask.ndim == 2
            assert set(np.unique(mask).tolist()) == {0, 255}
            np.testing.assert_array_equal(mask == 255, sample.labels == number)
            stacked += mask == 255
        assert stacked.max() == 1  # masks never overlap
        height, width = sample.labels.shape
        assert 64 <= height <= 96 and 64 <= width <= 96
        sizes.add((height, width))
    assert len(sizes) > 1 and any(h != w for h, w in sizes)
    marker = json.loads((root / MARKER_NAME).read_text())
    assert marker["n_train"] == 4 and marker["n_test"] == 3 and marker["seed"] == 5


def test_solution_csv_decodes_to_the_known_labels(tiny_set: DemoPaths) -> None:
    solution = pd.read_csv(tiny_set.solution_csv, dtype={"EncodedPixels": str})
    assert list(solution.columns) == ["ImageId", "EncodedPixels", "Height", "Width", "Usage"]
    assert set(solution["Usage"]) == {"Public"}
    assert list(dict.fromkeys(solution["ImageId"])) == [f"demo-test-00{i}" for i in range(3)]
    for index, (image_id, rows) in enumerate(solution.groupby("ImageId", sort=True)):
        sample = demo_sample("test", index, TINY["seed"], TINY["size_range"])
        shape = sample.labels.shape
        assert set(rows["Height"]) == {shape[0]} and set(rows["Width"]) == {shape[1]}
        assert len(rows) == sample.labels.max()
        decoded = decode_labels(list(rows["EncodedPixels"]), shape)
        np.testing.assert_array_equal(decoded, sample.labels)
        image = read_image(tiny_set.test_dir / image_id / "images" / f"{image_id}.png")
        assert image.shape[:2] == shape


def test_both_kinds_present(tiny_set: DemoPaths) -> None:
    for folder in (tiny_set.train_dir, tiny_set.test_dir):
        grey = []
        for image_id in list_image_ids(folder):
            image = read_image(folder / image_id / "images" / f"{image_id}.png")
            grey.append(bool((image[..., 0] == image[..., 1]).all()))
        assert True in grey and False in grey


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    first = make_demo_dataset(tmp_path / "a", **TINY)
    second = make_demo_dataset(tmp_path / "b", **TINY)
    third = make_demo_dataset(tmp_path / "c", **{**TINY, "seed": 6})
    first_bytes = _tree_bytes(first.root)
    assert len(first_bytes) > 4 + 3 + 2  # images, masks, CSV and marker
    assert first_bytes == _tree_bytes(second.root)
    assert first.solution_csv.read_bytes() != third.solution_csv.read_bytes()


def test_marker_skips_a_complete_set_and_regenerates_otherwise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "set"
    paths = make_demo_dataset(root, **TINY)
    train_inode = paths.train_dir.stat().st_ino
    csv_mtime = paths.solution_csv.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="pipeline.data.synthetic"):
        again = make_demo_dataset(root, **TINY)
    assert again == paths
    assert "up to date" in caplog.text
    assert paths.train_dir.stat().st_ino == train_inode  # not rewritten
    assert paths.solution_csv.stat().st_mtime_ns == csv_mtime

    # Other parameters: written again, with the new marker.
    make_demo_dataset(root, **{**TINY, "seed": 6})
    other_seed = make_demo_dataset(tmp_path / "other-seed", **{**TINY, "seed": 6})
    assert _tree_bytes(root) == _tree_bytes(other_seed.root)
    make_demo_dataset(root, **{**TINY, "n_test": 2})
    assert list_image_ids(paths.test_dir) == ["demo-test-000", "demo-test-001"]
    assert json.loads((root / MARKER_NAME).read_text())["n_test"] == 2

    # An incomplete set (an image folder gone) is written again too.
    make_demo_dataset(root, **TINY)
    shutil.rmtree(paths.train_dir / "demo-train-003")
    make_demo_dataset(root, **TINY)
    reference = make_demo_dataset(tmp_path / "reference", **TINY)
    assert _tree_bytes(root) == _tree_bytes(reference.root)


def test_other_content_of_root_is_kept_and_real_data_never_replaced(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    make_demo_dataset(tmp_path, **TINY)
    assert (tmp_path / "notes.txt").read_text() == "keep me"

    real = tmp_path / "real"
    real_image = real / "stage1_train" / ("ab" * 32) / "images" / (("ab" * 32) + ".png")
    real_image.parent.mkdir(parents=True)
    real_image.write_bytes(b"not ours")
    with pytest.raises(PipelineError, match="not synthetic demo images"):
        make_demo_dataset(real, **TINY)
    assert real_image.read_bytes() == b"not ours"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_train": 0},
        {"n_test": 0},
        {"seed": -1},
        {"size_range": (96, 64)},
        {"size_range": (8, 64)},
    ],
)
def test_make_demo_dataset_rejects_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        make_demo_dataset(tmp_path, **{**TINY, **kwargs})
    assert not (tmp_path / MARKER_NAME).exists()
