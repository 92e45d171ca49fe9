"""The four readers of a submission say the same words about the same fault.

``check-submission``, ``score`` and ``report`` (through the command line) and predict's own
check (`pipeline.inference.output_checks.check_predictions`, called directly) all match a
submission with its images through `pipeline.data.reconcile`. Each broken CSV below has one
fault, and the problem's text, word for word, is in what all four give. What they do with
it differs: check-submission prints it, predict's check returns it, score refuses the file,
and report refuses it or, for an unknown or a missing image, warns and shows the rest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import one_error_line, run_cli
from PIL import Image

from pipeline.data.dataset import list_image_files
from pipeline.data.reconcile import Images, images_of_files, read_labels, reconcile
from pipeline.errors import PipelineError
from pipeline.inference.output_checks import check_predictions

# Two tiny images in Kaggle layout, id -> (height, width), and the true rows of each.
SHAPES = {"a": (6, 5), "b": (4, 4)}
TRUTH = {"a": ["1 3", "7 2"], "b": ["5 2"]}
VALID = ["ImageId,EncodedPixels", "a,1 3", "a,7 2", "b,5 2"]

# (lines of the submission, the problem's text, whether report refuses it)
BROKEN = [
    pytest.param(
        ["ImageId,Pixels", "a,1 3"],
        "line 1: header 'ImageId,Pixels' lacks EncodedPixels; expected ImageId,EncodedPixels",
        True,
        id="wrong-header",
    ),
    pytest.param(
        [*VALID, "zz,1 1"],
        "line 5: zz: unknown ImageId: no such image (1 row(s), line(s) 5)",
        False,
        id="unknown-image",
    ),
    pytest.param(
        VALID[:3],
        "b: missing: no row for this image (an image with no nucleus is 'b,')",
        False,
        id="missing-image",
    ),
    pytest.param(
        [VALID[0], "a,1 x", *VALID[2:]],
        "line 2: a: not an integer: 'x' (expected 'start length' pairs)",
        True,
        id="undecodable-run",
    ),
    pytest.param(
        [*VALID[:3], "b,15 3"],
        "line 4: b: run outside the image: run 1 (start 15, length 3) ends at pixel 17, "
        "but a 4x4 image has 16 pixels",
        True,
        id="run-past-the-end",
    ),
    pytest.param(
        [*VALID[:2], "a,2 3", VALID[3]],
        "line 3: a: nuclei overlap: shares pixels, 2 with the nucleus on line 2",
        True,
        id="overlapping-nuclei",
    ),
    pytest.param(
        [*VALID[:3], "b"],
        "line 4: b: 1 field(s), expected 2 (ImageId,EncodedPixels) (an image with no "
        "nucleus is '<ImageId>,')",
        True,
        id="missing-comma",
    ),
    pytest.param([*VALID, ",1 1"], "line 5: empty ImageId", True, id="empty-image-id"),
]


@pytest.fixture
def images_and_solution(tmp_path: Path) -> tuple[Path, Path]:
    """The images folder and a solution CSV that labels both images."""
    images_dir = tmp_path / "images"
    for image_id, shape in SHAPES.items():
        folder = images_dir / image_id / "images"
        folder.mkdir(parents=True)
        Image.fromarray(np.zeros((*shape, 3), dtype=np.uint8)).save(folder / f"{image_id}.png")
    lines = ["ImageId,EncodedPixels,Height,Width,Usage"]
    for image_id, rles in TRUTH.items():
        lines += [
            f"{image_id},{rle},{SHAPES[image_id][0]},{SHAPES[image_id][1]},Public" for rle in rles
        ]
    solution = tmp_path / "solution.csv"
    solution.write_text("\n".join(lines) + "\n")
    return images_dir, solution


def write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def run_all_four(
    csv: Path, images_dir: Path, solution: Path, capsys: pytest.CaptureFixture[str]
) -> dict[str, tuple[int | None, str]]:
    """Each reader's exit status (None for predict's check) and what it says."""
    check = run_cli(["check-submission", str(csv), "--images", str(images_dir)], capsys)
    score = run_cli(["score", str(csv), "--solution", str(solution), "--no-leaderboard"], capsys)
    out = csv.with_name("report")
    argv = ["report", str(csv), "--images", str(images_dir), "--solution", str(solution)]
    report = run_cli([*argv, "--out", str(out), "--n", "1"], capsys)
    problems = check_predictions(csv, list_image_files(images_dir).files)
    return {
        "check-submission": (check[0], check[1]),
        "score": (score[0], score[2]),
        "report": (report[0], report[2]),
        "predict": (None, "\n".join(str(problem) for problem in problems)),
    }


def test_a_valid_submission_passes_all_four(
    tmp_path: Path, images_and_solution: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    images_dir, solution = images_and_solution
    said = run_all_four(write_csv(tmp_path / "s.csv", VALID), images_dir, solution, capsys)
    assert said["check-submission"] == (
        0,
        f"{tmp_path / 's.csv'}: valid, 3 rows, 2 images, 3 nuclei\n",
    )
    assert said["score"][0] == said["report"][0] == 0
    assert said["predict"] == (None, "")


@pytest.mark.parametrize(("lines", "message", "report_refuses"), BROKEN)
def test_the_four_readers_give_the_same_message_for_the_same_fault(
    tmp_path: Path,
    images_and_solution: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    lines: list[str],
    message: str,
    report_refuses: bool,
) -> None:
    images_dir, solution = images_and_solution
    csv = write_csv(tmp_path / "s.csv", lines)
    said = run_all_four(csv, images_dir, solution, capsys)

    status, out = said["check-submission"]
    assert status == 1 and message in out.splitlines(), out
    assert message in said["predict"][1].splitlines()
    status, err = said["score"]
    assert status == 2 and message in one_error_line(err)
    assert one_error_line(err).startswith(f"error: {csv}: ")
    status, err = said["report"]
    if report_refuses:
        assert status == 2 and message in one_error_line(err)
    else:  # shown without that image's rows, with a warning
        assert status == 0 and "error:" not in err
        assert any(line.startswith(f"{csv}: {message}; ") for line in err.splitlines()), err


def test_an_ignored_image_and_labels_that_do_not_cover_every_image(
    tmp_path: Path, images_and_solution: tuple[Path, Path]
) -> None:
    images_dir, solution = images_and_solution
    files = list_image_files(images_dir).files
    csv = write_csv(tmp_path / "s.csv", [*VALID, "c,1 1"])
    text = solution.read_text()
    ignored = write_csv(tmp_path / "ignored.csv", [*text.splitlines(), "c,1 1,2,2,Ignored"])
    reconciled = reconcile(csv, images_of_files(files), read_labels(ignored))
    assert reconciled.unknown == {} and reconciled.labels is not None  # c's rows passed over
    assert reconciled.problems() == []
    np.testing.assert_array_equal(reconciled.true_labels("b"), reconciled.predicted_labels("b"))

    partial = write_csv(tmp_path / "partial.csv", text.splitlines()[:3])  # a's rows only
    reconciled = reconcile(csv, images_of_files(files), read_labels(partial))
    assert reconciled.labels is None and reconciled.true_labels("a") is None
    assert [str(problem) for problem in reconciled.unknown_problems()] == [
        "line 5: c: unknown ImageId: no such image (1 row(s), line(s) 5)"
    ]


def test_labels_of_another_size_than_their_image_are_refused(
    tmp_path: Path, images_and_solution: tuple[Path, Path]
) -> None:
    images_dir, solution = images_and_solution
    csv = write_csv(tmp_path / "s.csv", VALID)
    wrong = write_csv(
        tmp_path / "wrong.csv", [*solution.read_text().splitlines()[:3], "b,5 2,4,5,Public"]
    )
    reconciled = reconcile(
        csv, images_of_files(list_image_files(images_dir).files), read_labels(wrong)
    )
    with pytest.raises(
        PipelineError, match=r"wrong\.csv: line 4: b is 4x5 but its image .*b\.png is 4x4"
    ):
        reconciled.true_labels("b")
    # without images, the labels give the images and their sizes (as score reconciles)
    by_labels = reconcile(csv, labels=read_labels(wrong))
    assert isinstance(by_labels.images, Images) and by_labels.images.shape("b") == (4, 5)
