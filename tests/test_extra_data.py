"""Extra annotated training sets (``train --extra``) and fine-tuning (``train --init``).

Tiny synthetic sets in each layout a user may have (a plain folder with ``_masks`` label
images, ``images/`` + ``labels/``, Kaggle layout, a zip of any), the one-line errors for
bad extra data, the split that keeps tiles together, the source weighting, and the
fine-tuning's start from a finished model's exact weights.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from skimage.draw import disk

from pipeline.data.extra import group_of, load_extra_set
from pipeline.errors import PipelineError
from pipeline.learning.splits import split_extra
from pipeline.learning.training import source_probabilities
from tests.conftest import TINY_FLAGS, one_error_line, run_cli


def _disc_image(seed: int, size: int = 64, n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A grey fluorescence-like image with ``n`` bright discs, and their labels 1..n."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size), 10, dtype=np.uint8)
    labels = np.zeros((size, size), dtype=np.uint16)
    for label in range(1, n + 1):
        centre = (12 + 18 * (label - 1), int(rng.integers(12, size - 12)))
        rows, cols = disk(centre, 7, shape=labels.shape)
        image[rows, cols] = 200
        labels[rows, cols] = label
    return image, labels


def _masks_folder(root: Path, names=("a", "b", "c")) -> Path:
    """Cellpose's convention: ``name.tif`` + ``name_masks.tif``."""
    root.mkdir(parents=True)
    for seed, name in enumerate(names):
        image, labels = _disc_image(seed)
        tifffile.imwrite(root / f"{name}.tif", image)
        tifffile.imwrite(root / f"{name}_masks.tif", labels)
    return root


def _kaggle_folder(root: Path, ids=("k1_tile1", "k1_tile2", "k2")) -> Path:
    for seed, image_id in enumerate(ids):
        image, labels = _disc_image(seed + 10)
        (root / image_id / "images").mkdir(parents=True)
        (root / image_id / "masks").mkdir()
        Image.fromarray(image).save(root / image_id / "images" / f"{image_id}.png")
        for label in range(1, int(labels.max()) + 1):
            mask = ((labels == label) * 255).astype(np.uint8)
            Image.fromarray(mask).save(root / image_id / "masks" / f"{label}.png")
    return root


