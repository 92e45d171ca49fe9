"""Scoring submission files, the leaderboard and provenance.

The real-data tests compare `score_submission` with an independent implementation of the
official metric written here on purpose in another way: a pixel-by-pixel decoder, one
boolean mask per nucleus, IoU as logical_and / logical_or sums for each pair of nuclei,
and exact fractions for the comparison with the thresholds.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from skimage.draw import disk
from skimage.morphology import erosion

from pipeline import cli, provenance
from pipeline.data.reconcile import read_solution
from pipeline.data.rle import encode_mask
from pipeline.data.submission import SubmissionWriter, write_submission_metadata
from pipeline.errors import PipelineError
from pipeline.evaluation import leaderboard
from pipeline.evaluation.leaderboard import COLUMNS, append_entry, read_leaderboard
from pipeline.evaluation.score import labelled_pairs, score_submission
from pipeline.provenance import git_commit

# ------------------------------------------------------------------ synthetic solution


def disc_labels(shape: tuple[int, int], discs: list[tuple[int, int, int]]) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.int32)
    for label, (row, col, radius) in enumerate(discs, start=1):
        labels[disk((row, col), radius, shape=shape)] = label
    return labels


S1 = disc_labels((20, 20), [(5, 5, 3), (13, 13, 4)])
S2 = disc_labels((16, 24), [(8, 12, 5)])
S3 = disc_labels((10, 10), [(5, 5, 2)])
S1_RLES = [encode_mask(S1 == 1), encode_mask(S1 == 2)]
S2_RLE = encode_mask(S2 == 1)


@pytest.fixture
def solution_csv(tmp_path: Path) -> Path:
    """s1: two nuclei, s2: one, s3: Ignored, s4: no nucleus at all."""
    lines = ["ImageId,EncodedPixels,Height,Width,Usage"]
    lines += [f"s1,{rle},20,20,Public" for rle in S1_RLES]
    lines += [f"s2,{S2_RLE},16,24,Private"]
    lines += [f"s3,{encode_mask(S3 == 1)},10,10,Ignored"]
    lines += ["s4,,12,12,Public"]
    path = tmp_path / "solution.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(["ImageId,EncodedPixels", *lines]) + "\n")
    return path


def test_read_solution_skips_ignored_images(solution_csv: Path) -> None:
    images, ignored = read_solution(solution_csv)
    assert list(images) == ["s1", "s2", "s4"]
    assert ignored == {"s3"}
    assert images["s1"].shape == (20, 20)
    assert images["s1"].rows == [(2, S1_RLES[0]), (3, S1_RLES[1])]
    assert images["s4"].rows == [(6, "")]


def test_a_perfect_submission_scores_one(tmp_path: Path, solution_csv: Path) -> None:
    submission = tmp_path / "sub.csv"
    with SubmissionWriter(submission) as writer:
        writer.add("s1", S1)
        writer.add("s2", S2 * 7)
        writer.add("s4", np.zeros((12, 12), dtype=np.int32))
    result = score_submission(submission, solution_csv)
    assert result.score == 1.0
    assert result.per_image == {"s1": 1.0, "s2": 1.0, "s4": 1.0}
    assert result.tp.tolist() == [3] * 10


def test_left_out_missed_extra_and_unknown(
    tmp_path: Path, solution_csv: Path, caplog: pytest.LogCaptureFixture
) -> None:
    submission = write_lines(
        tmp_path / "sub.csv",
        [
            f"s1,{S1_RLES[1]}",  # one of two nuclei: 1/2
            "s4,1 1",  # a false positive on an image without nuclei: 0
            "zz,1 1",  # not in the solution: ignored with a warning
            "s3,1 1",  # an Ignored image: ignored silently
        ],  # s2 left out: 0
    )
    with caplog.at_level(logging.WARNING):
        result = score_submission(submission, solution_csv, checked=False)
    assert result.per_image == {"s1": 0.5, "s2": 0.0, "s4": 0.0}
    assert result.score == pytest.approx(1 / 6, abs=1e-15)
    assert result.tp.tolist() == [1] * 10
    assert result.fp.tolist() == [1] * 10
    assert result.fn.tolist() == [2] * 10
    warnings = [record.getMessage() for record in caplog.records]
    assert (
        f"{submission}: line 4: zz: unknown ImageId: no such image (1 row(s), line(s) 4); ignored"
        in warnings
    )
    assert (
        f"{submission}: s2: missing: no row for this image (an image with no nucleus is 's2,'); "
        "they score as empty predictions"
    ) in warnings
    assert not any("s3" in m for m in warnings)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (  # the header alone
            [],
            r"s1: missing: no row for this image \(an image with no nucleus is 's1,'\) "
            r"\(and 2 more problem\(s\)\)",
        ),
        (["s1,1 1", "s4,"], r"solution\.csv: s2: missing: no row for this image"),
        (
            ["s1,1 1", "s2,", "s4,", "zz,1 1"],
            r"line 5: zz: unknown ImageId: no such image \(1 row\(s\), line\(s\) 5\); ",
        ),
    ],
)
def test_a_submission_the_checker_rejects_is_refused_unless_unchecked(
    tmp_path: Path, solution_csv: Path, lines: list[str], message: str
) -> None:
    submission = write_lines(tmp_path / "sub.csv", lines)
    with pytest.raises(PipelineError, match=r"not a complete submission.*" + message):
        score_submission(submission, solution_csv)
    assert set(score_submission(submission, solution_csv, checked=False).per_image) == {
        "s1",
        "s2",
        "s4",
    }


def test_labelled_pairs_decode_both_files_in_solution_order(
    tmp_path: Path, solution_csv: Path
) -> None:
    submission = write_lines(tmp_path / "sub.csv", ["s4,1 1", f"s1,{S1_RLES[1]}"])
    pairs = list(labelled_pairs(submission, solution_csv, checked=False))
    assert [image_id for image_id, _ in pairs] == ["s1", "s2", "s4"]  # s3 is Ignored
    (true_s1, pred_s1), (true_s2, pred_s2), (true_s4, pred_s4) = (pair for _, pair in pairs)
    np.testing.assert_array_equal(true_s1, S1)
    np.testing.assert_array_equal(pred_s1 > 0, S1 == 2)
    np.testing.assert_array_equal(true_s2, S2)
    assert pred_s2.shape == (16, 24) and not pred_s2.any()  # left out: nothing predicted
    assert not true_s4.any()
    assert pred_s4.shape == (12, 12) and pred_s4.sum() == 1 and pred_s4[0, 0] == 1


def test_labelled_pairs_refuse_a_missing_file_before_decoding(
    tmp_path: Path, solution_csv: Path
) -> None:
    with pytest.raises(PipelineError, match=r"nothing\.csv: no such file"):
        labelled_pairs(tmp_path / "nothing.csv", solution_csv)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([f"s1,{S1_RLES[0]}", "s1,5 x"], r"sub\.csv: line 3: s1: not an integer: 'x'"),
        (["s2,380 10"], r"sub\.csv: line 2: s2: run outside the image.*16x24 image has 384"),
        (
            [f"s1,{S1_RLES[0]}", "s2,1 1", f"s1,{S1_RLES[0]}"],
            rf"sub\.csv: line 4: s1: nuclei overlap: shares pixels, {(S1 == 1).sum()} with the "
            "nucleus on line 2",
        ),
        (["s1,1 1 2"], r"line 2: s1: odd number of values"),
        (["ImageId,EncodedPixels"], r"sub\.csv: line 2: header line repeated"),
    ],
)
def test_an_undecodable_submission_is_refused(
    tmp_path: Path, solution_csv: Path, lines: list[str], message: str
) -> None:
    with pytest.raises(PipelineError, match=message):
        score_submission(write_lines(tmp_path / "sub.csv", lines), solution_csv, checked=False)


@pytest.mark.parametrize(
    ("solution_lines", "message"),
    [
        (["ImageId,EncodedPixels", "s1,1 1"], "line 1: header 'ImageId,EncodedPixels' lacks"),
        (["ImageId,EncodedPixels,Height,Width", "s1,1 1,20,x"], "line 2: Width 'x' is not"),
        (
            ["ImageId,EncodedPixels,Height,Width", "s1,1 1,20,20", "s1,5 1,20,21"],
            "line 3: s1: size 20x21 differs from 20x20 on line 2",
        ),
        (["ImageId,EncodedPixels,Height,Width,Usage", "s1,1 1,4,4,Ignored"], "no image to score"),
        (["ImageId,EncodedPixels,Height,Width", "s1,1 1 2,4,4"], "line 2: s1: odd number"),
    ],
)
def test_a_bad_solution_is_refused(tmp_path: Path, solution_lines: list[str], message: str) -> None:
    solution = tmp_path / "solution.csv"
    solution.write_text("\n".join(solution_lines) + "\n")
    submission = write_lines(tmp_path / "sub.csv", ["s1,1 1"])
    with pytest.raises(PipelineError, match=re.escape(f"{solution}: ") + ".*" + message):
        score_submission(submission, solution)


def test_score_stage_prints_the_report_json_and_adds_to_the_leaderboard(
    tmp_path: Path, solution_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    submission = write_lines(tmp_path / "sub.csv", [f"s1,{S1_RLES[1]}", "s2,", "s4,1 1"])
    write_submission_metadata(
        submission, {"model": "models/m1", "config": "demo", "commit": "cafe123"}
    )
    board = tmp_path / "board" / "leaderboard.csv"
    argv = [
        "score",
        str(submission),
        "--solution",
        str(solution_csv),
        "--leaderboard",
        str(board),
        "--worst",
        "2",
        "--json",
    ]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "score 0.166667  (3 images)"
    assert lines[2] == " IoU>t      TP      FP      FN  TP/(TP+FP+FN)"
    assert lines[3] == "  0.50       1       1       2       0.250000"
    assert lines[12] == "  0.95       1       1       2       0.250000"
    assert lines[14:17] == ["worst 2 images:", "  0.000000  s2", "  0.000000  s4"]
    assert json.loads(lines[-1]) == {
        "score": pytest.approx(1 / 6, abs=1e-15),
        "per_image": {"s1": 0.5, "s2": 0.0, "s4": 0.0},
    }
    table = read_leaderboard(board)
    assert len(table) == 1
    assert table.loc[0, ["model", "config", "commit"]].tolist() == ["models/m1", "demo", "cafe123"]
    assert table.loc[0, "score"] == pytest.approx(1 / 6, abs=1e-15)

    assert cli.main(argv[:-3]) == 0  # without --worst 2 --json: another row
    output = capsys.readouterr().out
    assert not output.rstrip().splitlines()[-1].startswith("{")
    assert "worst 3 images:" in output  # --worst defaults to 10; there are 3 images
    assert len(read_leaderboard(board)) == 2
    assert cli.main([*argv, "--no-leaderboard"]) == 0
    assert len(read_leaderboard(board)) == 2
    assert cli.main([*argv[:-3], "--worst", "-1"]) == 2
    capsys.readouterr()

    partial = write_lines(tmp_path / "partial.csv", [f"s1,{S1_RLES[1]}", "s4,1 1"])
    assert cli.main(["score", str(partial), *argv[2:]]) == 2  # s2 has no row: refused
    assert "s2: missing: no row for this image" in capsys.readouterr().err
    assert cli.main(["score", str(partial), *argv[2:], "--unchecked"]) == 0
    assert capsys.readouterr().out.startswith("score 0.166667  (3 images)")
    assert len(read_leaderboard(board)) == 2  # an unchecked score is never ranked


def test_score_and_record_returns_the_score_and_adds_one_row(
    tmp_path: Path, solution_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.evaluation.score import score_and_record
    from pipeline.paths import REPO_ROOT

    monkeypatch.setattr(leaderboard, "git_commit", lambda: "beef456")
    lines = [f"s1,{S1_RLES[0]}", f"s1,{S1_RLES[1]}", "s2,", "s4,"]
    submission = write_lines(tmp_path / "sub.csv", lines)
    write_submission_metadata(submission, {"model": str(REPO_ROOT / "models" / "m2")})
    board = tmp_path / "leaderboard.csv"
    # s1 perfect: 1; s2 predicted empty: 0; s4 empty and without nuclei: nothing to find, 1.
    assert score_and_record(submission, solution_csv, board) == pytest.approx(2 / 3, abs=1e-15)
    table = read_leaderboard(board)
    assert table[["model", "commit"]].to_numpy().tolist() == [["models/m2", "beef456"]]
    assert score_and_record(submission, solution_csv, None) == pytest.approx(2 / 3, abs=1e-15)
    assert len(read_leaderboard(board)) == 1


# ------------------------------------------------------------------------ leaderboard


def test_leaderboard_rows_and_best_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    board = tmp_path / "leaderboard.csv"
    assert cli.main(["leaderboard", "--leaderboard", str(board)]) == 0
    assert "does not exist yet: no submission scored" in capsys.readouterr().out
    assert read_leaderboard(board).columns.tolist() == list(COLUMNS)

    monkeypatch.setattr(leaderboard, "git_commit", lambda: "feed123-dirty")
    first = append_entry(board, tmp_path / "a.csv", 0.25, {"model": "m", "config": "demo"})
    append_entry(board, tmp_path / "b.csv", 0.5, {"commit": "0123abc"})
    append_entry(board, tmp_path / "c.csv", 0.125)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", first["time"])
    table = read_leaderboard(board)
    assert table.columns.tolist() == list(COLUMNS)
    assert table["file"].tolist() == [str((tmp_path / f"{n}.csv").resolve()) for n in "abc"]
    assert table["score"].tolist() == [0.25, 0.5, 0.125]
    assert table["commit"].tolist() == ["feed123-dirty", "0123abc", "feed123-dirty"]
    assert table["model"].tolist() == ["m", "", ""]
    assert table["config"].tolist() == ["demo", "", ""]

    assert cli.main(["leaderboard", "--leaderboard", str(board)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "time", "file", "score", "model", "config", "commit"]
    assert [line.split()[0] for line in lines[1:]] == ["1", "2", "3"]
    assert [Path(line.split()[2]).name for line in lines[1:]] == ["b.csv", "a.csv", "c.csv"]
    assert [line.split()[3] for line in lines[1:]] == ["0.500000", "0.250000", "0.125000"]
    # The columns are aligned: each starts at the same place on every line, header included.
    assert len({line.index(":") for line in lines[1:]}) == 1
    assert {line.index(":") - 13 for line in lines[1:]} == {lines[0].index("time")}
    score_ends = {re.search(r"\d\.\d{6}", line).end() for line in lines[1:]}
    assert score_ends == {lines[0].index("score") + len("score")}  # right-aligned under it
    assert lines[3].split()[4:6] == ["-", "-"]  # c.csv: no model, no config


def test_leaderboard_refuses_a_file_that_is_not_one(tmp_path: Path) -> None:
    board = tmp_path / "leaderboard.csv"
    board.write_text("time,file,score\n")
    with pytest.raises(PipelineError, match=r"leaderboard\.csv: header .* is not a leaderboard"):
        append_entry(board, tmp_path / "a.csv", 0.5)
    assert board.read_text() == "time,file,score\n"
    board.write_text(",".join(COLUMNS) + "\nt,f,high,m,c,x\n")
    with pytest.raises(PipelineError, match="line 2: score 'high' is not a number"):
        read_leaderboard(board)
    board.write_text("")
    assert read_leaderboard(board).empty
    append_entry(board, tmp_path / "a.csv", 0.5, {"commit": "x"})
    assert board.read_text().splitlines()[0] == ",".join(COLUMNS)


# ------------------------------------------------------------------------- provenance


def test_git_commit_is_none_outside_a_repository(tmp_path: Path) -> None:
    assert git_commit(repo=tmp_path) is None


def test_git_commit_is_none_without_git(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_git(*args: object, **kwargs: object) -> None:
        raise FileNotFoundError("git")

    monkeypatch.setattr(provenance.subprocess, "run", no_git)
    assert git_commit() is None


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_commit_names_the_commit_and_marks_changes(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        return subprocess.run(
            [
                "git",
                "-C",
                str(tmp_path),
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "commit.gpgsign=false",
                *args,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    git("init", "-q")
    assert git_commit(repo=tmp_path) is None  # no commit yet
    (tmp_path / "a.txt").write_text("one\n")
    git("add", "a.txt")
    git("commit", "-q", "-m", "first")
    head = git("rev-parse", "HEAD")
    assert git_commit(short=False, repo=tmp_path) == head
    short = git_commit(repo=tmp_path)
    assert short is not None and head.startswith(short) and len(short) < 40
    (tmp_path / "untracked.txt").write_text("x\n")
    assert git_commit(repo=tmp_path) == short
    (tmp_path / "a.txt").write_text("two\n")
    assert git_commit(repo=tmp_path) == f"{short}-dirty"


# -------------------------------------------------------------------------- real data


def reference_decode(rle: str, height: int, width: int) -> np.ndarray:
    """Pixel runs into a mask, the plain way: slices of a column-major vector."""
    flat = np.zeros(height * width, dtype=bool)
    values = [int(value) for value in rle.split()]
    for start, length in zip(values[0::2], values[1::2], strict=True):
        flat[start - 1 : start - 1 + length] = True
    return flat.reshape(width, height).T


def reference_image_score(true_masks: list[np.ndarray], pred_masks: list[np.ndarray]) -> float:
    """The official metric, one pair of nuclei at a time, with exact fractions."""
    if not true_masks and not pred_masks:
        return 1.0

    def box(mask: np.ndarray) -> tuple[int, int, int, int]:
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        return rows[0], rows[-1], cols[0], cols[-1]

    true_boxes = [box(mask) for mask in true_masks]
    pred_boxes = [box(mask) for mask in pred_masks]
    ious: dict[tuple[int, int], Fraction] = {}
    for i, (true_mask, (r0, r1, c0, c1)) in enumerate(zip(true_masks, true_boxes, strict=True)):
        for j, (pred_mask, (s0, s1, d0, d1)) in enumerate(zip(pred_masks, pred_boxes, strict=True)):
            if s0 > r1 or r0 > s1 or d0 > c1 or c0 > d1:
                continue  # boxes apart: no common pixel
            intersection = int(np.logical_and(true_mask, pred_mask).sum())
            if intersection:
                union = int(np.logical_or(true_mask, pred_mask).sum())
                ious[i, j] = Fraction(intersection, union)
    total = Fraction(0)
    for percent in range(50, 100, 5):
        pairs = [pair for pair, iou in ious.items() if iou > Fraction(percent, 100)]
        matched_true = {i for i, _ in pairs}
        matched_pred = {j for _, j in pairs}
        assert len(matched_true) == len(matched_pred) == len(pairs)  # one-to-one above 0.5
        tp = len(pairs)
        fp = len(pred_masks) - len(matched_pred)
        fn = len(true_masks) - len(matched_true)
        total += Fraction(tp, tp + fp + fn)
    return float(total / 10)


def reference_score(
    truth: dict[str, list[np.ndarray]], predicted: dict[str, list[np.ndarray]]
) -> dict[str, float]:
    return {
        image_id: reference_image_score(masks, predicted.get(image_id, []))
        for image_id, masks in truth.items()
    }


# Perturbations of one image's true masks into predicted masks (none overlap another).


def missed(masks: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    return [mask for index, mask in enumerate(masks) if index % 3 != 1]


def merged(masks: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Each nucleus merged with its nearest neighbour, pair by pair."""
    centres = np.array([ndimage.center_of_mass(mask) for mask in masks])
    left = list(range(len(masks)))
    result = []
    while len(left) >= 2:
        first = left.pop(0)
        distances = [np.hypot(*(centres[first] - centres[other])) for other in left]
        nearest = left.pop(int(np.argmin(distances)))
        result.append(masks[first] | masks[nearest])
    return result + [masks[index] for index in left]


