"""Submission files: the writer, the reader, the sidecar metadata and the checker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage.draw import disk

from pipeline import cli
from pipeline.data.reconcile import check_submission
from pipeline.data.rle import decode_labels
from pipeline.data.submission import (
    Problem,
    SubmissionWriter,
    decode_image_rows,
    metadata_path,
    read_submission,
    read_submission_metadata,
    write_submission,
    write_submission_metadata,
)
from pipeline.errors import PipelineError

# Tiny images in Kaggle layout: id -> (height, width).
SHAPES = {"img_a": (6, 5), "img_b": (4, 4), "img_c": (8, 3)}


@pytest.fixture
def images_dir(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    for image_id, (height, width) in SHAPES.items():
        folder = root / image_id / "images"
        folder.mkdir(parents=True)
        Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8)).save(
            folder / f"{image_id}.png"
        )
    return root


def write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- writing


def test_writer_writes_one_row_per_nucleus_and_one_empty_row_per_empty_image(
    tmp_path: Path,
) -> None:
    target = tmp_path / "sub" / "submission.csv"
    labels = np.array([[7, 7, 0], [0, 3, 0], [3, 3, 0]])
    with SubmissionWriter(target) as writer:
        assert writer.add("a", labels) == 2
        assert writer.add("b", np.zeros((2, 2), dtype=np.int32)) == 0
        assert not target.exists()  # only moved into place at the end of the block
    assert target.read_text() == "ImageId,EncodedPixels\na,3 1 5 2\na,1 1 4 1\nb,\n"
    assert (writer.n_images, writer.n_rows, writer.n_nuclei) == (2, 3, 2)


def test_writer_refuses_the_same_image_twice_and_bad_ids(tmp_path: Path) -> None:
    with SubmissionWriter(tmp_path / "s.csv") as writer:
        writer.add("a", np.zeros((2, 2), dtype=int))
        with pytest.raises(ValueError, match="image a added twice"):
            writer.add("a", np.zeros((2, 2), dtype=int))
        with pytest.raises(ValueError, match="comma"):
            writer.add("x,y", np.zeros((2, 2), dtype=int))
        with pytest.raises(ValueError, match="not a valid ImageId"):
            writer.add(" a", np.zeros((2, 2), dtype=int))
    assert (tmp_path / "s.csv").read_text() == "ImageId,EncodedPixels\na,\n"
    with pytest.raises(RuntimeError, match="outside its 'with' block"):
        writer.add("b", np.zeros((2, 2), dtype=int))


def test_writer_leaves_nothing_behind_on_an_error(tmp_path: Path) -> None:
    target = tmp_path / "submission.csv"
    target.write_text("old content\n")
    with pytest.raises(KeyError), SubmissionWriter(target) as writer:
        writer.add("a", np.ones((2, 2), dtype=int))
        raise KeyError("prediction failed")
    assert target.read_text() == "old content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submission.csv"]


def test_write_and_read_round_trip(tmp_path: Path) -> None:
    labels_a = np.zeros((6, 5), dtype=np.int32)
    labels_a[disk((2, 2), 2, shape=labels_a.shape)] = 4
    labels_a[5, 4] = 9
    target = tmp_path / "submission.csv"
    write_submission(target, [("img_a", labels_a), ("img_b", np.zeros((4, 4), dtype=int))])
    frame = read_submission(target)
    assert list(frame.columns) == ["ImageId", "EncodedPixels"]
    assert frame.index.tolist() == [2, 3, 4]  # line numbers, the header is line 1
    assert frame["ImageId"].tolist() == ["img_a", "img_a", "img_b"]
    assert frame["EncodedPixels"].tolist()[2] == ""
    decoded = decode_labels(frame["EncodedPixels"].tolist()[:2], (6, 5))
    np.testing.assert_array_equal(decoded, np.select([labels_a == 4, labels_a == 9], [1, 2]))


def test_metadata_sits_beside_the_submission(tmp_path: Path) -> None:
    target = tmp_path / "run1.csv"
    assert metadata_path(target) == tmp_path / "run1.json"
    assert metadata_path(tmp_path / "run1.txt") == tmp_path / "run1.txt.json"
    assert read_submission_metadata(target) == {}
    written = write_submission_metadata(
        target, {"model": Path("models/default"), "config": "default", "commit": "abc1234"}
    )
    assert written == tmp_path / "run1.json"
    assert read_submission_metadata(target) == {
        "model": "models/default",
        "config": "default",
        "commit": "abc1234",
    }
    written.write_text("{not json")
    with pytest.raises(PipelineError, match=r"run1\.json: not valid JSON"):
        read_submission_metadata(target)
    written.write_text("[1, 2]")
    with pytest.raises(PipelineError, match="expected a JSON object"):
        read_submission_metadata(target)


# --------------------------------------------------------------------------- reading


def test_read_submission_keeps_empty_encodings_as_empty_strings(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "s.csv", ["ImageId,EncodedPixels", "a,", "NA,1 1", "", "b,3 2"])
    frame = read_submission(path)
    assert frame["EncodedPixels"].tolist() == ["", "1 1", "3 2"]
    assert frame["ImageId"].tolist() == ["a", "NA", "b"]
    assert frame.index.tolist() == [2, 3, 5]  # the blank line 4 is skipped
    assert not frame.isna().any().any()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"s\.csv: empty file: no header ImageId,EncodedPixels"),
        (
            b"ImageId,Pixels\na,1 1\n",
            r"s\.csv: line 1: header 'ImageId,Pixels' lacks EncodedPixels",
        ),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", r"s\.csv: not a text CSV file"),
        (b"ImageId,EncodedPixels\na,1 1\nb\n", r"s\.csv: line 3: b: 1 field\(s\), expected 2"),
        (b"ImageId,EncodedPixels\na,1 1,7\n", r"s\.csv: line 2: a: 3 field\(s\), expected 2"),
    ],
)
def test_read_submission_refuses_bad_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "s.csv"
    path.write_bytes(content)
    with pytest.raises(PipelineError, match=message):
        read_submission(path)


def test_read_submission_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match=r"nothing\.csv: no such file"):
        read_submission(tmp_path / "nothing.csv")
    with pytest.raises(PipelineError, match="is a folder"):
        read_submission(tmp_path)


def test_decode_image_rows_skips_bad_rows_and_reports_them() -> None:
    rows = [(2, "1 3"), (3, ""), (4, "3 2"), (5, "5 x"), (6, "7 1")]
    labels, problems = decode_image_rows("a", rows, (4, 2))
    assert labels.T.ravel().tolist() == [1, 1, 1, 0, 0, 0, 2, 0]
    assert [str(problem) for problem in problems] == [
        "line 4: a: nuclei overlap: shares pixels, 1 with the nucleus on line 2",
        "line 5: a: not an integer: 'x' (expected 'start length' pairs)",
    ]


# -------------------------------------------------------------------------- checking

VALID = ["ImageId,EncodedPixels", "img_a,1 3", "img_a,7 2", "img_b,", "img_c,5 2"]


def test_a_valid_file_has_no_problem(tmp_path: Path, images_dir: Path) -> None:
    assert check_submission(write_csv(tmp_path / "s.csv", VALID), images_dir) == []


def test_a_written_submission_is_valid(tmp_path: Path, images_dir: Path) -> None:
    items = []
    for number, (image_id, shape) in enumerate(SHAPES.items()):
        labels = np.zeros(shape, dtype=np.int32)
        for label in range(number):  # 0, 1 and 2 nuclei
            labels[disk((1 + 2 * label, 1), 1, shape=shape)] = label + 1
        items.append((image_id, labels))
    target = tmp_path / "s.csv"
    write_submission(target, items)
    assert check_submission(target, images_dir) == []
    assert target.read_text().splitlines()[1] == "img_a,"


# (lines of the file, expected problems as (line, image id, part of the message))
BROKEN = [
    pytest.param(
        [*VALID[:2], "img_a,7 x", *VALID[3:]],
        [(3, "img_a", "not an integer: 'x'")],
        id="not-an-integer",
    ),
    pytest.param(
        [*VALID[:2], "img_a,7 2 9", *VALID[3:]],
        [(3, "img_a", "odd number of values (3)")],
        id="odd-count",
    ),
    pytest.param(
        [*VALID[:2], "img_a,9 1 7 1", *VALID[3:]],
        [(3, "img_a", "starts not ascending: run 2 starts at 7, not after run 1 (start 9)")],
        id="unsorted-runs",
    ),
    pytest.param(
        [*VALID[:2], "img_a,7 3 8 1", *VALID[3:]],
        [(3, "img_a", "runs overlap: run 1 (start 7, length 3) covers pixels up to 9")],
        id="overlapping-runs",
    ),
    pytest.param(
        [*VALID[:2], "img_a,0 2", *VALID[3:]],
        [(3, "img_a", "run 1 starts at 0: pixel numbers start at 1")],
        id="start-zero",
    ),
    pytest.param(
        [*VALID[:3], "img_b,15 3", VALID[4]],
        [(4, "img_b", "ends at pixel 17, but a 4x4 image has 16 pixels")],
        id="run-outside-the-image",
    ),
    pytest.param(
        [*VALID[:2], "img_a,3 5", *VALID[3:]],
        [(3, "img_a", "nuclei overlap: shares pixels, 1 with the nucleus on line 2")],
        id="nuclei-share-pixels",
    ),
    pytest.param(
        [*VALID, "img_a,1 3"],
        [(6, "img_a", "nuclei overlap: shares pixels, 3 with the nucleus on line 2")],
        id="duplicate-row",
    ),
    pytest.param(
        [*VALID[:3], "img_z,1 1", "img_z,9 1", *VALID[3:]],
        [(4, "img_z", "unknown ImageId: no such image (2 row(s), line(s) 4, 5)")],
        id="unknown-image",
    ),
    pytest.param(
        VALID[:4],
        [(None, "img_c", "missing: no row for this image (an image with no nucleus is 'img_c,')")],
        id="missing-image",
    ),
    pytest.param(
        [*VALID[:3], "ImageId,EncodedPixels", *VALID[3:]],
        [(4, None, "header line repeated")],
        id="repeated-header",
    ),
    pytest.param(
        [*VALID[:3], "img_b", VALID[4]],
        [
            (4, "img_b", "1 field(s), expected 2 (ImageId,EncodedPixels)"),
            (None, "img_b", "missing: no row"),
        ],
        id="missing-comma",
    ),
    pytest.param(
        [*VALID, ",1 1"],
        [(6, None, "empty ImageId")],
        id="empty-image-id",
    ),
    pytest.param(
        ["ImageId,Pixels", "img_a,1 1"],
        [(1, None, "header 'ImageId,Pixels' lacks EncodedPixels")],
        id="wrong-header",
    ),
    pytest.param([], [(None, None, "empty file")], id="empty-file"),
]


@pytest.mark.parametrize(("lines", "expected"), BROKEN)
def test_each_kind_of_broken_file_is_reported_at_its_line(
    tmp_path: Path,
    images_dir: Path,
    lines: list[str],
    expected: list[tuple[int | None, str | None, str]],
) -> None:
    problems = check_submission(write_csv(tmp_path / "s.csv", lines), images_dir)
    assert [(problem.row, problem.image_id) for problem in problems] == [
        (row, image_id) for row, image_id, _ in expected
    ]
    for problem, (_, _, message) in zip(problems, expected, strict=True):
        assert message in problem.message


def test_every_problem_of_a_file_is_reported_in_line_order(
    tmp_path: Path, images_dir: Path
) -> None:
    lines = [
        "ImageId,EncodedPixels",
        "img_a,1 3",
        "img_a,2 2",  # 3: shares pixels with line 2
        "img_q,1 1",  # 4: unknown
        "img_b,1 1 1",  # 5: odd
        "img_b,20 1",  # 6: outside a 4x4 image
        "img_q,x 1",  # 7: unknown image, and not an integer
    ]
    problems = check_submission(write_csv(tmp_path / "s.csv", lines), images_dir)
    assert [(p.row, p.image_id) for p in problems] == [
        (3, "img_a"),
        (4, "img_q"),
        (5, "img_b"),
        (6, "img_b"),
        (7, "img_q"),
        (None, "img_c"),
    ]
    assert "2 row(s), line(s) 4, 7" in problems[1].message
    assert (
        str(problems[0])
        == "line 3: img_a: nuclei overlap: shares pixels, 2 with the nucleus on line 2"
    )
    assert str(problems[-1]).startswith("img_c: missing")
    assert str(Problem(None, None, "empty file")) == "empty file"


def test_check_submission_needs_the_file_and_the_images(tmp_path: Path, images_dir: Path) -> None:
    with pytest.raises(PipelineError, match="no such file"):
        check_submission(tmp_path / "absent.csv", images_dir)
    with pytest.raises(PipelineError, match="no such folder of images"):
        check_submission(write_csv(tmp_path / "s.csv", VALID), tmp_path / "nowhere")


def test_stage_exit_status_and_output(
    tmp_path: Path, images_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write_csv(tmp_path / "good.csv", VALID)
    assert cli.main(["check-submission", str(good), "--images", str(images_dir)]) == 0
    assert capsys.readouterr().out == f"{good}: valid, 4 rows, 3 images, 3 nuclei\n"

    bad = write_csv(tmp_path / "bad.csv", [*VALID[:2], "img_a,7 x", "img_b,"])
    assert cli.main(["check-submission", str(bad), "--images", str(images_dir)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "line 3: img_a: not an integer: 'x' (expected 'start length' pairs)",
        "img_c: missing: no row for this image (an image with no nucleus is 'img_c,')",
        f"{bad}: INVALID, 2 problem(s)",
    ]

    assert (
        cli.main(["check-submission", str(tmp_path / "absent.csv"), "--images", str(images_dir)])
        == 2
    )


# ------------------------------------------------------------------------- real data


def solution_as_submission(solution_csv: Path, target: Path) -> pd.DataFrame:
    solution = pd.read_csv(solution_csv, dtype=str, keep_default_na=False)
    solution[["ImageId", "EncodedPixels"]].to_csv(target, index=False)
    return solution


@pytest.mark.realdata
def test_the_solution_encodings_are_a_valid_submission(
    tmp_path: Path,
    real_solution_csv: Path,
    real_test_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = tmp_path / "solution_as_submission.csv"
    solution = solution_as_submission(real_solution_csv, target)
    assert check_submission(target, real_test_dir) == []
    assert cli.main(["check-submission", str(target), "--images", str(real_test_dir)]) == 0
    assert (
        capsys.readouterr()
        .out.strip()
        .endswith(f"valid, {len(solution)} rows, 65 images, {len(solution)} nuclei")
    )


@pytest.mark.realdata
def test_a_broken_real_submission_is_reported_at_the_right_lines(
    tmp_path: Path, real_solution_csv: Path, real_test_dir: Path
) -> None:
    target = tmp_path / "broken.csv"
    solution = solution_as_submission(real_solution_csv, target)
    lines = target.read_text().splitlines()
    first_id = solution["ImageId"].iloc[0]
    height, width = int(solution["Height"].iloc[0]), int(solution["Width"].iloc[0])
    last_id = solution["ImageId"].iloc[-1]
    lines[1] = f"{first_id},{height * width} 2"  # line 2: one pixel past the end
    lines.append(lines[2])  # the nucleus of line 3 again, at the end
    lines = [line for line in lines if not line.startswith(last_id + ",")]  # an image dropped
    write_csv(target, lines)
    problems = check_submission(target, real_test_dir)
    assert [(p.row, p.image_id) for p in problems] == [
        (2, first_id),
        (len(lines), first_id),
        (None, last_id),
    ]
    assert f"but a {height}x{width} image has {height * width} pixels" in problems[0].message
    assert "with the nucleus on line 3" in problems[1].message
