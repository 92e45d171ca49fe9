"""Issue 23, items 9 to 12: what the readers and the server let through.

NaN or infinite pixels are refused by the image reader, so that the command line, the
API and the page say the same; a skipped file is named; an unusable host or port is one
line; an error mid-predict starts its own line, after the progress bar."""

from __future__ import annotations

import io
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import one_error_line, run_cli

pytest.importorskip("keras")
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with")


def nan_tiff() -> np.ndarray:
    pixels = np.full((64, 64), 10.0, np.float32)
    pixels[20:30, 20:30] = 200.0
    pixels[0, :3] = np.nan
    pixels[1, 0] = np.inf
    return pixels


@pytest.fixture
def folder_with_nan(tiny_demo, tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(tiny_demo.test_dir / "demo-test-000" / "images" / "demo-test-000.png", folder)
    tifffile.imwrite(folder / "z-nan.tif", nan_tiff())
    return folder


def test_nan_pixels_are_refused_on_a_line_of_their_own(
    tiny_model, folder_with_nan, tmp_path, capsys
):
    """Items 9 and 12: the message names the file and the count, after the bar's line."""
    out, table = tmp_path / "sub.csv", tmp_path / "nuclei.csv"
    argv = ["predict", "--model", str(tiny_model), "--images", str(folder_with_nan)]
    status, _, err = run_cli([*argv, "--out", str(out), "--measurements", str(table)], capsys)
    assert status == 2
    line = one_error_line(err)
    expected = (
        f"error: {folder_with_nan / 'z-nan.tif'}: 4 of its 4096 pixel values are NaN or "
        "infinite; replace them with a number (such as the background's) and try again"
    )
    assert expected in err.split("\n")  # a line of its own, not after the bar's \r
    assert line.endswith(expected)
    assert not out.exists() and not table.exists()


def test_the_api_answers_nan_pixels_with_a_400_not_a_500(tiny_model):
    from fastapi.testclient import TestClient

    from pipeline.serving.app import create_app
    from pipeline.serving.segmenter import Segmenter

    client = TestClient(create_app(Segmenter(tiny_model, "cpu")))
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, nan_tiff())
    files = {"image": ("cells.tif", buffer.getvalue(), "application/octet-stream")}
    answer = client.post("/api/segment", files=files)
    assert answer.status_code == 400
    assert answer.json() == {
        "error": "cells.tif: 4 of its 4096 pixel values are NaN or infinite; replace them with "
        "a number (such as the background's) and try again"
    }


def test_a_mixed_folder_names_each_skipped_file(tiny_model, tiny_demo, tmp_path, capsys):
    """Item 10: loose images beside Kaggle-layout folders, and a link loop."""
    folder = tmp_path / "mixed"
    shutil.copytree(tiny_demo.test_dir, folder)
    shutil.copy(folder / "demo-test-000" / "images" / "demo-test-000.png", folder / "loose.png")
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(folder / "loose.png", plain / "a.png")
    (plain / "loop.png").symlink_to(plain / "loop.png")
    argv = ["predict", "--model", str(tiny_model), "--out", str(tmp_path / "s.csv")]
    status, _, err = run_cli([*argv, "--images", str(folder)], capsys)
    assert status == 0, err
    assert f"{folder / 'loose.png'}: skipped: not in Kaggle layout, beside the image" in err
    status, _, err = run_cli([*argv, "--images", str(plain), "--force"], capsys)
    assert status == 0, err
    assert f"{plain / 'loop.png'}: skipped: a link to nowhere or a link loop" in err


@pytest.mark.parametrize("case", ["bad-host", "port-in-use"])
def test_serve_on_an_unusable_host_or_port_is_one_line(tiny_model, capsys, case):
    """Item 11: refused before the model is loaded, exit 2."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        host = "999.1.1.1" if case == "bad-host" else "127.0.0.1"
        argv = ["serve", "--model", str(tiny_model), "--host", host, "--port", str(port)]
        status, _, err = run_cli(argv, capsys)
    assert status == 2
    line = one_error_line(err)
    if case == "bad-host":
        assert line.startswith("error: --host 999.1.1.1: not an address of this machine (")
    else:
        assert line == (
            f"error: --host 127.0.0.1 --port {port}: cannot listen there (Address already in use)"
        )
