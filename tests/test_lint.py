"""The code base stays clean under ruff (lint and format, 100 columns; see pyproject.toml)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = [name for name in ("pipeline", "tests", "bench") if (ROOT / name).is_dir()]


def _ruff() -> list[str]:
    candidate = Path(sys.executable).with_name("ruff")
    if candidate.is_file():
        return [str(candidate)]
    if shutil.which("ruff"):
        return ["ruff"]
    pytest.skip("ruff is not installed in this environment")


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff(command):
    result = subprocess.run(
        [*_ruff(), *command, *FOLDERS], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
