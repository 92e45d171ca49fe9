"""The local leaderboard: one CSV row per scored submission (stage ``leaderboard``).

Columns: ``time`` (UTC, ISO 8601), ``file`` (the submission), ``score`` (the local score,
with the competition metric on the released labels; empty when there are none for its
images), ``kaggle_public`` and ``kaggle_private`` (Kaggle's scores, for a submission sent by
``./run.sh submit``; empty otherwise), where it came from: ``model``, ``config`` and
``commit``, taken from the submission's sidecar metadata (see
`pipeline.data.submission.read_submission_metadata`; ``commit`` falls back to the current
commit of the repository), and ``trained_on_labels``: ``yes`` when the model was trained on
labels of the images it was scored on (``train --with-stage1-test``, scored on stage1_test).

Each ``./run.sh score`` and ``./run.sh submit`` appends a row (the file is rewritten
atomically, so an interrupted run never leaves it half-written); ``./run.sh leaderboard``
prints it best first. A row marked ``trained_on_labels`` is never ranked with the others:
a score on the labels a model learned measures its memory, not how it does on images it
has not seen, so it is listed after the ranking, flagged "trained on these labels". So are
rows without a local score. Files written before the Kaggle and ``trained_on_labels``
columns existed are read as they are, and rewritten with them when a row is added.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Iterable
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
    "TRAINED_ON_LABELS",
    "append_entry",
    "format_leaderboard",
    "read_leaderboard",
    "trained_on_scored_images",
]

log = logging.getLogger(__name__)

COLUMNS = (
    "time",
    "file",
    "score",
    "kaggle_public",
    "kaggle_private",
    "model",
    "config",
    "commit",
    "trained_on_labels",
)
#: The columns of a leaderboard written before the Kaggle scores and the flag existed.
LEGACY_COLUMNS = ("time", "file", "score", "model", "config", "commit")
#: Columns that hold numbers (empty: none).
NUMERIC = ("score", "kaggle_public", "kaggle_private")
#: How the leaderboard shows a score of a model on labels it was trained on.
TRAINED_ON_LABELS = "trained on these labels"
NO_LOCAL_SCORE = "no local score"


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


def _empty_table() -> pd.DataFrame:
    kinds = {name: float if name in NUMERIC else str for name in COLUMNS}
    kinds["trained_on_labels"] = bool
    return pd.DataFrame({name: pd.Series(dtype=kind) for name, kind in kinds.items()})


def read_leaderboard(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The leaderboard as a table, in file order; an empty table when the file is absent.

    The numeric columns (`NUMERIC`) are floats, NaN where empty; ``trained_on_labels`` is
    a bool. A file with the older header (`LEGACY_COLUMNS`) reads with the newer columns
    empty.

    Raises
    ------
    PipelineError
        When the file has the wrong header or a number that is not one (naming the line).
    """
    path = Path(path)
    if not path.exists():
        return _empty_table()
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return _empty_table()
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise PipelineError(f"{path}: not a leaderboard CSV ({error})") from error
    if tuple(table.columns) not in (COLUMNS, LEGACY_COLUMNS):
        raise PipelineError(
            f"{path}: header {','.join(table.columns)!r} is not a leaderboard's "
            f"({','.join(COLUMNS)})"
        )
    table = table.reindex(columns=list(COLUMNS), fill_value="").fillna("")
    for column in NUMERIC:
        text = table[column].str.strip()
        numbers = pd.to_numeric(text, errors="coerce")
        bad = numbers.isna() & (text != "")
        if bad.any():
            row = int(bad.to_numpy().argmax())
            raise PipelineError(
                f"{path}: line {row + 2}: {column} {table[column].iloc[row]!r} is not a number"
            )
        table[column] = numbers.astype(float)
    table["trained_on_labels"] = table["trained_on_labels"].str.strip().str.lower() == "yes"
    return table


def _number_text(value: Any) -> str:
    """A number as the CSV holds it (``repr`` of the float), empty for none."""
    if value is None or value == "":
        return ""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PipelineError(f"a leaderboard score must be a number, got {value!r}") from None
    return "" if math.isnan(number) else repr(number)


