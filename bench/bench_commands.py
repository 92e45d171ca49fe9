"""What the bench scripts share: running the project's commands, writing their results and
tables of docs/experiments.md."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def shown(path: Path) -> str:
    """``path`` relative to the repository root when it lies inside it, else as it is."""
    path = Path(path)
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def run_command(args: list[str]) -> str:
    """Run a project command from the repository root; its stdout, or exit on failure."""
    print("$", " ".join(args), flush=True)
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(args)}\n{result.stderr[-3000:]}")
    return result.stdout


def last_json(output: str) -> dict:
    """The JSON object a stage run with --json prints on its last line."""
    return json.loads(output.strip().splitlines()[-1])


def update_readme(name: str, markdown: str) -> None:
    """Put ``markdown`` into docs/experiments.md between ``<!-- name:start -->`` and
    ``<!-- name:end -->``."""
    readme = ROOT / "docs" / "experiments.md"
    text = readme.read_text()
    start_mark, end_mark = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    start, end = text.index(start_mark) + len(start_mark), text.index(end_mark)
    readme.write_text(text[:start] + "\n" + markdown + "\n" + text[end:])


def write_results(path: Path, data: object, markdown: str | None = None) -> None:
    """Write ``data`` as indented JSON to ``path`` and, when given, ``markdown`` beside it
    (same name, ``.md``); say where."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    written = [path]
    if markdown is not None:
        path.with_suffix(".md").write_text(markdown + "\n")
        written.append(path.with_suffix(".md"))
    print("wrote " + " and ".join(shown(p) for p in written), flush=True)


def publish(path: Path, rows: object, markdown: str, readme_section: str | None = None) -> None:
    """Print a result table, write it with its rows (`write_results`) and, when
    ``readme_section`` names one, put it into docs/experiments.md (`update_readme`)."""
    print(markdown)
    write_results(path, rows, markdown)
    if readme_section:
        update_readme(readme_section, markdown)


def paired(row: dict | None, base: dict | None, key: str) -> tuple[float, float] | None:
    """Mean and standard error of the per-image differences ``row - base`` of ``key`` (a
    dict of per-image scores in each); None without a base, for the base itself, or with
    fewer than two images in common."""
    if not base or not row or row is base:
        return None
    ids = sorted(set(row[key]) & set(base[key]))
    diffs = [row[key][i] - base[key][i] for i in ids]
    if len(diffs) < 2:
        return None
    mean = sum(diffs) / len(diffs)
    spread = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    return mean, spread / math.sqrt(len(diffs))


def paired_text(difference: tuple[float, float] | None) -> str:
    """``+0.0123 ± 0.0045``, or ``-`` when there is no difference to show."""
    return f"{difference[0]:+.4f} ± {difference[1]:.4f}" if difference else "-"
