"""Issue 23, items 2 to 4: no output is an input; every output replaces only what the
pipeline wrote unless ``--force``; a device is never replaced. Through the real command
line; each refusal comes before any work and leaves every file as it was."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import TINY_FLAGS, one_error_line, predict_argv, run_cli

pytest.importorskip("keras")


@pytest.fixture
def plain(tiny_demo, tmp_path: Path) -> Path:
    """The tiny test images as a plain folder of PNG files."""
    folder = tmp_path / "plain"
    folder.mkdir()
    for image_dir in sorted(tiny_demo.test_dir.iterdir()):
        shutil.copy(image_dir / "images" / f"{image_dir.name}.png", folder)
    return folder


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def refused(argv: list[str], capsys) -> str:
    status, _, err = run_cli(argv, capsys)
    assert status == 2, err
    assert "predicting" not in err  # before the model was loaded
    return one_error_line(err)


# ------------------------------------------------------------------ 2. never an input


def test_labels_out_pointed_at_the_images_is_refused_and_the_images_kept(
    tiny_model, plain, tmp_path, capsys
):
    before = contents(plain)
    out = tmp_path / "sub.csv"
    for flag in ([], ["--force"]):
        argv = predict_argv(tiny_model, plain, "--out", str(out), "--labels-out", str(plain), *flag)
        line = refused(argv, capsys)
        assert line == (
            f"error: {plain}: is --images {plain}; an output is never written over or among "
            "the inputs: choose another --labels-out"
        )
    assert contents(plain) == before
    assert not out.exists()


@pytest.mark.parametrize(
    ("flag", "where", "expected"),
    [
        ("--out", "plain/sub.csv", "inside --images"),
        ("--measurements", "plain/demo-test-000.png", "inside --images"),
        ("--labels-out", ".", "holds --images"),
        ("--labels-out", "model/labels", "inside the model"),
        ("--measurements", "sub.csv", "is the --out output"),
    ],
)
def test_an_output_among_the_inputs_or_on_another_output_is_refused(
    model_copy, plain, tmp_path, capsys, flag, where, expected
):
    before = contents(plain), contents(model_copy)
    target = tmp_path / where
    argv = predict_argv(model_copy, plain, "--out", str(tmp_path / "sub.csv"), flag, str(target))
    line = refused([*argv, "--force"], capsys)
    assert f"error: {target}: {expected} " in line
    assert line.endswith(f"choose another {flag}")
    assert (contents(plain), contents(model_copy)) == before


def test_a_single_image_is_not_replaced_by_its_own_labels(tiny_model, plain, tmp_path, capsys):
    image = plain / "demo-test-001.png"
    before = image.read_bytes()
    argv = predict_argv(
        tiny_model, image, "--out", str(tmp_path / "s.csv"), "--labels-out", str(plain)
    )
    assert f"error: {plain}: holds --images {image}; " in refused(argv, capsys)
    assert image.read_bytes() == before


def test_train_out_inside_the_training_images_is_refused(tiny_demo, tmp_path, capsys):
    out = tiny_demo.train_dir / "model"
    argv = ["train", "--preset", "demo", *TINY_FLAGS, "--images", str(tiny_demo.train_dir)]
    status, _, err = run_cli([*argv, "--out", str(out)], capsys)
    assert status == 2
    assert f"error: {out}: inside --images {tiny_demo.train_dir}; " in one_error_line(err)
    assert not out.exists()


def test_download_into_its_own_source_is_refused(tmp_path, capsys):
    source = tmp_path / "dsb2018"
    source.mkdir()
    (source / "stage1_test.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    before = contents(source)
    argv = ["download", "--from", str(source), "--input", str(source)]
    status, _, err = run_cli(argv, capsys)
    assert status == 2
    assert f"error: {source}: is --from {source}; " in one_error_line(err)
    assert contents(source) == before


# ------------------------------------------------- 3. only the pipeline's own, or --force


def test_an_unrelated_measurements_csv_is_kept_unless_forced(
    tiny_model, tiny_demo, tmp_path, capsys
):
    table = tmp_path / "table.csv"
    table.write_text("sample,weight\nA,3\n")
    argv = predict_argv(tiny_model, tiny_demo.test_dir, "--out", str(tmp_path / "sub.csv"))
    line = refused([*argv, "--measurements", str(table)], capsys)
    assert line == (
        f"error: {table}: exists and was not written by this pipeline (its first line is not "
        "'image,label,area,centroid_row,centroid_col,mean_intensity,eccentricity,solidity'); "
        "--force replaces it, or choose another --measurements"
    )
    assert table.read_text() == "sample,weight\nA,3\n"
    assert run_cli([*argv, "--measurements", str(table), "--force"], capsys)[0] == 0
    first = table.read_text()
    assert first.startswith("image,label,area,")
    table.write_text(first + "\n")  # the pipeline's own table: replaced without --force
    assert run_cli([*argv, "--measurements", str(table)], capsys)[0] == 0
    assert table.read_text() == first


def test_an_unrelated_png_in_labels_out_is_kept_unless_forced(
    tiny_model, tiny_demo, tmp_path, capsys
):
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "demo-test-002.png").write_bytes(b"my own picture")
    (labels / "notes.txt").write_text("mine")
    argv = predict_argv(tiny_model, tiny_demo.test_dir, "--out", str(tmp_path / "sub.csv"))
    argv += ["--labels-out", str(labels)]
    line = refused(argv, capsys)
    assert line == (
        f"error: {labels / 'demo-test-002.png'}: exists and was not written by this pipeline "
        "(not listed in its pipeline-labels.json); --force replaces it, or choose another "
        "--labels-out"
    )
    assert contents(labels) == {"demo-test-002.png": b"my own picture", "notes.txt": b"mine"}
    assert run_cli([*argv, "--force"], capsys)[0] == 0
    written = contents(labels)
    assert sorted(written) == [
        "demo-test-000.png", "demo-test-001.png", "demo-test-002.png", "notes.txt",
        "pipeline-labels.json",
    ]  # fmt: skip
    assert written["notes.txt"] == b"mine"
    # Its own label images are replaced without --force on the next run.
    (labels / "demo-test-000.png").write_bytes(b"changed")
    assert run_cli(argv, capsys)[0] == 0
    assert contents(labels) == written


def test_an_unrelated_json_beside_the_out_is_kept_unless_forced(
    tiny_model, tiny_demo, tmp_path, capsys
):
    sidecar = tmp_path / "results.json"
    sidecar.write_text('{"mine": 1}\n')
    argv = predict_argv(tiny_model, tiny_demo.test_dir, "--out", str(tmp_path / "results.csv"))
    line = refused(argv, capsys)
    assert line.startswith(f"error: {sidecar}: exists and is not the metadata of a submission")
    assert line.endswith("--force replaces it, or choose another --out")
    assert sidecar.read_text() == '{"mine": 1}\n'
    assert run_cli([*argv, "--force"], capsys)[0] == 0
    assert '"commit"' in sidecar.read_text()


# ------------------------------------------------------------ 4. never a device or pipe


@pytest.mark.parametrize("flag", ["--out", "--measurements"])
def test_a_pipe_or_device_is_never_replaced_even_with_force(
    tiny_model, tiny_demo, tmp_path, capsys, flag
):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    argv = predict_argv(tiny_model, tiny_demo.test_dir, "--force")
    if flag != "--out":
        argv += ["--out", str(tmp_path / "sub.csv")]
    line = refused([*argv, flag, str(fifo)], capsys)
    assert line == (
        f"error: {fifo}: is not a regular file or folder (a device, pipe or socket); {flag} "
        "never replaces it, even with --force"
    )
    assert fifo.is_fifo()


def test_dev_full_is_refused_as_out(tiny_model, tiny_demo, capsys):
    full = Path("/dev/full")
    if not full.is_char_device():
        pytest.skip("no /dev/full here")
    line = refused(
        predict_argv(tiny_model, tiny_demo.test_dir, "--out", str(full), "--force"), capsys
    )
    assert line.startswith(f"error: {full}: is not a regular file or folder")
    assert full.is_char_device()
