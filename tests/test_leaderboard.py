"""The leaderboard's Kaggle columns and its flag for scores on trained-on labels, and
``train --with-stage1-test`` (the stage-2 recipe) on a tiny synthetic set.

A model trained on the stage-1 test labels scores well on stage1_test because it has seen
those labels: such a score is flagged "trained on these labels" and never ranked.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from pipeline import cli
from pipeline.config import preset
from pipeline.data.submission import write_submission_metadata
from pipeline.data.synthetic import make_demo_dataset
from pipeline.errors import PipelineError
from pipeline.evaluation import leaderboard
from pipeline.evaluation.leaderboard import (
    COLUMNS,
    LEGACY_COLUMNS,
    TRAINED_ON_LABELS,
    append_entry,
    format_leaderboard,
    read_leaderboard,
)


@pytest.fixture()
def restore_logging():
    """The CLI reconfigures the root logger; put it back for the next tests."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """4 training and 3 test images with the test set's solution, as in input/."""
    return make_demo_dataset(
        tmp_path_factory.mktemp("demo"), n_train=6, n_test=3, size_range=(64, 80)
    )


# ------------------------------------------------------------------------ the file


def test_an_older_leaderboard_reads_and_gains_the_new_columns_when_appended(tmp_path):
    board = tmp_path / "leaderboard.csv"
    old_rows = (
        "2026-12-03T11:58:01Z,submissions/default.csv,0.33641247996855506,models/default,"
        "default,935e658\n"
    )
    board.write_text(",".join(LEGACY_COLUMNS) + "\n" + old_rows)
    table = read_leaderboard(board)
    assert table.columns.tolist() == list(COLUMNS)
    assert table["score"].tolist() == [0.33641247996855506]
    assert table[["kaggle_public", "kaggle_private"]].isna().all().all()
    assert table["trained_on_labels"].tolist() == [False]
    assert board.read_text().startswith(",".join(LEGACY_COLUMNS))  # reading changes nothing

    append_entry(
        board,
        tmp_path / "b.csv",
        None,
        {"commit": "x"},
        kaggle_public="0.46910",
        kaggle_private=0.51234,
    )
    lines = board.read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS)
    assert lines[1] == (
        "2026-12-03T11:58:01Z,submissions/default.csv,0.33641247996855506,,,models/default,"
        "default,935e658,"
    )
    assert lines[2].split(",")[2:5] == ["", "0.4691", "0.51234"]
    table = read_leaderboard(board)
    assert table["kaggle_private"].tolist()[1] == 0.51234 and pd.isna(table["score"][1])


def test_a_kaggle_score_that_is_not_a_number_is_refused(tmp_path):
    board = tmp_path / "leaderboard.csv"
    board.write_text(",".join(COLUMNS) + "\nt,f,0.5,high,,m,c,x,\n")
    with pytest.raises(PipelineError, match="line 2: kaggle_public 'high' is not a number"):
        read_leaderboard(board)


def rows(board: Path, entries: list[tuple[str, float | None, dict]]) -> pd.DataFrame:
    for name, score, extra in entries:
        append_entry(board, board.parent / f"{name}.csv", score, {"commit": "c0ffee1"}, **extra)
    return read_leaderboard(board)


def test_trained_on_labels_and_kaggle_only_rows_are_listed_apart_unranked(tmp_path):
    board = tmp_path / "leaderboard.csv"
    table = rows(
        board,
        [
            ("a", 0.30, {}),
            ("memorised", 0.90, {"trained_on_labels": True}),
            ("stage2", None, {"kaggle_public": 0.41, "kaggle_private": 0.45}),
            ("b", 0.35, {"kaggle_public": 0.40, "kaggle_private": 0.39}),
        ],
    )
    lines = format_leaderboard(table).splitlines()
    assert lines[0].split() == [
        "rank", "time", "file", "score", "kaggle_public", "kaggle_private", "model", "config",
        "commit", "note",
    ]  # fmt: skip
    listed = [(line.split()[0], Path(line.split()[2]).name) for line in lines[1:5]]
    # The best score, 0.90, is not first: it is on labels its model learned.
    assert listed == [("1", "b.csv"), ("2", "a.csv"), ("-", "memorised.csv"), ("-", "stage2.csv")]
    assert lines[3].rstrip().endswith(TRAINED_ON_LABELS)
    assert lines[4].split()[3:6] == ["-", "0.410000", "0.450000"]
    assert lines[4].rstrip().endswith("no local score")
    assert lines[5].startswith(f"({TRAINED_ON_LABELS}: the model was trained on labels of the")
    assert len(lines) == 6


# ------------------------------------------------------------ train --with-stage1-test


def _split(demo, tmp_path: Path, with_test: bool, split: str = "random", resume=False):
    from pipeline.learning.training import _split_samples

    config = preset("demo")
    config.train.with_stage1_test = with_test
    config.train.split = split
    config.train.val_fraction = 0.34
    model_dir = tmp_path / f"{split}-{with_test}"
    train, val = _split_samples(config, demo.train_dir, model_dir, resume=resume)
    return [s.image_id for s in train], [s.image_id for s in val], model_dir


@pytest.mark.parametrize("split", ["random", "conditions"])
def test_stage1_test_images_join_the_training_side_only(demo, tmp_path, split):
    test_ids = sorted(path.name for path in demo.test_dir.iterdir())
    plain_train, plain_val, _ = _split(demo, tmp_path, False, split)
    train, val, model_dir = _split(demo, tmp_path, True, split)
    assert len(test_ids) == 3 and set(test_ids) <= set(train)
    assert not set(test_ids) & set(val)
    assert val == plain_val  # the same validation images as without them
    assert sorted(train) == sorted(plain_train + test_ids)
    recorded = json.loads((model_dir / "split.json").read_text())
    assert recorded["train"] == sorted(train) and recorded["val"] == val
    assert recorded["stage1_test"]["ids"] == test_ids
    assert recorded["stage1_test"]["labels"].endswith("stage1_solution.csv")
    assert set(recorded["kinds"]) == set(train) | set(val)
    assert json.loads((model_dir / "config.json").read_text())["train"]["with_stage1_test"]
    # A resumed run gets them again, from the saved split.
    assert _split(demo, tmp_path, True, split, resume=True)[:2] == (train, val)