def _zip_of(folder: Path, zip_path: Path, top: str | None = None) -> Path:
    with zipfile.ZipFile(zip_path, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                name = path.relative_to(folder).as_posix()
                archive.write(path, f"{top}/{name}" if top else name)
    return zip_path


# --------------------------------------------------------------------------- layouts


def test_a_plain_folder_with_masks_label_images(tmp_path):
    extra = load_extra_set(_masks_folder(tmp_path / "mine"))
    assert (extra.name, extra.layout, extra.files) == ("mine", "images+masks", 6)
    assert [s.image_id for s in extra.samples] == ["a", "b", "c"]
    assert {s.source for s in extra.samples} == {"mine"}
    image, labels = _disc_image(0)
    assert np.array_equal(extra.samples[0].labels, labels)
    assert extra.samples[0].image.shape == (64, 64, 3)
    assert extra.record()["nuclei"] == 9


def test_images_and_labels_folders(tmp_path):
    root = tmp_path / "pair"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    image, labels = _disc_image(3)
    Image.fromarray(image).save(root / "images" / "x.png")
    Image.fromarray(labels).save(root / "labels" / "x.png")
    extra = load_extra_set(root)
    assert extra.layout == "images+labels"
    assert np.array_equal(extra.samples[0].labels, labels)


def test_a_kaggle_layout_folder_and_its_zip_read_the_same(tmp_path):
    folder = _kaggle_folder(tmp_path / "kag")
    from_folder = load_extra_set(folder)
    from_zip = load_extra_set(_zip_of(folder, tmp_path / "kag.zip", top="kag"))
    assert from_folder.layout == "kaggle" and from_zip.layout == "zip (kaggle)"
    assert from_zip.name == "kag"
    assert from_folder.sha256 == from_zip.sha256
    for a, b in zip(from_folder.samples, from_zip.samples, strict=True):
        assert a.image_id == b.image_id
        assert np.array_equal(a.labels, b.labels) and np.array_equal(a.image, b.image)
    assert [int(s.labels.max()) for s in from_zip.samples] == [3, 3, 3]


def test_a_zip_of_a_masks_folder(tmp_path):
    zipped = _zip_of(_masks_folder(tmp_path / "m"), tmp_path / "cells.zip")
    extra = load_extra_set(zipped)
    assert (extra.name, extra.layout, len(extra.samples)) == ("cells", "zip (images+masks)", 3)


def test_a_binary_mask_becomes_its_connected_pieces(tmp_path):
    root = tmp_path / "bin"
    root.mkdir()
    image, labels = _disc_image(5)
    Image.fromarray(image).save(root / "p.png")
    Image.fromarray(((labels > 0) * 255).astype(np.uint8)).save(root / "p_masks.png")
    assert int(load_extra_set(root).samples[0].labels.max()) == 3


def test_the_checksum_follows_the_contents(tmp_path):
    folder = _masks_folder(tmp_path / "s")
    before = load_extra_set(folder).sha256
    image, labels = _disc_image(0)
    labels[0, 0] = 7
    tifffile.imwrite(folder / "a_masks.tif", labels)
    assert load_extra_set(folder).sha256 != before


# --------------------------------------------------------------------------- bad data


def test_an_image_without_labels_is_named(tmp_path):
    folder = _masks_folder(tmp_path / "s")
    (folder / "b_masks.tif").unlink()
    with pytest.raises(PipelineError, match=r"b\.tif: an image without labels"):
        load_extra_set(folder)


def test_labels_of_another_size_are_named(tmp_path):
    folder = _masks_folder(tmp_path / "s")
    tifffile.imwrite(folder / "c_masks.tif", np.ones((32, 64), dtype=np.uint16))
    with pytest.raises(PipelineError, match=r"c_masks\.tif: labels of size 32x64 for an image"):
        load_extra_set(folder)


def test_an_empty_label_image_is_named(tmp_path):
    folder = _masks_folder(tmp_path / "s")
    tifffile.imwrite(folder / "a_masks.tif", np.zeros((64, 64), dtype=np.uint16))
    with pytest.raises(PipelineError, match=r"a_masks\.tif: an empty label image"):
        load_extra_set(folder)


def test_a_kaggle_mask_of_another_size_is_named(tmp_path):
    folder = _kaggle_folder(tmp_path / "kag")
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(folder / "k2" / "masks" / "9.png")
    with pytest.raises(PipelineError, match=r"k2/masks/9\.png: mask is 10x10"):
        load_extra_set(folder)


def test_a_zip_with_parent_paths_is_refused(tmp_path):
    zipped = tmp_path / "evil.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("../x/images/x.png", b"nothing")
    with pytest.raises(PipelineError, match=r"evil\.zip: refusing .* points outside"):
        load_extra_set(zipped)


def test_bad_extra_data_is_one_error_line_from_train(tmp_path, tiny_demo, capsys):
    folder = _masks_folder(tmp_path / "s")
    (folder / "a_masks.tif").unlink()
    out = tmp_path / "model"
    argv = ["train", "--preset", "demo", *TINY_FLAGS, "--epochs", "1", "--images"]
    argv += [str(tiny_demo.train_dir), "--out", str(out), "--extra", str(folder)]
    status, _, err = run_cli(argv, capsys)
    assert status == 2
    assert "a.tif: an image without labels" in one_error_line(err)


def test_an_unknown_set_name_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError, match="no such folder or zip"):
        load_extra_set("nosuchset", input_dir=tmp_path)
    with pytest.raises(PipelineError, match=r"download --from DIR"):
        load_extra_set("monuseg", input_dir=tmp_path)


# --------------------------------------------------------------------------- split, weighting


def test_tiles_of_one_image_stay_on_one_side_and_a_held_out_source():
    sources = {
        "he1": {f"he1_{i}": f"he1_{i}" for i in range(6)},
        "he2": {f"he2_{i}": f"he2_{i}" for i in range(6)},
        "fl": {f"fl_{g}_tile{t}": f"fl_{g}" for g in range(8) for t in range(4)},
    }
    kinds = {"he1": "histology", "he2": "histology", "fl": "fluorescence"}
    random = split_extra(sources, kinds, 0.25, seed=3)
    assert random["held_out_sources"] == []
    held_groups = {group_of(i) for i in random["val"]["fl"]}
    assert len(held_groups) == 2  # 8 images x 0.25
    assert not held_groups & {group_of(i) for i in random["train"]}
    assert len(random["val"]["fl"]) == 8  # their 4 tiles each
    conditions = split_extra(sources, kinds, 0.25, seed=3, kind="conditions")
    (whole,) = conditions["held_out_sources"]
    assert whole in ("he1", "he2")
    assert sorted(conditions["val"][whole]) == sorted(sources[whole])
    assert not set(sources[whole]) & set(conditions["train"])


def test_source_weighting_counts_images_not_tiles():
    sources = [""] * 4 + ["lpc"] * 8
    groups = [f"s{i}" for i in range(4)] + [f"g{i // 4}" for i in range(8)]  # 2 images
    sqrt = source_probabilities(sources, "sqrt", groups)
    assert sqrt[:4].sum() == pytest.approx(2 / (2 + 2**0.5))
    size = source_probabilities(sources, "size", groups)
    assert size[:4].sum() == pytest.approx(4 / 6)
    assert source_probabilities(sources, "equal", groups)[4:].sum() == pytest.approx(0.5)
    assert source_probabilities([""] * 3, "equal") is None


