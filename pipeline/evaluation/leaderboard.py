"""The local leaderboard: one CSV row per scored submission (stage ``leaderboard``).

Columns: ``time`` (UTC, ISO 8601), ``file`` (the submission), ``score``, and where it came
from: ``model``, ``config`` and ``commit``, taken from the submission's sidecar metadata
(see `pipeline.data.submission.read_submission_metadata`); ``commit`` falls back to the current
commit of the repository.

Each ``./run.sh score`` appends a row (the file is rewritten atomically, so an interrupted
run never leaves it half-written); ``./run.sh leaderboard`` prints it best first.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline import paths
from pipeline.errors import PipelineError
from pipeline.fileio import atomic_path
from pipeline.provenance import git_commit

__all__ = [
    "COLUMNS",
    "append_entry",
    "format_leaderboard",
    "read_leaderboard",
]

log = logging.getLogger(__name__)

COLUMNS = ("time", "file", "score", "model", "config", "commit")


def _display_path(path: str | os.PathLike[str]) -> str:
    """A path relative to the repository when it lies inside it, else absolute."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(paths.REPO_ROOT))
    except ValueError:
        return str(resolved)


def _model_name(model: Any) -> str:
    """A model folder as the leaderboard shows it: relative to the repository if inside."""
    if not model:
        return ""
    return _display_path(model) if Path(str(model)).is_absolute() else str(model)


def read_leaderboard(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The leaderboard as a table, in file order; an empty table when the file is absent.

    Raises
    ------
    PipelineError
        When the file has the wrong header or a score that is not a number (naming the
        line).
    """
    path = Path(path)
    empty = pd.DataFrame(
        {name: pd.Series(dtype=float if name == "score" else str) for name in COLUMNS}
    )
    if not path.exists():
        return empty
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return empty
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise PipelineError(f"{path}: not a leaderboard CSV ({error})") from error
    if tuple(table.columns) != COLUMNS:
        raise PipelineError(
            f"{path}: header {','.join(table.columns)!r} is not a leaderboard's "
            f"({','.join(COLUMNS)})"
        )
    scores = pd.to_numeric(table["score"], errors="coerce")
    if scores.isna().any():
        row = int(scores.isna().to_numpy().argmax())
        raise PipelineError(
            f"{path}: line {row + 2}: score {table['score'].iloc[row]!r} is not a number"
        )
    table["score"] = scores.astype(float)
    return table


def append_entry(
    leaderboard_csv: str | os.PathLike[str],
    submission_csv: str | os.PathLike[str],
    score: float,
    metadata: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Append one scored submission to the leaderboard (atomically); return the row.

    Parameters
    ----------
    leaderboard_csv : str or Path
        The leaderboard file; created with its header when absent.
    submission_csv : str or Path
        The submission that was scored.
    score : float
        Its score.
    metadata : dict, optional
        The submission's metadata; ``model``, ``config`` and ``commit`` are recorded, and
        a missing ``commit`` is the repository's current one.
    """
    leaderboard_csv = Path(leaderboard_csv)
    metadata = metadata or {}
    read_leaderboard(leaderboard_csv)  # refuse to append to something else
    commit = metadata.get("commit") or git_commit() or ""
    row = {
        "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "file": _display_path(submission_csv),
        "score": repr(float(score)),
        "model": _model_name(metadata.get("model")),
        "config": str(metadata.get("config") or ""),
        "commit": str(commit),
    }
    existing = leaderboard_csv.read_text(encoding="utf-8") if leaderboard_csv.exists() else ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    if not existing.strip():
        existing = ""
        writer.writeheader()
    elif not existing.endswith("\n"):
        existing += "\n"
    writer.writerow(row)
    with atomic_path(leaderboard_csv) as tmp:
        tmp.write_text(existing + buffer.getvalue(), encoding="utf-8")
    return row


def format_leaderboard(table: pd.DataFrame) -> str:
    """The leaderboard best first (ties: earliest first), as an aligned text table.

    Numbers are right-aligned under their headers, text left-aligned; an empty cell
    shows as ``-``.
    """
    ranked = table.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
    columns = ["rank", *ranked.columns]
    rows = [
        [
            str(rank),
            *(
                f"{value:.6f}" if key == "score" else str(value) or "-"
                for key, value in row.items()
            ),
        ]
        for rank, (_, row) in enumerate(ranked.iterrows(), start=1)
    ]
    widths = [
        max(len(text) for text in [name, *(r[i] for r in rows)]) for i, name in enumerate(columns)
    ]
    numeric = {"rank", "score"}

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.rjust(width) if name in numeric else cell.ljust(width)
            for name, cell, width in zip(columns, cells, widths, strict=True)
        ).rstrip()

    return "\n".join([line(columns), *(line(r) for r in rows)])
