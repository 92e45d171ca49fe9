"""The report stage: per-image scores, overlay PNGs and the HTML page.

Three tiny images in Kaggle layout, one of each kind, and a submission that predicts one
perfectly, leaves one out and shifts the nuclei of the third:

- ``fluo_perfect`` (fluorescence): two discs, predicted exactly: score 1.
- ``bright_missing`` (brightfield): one disc, no submission row: score 0.
- ``h&<shifted>`` (histology; an id that needs escaping): two discs, predicted one column
  and four columns to the right. The first overlaps its truth in 98 of 120 pixels
  (IoU 49/60, a match up to t = 0.80: 7 thresholds), the second in 33 of 105 (no match).
  At a matching threshold TP = FP = FN = 1, precision 1/3; elsewhere 0: score 7/30.

The overall score is (1 + 0 + 7/30) / 3 = 37/90.
"""

from __future__ import annotations

import html
import logging
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage.draw import disk

from pipeline import cli
from pipeline.data.rle import encode_labels
from pipeline.errors import PipelineError
from pipeline.evaluation import report
from pipeline.evaluation.image_results import ImageResult
from pipeline.evaluation.overlays import (
    PREDICTION_COLOURS,
    TRUE_OUTLINE_COLOUR,
    overlay_file_name,
    overlay_rgb,
)
from pipeline.evaluation.report import build_report, default_out_dir, select_galleries
from pipeline.evaluation.report_page import render_index_html
from pipeline.evaluation.score import score_submission

SHAPE = (40, 48)
PERFECT, MISSING, SHIFTED = "fluo_perfect", "bright_missing", "h&<shifted>"
TRUE_DISCS = {
    PERFECT: [(12, 12, 5), (26, 32, 6)],
    MISSING: [(20, 20, 7)],
    SHIFTED: [(15, 15, 6), (28, 34, 5)],
}
PREDICTED_DISCS = {PERFECT: TRUE_DISCS[PERFECT], SHIFTED: [(15, 16, 6), (28, 38, 5)]}
# (background, nucleus) RGB of each image: dark, light grey, stained.
COLOURS = {
    PERFECT: ((10, 10, 10), (200, 200, 200)),
    MISSING: ((220, 220, 220), (60, 60, 60)),
    SHIFTED: ((230, 180, 210), (90, 50, 140)),
}
SHIFTED_SCORE = 7 / 30
OVERALL = (1 + 0 + SHIFTED_SCORE) / 3
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def disc_labels(discs: list[tuple[int, int, int]]) -> np.ndarray:
    labels = np.zeros(SHAPE, dtype=np.int32)
    for label, (row, col, radius) in enumerate(discs, start=1):
        labels[disk((row, col), radius, shape=SHAPE)] = label
    return labels


def write_images(images_dir: Path, ids: list[str]) -> Path:
    for image_id in ids:
        background, nucleus = COLOURS[image_id]
        pixels = np.empty((*SHAPE, 3), dtype=np.uint8)
        pixels[...] = background
        pixels[disc_labels(TRUE_DISCS[image_id]) > 0] = nucleus
        folder = images_dir / image_id / "images"
        folder.mkdir(parents=True)
        Image.fromarray(pixels).save(folder / f"{image_id}.png")
    return images_dir


