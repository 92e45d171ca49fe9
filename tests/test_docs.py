"""The manual stays true to itself and to the command line.

Every relative link and ``#anchor`` in the README, ``docs/*.md``, ``models/README.md`` and
``input/README.md`` resolves (anchors by GitHub's rules), and every flag that a
``./run.sh STAGE ... --flag`` command in a code span or code block of the README and
``docs/*.md`` names is one of that stage's flags (`pipeline.cli.build_parser`). The flags
of ``./run.sh test`` are pytest's and are not checked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.cli import DEFAULT_STAGE, STAGES, build_parser

ROOT = Path(__file__).resolve().parents[1]
MANUAL = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINKED = [*MANUAL, ROOT / "models" / "README.md", ROOT / "input" / "README.md"]
FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
FLAG = re.compile(r"(?<![\w-])--[a-z0-9][a-z0-9-]*")
COMMAND_END = re.compile(r"&&|\|\||;|,\s|(?<!\\)\|(?!all)|\s#")


def prose_and_code(text: str) -> tuple[list[str], list[str]]:
    """The lines outside fenced code blocks, and the lines inside them."""
    prose, code, fenced = [], [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif fenced:
            code.append(line)
        else:
            prose.append(line)
    return prose, code


def slug(heading: str) -> str:
    """A heading's anchor by GitHub's rules: lower case, punctuation other than ``-`` and
    ``_`` dropped, spaces to ``-``.

    >>> slug("The 0.50 aim on `stage1_test`!")
    'the-050-aim-on-stage1_test'
    """
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file; a repeated heading gets ``-1``, ``-2``, ..."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose_and_code(path.read_text())[0]:
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> Iterator[str]:
    """The link targets of a Markdown file's prose (code spans and blocks left out)."""
    for line in prose_and_code(path.read_text())[0]:
        yield from LINK.findall(CODE_SPAN.sub("", line))


def broken_links(path: Path) -> list[str]:
    """What is wrong with each relative link of ``path``: a missing file or anchor."""
    problems = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            problems.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{target}: no heading with that anchor in {linked.name}")
    return problems


@pytest.mark.parametrize("path", LINKED, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(path: Path) -> None:
    assert broken_links(path) == []


def commands(text: str) -> Iterator[str]:
    """Every ``./run.sh ...`` command in the code spans and code blocks of ``text``, up to
    its end (``&&``, ``;``, ``, ``, a pipe or a comment); a block's continued lines are joined."""
    prose, code = prose_and_code(text)
    pieces = [span for line in prose for _, span in CODE_SPAN.findall(line)]
    pieces += "\n".join(code).replace("\\\n", " ").splitlines()
    for piece in pieces:
        for start in re.finditer(r"\./run\.sh\b", piece):
            rest = piece[start.end() :]
            following = re.search(r"\./run\.sh\b", rest)
            rest = rest[: following.start()] if following else rest
            end = COMMAND_END.search(rest)
            yield "./run.sh" + (rest[: end.start()] if end else rest)


def stage_and_flags(command: str) -> tuple[str | None, list[str]]:
    """The stage a ``./run.sh`` command runs (None: ``test`` or a placeholder such as
    ``STAGE``) and the flags it names.

    >>> stage_and_flags("./run.sh train [--preset P] --out models/x")
    ('train', ['--preset', '--out'])
    >>> stage_and_flags("./run.sh --stage 2")
    ('all', ['--stage'])
    """
    words = command.split()[1:]
    first = words[0].strip("[]()`'\"") if words else ""
    if not first or first.startswith("-"):
        stage = DEFAULT_STAGE
    elif first in STAGES:
        stage = first
    else:
        return None, []
    return stage, FLAG.findall(" ".join(words))


def unknown_flags(path: Path) -> list[str]:
    """Each ``./run.sh STAGE --flag`` of ``path`` whose flag the stage does not have."""
    problems = []
    for command in commands(path.read_text()):
        stage, flags = stage_and_flags(command)
        if stage is None:
            continue
        known = build_parser(stage)._option_string_actions
        problems += [f"{command.strip()}: {flag}" for flag in flags if flag not in known]
    return problems


@pytest.mark.parametrize("path", MANUAL, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_flag_the_manual_names_exists(path: Path) -> None:
    assert unknown_flags(path) == []


def test_the_checks_catch_a_broken_link_and_an_unknown_flag(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# A page\n\n## Twice\n\n## Twice\n\n[ok](#twice-1) [gone](#twice-2) [no](absent.md)\n"
        "\n```bash\n./run.sh predict --images DIR \\\n    --no-such-flag\n./run.sh test -x\n```\n"
    )
    assert broken_links(page) == [
        "#twice-2: no heading with that anchor in page.md",
        "absent.md: no such file",
    ]
    assert unknown_flags(page) == [
        "./run.sh predict --images DIR      --no-such-flag: --no-such-flag"
    ]
