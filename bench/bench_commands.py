"""What the bench scripts share: running the project's commands and writing README tables."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
    """Put ``markdown`` into README.md between ``<!-- name:start -->`` and ``<!-- name:end -->``."""
    readme = ROOT / "README.md"
    text = readme.read_text()
    start_mark, end_mark = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    start, end = text.index(start_mark) + len(start_mark), text.index(end_mark)
    readme.write_text(text[:start] + "\n" + markdown + "\n" + text[end:])
