"""Reading run-length CSV files: ``ImageId,EncodedPixels`` and any further columns.

Three kinds of file share this format: the training labels (``stage1_train_labels.csv``,
``ImageId,EncodedPixels``), the solution (``stage1_solution.csv``, with ``Height``,
``Width`` and ``Usage`` too) and submissions (see `pipeline.data.submission`). This module
is the one reader of them all. It keeps the line number of every row, for messages, and
collects what is wrong instead of stopping at the first problem, so that
`pipeline.data.reconcile.check_submission` can list every problem of a file. What the
rows mean (sizes, usage, overlapping nuclei) is left to the callers:
`pipeline.data.dataset.labels_from_rle_csv` (labels for training and evaluation),
`pipeline.data.reconcile` (submissions against their images and solutions) and
`pipeline.data.submission.read_submission` (a table of any of them).

Example
-------
>>> import io
>>> table = parse_rle_table(io.StringIO("ImageId,EncodedPixels\\na,1 2\\n\\nb,\\nc,1 1,x\\n"))
>>> table.header, table.rows
(['ImageId', 'EncodedPixels'], [(2, ['a', '1 2']), (4, ['b', ''])])
>>> print(table.problems[0])
line 5: c: 3 field(s), expected 2 (ImageId,EncodedPixels)
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

__all__ = ["REQUIRED", "Problem", "RleTable", "parse_rle_table", "read_rle_table", "summary"]

#: The columns every run-length CSV has.
REQUIRED = ("ImageId", "EncodedPixels")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a run-length CSV file (a submission, a solution, labels).

    Attributes
    ----------
    row : int or None
        1-based line number in the file (the header is line 1); None for a problem of the
        whole file or of an image that has no row.
    image_id : str or None
        The image concerned, if any.
    message : str
        What is wrong.
    """

    row: int | None
    image_id: str | None
    message: str

    def __str__(self) -> str:
        parts = [] if self.row is None else [f"line {self.row}"]
        if self.image_id:
            parts.append(self.image_id)
        return ": ".join([*parts, self.message])


def summary(problems: Sequence[Problem], more: str = "problem(s)") -> str:
    """The first of ``problems``, and how many more there are.

    >>> summary([Problem(2, "a", "x"), Problem(5, "b", "y")])
    'line 2: a: x (and 1 more problem(s))'
    """
    rest = len(problems) - 1
    return f"{problems[0]}" + (f" (and {rest} more {more})" if rest else "")


@dataclass(frozen=True)
class RleTable:
    """A run-length CSV as read, before its rows are interpreted.

    Attributes
    ----------
    header : list of str or None
        The column names (stripped); None when the file cannot be read as a table with the
        required columns, each once (then ``rows`` is empty and ``problems`` says why).
    rows : list of (int, list of str)
        The data rows as ``(line, fields)``, each with as many fields as the header, in
        file order; blank lines are skipped.
    problems : list of Problem
        What is wrong, in line order: rows with the wrong number of fields and repeated
        header lines, or the one problem that makes the file unreadable.
    lacking : tuple of str
        The required columns that the header (or an empty file) lacks.
    """

    header: list[str] | None
    rows: list[tuple[int, list[str]]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    lacking: tuple[str, ...] = ()


def read_rle_table(path: str | os.PathLike[str], required: Sequence[str] = REQUIRED) -> RleTable:
    """Read a run-length CSV file (UTF-8, with or without a byte-order mark).

    Parameters
    ----------
    path : str or Path
        The CSV file.
    required : sequence of str
        Columns that the header must hold (``REQUIRED``, and ``Height`` and ``Width`` for
        a solution); other columns are kept.

    Returns
    -------
    RleTable
        The header, the rows with their line numbers and the problems found.

    Raises
    ------
    PipelineError
        Only when the file does not exist or is a folder; every other problem is in the
        table.
    """
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: no such file")
    if path.is_dir():
        raise PipelineError(f"{path}: is a folder, not a CSV file")
    with open(path, encoding="utf-8-sig", newline="") as stream:
        return parse_rle_table(stream, required)


def parse_rle_table(lines: Iterable[str], required: Sequence[str] = REQUIRED) -> RleTable:
    """`read_rle_table` on lines of text (such as a file opened with ``newline=""``)."""
    reader = csv.reader(lines)
    try:
        first = next(reader, None)
        if first is None:
            message = f"empty file: no header {','.join(required)}"
            return RleTable(None, problems=[Problem(None, None, message)], lacking=tuple(required))
        header = [name.strip() for name in first]
        unusable = _header_problem(header, required)
        if unusable is not None:
            return unusable
        rows, problems = _data_rows(reader, header)
    except UnicodeDecodeError as error:
        return RleTable(None, problems=[Problem(None, None, f"not a text CSV file ({error})")])
    except csv.Error as error:
        return RleTable(
            None, problems=[Problem(reader.line_num, None, f"not a CSV file ({error})")]
        )
    return RleTable(header, rows, problems)


def _header_problem(header: list[str], required: Sequence[str]) -> RleTable | None:
    """The table of a file whose header is unusable; None when the header is fine."""
    lacking = tuple(name for name in required if name not in header)
    if lacking:
        message = (
            f"header {','.join(header)!r} lacks {', '.join(lacking)}; expected {','.join(required)}"
        )
        return RleTable(None, problems=[Problem(1, None, message)], lacking=lacking)
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        return RleTable(None, problems=[Problem(1, None, f"header repeats {', '.join(repeated)}")])
    return None


def _data_rows(reader: Any, header: list[str]) -> tuple[list[tuple[int, list[str]]], list[Problem]]:
    """The rows of a ``csv.reader`` past the header, and the problems of the malformed ones."""
    rows: list[tuple[int, list[str]]] = []
    problems: list[Problem] = []
    for fields in reader:
        line = reader.line_num
        if not fields:
            continue
        if [name.strip() for name in fields] == header:
            problems.append(Problem(line, None, "header line repeated"))
        elif len(fields) != len(header):
            hint = " (an image with no nucleus is '<ImageId>,')" if len(fields) == 1 else ""
            message = f"{len(fields)} field(s), expected {len(header)} ({','.join(header)}){hint}"
            problems.append(Problem(line, fields[0] or None, message))
        else:
            rows.append((line, fields))
    return rows, problems