# --------------------------------------------------------------------------- train


def test_train_with_extra_records_sets_and_scores_them(tmp_path, tiny_demo, capsys):
    kag = _kaggle_folder(tmp_path / "kag", ids=[f"k{i}_tile{t}" for i in range(4) for t in (1, 2)])
    zipped = _zip_of(_masks_folder(tmp_path / "cells", names="pqrst"), tmp_path / "cells.zip")
    out = tmp_path / "model"
    argv = ["train", "--preset", "demo", *TINY_FLAGS, "--epochs", "1", "--images"]
    argv += [str(tiny_demo.train_dir), "--out", str(out), "--extra", str(kag)]
    argv += ["--extra", str(zipped), "--source-weighting", "equal"]
    status, _, err = run_cli(argv, capsys)
    assert status == 0, err
    split = json.loads((out / "split.json").read_text())
    assert [r["name"] for r in split["extra_sets"]] == ["kag", "cells"]
    assert [r["files"] for r in split["extra_sets"]] == [8 + 24, 10]
    held = split["extra_val"]["kag"]
    assert held and len({group_of(i) for i in held}) == 1 and len(held) == 2
    assert not set(held) & set(split["train"])
    assert set(split["val"]) <= {p.name for p in tiny_demo.train_dir.iterdir()}
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["extra"] == f"{kag},{zipped}"
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores["extra_validation"]) == {"kag", "cells"}
    assert scores["extra_validation"]["kag"]["images"] == 2
    card = (out / "DATA.md").read_text()
    assert "| kag (`--extra`) |" in card and "unknown licence" in card


def test_a_known_set_name_reads_input_external(tmp_path):
    folder = _kaggle_folder(tmp_path / "input" / "external" / "lpc")
    extra = load_extra_set("lpc", input_dir=tmp_path / "input")
    assert extra.name == "lpc" and extra.location == folder
    assert "none stated" in extra.record()["licence"]


# --------------------------------------------------------------------------- fine-tuning


def test_init_starts_from_the_models_exact_weights(tiny_model, tmp_path):
    import keras

    from pipeline.config import Config
    from pipeline.core.model_store import load_trained_network
    from pipeline.learning import training

    config = Config.load(tiny_model / "config.json")
    expected = load_trained_network(tiny_model)
    with training.contextlib.ExitStack() as stack:
        model, *_ = training._build_or_resume(
            config, tmp_path / "m", False, "cpu", 1, stack, init=tiny_model
        )
    for mine, theirs in zip(model.weights, expected.weights, strict=True):
        assert np.array_equal(keras.ops.convert_to_numpy(mine), keras.ops.convert_to_numpy(theirs))


def test_train_init_fine_tunes_and_records_its_start(tiny_model, tiny_demo, tmp_path, capsys):
    out = tmp_path / "tuned"
    argv = ["train", "--init", str(tiny_model), "--images", str(tiny_demo.train_dir)]
    argv += ["--out", str(out), "--epochs", "1", "--learning-rate", "1e-4"]
    status, _, err = run_cli(argv, capsys)
    assert status == 0, err
    assert "starting from the weights of" in err
    scores = json.loads((out / "scores.json").read_text())
    assert scores["init"]["model"].endswith("tiny")
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == json.loads((tiny_model / "config.json").read_text())["model"]
    assert config["train"]["learning_rate"] == 1e-4
    assert "Fine-tuned from" in (out / "DATA.md").read_text()


def test_init_of_another_network_is_one_error_line(tiny_model, tiny_demo, tmp_path, capsys):
    argv = ["train", "--init", str(tiny_model), "--images", str(tiny_demo.train_dir)]
    argv += ["--out", str(tmp_path / "x"), "--base-filters", "8"]
    status, _, err = run_cli(argv, capsys)
    assert status == 2
    line = one_error_line(err)
    assert "its base_filters is 4, this training's is 8" in line
    assert not (tmp_path / "x").exists()


