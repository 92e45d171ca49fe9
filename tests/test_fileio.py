"""Atomic writes: complete or absent, with ordinary permissions."""

import os
import stat

import pytest

from pipeline.fileio import atomic_dir, atomic_path, atomic_write_text


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_file_appears_only_when_complete(tmp_path):
    target = tmp_path / "out.csv"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    atomic_write_text(target, "whole\n")
    assert target.read_text() == "whole\n"


def test_outputs_get_umask_permissions_not_private_ones(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "inner.txt").write_text("y")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.txt") == 0o644
    assert _mode(tmp_path / "folder") == 0o755


def test_folder_is_replaced_only_when_complete(tmp_path):
    target = tmp_path / "unpacked"
    with atomic_dir(target) as tmp:
        (tmp / "first.txt").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "second.txt").write_text("2")
            raise RuntimeError("broken zip")
    assert sorted(p.name for p in target.iterdir()) == ["first.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unpacked"]
    with atomic_dir(target) as tmp:
        (tmp / "third.txt").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["third.txt"]