def write_solution(path: Path, ids: list[str]) -> Path:
    lines = ["ImageId,EncodedPixels,Height,Width,Usage"]
    for image_id in ids:
        lines += [
            f"{image_id},{rle},{SHAPE[0]},{SHAPE[1]},Public"
            for rle in encode_labels(disc_labels(TRUE_DISCS[image_id]))
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def kaggle(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(images folder, solution CSV, submission CSV) of the three images."""
    ids = [PERFECT, MISSING, SHIFTED]
    images_dir = write_images(tmp_path / "images", ids)
    solution = write_solution(tmp_path / "solution.csv", ids)
    lines = ["ImageId,EncodedPixels"]
    for image_id, discs in PREDICTED_DISCS.items():
        lines += [f"{image_id},{rle}" for rle in encode_labels(disc_labels(discs))]
    submission = tmp_path / "subs" / "demo.csv"
    submission.parent.mkdir()
    submission.write_text("\n".join(lines) + "\n")
    return images_dir, solution, submission


def read_png(path: Path) -> Image.Image:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as picture:
        picture.verify()
    picture = Image.open(path)
    picture.load()
    assert picture.format == "PNG"
    return picture


def read_scores(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "per_image_scores.csv", dtype={"ImageId": str})


# ---------------------------------------------------------------------------- report


def test_report_scores_every_image_worst_first(
    tmp_path: Path, kaggle: tuple[Path, Path, Path]
) -> None:
    images_dir, solution, submission = kaggle
    out = tmp_path / "out"
    result = build_report(submission, images_dir, solution, out, n=1)

    table = read_scores(out)
    assert list(table.columns) == [
        "ImageId",
        "kind",
        "score",
        "n_true",
        "n_pred",
        "tp_iou50",
        "fp_iou50",
        "fn_iou50",
    ]
    assert table["ImageId"].tolist() == [MISSING, SHIFTED, PERFECT]
    assert table["kind"].tolist() == ["brightfield", "histology", "fluorescence"]
    assert table["score"].tolist() == [0.0, pytest.approx(SHIFTED_SCORE, abs=1e-15), 1.0]
    assert table[["n_true", "n_pred"]].values.tolist() == [[1, 0], [2, 2], [2, 2]]
    assert table[["tp_iou50", "fp_iou50", "fn_iou50"]].values.tolist() == [
        [0, 0, 1],
        [1, 1, 1],
        [2, 0, 0],
    ]
    assert result.score == pytest.approx(OVERALL, abs=1e-15)
    # The same images, decoded and scored as the score stage does.
    assert result.score == score_submission(submission, solution, checked=False).score
    assert [r.image_id for r in result.results] == [MISSING, SHIFTED, PERFECT]
    assert result.index_html == out / "index.html"
    assert result.folder == out


def test_report_writes_the_overlays_of_the_best_and_worst(
    tmp_path: Path, kaggle: tuple[Path, Path, Path]
) -> None:
    images_dir, solution, submission = kaggle
    out = tmp_path / "out"
    result = build_report(submission, images_dir, solution, out, n=1)
    assert [r.image_id for r in result.worst] == [MISSING]
    assert [r.image_id for r in result.best] == [PERFECT]
    overlays = out / "overlays"
    assert sorted(path.name for path in overlays.iterdir()) == [
        "bright_missing.png",
        "fluo_perfect.png",
    ]
    for path in overlays.iterdir():
        picture = read_png(path)
        assert path.stat().st_size < 500_000
        assert picture.width > picture.height > 100  # two pictures side by side, a title
    # Nothing left over from the atomic writes.
    assert sorted(path.name for path in out.iterdir()) == [
        "index.html",
        "overlays",
        "per_image_scores.csv",
    ]
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []


def test_report_page_links_the_overlays_and_lists_every_image(
    tmp_path: Path, kaggle: tuple[Path, Path, Path]
) -> None:
    images_dir, solution, submission = kaggle
    out = tmp_path / "out"
    build_report(submission, images_dir, solution, out, n=1)
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "<h1>demo</h1>" in page
    assert "<strong>0.4111</strong>" in page  # 37/90
    for image_id in (PERFECT, MISSING):
        assert f'src="overlays/{image_id}.png"' in page
    for image_id in (PERFECT, MISSING, SHIFTED):
        assert html.escape(image_id) in page
    assert "<shifted>" not in page  # the id is escaped everywhere
    assert "h&amp;&lt;shifted&gt;" in page
    # Score per kind, with counts: one image of each.
    assert '<td class="kind">fluorescence</td><td>1</td><td>1.0000</td>' in page
    assert '<td class="kind">brightfield</td><td>1</td><td>0.0000</td>' in page
    assert '<td class="kind">histology</td><td>1</td><td>0.2333</td>' in page
    assert "Worst 1 images" in page and "Best 1 images" in page
    # Self-contained: the only links are the overlays.
    links = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert links and all(link.startswith("overlays/") for link in links)
    assert "http" not in page


def test_with_fewer_images_than_the_galleries_every_image_is_shown_once(
    tmp_path: Path, kaggle: tuple[Path, Path, Path]
) -> None:
    images_dir, solution, submission = kaggle
    result = build_report(submission, images_dir, solution, tmp_path / "out")  # n = 8
    assert [r.image_id for r in result.worst] == [MISSING, SHIFTED, PERFECT]
    assert result.best == []
    assert sorted(path.name for path in (tmp_path / "out" / "overlays").iterdir()) == sorted(
        ["bright_missing.png", "fluo_perfect.png", overlay_file_name(SHIFTED)]
    )
    read_png(tmp_path / "out" / "overlays" / overlay_file_name(SHIFTED))
    page = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert "All images, worst first" in page
    assert "Best " not in page


def test_without_solution_the_report_shows_predictions_only(
    tmp_path: Path, kaggle: tuple[Path, Path, Path]
) -> None:
    images_dir, _, submission = kaggle
    out = tmp_path / "out"
    result = build_report(submission, images_dir, None, out, n=2)
    assert result.score is None
    table = read_scores(out)
    assert table["ImageId"].tolist() == sorted([PERFECT, MISSING, SHIFTED])  # by id
    assert table["n_pred"].tolist() == [0, 2, 2]
    for column in ("score", "n_true", "tp_iou50", "fp_iou50", "fn_iou50"):
        assert table[column].isna().all()
    assert [r.image_id for r in result.worst] == [MISSING, PERFECT]  # the first two by id
    assert result.best == []
    for image_id in (MISSING, PERFECT):
        read_png(out / "overlays" / f"{image_id}.png")
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "predictions only" in page
    assert "Overall score" not in page
    assert all(html.escape(image_id) in page for image_id in (PERFECT, MISSING, SHIFTED))


def test_a_solution_that_lacks_an_image_gives_predictions_only(
    tmp_path: Path, kaggle: tuple[Path, Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    images_dir, _, submission = kaggle
    partial = write_solution(tmp_path / "partial.csv", [PERFECT, SHIFTED])
    with caplog.at_level(logging.WARNING):
        result = build_report(submission, images_dir, partial, tmp_path / "out", n=1)
    assert result.score is None
    assert all(r.score is None for r in result.results)
    assert any("covers 2 of the 3 images" in record.getMessage() for record in caplog.records)


def test_the_stage_writes_beside_the_csv_and_replaces_an_earlier_report(
    kaggle: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    images_dir, solution, submission = kaggle
    argv = ["report", str(submission), "--images", str(images_dir), "--solution", str(solution)]
    assert cli.main([*argv, "--n", "1"]) == 0
    out = submission.parent / "demo"
    assert default_out_dir(submission) == out
    messages = capsys.readouterr().err.splitlines()  # the stage logs to stderr
    assert f"report: {out / 'index.html'}" in messages
    assert "score 0.411111 over 3 images" in messages
    assert len(list((out / "overlays").iterdir())) == 2
    assert cli.main(argv) == 0  # n = 8: the earlier report is replaced as a whole
    assert len(list((out / "overlays").iterdir())) == 3
    assert sorted(path.name for path in submission.parent.iterdir()) == ["demo", "demo.csv"]


def test_an_interrupted_run_leaves_the_earlier_report(
    tmp_path: Path, kaggle: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    images_dir, solution, submission = kaggle
    out = tmp_path / "out"
    build_report(submission, images_dir, solution, out, n=1)
    before = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}

    def interrupted(*args: object, **kwargs: object) -> Path:
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "write_overlay_png", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_report(submission, images_dir, None, out, n=3)
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()} == before
    assert sorted(path.name for path in (out / "overlays").iterdir()) == [
        "bright_missing.png",
        "fluo_perfect.png",
    ]
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".")) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"submission": "absent.csv"}, r"absent\.csv: no such file"),
        ({"submission_text": "Image,Pixels\nx,1 1\n"}, r"bad\.csv: line 1: header .* lacks"),
        ({"submission_text": "ImageId,EncodedPixels\nfluo_perfect,1 1 5\n"}, "odd number"),
        ({"images": "no_images"}, r"no_images: no such folder of images"),
        ({"solution": "absent_solution.csv"}, r"absent_solution\.csv: no such solution file"),
        ({"n": -1}, "--n must be 0 or more"),
        ({"out_file": "notes.txt"}, r"notes: a folder that is not a report"),
    ],
)
def test_clear_errors(
    tmp_path: Path, kaggle: tuple[Path, Path, Path], change: dict, message: str
) -> None:
    images_dir, solution, submission = kaggle
    kwargs = {"out_dir": tmp_path / "out", "n": 1}
    if "submission" in change:
        submission = tmp_path / change["submission"]
    if "submission_text" in change:
        submission = tmp_path / "bad.csv"
        submission.write_text(change["submission_text"])
    if "images" in change:
        images_dir = tmp_path / change["images"]
    if "solution" in change:
        solution = tmp_path / change["solution"]
    if "n" in change:
        kwargs["n"] = change["n"]
    if "out_file" in change:
        (tmp_path / "notes").mkdir()
        (tmp_path / "notes" / change["out_file"]).write_text("keep me")
        kwargs["out_dir"] = tmp_path / "notes"
    with pytest.raises(PipelineError, match=message):
        build_report(submission, images_dir, solution, **kwargs)
    assert not (tmp_path / "out").exists()
    if "out_file" in change:
        assert (tmp_path / "notes" / "notes.txt").read_text() == "keep me"


def test_the_stage_turns_errors_into_exit_status_2(tmp_path: Path) -> None:
    assert cli.main(["report", str(tmp_path / "absent.csv"), "--images", str(tmp_path)]) == 2


# ----------------------------------------------------------------------- the pieces


def test_overlay_fills_predictions_and_outlines_the_truth() -> None:
    image = np.full((5, 5, 3), 100, dtype=np.uint8)
    pred = np.zeros((5, 5), dtype=np.int32)
    pred[0, 0] = 1  # a one-pixel nucleus is all border: 85 % of its colour
    pred[3:5, 3:5] = 2
    truth = np.zeros((5, 5), dtype=np.int32)
    truth[1:4, 1:4] = 1  # a 3x3 nucleus: its 8 border pixels are outlined, its centre not
    picture = overlay_rgb(image, pred, truth)
    grey = 100 / 255
    colour_1 = (picture[0, 0] - 0.15 * grey) / 0.85
    assert np.isclose(PREDICTION_COLOURS, colour_1).all(axis=1).any()
    colour_2 = (picture[4, 4] - 0.45 * grey) / 0.55  # inside: 55 % of its colour
    assert np.isclose(PREDICTION_COLOURS, colour_2).all(axis=1).any()
    assert not np.allclose(colour_1, colour_2)
    outline = np.zeros((5, 5), dtype=bool)
    outline[1:4, 1:4] = True
    outline[2, 2] = False
    assert (picture[outline] == TRUE_OUTLINE_COLOUR).all()
    np.testing.assert_allclose(picture[2, 2], [grey] * 3)  # inside, not predicted
    np.testing.assert_allclose(picture[0, 2], [0.4 * grey] * 3)  # the dark rim outside
    np.testing.assert_allclose(picture[0, 4], [grey] * 3)  # the rim does not turn corners
    assert picture.shape == (5, 5, 3) and picture.dtype == np.float64


def test_overlay_without_truth_leaves_the_background_alone() -> None:
    image = np.full((4, 4, 3), 50, dtype=np.uint8)
    picture = overlay_rgb(image, np.zeros((4, 4), dtype=np.int32))
    np.testing.assert_allclose(picture, image / 255)


@pytest.mark.parametrize(
    ("scores", "n", "worst", "best"),
    [
        ([0.0, 0.2, 0.5, 0.7, 1.0], 2, ["a", "b"], ["e", "d"]),
        ([0.0, 0.2, 0.5], 2, ["a", "b"], ["c"]),
        ([0.0, 0.2], 8, ["a", "b"], []),
        ([0.0, 0.2], 0, [], []),
        ([None, None, None], 2, ["a", "b"], []),
    ],
)
def test_select_galleries(scores: list, n: int, worst: list[str], best: list[str]) -> None:
    results = [
        ImageResult(image_id, "fluorescence", 1, score)
        for image_id, score in zip("abcde", scores, strict=False)
    ]
    selected = select_galleries(results, n)
    assert [[r.image_id for r in gallery] for gallery in selected] == [worst, best]


class PageParser(HTMLParser):
    """The tags, the alt texts and the text of a page, unescaped."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.alts: list[str] = []
        self.text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.alts += [value or "" for name, value in attrs if name == "alt"]

    def handle_data(self, data: str) -> None:
        self.text += data


def test_the_page_escapes_ids_names_and_details() -> None:
    hostile = "<script>alert(\"x\")</script>' onload='1&"
    results = [
        ImageResult(hostile, "histology", 2, 0.5, 2, 1, 1, 1),
        ImageResult("b", "<em>kind</em>", 1, 1.0, 1, 1, 0, 0),
    ]
    page = render_index_html(
        "<b>name</b>", results, results[:1], results[1:], [("<i>model</i>", 'a"b')]
    )
    parsed = PageParser()
    parsed.feed(page)
    assert parsed.tags == {
        *("html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "strong"),
        *("table", "tr", "th", "td", "div", "figure", "figcaption", "a", "img"),
    }
    assert parsed.alts == [hostile, "b"]  # the quotes do not end the attribute
    for text in (hostile, "<b>name</b>", "<em>kind</em>", "<i>model</i>", 'a"b'):
        assert text in parsed.text
    hostile_png, b_png = (f"overlays/{overlay_file_name(i)}" for i in (hostile, "b"))
    # Each figure links its overlay twice (a, img); the table links the ids shown.
    links = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert links == [hostile_png, hostile_png, b_png, b_png, hostile_png, b_png]


@pytest.mark.parametrize(
    ("image_id", "pattern"),
    [
        ("0a7d30b2c4", r"0a7d30b2c4\.png"),
        ("a/b", r"a_b-[0-9a-f]{8}\.png"),
        ("a_b", r"a_b\.png"),
        ("..", r"image-[0-9a-f]{8}\.png"),
        ("h&<shifted>", r"h__shifted_-[0-9a-f]{8}\.png"),
    ],
)
def test_overlay_file_names_are_safe(image_id: str, pattern: str) -> None:
    assert re.fullmatch(pattern, overlay_file_name(image_id))


# ------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_the_solution_as_a_submission_scores_one_everywhere(
    tmp_path: Path, real_test_dir: Path, real_solution_csv: Path
) -> None:
    solution = pd.read_csv(real_solution_csv, dtype=str, keep_default_na=False)
    submission = tmp_path / "truth.csv"
    solution[["ImageId", "EncodedPixels"]].to_csv(submission, index=False)
    result = build_report(submission, real_test_dir, real_solution_csv, n=2)
    assert result.folder == tmp_path / "truth"
    table = read_scores(result.folder)
    assert len(table) == 65
    assert (table["score"] == 1.0).all()
    assert (table["n_true"] == table["n_pred"]).all()
    assert (table["fp_iou50"] == 0).all() and (table["fn_iou50"] == 0).all()
    assert result.score == 1.0
    assert set(table["kind"]) <= {"fluorescence", "brightfield", "histology"}
    overlays = sorted((result.folder / "overlays").iterdir())
    assert len(overlays) == 4
    for path in overlays:
        read_png(path)
        assert path.stat().st_size < 500_000
    page = result.index_html.read_text(encoding="utf-8")
    assert "<strong>1.0000</strong>" in page
    assert all(image_id in page for image_id in table["ImageId"])