def test_the_stage1_test_labels_are_those_of_the_solution(demo, tmp_path):
    from pipeline.data.dataset import labels_from_rle_csv
    from pipeline.learning.training import _split_samples

    config = preset("demo")
    config.train.with_stage1_test = True
    train, _ = _split_samples(config, demo.train_dir, tmp_path / "m", resume=False)
    solution = labels_from_rle_csv(demo.solution_csv)
    for sample in train:
        if sample.image_id in solution:
            assert (sample.labels == solution[sample.image_id]).all()


def test_without_stage1_test_files_beside_the_training_folder_it_says_so(demo, tmp_path):
    from pipeline.learning.training import _split_samples

    lonely = tmp_path / "elsewhere" / "train"
    lonely.parent.mkdir()
    lonely.symlink_to(demo.train_dir, target_is_directory=True)
    config = preset("demo")
    config.train.with_stage1_test = True
    with pytest.raises(PipelineError, match=r"--with-stage1-test: .*stage1_test not found"):
        _split_samples(config, lonely, tmp_path / "m", resume=False)


def test_the_setting_is_off_by_default_and_leaves_fingerprints_unchanged():
    config = preset("default")
    assert config.train.with_stage1_test is False
    assert config.training_fingerprint() == "50d91d718203"  # models/default's
    config.train.with_stage1_test = True
    assert config.training_fingerprint() != "50d91d718203"
    args = cli.build_parser("train").parse_args(["--with-stage1-test"])
    assert args.with_stage1_test is True


# ----------------------------------------------- the leaderboard marks such a score


def fake_model(tmp_path: Path, train_ids: list[str]) -> Path:
    model_dir = tmp_path / "model"
    model_dir.mkdir(parents=True)
    (model_dir / "split.json").write_text(json.dumps({"train": train_ids, "val": []}))
    return model_dir


def solution_as_submission(demo, path: Path, model_dir: Path) -> Path:
    solution = pd.read_csv(demo.solution_csv, dtype=str, keep_default_na=False)
    solution[["ImageId", "EncodedPixels"]].to_csv(path, index=False)
    write_submission_metadata(path, {"model": str(model_dir), "config": "demo", "commit": "c1"})
    return path


def test_score_marks_a_model_scored_on_labels_it_trained_on(
    demo, tmp_path, monkeypatch, capsys, restore_logging
):
    test_ids = sorted(path.name for path in demo.test_dir.iterdir())
    trained = fake_model(tmp_path / "t", [test_ids[0], "some-train-image"])
    honest = fake_model(tmp_path / "h", ["some-train-image"])
    board = tmp_path / "leaderboard.csv"
    for name, model_dir in (("trained", trained), ("honest", honest)):
        submission = solution_as_submission(demo, tmp_path / f"{name}.csv", model_dir)
        argv = ["score", str(submission), "--solution", str(demo.solution_csv)]
        assert cli.main([*argv, "--leaderboard", str(board)]) == 0
    err = capsys.readouterr().err
    assert "trained on the labels of 1 of the 3 scored images" in err
    table = read_leaderboard(board)
    assert table["trained_on_labels"].tolist() == [True, False]
    assert table["score"].tolist() == [1.0, 1.0]
    assert cli.main(["leaderboard", "--leaderboard", str(board)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[0] == "1" and "honest.csv" in lines[1]
    assert lines[2].split()[0] == "-" and lines[2].rstrip().endswith(TRAINED_ON_LABELS)
    assert leaderboard.trained_on_scored_images({"model": str(tmp_path / "gone")}, test_ids) == 0


TINY = [
    "--preset", "demo", "--base-filters", "2", "--depth", "2", "--crop-size", "32",
    "--batch-size", "2", "--steps-per-epoch", "1", "--epochs", "1", "--eval-every", "1",
    "--precision", "float32", "--no-tune", "--device", "cpu",
]  # fmt: skip


@pytest.mark.slow  # one tiny training step: about 15 s on a busy 2-core CPU
def test_train_with_stage1_test_says_so_and_its_score_is_flagged(
    demo, tmp_path, capsys, restore_logging
):
    pytest.importorskip("keras")
    model_dir = tmp_path / "models" / "with-test"
    argv = ["train", *TINY, "--with-stage1-test", "--images", str(demo.train_dir)]
    assert cli.main([*argv, "--out", str(model_dir)]) == 0
    config = json.loads((model_dir / "config.json").read_text())
    assert config["train"]["with_stage1_test"] is True
    scores = json.loads((model_dir / "scores.json").read_text())
    assert scores["trained_on_stage1_test"] is True
    split = json.loads((model_dir / "split.json").read_text())
    test_ids = sorted(path.name for path in demo.test_dir.iterdir())
    assert set(test_ids) <= set(split["train"]) and not set(test_ids) & set(split["val"])
    submission = solution_as_submission(demo, tmp_path / "sub.csv", model_dir)
    board = tmp_path / "leaderboard.csv"
    argv = ["score", str(submission), "--solution", str(demo.solution_csv)]
    assert cli.main([*argv, "--leaderboard", str(board)]) == 0
    assert read_leaderboard(board)["trained_on_labels"].tolist() == [True]