def append_entry(
    leaderboard_csv: str | os.PathLike[str],
    submission_csv: str | os.PathLike[str],
    score: float | None,
    metadata: dict[str, Any] | None = None,
    *,
    kaggle_public: float | str | None = None,
    kaggle_private: float | str | None = None,
    trained_on_labels: bool = False,
) -> dict[str, str]:
    """Append one scored submission to the leaderboard (atomically); return the row.

    Parameters
    ----------
    leaderboard_csv : str or Path
        The leaderboard file; created with its header when absent, rewritten with the
        current header when it has the older one.
    submission_csv : str or Path
        The submission that was scored.
    score : float or None
        Its local score; None when there is none (no labels for its images).
    metadata : dict, optional
        The submission's metadata; ``model``, ``config`` and ``commit`` are recorded, and
        a missing ``commit`` is the repository's current one.
    kaggle_public, kaggle_private : float or str, optional
        Kaggle's scores of it (``./run.sh submit``).
    trained_on_labels : bool
        The model was trained on labels of the images of the local score (see
        `trained_on_scored_images`): the row is flagged and not ranked.
    """
    leaderboard_csv = Path(leaderboard_csv)
    metadata = metadata or {}
    read_leaderboard(leaderboard_csv)  # refuse to append to something else
    commit = metadata.get("commit") or git_commit() or ""
    row = {
        "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "file": _display_path(submission_csv),
        "score": _number_text(score),
        "kaggle_public": _number_text(kaggle_public),
        "kaggle_private": _number_text(kaggle_private),
        "model": _model_name(metadata.get("model")),
        "config": str(metadata.get("config") or ""),
        "commit": str(commit),
        "trained_on_labels": "yes" if trained_on_labels else "",
    }
    existing = leaderboard_csv.read_text(encoding="utf-8") if leaderboard_csv.exists() else ""
    rows = list(csv.DictReader(io.StringIO(existing))) if existing.strip() else []
    if existing.strip() and existing.split("\n", 1)[0].strip() == ",".join(COLUMNS):
        text = existing if existing.endswith("\n") else existing + "\n"
        text += _csv_text([row], header=False)
    else:  # new, empty, or the older header: written whole with the current one
        text = _csv_text([*rows, row], header=True)
    with atomic_path(leaderboard_csv) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return row


def _csv_text(rows: Iterable[dict[str, str]], header: bool) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, restval="", lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _model_dir(model: Any) -> Path | None:
    """The model folder a submission's metadata names, where it is on this machine."""
    if not model:
        return None
    for candidate in (Path(str(model)), paths.REPO_ROOT / str(model)):
        if candidate.is_dir():
            return candidate
    return None


def trained_on_scored_images(metadata: dict[str, Any] | None, image_ids: Iterable[str]) -> int:
    """How many of the scored images the submission's model was trained on.

    Read from the ``train`` ids of the model's ``split.json`` (a model trained with
    ``--with-stage1-test`` lists the stage-1 test images there); 0 when the model folder or
    its split cannot be found.
    """
    model_dir = _model_dir((metadata or {}).get("model"))
    if model_dir is None:
        return 0
    try:
        split = json.loads((model_dir / "split.json").read_text(encoding="utf-8"))
        trained = set(split.get("train", []))
    except (OSError, ValueError, AttributeError, TypeError):
        log.debug("%s: no readable split.json, its training images are unknown", model_dir)
        return 0
    return len(trained.intersection(image_ids))


def _cell(key: str, value: Any) -> str:
    if key in NUMERIC:
        return "-" if pd.isna(value) else f"{value:.6f}"
    return str(value) or "-"


def _ordered(table: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The rows in display order and their ranks: the ranked ones best first (ties:
    earliest first), then those not ranked, with why ("-" rank)."""
    by_score = table.sort_values("score", ascending=False, kind="stable")
    trained = by_score["trained_on_labels"].astype(bool)
    ranked = by_score[~trained & by_score["score"].notna()]
    flagged = by_score[trained]
    unscored = by_score[~trained & by_score["score"].isna()]
    ranks = [str(rank) for rank in range(1, len(ranked) + 1)]
    ranks += ["-"] * (len(flagged) + len(unscored))
    notes = [""] * len(ranked) + [TRAINED_ON_LABELS] * len(flagged)
    notes += [NO_LOCAL_SCORE] * len(unscored)
    ordered = by_score.loc[[*ranked.index, *flagged.index, *unscored.index]]
    return ordered.assign(note=notes).reset_index(drop=True), ranks


def format_leaderboard(table: pd.DataFrame) -> str:
    """The leaderboard best first (ties: earliest first), as an aligned text table.

    Numbers are right-aligned under their headers, text left-aligned; an empty cell
    shows as ``-``. The Kaggle columns are shown when a row has a Kaggle score. Rows
    trained on the labels they were scored on, and rows without a local score, are not
    ranked: they follow the ranking with ``-`` for a rank and a ``note`` saying why.
    """
    ordered, ranks = _ordered(table)
    shown = [name for name in COLUMNS if name != "trained_on_labels"]
    if ordered[["kaggle_public", "kaggle_private"]].isna().all().all():
        shown = [name for name in shown if not name.startswith("kaggle_")]
    if (ordered["note"] != "").any():
        shown.append("note")
    columns = ["rank", *shown]
    rows = [
        [rank, *(_cell(key, row[key]) for key in shown)]
        for rank, (_, row) in zip(ranks, ordered.iterrows(), strict=True)
    ]
    widths = [
        max(len(text) for text in [name, *(r[i] for r in rows)]) for i, name in enumerate(columns)
    ]
    numeric = {"rank", *NUMERIC}

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.rjust(width) if name in numeric else cell.ljust(width)
            for name, cell, width in zip(columns, cells, widths, strict=True)
        ).rstrip()

    lines = [line(columns), *(line(r) for r in rows)]
    if (ordered["note"] == TRAINED_ON_LABELS).any():
        lines.append(
            f"({TRAINED_ON_LABELS}: the model was trained on labels of the images it was "
            "scored on, so the score measures memory, not skill; never ranked)"
        )
    return "\n".join(lines)
