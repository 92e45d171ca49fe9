"""Why imports inside functions exist, and that each says why.

The device is chosen in a stage's ``main()`` (`pipeline.core.device.select_device`) before
Keras loads, and the light stages (score, check-submission, leaderboard, download, submit)
start fast: so importing a stage module, or the CLI that names them, loads no heavy library.
Each module is imported in a fresh interpreter of its own, so that one module's imports do
not hide another's.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipeline"

#: Libraries no stage module loads when imported: Keras and its backends, the optional
#: engines, Dask, the bioimage.io packaging, the server and the Kaggle client.
HEAVY = (
    "keras",
    "tensorflow",
    "jax",
    "torch",
    "onnxruntime",
    "onnx",
    "distributed",
    "dask",
    "bioimageio",
    "fastapi",
    "uvicorn",
    "kaggle",
)

STAGE_MODULES = sorted(
    f"pipeline.stages.{path.stem}"
    for path in (PACKAGE / "stages").glob("*.py")
    if path.stem != "__init__"
)


def heavy_modules_loaded_by(module: str) -> list[str]:
    """The HEAVY libraries that importing ``module`` loads, in a fresh interpreter."""
    code = f"import sys, {module}; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return ast.literal_eval(result.stdout.strip().splitlines()[-1])


def test_the_stages_are_found() -> None:
    assert {"pipeline.stages.score", "pipeline.stages.train"} <= set(STAGE_MODULES)


@pytest.mark.parametrize("module", [*STAGE_MODULES, "pipeline.cli"])
def test_importing_a_stage_loads_no_heavy_library(module: str) -> None:
    assert heavy_modules_loaded_by(module) == []
