"""Stage 2: the main job on a stage-2-shaped folder, and prediction that resumes after a
kill (``ResumableSubmissionWriter``, ``predict --resume``)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main as cli_main
from pipeline.config import preset
from pipeline.data.submission import ResumableSubmissionWriter, SubmissionWriter
from pipeline.data.synthetic import make_demo_dataset
from pipeline.errors import PipelineError

pytest.importorskip("keras")

ROOT = Path(__file__).resolve().parents[1]


def _labels(seed: int) -> np.ndarray:
    labels = np.zeros((6, 5), np.int32)
    labels[seed % 3 : seed % 3 + 2, 1:3] = 1
    labels[4:6, 3:5] = 2 if seed % 2 else 0
    return labels


def _written(path: Path, ids: list[str], first: int = 0) -> str:
    with SubmissionWriter(path) as writer:
        for index, image_id in enumerate(ids, start=first):
            writer.add(image_id, _labels(index))
    return path.read_text()


def test_a_resumable_writer_goes_on_after_its_last_complete_image(tmp_path):
    ids = ["a", "b", "c", "d"]
    out = tmp_path / "sub.csv"
    with pytest.raises(KeyboardInterrupt), ResumableSubmissionWriter(out, "run-1") as writer:
        for index, image_id in enumerate(ids[:2]):
            writer.add(image_id, _labels(index))
        raise KeyboardInterrupt
    assert not out.exists() and writer.partial.is_file() and writer.progress.is_file()
    with open(writer.partial, "a") as handle:  # a kill in the middle of the third image
        handle.write("c,1 2\nc,7")
    with ResumableSubmissionWriter(out, "run-1") as writer:
        assert writer.done == ["a", "b"]
        for index, image_id in enumerate(ids):
            if image_id not in writer.done:
                writer.add(image_id, _labels(index))
    assert out.read_text() == _written(tmp_path / "whole.csv", ids)
    assert not writer.partial.exists() and not writer.progress.exists()


def test_a_partial_run_of_other_settings_is_started_over(tmp_path, caplog):
    out = tmp_path / "sub.csv"
    with pytest.raises(KeyboardInterrupt), ResumableSubmissionWriter(out, "run-1") as writer:
        writer.add("a", _labels(0))
        raise KeyboardInterrupt
    with caplog.at_level("INFO"), ResumableSubmissionWriter(out, "run-2") as writer:
        assert writer.done == []
        writer.add("b", _labels(1))
    assert "from another run (model, settings or images): starting over" in caplog.text
    assert out.read_text() == _written(tmp_path / "whole.csv", ["b"], first=1)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_dataset(
        tmp_path_factory.mktemp("demo"), n_train=8, n_test=6, size_range=(64, 96)
    )


@pytest.fixture(scope="module")
def model_dir(tiny_model):
    """The session's tiny model (conftest); these tests only predict with it."""
    return tiny_model