def test_init_of_an_unfinished_model_or_into_itself_is_refused(tiny_model, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    (broken / "complete.json").unlink()
    status, _, err = run_cli(["train", "--init", str(broken), "--out", str(tmp_path / "y")], capsys)
    assert status == 2 and "not a finished model" in one_error_line(err)
    status, _, err = run_cli(["train", "--init", str(tiny_model), "--out", str(tiny_model)], capsys)
    assert status == 2 and "--out must be another folder" in one_error_line(err)


# --------------------------------------------------------------------------- download


def test_download_unpacks_known_sets_into_input_external(tmp_path, capsys):
    shared = tmp_path / "external"
    shared.mkdir()
    _zip_of(_kaggle_folder(tmp_path / "lpc"), shared / "lpc.zip", top="lpc")
    status, _, err = run_cli(
        ["download", "--from", str(shared), "--input", str(tmp_path / "in")], capsys
    )
    assert status == 0, err
    assert sorted(p.name for p in (tmp_path / "in" / "external" / "lpc").iterdir()) == [
        ".unpacked.json", "k1_tile1", "k1_tile2", "k2"
    ]  # fmt: skip
    assert "external/lpc/: 3 images with masks" in err
    extra = load_extra_set("lpc", input_dir=tmp_path / "in")
    assert len(extra.samples) == 3


def test_download_refuses_an_external_zip_with_parent_paths(tmp_path, capsys):
    shared = tmp_path / "external"
    shared.mkdir()
    with zipfile.ZipFile(shared / "cpm15.zip", "w") as archive:
        archive.writestr("cpm15/../../escape/images/x.png", b"x")
    status, _, err = run_cli(
        ["download", "--from", str(shared), "--input", str(tmp_path / "in")], capsys
    )
    assert status == 2
    assert "cpm15.zip: refusing to unpack" in one_error_line(err)
    assert not (tmp_path / "escape").exists()
    assert not (tmp_path / "in" / "external" / "cpm15").exists()


def test_the_real_cpm15_zip_reads_as_its_readme_says():
    from pipeline.paths import REPO_ROOT

    zipped = REPO_ROOT.parent / "shared" / "external" / "cpm15.zip"
    if not zipped.is_file():
        pytest.skip(f"real data absent: {zipped} not found (the external sets live in ../shared)")
    extra = load_extra_set(zipped)
    record = extra.record()
    assert (record["samples"], record["nuclei"], record["files"]) == (20, 2929, 20 + 2929)
    assert {s.kind for s in extra.samples} == {"histology"}
    assert len({group_of(s.image_id) for s in extra.samples}) == 15  # image10 in 6 tiles


def test_train_images_may_be_a_plain_folder_of_name_masks_pairs(tmp_path, capsys):
    folder = _masks_folder(tmp_path / "mine", names=[f"c{i}" for i in range(6)])
    out = tmp_path / "model"
    argv = ["train", "--preset", "demo", *TINY_FLAGS, "--epochs", "1", "--images", str(folder)]
    status, _, err = run_cli([*argv, "--out", str(out)], capsys)
    assert status == 0, err
    split = json.loads((out / "split.json").read_text())
    assert len(split["train"]) + len(split["val"]) == 6 and len(split["val"]) == 1
    status, out_text, err = run_cli(["evaluate", "--model", str(out), "--json"], capsys)
    assert status == 0, err
    assert json.loads(out_text.strip().splitlines()[-1])["images"] == 1


def test_a_resumed_run_refuses_extra_sets_that_changed(tmp_path):
    from pipeline.learning.training import _check_same_extra_sets

    extra = load_extra_set(_masks_folder(tmp_path / "s"))
    split = {"extra_sets": [extra.record()]}
    _check_same_extra_sets(split, [extra], tmp_path)  # the same files: goes on
    image, labels = _disc_image(1)
    labels[labels == 1] = 0
    tifffile.imwrite(tmp_path / "s" / "b_masks.tif", labels)
    changed = load_extra_set(tmp_path / "s")
    with pytest.raises(PipelineError, match=r"extra sets differ .* \(s changed"):
        _check_same_extra_sets(split, [changed], tmp_path)
    with pytest.raises(PipelineError, match=r"\(s changed, added or missing\)"):
        _check_same_extra_sets(split, [], tmp_path)


def test_extra_sets_come_from_the_command_line_only(tiny_model, tmp_path):
    """./run.sh train without --extra trains on --images alone, whatever the preset or the
    --init model was trained with; --config keeps the file's sets."""
    import argparse

    from pipeline.config import Config
    from pipeline.stages.train import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with_extra = tmp_path / "with-extra"
    shutil.copytree(tiny_model, with_extra)
    config = Config.load(with_extra / "config.json")
    config.train.extra = "lpc"
    config.save(tmp_path / "config.json")
    assert config_from_args(parser.parse_args(["--init", str(tiny_model)])).train.extra == ""
    given = parser.parse_args(["--init", str(tiny_model), "--extra", "a", "--extra", "b"])
    assert config_from_args(given).train.extra == "a,b"
    from_file = parser.parse_args(["--config", str(tmp_path / "config.json")])
    assert config_from_args(from_file).train.extra == "lpc"
