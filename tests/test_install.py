"""The package installs like one: ``pip install`` gives a ``dsb2018`` command that works.

The source is copied first, so that the build's leftovers (``build/``, ``*.egg-info``) stay
out of the checkout. The dependencies are not installed (``--no-deps``): they come from
this environment, as for a user who installed them before.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_FILES = ["pyproject.toml", "README.md", "LICENSE"]


def run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run ``command``; fail the test with its output when it fails."""
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The package installed with pip into a folder of its own, and the environment that
    runs it from there (``PYTHONPATH`` that folder alone, never the checkout)."""
    base = tmp_path_factory.mktemp("install")
    source, target = base / "source", base / "target"
    shutil.copytree(
        ROOT / "pipeline", source / "pipeline", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in SOURCE_FILES:
        shutil.copy2(ROOT / name, source / name)
    env = {key: value for key, value in os.environ.items() if key != "DSB2018_HOME"}
    env["PYTHONPATH"] = str(target)
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    pip += ["--no-deps", "--no-build-isolation", "--target", str(target), str(source)]
    run(pip, base, env)
    return target, env


def test_the_installed_command_shows_its_help_and_version(installed, tmp_path) -> None:
    target, env = installed
    command = [sys.executable, str(target / "bin" / "dsb2018")]
    assert "predict" in run([*command, "--help"], tmp_path, env).stdout
    assert "--labels-out" in run([*command, "predict", "--help"], tmp_path, env).stdout
    assert "Plugins > DeepImageJ" in run([*command, "export", "--help"], tmp_path, env).stdout
    version = run([*command, "--version"], tmp_path, env).stdout.strip()
    assert version == f"dsb2018 {_source_version()}"


def test_the_installed_package_has_its_templates(installed) -> None:
    target, _ = installed
    for page in (
        "pipeline/serving/templates/index.html",
        "pipeline/evaluation/templates/report.html",
        "pipeline/learning/templates/bioimageio_README.md",
        "pipeline/learning/templates/bioimageio_open.txt",
    ):
        assert (target / page).is_file(), f"{page} is not installed"


def test_installed_paths_resolve_from_the_current_folder_or_dsb2018_home(installed, tmp_path):
    target, env = installed
    show = [sys.executable, "-c", "from pipeline import paths; print(paths.INPUT_DIR)"]
    assert run(show, tmp_path, env).stdout.strip() == str(tmp_path / "input")
    elsewhere = tmp_path / "data"
    with_home = {**env, "DSB2018_HOME": str(elsewhere)}
    assert run(show, tmp_path, with_home).stdout.strip() == str(elsewhere / "input")


def _source_version() -> str:
    """``pipeline.__version__`` as the source declares it."""
    from pipeline import __version__

    return __version__