def test_predict_resume_after_a_kill_gives_the_uninterrupted_submission(model_dir, tmp_path):
    """A real ``kill -9`` of ``predict --resume`` once its first chunk of images is written
    (`pipeline.inference.predict.CHUNK_IMAGES`), then a rerun."""
    from pipeline.inference.predict import CHUNK_IMAGES

    many = make_demo_dataset(tmp_path / "many", n_train=1, n_test=CHUNK_IMAGES + 24,
                             size_range=(64, 64))  # fmt: skip
    whole, out = tmp_path / "whole.csv", tmp_path / "resumed.csv"
    argv = ["predict", "--model", str(model_dir), "--images", str(many.test_dir)]
    assert cli_main([*argv, "--out", str(whole), "--no-tta", "--batch-size", "1"]) == 0
    command = [sys.executable, "-m", "pipeline", *argv, "--out", str(out), "--no-tta",
               "--batch-size", "1", "--resume"]  # fmt: skip
    progress = tmp_path / "resumed.csv.partial.json"
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    process = subprocess.Popen(command, cwd=ROOT, env=environment, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if progress.is_file() and '"images": 0' not in progress.read_text():
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    if out.exists():
        pytest.skip("the run ended before it could be killed (all its images came at once)")
    assert (tmp_path / "resumed.csv.partial").is_file()
    assert cli_main([*argv, "--out", str(out), "--no-tta", "--batch-size", "1", "--resume"]) == 0
    assert out.read_text() == whole.read_text()


def test_resume_with_measurements_is_refused_clearly(demo, model_dir, tmp_path, capsys):
    argv = ["predict", "--model", str(model_dir), "--images", str(demo.test_dir), "--resume"]
    status = cli_main([*argv, "--out", str(tmp_path / "x.csv"), "--measurements", "m.csv"])
    assert status == 2
    assert "error: --resume keeps the submission and label images" in capsys.readouterr().err


def _stage2_input(demo, input_dir: Path) -> list[str]:
    """A stage-2-shaped input/: stage1_train, stage2_test_final and its sample submission."""
    shutil.copytree(demo.train_dir, input_dir / "stage1_train")
    shutil.copytree(demo.test_dir, input_dir / "stage2_test_final")
    ids = sorted(p.name for p in (input_dir / "stage2_test_final").iterdir())
    rows = "".join(f"{image_id},1 1\n" for image_id in ids)
    (input_dir / "stage2_sample_submission_final.csv").write_text("ImageId,EncodedPixels\n" + rows)
    return ids


def test_the_main_job_predicts_stage_2_checks_it_and_scores_nothing(demo, tmp_path, caplog):
    from pipeline.stages.main_job import run_main_job

    ids = _stage2_input(demo, tmp_path / "input")
    config = preset("demo")
    config.model.base_filters, config.model.depth = 4, 2
    config.train.crop_size, config.train.epochs, config.train.steps_per_epoch = 64, 1, 2
    places = {
        "input_dir": tmp_path / "input",
        "models_dir": tmp_path / "models",
        "submissions_dir": tmp_path / "submissions",
        "leaderboard_csv": tmp_path / "leaderboard.csv",
    }
    with caplog.at_level("INFO"):
        result = run_main_job(config, device="cpu", stage=2, **places)
    submission = Path(result["submission"])
    assert submission.name == f"{Path(result['model_dir']).name}-stage2.csv"
    assert result["score"] is None and not places["leaderboard_csv"].exists()
    written = {line.split(",")[0] for line in submission.read_text().splitlines()[1:]}
    assert written == set(ids)
    assert "stage 2 has no local solution; Kaggle scores it" in caplog.text
    assert "every ImageId of stage2_sample_submission_final.csv" in caplog.text


def test_stage_2_without_its_files_says_where_to_get_them(demo, tmp_path):
    from pipeline.stages.main_job import run_main_job

    shutil.copytree(demo.train_dir, tmp_path / "input" / "stage1_train")
    shutil.copytree(demo.test_dir, tmp_path / "input" / "stage1_test")
    with pytest.raises(PipelineError, match="stage2_test_final and stage2_sample_submission_fin"):
        run_main_job(preset("demo"), input_dir=tmp_path / "input", stage=2)


def test_a_submission_with_other_ids_than_the_sample_is_refused(tmp_path):
    from pipeline.stages.main_job import check_against_sample

    sample, submission = tmp_path / "sample.csv", tmp_path / "sub.csv"
    sample.write_text("ImageId,EncodedPixels\na,1 1\nb,1 1\n")
    submission.write_text("ImageId,EncodedPixels\na,\nc,\n")
    with pytest.raises(PipelineError, match=r"1 ImageIds of sample.csv missing \['b'\], 1 unknown"):
        check_against_sample(submission, sample)


def test_a_run_is_the_same_run_whether_its_folder_is_given_relative_or_absolute(
    model_dir, tmp_path, monkeypatch
):
    from pipeline.data.dataset import ImageFile
    from pipeline.inference.run import _run_key

    config = preset("demo")
    image = tmp_path / "a.png"
    monkeypatch.chdir(tmp_path)
    relative = _run_key(model_dir, config.predict, [ImageFile("a", Path("a.png"))])
    assert relative == _run_key(model_dir, config.predict, [ImageFile("a", image)])
    config.predict.threshold = 0.7
    assert relative != _run_key(model_dir, config.predict, [ImageFile("a", image)])
