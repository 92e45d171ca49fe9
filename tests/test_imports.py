"""Import directions inside ``pipeline/``, read from the source with `ast` (nothing is run).

``pipeline.inference.dask_predict`` uses the one-process prediction functions on its
workers; the choice between one process and Dask is made above both
(`pipeline.inference.run`). No module that ``dask_predict`` imports, directly or through
others, lazily inside a function included, may import it back.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"


def module_file(module: str) -> Path | None:
    """The source file of a ``pipeline.*`` module, or None for any other module."""
    parts = module.split(".")
    if parts[0] != "pipeline":
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(source: str) -> set[str]:
    """Every ``pipeline.*`` module a source imports anywhere (module level, in functions,
    under ``TYPE_CHECKING``): ``from pipeline.a import b`` counts as ``pipeline.a`` and, if
    ``b`` is a module of its own, ``pipeline.a.b``.

    >>> sorted(imported_modules("from pipeline.inference import predict\\nimport numpy"))
    ['pipeline.inference', 'pipeline.inference.predict']
    """
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(
                f"{node.module}.{alias.name}"
                for alias in node.names
                if module_file(f"{node.module}.{alias.name}") is not None
            )
    return {name for name in found if module_file(name) is not None}


def import_closure(start: str) -> dict[str, str]:
    """Every ``pipeline.*`` module ``start`` reaches by imports, each with the module that
    first imported it on the way."""
    reached: dict[str, str] = {}
    todo = [start]
    while todo:
        module = todo.pop()
        for name in imported_modules(module_file(module).read_text()):
            if name not in reached and name != start:
                reached[name] = module
                todo.append(name)
    return reached


def test_imported_modules_sees_lazy_imports() -> None:
    source = "def f():\n    from pipeline.inference.dask_predict import open_client\n"
    assert "pipeline.inference.dask_predict" in imported_modules(source)


@pytest.mark.parametrize("module", ["pipeline.inference.dask_predict"])
def test_nothing_a_module_imports_imports_it_back(module: str) -> None:
    importers = sorted(
        f"{name} (reached through {via})"
        for name, via in import_closure(module).items()
        if module in imported_modules(module_file(name).read_text())
    )
    assert not importers, f"{module} is imported back by: {', '.join(importers)}"


def test_the_choice_between_one_process_and_dask_is_made_above_both() -> None:
    run_imports = imported_modules(module_file("pipeline.inference.run").read_text())
    assert {"pipeline.inference.predict", "pipeline.inference.dask_predict"} <= run_imports
