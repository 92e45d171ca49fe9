"""Layers point one way: which package of ``pipeline/`` may import which, read with `ast`.

Every import of every module counts, at module level and inside functions alike (a lazy
import is still a dependency). The layers, from the bottom:

- ``base``: the top-level modules (errors, fileio, paths, config, provenance, locks,
  outputs, the package's ``__init__``);
- ``data``: the competition data (datasets, RLE, submissions);
- ``core``: what training, prediction, evaluation and serving all use: preprocessing,
  target channels, the scale policy, the model folder, the architectures, the device;
- ``learning`` and ``inference``, side by side, neither importing the other (training's
  validation score is a function the stage hands it);
- ``evaluation``, over inference (the metric is its own: no other layer imports it;
  tuning predicts);
- ``serving``, the page and API over inference;
- ``cli``, the flags derived from the config (it reaches the stages by name, with
  ``importlib``, not by an import), and ``stages`` on top, which may use everything.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import NamedTuple

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"

_BELOW_STAGES = {"base", "data", "core", "learning", "inference", "evaluation", "serving", "cli"}

#: Each layer and the layers its modules may import (its own included).
ALLOWED: dict[str, set[str]] = {
    "base": {"base"},
    "data": {"base", "data"},
    "core": {"base", "data", "core"},
    "learning": {"base", "data", "core", "learning"},
    "inference": {"base", "data", "core", "inference"},
    "evaluation": {"base", "data", "core", "inference", "evaluation"},
    "serving": {"base", "data", "core", "inference", "serving"},
    "cli": {"base", "cli"},
    "stages": _BELOW_STAGES | {"stages"},
    "__main__": {"cli", "__main__"},
}

#: Modules that only their own layer may import: the competition metric is evaluation's.
KEPT_WITHIN = {"pipeline.evaluation.metric": "evaluation"}

#: Top-level modules that are layers of their own; every other one is ``base``.
_OWN_LAYER = {"cli", "__main__"}


class Violation(NamedTuple):
    """One forbidden import: where it is and what it crosses."""

    module: str
    line: int
    imported: str
    layer: str
    imported_layer: str

    def __str__(self) -> str:
        return (
            f"{self.module}:{self.line} ({self.layer}) imports {self.imported}"
            f" ({self.imported_layer})"
        )


def layer_of(module: str) -> str | None:
    """The layer of a ``pipeline`` module, None for a module outside the package.

    >>> layer_of("pipeline.core.model_store"), layer_of("pipeline.config"), layer_of("numpy")
    ('core', 'base', None)
    """
    parts = module.split(".")
    if parts[0] != "pipeline":
        return None
    if len(parts) == 1:
        return "base"
    if (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return parts[1] if parts[1] in _OWN_LAYER else "base"


def module_name(path: Path) -> str:
    """``pipeline/core/device.py`` -> ``pipeline.core.device``."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str) -> list[tuple[int, str]]:
    """Every ``pipeline`` module a source imports, anywhere, with its line: ``from
    pipeline.a import b`` counts as ``pipeline.a.b`` (a module or a name of ``pipeline.a``:
    both are in ``pipeline.a``'s layer but for ``from pipeline import b``).

    >>> imports_of("import os\\ndef f():\\n    from pipeline.data import rle\\n")
    [(3, 'pipeline.data.rle')]
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return sorted((line, name) for line, name in found if layer_of(name) is not None)


def forbidden_imports(module: str, source: str) -> list[Violation]:
    """The imports of ``module`` (its ``source``) that its layer may not make."""
    layer = layer_of(module)
    violations = []
    for line, imported in imports_of(source):
        imported_layer = layer_of(imported)
        kept = [name for name in KEPT_WITHIN if f"{imported}.".startswith(f"{name}.")]
        if imported_layer not in ALLOWED[layer] or any(KEPT_WITHIN[k] != layer for k in kept):
            violations.append(Violation(module, line, imported, layer, imported_layer))
    return violations


def test_a_forbidden_import_is_found_with_its_line() -> None:
    source = "import numpy\n\n\ndef score():\n    from pipeline.evaluation.metric import score\n"
    (violation,) = forbidden_imports("pipeline.learning.fake", source)
    assert violation.line == 5
    assert str(violation) == (
        "pipeline.learning.fake:5 (learning) imports pipeline.evaluation.metric.score (evaluation)"
    )


def test_the_metric_is_imported_by_evaluation_only() -> None:
    source = "from pipeline.evaluation.metric import score_image\n"
    assert forbidden_imports("pipeline.evaluation.fake", source) == []
    assert [v.line for v in forbidden_imports("pipeline.stages.fake", source)] == [1]


@pytest.mark.parametrize(
    "module, source",
    [
        ("pipeline.learning.fake", "from pipeline.core import device\n"),
        ("pipeline.inference.fake", "from pipeline import paths\n"),
        ("pipeline.stages.fake", "from pipeline.cli import main\n"),
        ("pipeline.config", "import os\n"),
    ],
)
def test_an_allowed_import_passes(module: str, source: str) -> None:
    assert forbidden_imports(module, source) == []


def test_every_package_has_its_layer() -> None:
    packages = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert packages <= set(ALLOWED), f"a layer for {sorted(packages - set(ALLOWED))}"


def test_layers_point_one_way() -> None:
    violations = [
        violation
        for path in sorted(PACKAGE.rglob("*.py"))
        for violation in forbidden_imports(module_name(path), path.read_text(encoding="utf-8"))
    ]
    assert not violations, "imports against the layers:\n" + "\n".join(map(str, violations))


#: Where the device is chosen (`pipeline.core.device.select_device`, which sets
#: process-wide state before Keras loads): the entry points only, module -> the functions
#: that may call it (None: any). The stages' ``main`` (``serve``'s is the server's start)
#: and a Dask worker's first chunk; every library function takes the chosen device.
DEVICE_CHOSEN_IN: dict[str, set[str] | None] = {
    "pipeline.core.device": None,
    "pipeline.inference.dask_predict": {"_start_worker"},
}


def device_choices(source: str) -> list[tuple[int, str]]:
    """Each call of ``select_device`` in a source (by name or as an attribute), with its
    line and the function it is in (``""`` at module level).

    >>> device_choices("def main():\\n    device.select_device('cpu')\\nselect_device('gpu')\\n")
    [(2, 'main'), (3, '')]
    """
    found = []

    def visit(node: ast.AST, function: str) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function = node.name
        if isinstance(node, ast.Call):
            callee = node.func
            name = callee.attr if isinstance(callee, ast.Attribute) else getattr(callee, "id", "")
            if name == "select_device":
                found.append((node.lineno, function))
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(ast.parse(source), "")
    return sorted(found)


def device_chosen_outside_entry_points(module: str, source: str) -> list[str]:
    """The calls of ``select_device`` in ``module`` that no entry point makes."""
    if layer_of(module) == "stages":
        return []
    allowed = DEVICE_CHOSEN_IN.get(module, set())
    return [
        f"{module}:{line} ({function or 'module level'}) calls select_device"
        for line, function in device_choices(source)
        if allowed is not None and function not in allowed
    ]


def test_a_library_function_that_chooses_the_device_is_found() -> None:
    source = "def evaluate(device):\n    device_module.select_device(device)\n"
    assert device_chosen_outside_entry_points("pipeline.evaluation.fake", source) == [
        "pipeline.evaluation.fake:2 (evaluate) calls select_device"
    ]
    assert device_chosen_outside_entry_points("pipeline.stages.fake", source) == []
    worker = "def _start_worker(device):\n    select_device(device)\n"
    assert device_chosen_outside_entry_points("pipeline.inference.dask_predict", worker) == []


def test_the_device_is_chosen_at_the_entry_points_only() -> None:
    found = [
        call
        for path in sorted(PACKAGE.rglob("*.py"))
        for call in device_chosen_outside_entry_points(
            module_name(path), path.read_text(encoding="utf-8")
        )
    ]
    assert not found, "the device chosen outside an entry point:\n" + "\n".join(found)