def split(masks: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Each nucleus cut in two at a column, at random around its middle."""
    result = []
    for mask in masks:
        cols = np.flatnonzero(mask.any(axis=0))
        if len(cols) < 2:
            result.append(mask)
            continue
        cut = int(rng.integers(cols[0] + 1, cols[-1] + 1))
        left, right = mask.copy(), mask.copy()
        left[:, cut:] = False
        right[:, :cut] = False
        result += [part for part in (left, right) if part.any()]
    return result


def shifted(masks: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    return [np.roll(mask, (2, -1), axis=(0, 1)) for mask in masks]


def eroded(masks: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    return [part for part in (erosion(mask) for mask in masks) if part.any()]


def extra(masks: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """All nuclei, plus discs of radius 4 in empty places."""
    occupied = np.logical_or.reduce(masks)
    free = ndimage.distance_transform_edt(~occupied) > 6
    result = list(masks)
    for _ in range(5):
        rows, cols = np.nonzero(free)
        if not rows.size:
            break
        pick = int(rng.integers(rows.size))
        added = np.zeros_like(occupied)
        added[disk((rows[pick], cols[pick]), 4, shape=added.shape)] = True
        result.append(added)
        free &= ndimage.distance_transform_edt(~added) > 10
    return result


def left_out(masks: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray] | None:
    return None if rng.random() < 0.5 else masks


@pytest.fixture(scope="module")
def real_subset(real_solution_csv: Path, tmp_path_factory: pytest.TempPathFactory):
    """A handful of real 256x256 test images with 10 to 80 nuclei, and their masks."""
    solution = pd.read_csv(real_solution_csv, dtype=str, keep_default_na=False)
    counts = solution.groupby("ImageId").size()
    small = solution[(solution["Height"] == "256") & (solution["Width"] == "256")]
    chosen = sorted(i for i in small["ImageId"].unique() if 10 <= counts[i] <= 80)[:5]
    assert len(chosen) == 5
    subset = solution[solution["ImageId"].isin(chosen)]
    path = tmp_path_factory.mktemp("real_subset") / "solution_subset.csv"
    subset.to_csv(path, index=False)
    truth = {
        image_id: [reference_decode(rle, 256, 256) for rle in group["EncodedPixels"]]
        for image_id, group in subset.groupby("ImageId", sort=False)
    }
    return path, truth


@pytest.mark.realdata
@pytest.mark.parametrize(
    "perturb", [missed, merged, split, shifted, eroded, extra, left_out], ids=lambda f: f.__name__
)
def test_real_scores_agree_with_an_independent_metric(tmp_path: Path, real_subset, perturb) -> None:
    solution_path, truth = real_subset
    rng = np.random.default_rng(2018)
    predicted: dict[str, list[np.ndarray]] = {}
    submission = tmp_path / "perturbed.csv"
    with SubmissionWriter(submission) as writer:
        for image_id, masks in truth.items():
            masks_out = perturb(masks, rng)
            if masks_out is None:
                continue
            labels = np.zeros(masks[0].shape, dtype=np.int32)
            for label, mask in enumerate(masks_out, start=1):
                assert not labels[mask].any()
                labels[mask] = label
            writer.add(image_id, labels)
            predicted[image_id] = masks_out
    expected = reference_score(truth, predicted)
    # checked=False: left-out images score as empty predictions, as the reference does
    result = score_submission(submission, solution_path, checked=False)
    assert list(result.per_image) == list(expected)
    for image_id, score in expected.items():
        assert result.per_image[image_id] == pytest.approx(score, abs=1e-6), image_id
    assert result.score == pytest.approx(np.mean(list(expected.values())), abs=1e-6)
    assert result.score < 1.0  # every perturbation costs something


@pytest.mark.realdata
def test_the_real_solution_scores_exactly_one_against_itself(
    tmp_path: Path, real_solution_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    solution = pd.read_csv(real_solution_csv, dtype=str, keep_default_na=False)
    submission = tmp_path / "solution_as_submission.csv"
    solution[["ImageId", "EncodedPixels"]].to_csv(submission, index=False)
    board = tmp_path / "leaderboard.csv"
    argv = [
        "score",
        str(submission),
        "--solution",
        str(real_solution_csv),
        "--leaderboard",
        str(board),
        "--json",
    ]
    assert cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert report["score"] == 1.0
    assert len(report["per_image"]) == solution["ImageId"].nunique() == 65
    assert set(report["per_image"].values()) == {1.0}
    table = read_leaderboard(board)
    assert table["score"].tolist() == [1.0]
    assert table["file"].tolist() == [str(submission.resolve())]
