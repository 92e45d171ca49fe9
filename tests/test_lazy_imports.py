"""Why imports inside functions exist, and that each says why.

The device is chosen in a stage's ``main()`` (`pipeline.core.device.select_device`) before
Keras loads, and the light stages (score, check-submission, leaderboard, download, submit)
start fast: so importing a stage module, or the CLI that names them, loads no heavy library.
Each module is imported in a fresh interpreter of its own, so that one module's imports do
not hide another's.

Every other import sits at the top of its module (CONVENTIONS.md item 13): an import inside
a function says why, in a comment line starting with ``# Lazy:`` right above it (or above
the first of a group of consecutive imports).
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


def unexplained_lazy_imports(source: str) -> list[int]:
    """The lines of the imports inside functions of ``source`` that no ``# Lazy:`` comment
    explains: the line right above an import, or above the first import of its group of
    consecutive import statements, must start with ``# Lazy:``.

    >>> unexplained_lazy_imports("import os\\ndef f():\\n    import json\\n    import re\\n")
    [3, 4]
    >>> grouped = "def f():\\n    # Lazy: heavy\\n    import json\\n\\n    import re\\n"
    >>> unexplained_lazy_imports(grouped)
    []
    """
    lines = source.splitlines()
    found: list[int] = []

    def check(statements: list[ast.stmt]) -> None:
        group_reason = False
        previous_was_import = False
        for statement in statements:
            if isinstance(statement, ast.Import | ast.ImportFrom):
                if not previous_was_import:
                    above = lines[statement.lineno - 2] if statement.lineno >= 2 else ""
                    group_reason = above.strip().startswith("# Lazy:")
                if not group_reason:
                    found.append(statement.lineno)
                previous_was_import = True
            else:
                previous_was_import = False

    def visit(node: ast.AST, in_function: bool) -> None:
        in_function = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for field in ("body", "orelse", "finalbody"):
            statements = getattr(node, field, None)
            if in_function and isinstance(statements, list):
                check(statements)
        for child in ast.iter_child_nodes(node):
            visit(child, in_function)

    visit(ast.parse(source), False)
    return sorted(found)


def test_every_import_inside_a_function_says_why() -> None:
    unexplained = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line in unexplained_lazy_imports(path.read_text(encoding="utf-8"))
    ]
    assert not unexplained, (
        "imports inside functions without a '# Lazy:' reason right above them (move them to "
        "the top of the module, or say why not):\n" + "\n".join(unexplained)
    )
