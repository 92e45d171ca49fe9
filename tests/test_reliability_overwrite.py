"""Issue 15, kind 4: what ``--out`` replaces. A submission this pipeline wrote (it has its
sidecar ``.json``) is replaced; any other file only with ``--force``."""

from __future__ import annotations

import pytest
from conftest import one_error_line, predict_argv, run_cli

pytest.importorskip("keras")


def test_a_file_that_is_not_a_submission_is_kept_unless_forced(
    tiny_model, tiny_demo, tmp_path, capsys
):
    notes = tmp_path / "notes.csv"
    notes.write_text("my,own,data\n")
    status, _, err = run_cli(
        predict_argv(tiny_model, tiny_demo.test_dir, "--out", str(notes)), capsys
    )
    assert status == 2
    line = one_error_line(err)
    assert f"{notes}: exists and is not a submission written by this pipeline" in line
    assert "--force replaces it" in line
    assert notes.read_text() == "my,own,data\n"
    status, _, err = run_cli(
        predict_argv(tiny_model, tiny_demo.test_dir, "--out", str(notes), "--force"), capsys
    )
    assert status == 0, err
    assert notes.read_text().startswith("ImageId,EncodedPixels\n")
    assert (tmp_path / "notes.json").is_file()  # now it is the pipeline's own


def test_the_pipelines_own_submission_is_replaced_without_force(
    tiny_model, tiny_demo, tmp_path, capsys
):
    out = tmp_path / "sub.csv"
    assert run_cli(predict_argv(tiny_model, tiny_demo.test_dir, "--out", str(out)), capsys)[0] == 0
    first = out.read_text()
    out.write_text(first + "\n")  # changed since; still the pipeline's (sidecar present)
    status, _, err = run_cli(
        predict_argv(tiny_model, tiny_demo.test_dir, "--out", str(out)), capsys
    )
    assert status == 0, err
    assert out.read_text() == first
