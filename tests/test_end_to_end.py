"""train -> predict -> submission -> check -> score on a tiny synthetic set, through the CLI.

A tiny network trained for a few epochs, so the whole chain runs in seconds; the score is
not the point here, every stage working together is.
"""

import json

import pytest
from conftest import TINY_FLAGS as TINY
from conftest import one_error_line, run_cli

from pipeline.cli import main as cli_main

pytest.importorskip("keras")


def test_training_writes_a_complete_model_folder(tiny_model):
    for name in (
        "config.json",
        "model.weights.h5",
        "split.json",
        "scores.json",
        "history.csv",
        "curves.png",
        "checkpoint/last.keras",
    ):
        assert (tiny_model / name).is_file(), name
    scores = json.loads((tiny_model / "scores.json").read_text())
    assert scores["epochs_run"] == 2
    assert 0.0 <= scores["validation_score"] <= 1.0
    assert scores["command"].startswith("./run.sh train --preset demo")
    split = json.loads((tiny_model / "split.json").read_text())
    assert len(split["train"]) + len(split["val"]) == 10
    config = json.loads((tiny_model / "config.json").read_text())
    assert config["model"]["base_filters"] == 4 and config["train"]["crop_size"] == 64


def test_tuned_thresholds_are_saved_and_used_unless_overridden(tiny_model, tiny_demo, tmp_path):
    tuned = json.loads((tiny_model / "thresholds.json").read_text())
    assert set(tuned["params"]) >= {"method", "threshold", "min_size", "tta"}
    assert tuned["validation_score"] >= tuned["untuned_validation_score"]
    assert tuned["validation_score"] == max(
        tuned["validation_score_with_tta"], tuned["validation_score_without_tta"]
    )
    out = tmp_path / "override.csv"
    assert (
        cli_main(
            [
                "predict",
                "--model",
                str(tiny_model),
                "--images",
                str(tiny_demo.test_dir),
                "--out",
                str(out),
                "--threshold",
                "0.9",
                "--no-tta",
            ]
        )
        == 0
    )
    used = json.loads(out.with_suffix(".json").read_text())["predict"]
    assert used["threshold"] == 0.9 and used["tta"] is False
    assert used["min_size"] == tuned["params"]["min_size"]  # the saved value, not the default


def test_evaluate_scores_the_validation_split(tiny_model, capsys):
    assert cli_main(["evaluate", "--model", str(tiny_model), "--untuned", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    split = json.loads((tiny_model / "split.json").read_text())
    assert set(result["per_image"]) == set(split["val"])
    assert result["settings"]["threshold"] == 0.5  # the demo preset's default, untuned
    assert result["score"] == pytest.approx(sum(result["per_image"].values()) / len(split["val"]))


def test_predict_check_score_and_leaderboard(tiny_model, tiny_demo, tmp_path, capsys):
    submission = tmp_path / "tiny.csv"
    leaderboard = tmp_path / "leaderboard.csv"
    assert (
        cli_main(
            [
                "predict",
                "--model",
                str(tiny_model),
                "--images",
                str(tiny_demo.test_dir),
                "--out",
                str(submission),
            ]
        )
        == 0
    )
    assert submission.read_text().startswith("ImageId,EncodedPixels\n")
    ids = {line.split(",")[0] for line in submission.read_text().splitlines()[1:]}
    assert ids == {"demo-test-000", "demo-test-001", "demo-test-002"}
    assert json.loads(submission.with_suffix(".json").read_text())["model"] == str(tiny_model)
    assert cli_main(["check-submission", str(submission), "--images", str(tiny_demo.test_dir)]) == 0
    capsys.readouterr()
    assert (
        cli_main(
            [
                "score",
                str(submission),
                "--solution",
                str(tiny_demo.solution_csv),
                "--leaderboard",
                str(leaderboard),
                "--json",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= result["score"] <= 1.0
    assert set(result["per_image"]) == ids
    assert len(leaderboard.read_text().splitlines()) == 2  # header + this scoring


def test_several_test_time_scales_predict_a_valid_submission(
    tiny_model, tiny_demo, tmp_path, capsys
):
    submission = tmp_path / "scales.csv"
    predict = ["predict", "--model", str(tiny_model), "--images", str(tiny_demo.test_dir)]
    assert cli_main([*predict, "--scales", "0.5, 1,2", "--out", str(submission)]) == 0
    assert cli_main(["check-submission", str(submission), "--images", str(tiny_demo.test_dir)]) == 0
    assert json.loads(submission.with_suffix(".json").read_text())["predict"]["scales"] == "0.5,1,2"
    capsys.readouterr()
    assert cli_main(["evaluate", "--model", str(tiny_model), "--scales", "1,2", "--json"]) == 0
    assert (
        json.loads(capsys.readouterr().out.strip().splitlines()[-1])["settings"]["scales"] == "1,2"
    )
    status, _, err = run_cli(
        [*predict, "--scales", "8", "--out", str(tmp_path / "bad.csv")], capsys
    )
    assert status == 2
    assert one_error_line(err).endswith(
        "argument --scales: scales must be factors from 0.25 to 4 separated by commas, got '8'"
    )
    assert not (tmp_path / "bad.csv").exists()


def test_resume_continues_from_the_last_checkpoint(tiny_demo, tmp_path):
    model_dir = tmp_path / "resumed"
    args = [
        "train",
        "--preset",
        "demo",
        *TINY,
        "--images",
        str(tiny_demo.train_dir),
        "--out",
        str(model_dir),
    ]
    assert cli_main([*args, "--epochs", "1"]) == 0
    config = json.loads((model_dir / "config.json").read_text())
    config["train"]["epochs"] = 2  # as if the run had been killed after epoch 1 of 2
    (model_dir / "config.json").write_text(json.dumps(config))
    assert cli_main(["train", "--out", str(model_dir), "--resume"]) == 0
    scores = json.loads((model_dir / "scores.json").read_text())
    assert scores["epochs_run"] == 2
    history = (model_dir / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2"]


def test_training_refuses_to_overwrite_a_model(tiny_model, tiny_demo):
    assert (
        cli_main(
            [
                "train",
                "--preset",
                "demo",
                *TINY,
                "--images",
                str(tiny_demo.train_dir),
                "--out",
                str(tiny_model),
            ]
        )
        == 2
    )


def test_main_job_runs_every_stage_on_the_demo(tmp_path, monkeypatch):
    from pipeline.config import preset
    from pipeline.stages.main_job import run_main_job

    config = preset("demo")
    config.model.base_filters, config.model.depth = 4, 2
    config.train.crop_size, config.train.steps_per_epoch, config.train.epochs = 64, 2, 1
    monkeypatch.setattr(
        "pipeline.stages.main_job.DEMO_SET", {"n_train": 10, "n_test": 3, "size_range": (64, 96)}
    )
    result = run_main_job(
        config,
        demo=True,
        input_dir=tmp_path / "input",
        models_dir=tmp_path / "models",
        submissions_dir=tmp_path / "subs",
        leaderboard_csv=tmp_path / "leaderboard.csv",
    )
    assert result["score"] is not None
    scores = json.loads((tmp_path / "models" / "demo" / "scores.json").read_text())
    assert scores["demo_test_score"] == pytest.approx(result["score"], abs=1e-6)
    # Second run: the model exists with the same settings, so training is skipped.
    before = (tmp_path / "models" / "demo" / "model.weights.h5").stat().st_mtime_ns
    run_main_job(
        config,
        demo=True,
        input_dir=tmp_path / "input",
        models_dir=tmp_path / "models",
        submissions_dir=tmp_path / "subs",
        leaderboard_csv=tmp_path / "leaderboard.csv",
    )
    assert (tmp_path / "models" / "demo" / "model.weights.h5").stat().st_mtime_ns == before
    assert len((tmp_path / "leaderboard.csv").read_text().splitlines()) == 3
    # --retrain: a new folder beside the existing model, which stays as it was.
    retrained = run_main_job(
        config,
        demo=True,
        retrain=True,
        input_dir=tmp_path / "input",
        models_dir=tmp_path / "models",
        submissions_dir=tmp_path / "subs",
        leaderboard_csv=tmp_path / "leaderboard.csv",
    )
    retrain_dir = tmp_path / "models" / f"demo-{config.training_fingerprint()}-retrain"
    assert retrained["model_dir"] == str(retrain_dir)
    assert json.loads((retrain_dir / "scores.json").read_text())["command"] == (
        "./run.sh --demo --retrain"
    )
    assert (tmp_path / "models" / "demo" / "model.weights.h5").stat().st_mtime_ns == before


@pytest.mark.parametrize(
    ("argv", "recorded"),
    [
        (["--retrain"], "./run.sh --retrain"),
        (["all", "--preset", "seeds-baseline"], "./run.sh all --preset seeds-baseline"),
        ([], "./run.sh"),
    ],
)
def test_main_job_passes_the_typed_command_on(argv, recorded, monkeypatch, capsys):
    seen = {}

    def fake_job(config, **kwargs):
        seen.update(kwargs, preset=config.name)
        return {"model_dir": "m", "submission": "s.csv", "score": None}

    monkeypatch.setattr("pipeline.stages.main_job.run_main_job", fake_job)
    assert cli_main(argv) == 0
    assert seen["command"] == recorded
    assert seen["retrain"] == ("--retrain" in argv)
    assert seen["preset"] == ("seeds-baseline" if "seeds-baseline" in argv else "default")
    assert "s.csv: written and checked" in capsys.readouterr().out


# The MobileNetV2 encoder frozen: the same code path, a third of the graph-building time.
ARCH_FLAGS = {
    "unet": [],
    "unetpp": [],
    "mobilenetv2_unet": ["--encoder-weights", "none", "--freeze-encoder"],
}


@pytest.mark.parametrize("arch", sorted(ARCH_FLAGS))
def test_every_architecture_trains_predicts_and_submits(arch, tiny_demo, tmp_path, capsys):
    model_dir = tmp_path / arch
    train = ["train", "--preset", "demo", "--arch", arch, *TINY, *ARCH_FLAGS[arch]]
    train += ["--epochs", "1", "--images", str(tiny_demo.train_dir), "--out", str(model_dir)]
    assert cli_main(train) == 0
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model"]["arch"] == arch
    scores = json.loads((model_dir / "scores.json").read_text())
    assert scores["epochs_run"] == 1 and scores["parameters"] > 0
    tuned = json.loads((model_dir / "thresholds.json").read_text())
    assert tuned["heads"] == "all"
    submission = tmp_path / f"{arch}.csv"
    predict = ["predict", "--model", str(model_dir), "--images", str(tiny_demo.test_dir)]
    assert cli_main([*predict, "--out", str(submission)]) == 0
    assert cli_main(["check-submission", str(submission), "--images", str(tiny_demo.test_dir)]) == 0
    if arch == "unetpp":  # fast mode: the first head alone
        fast = tmp_path / "fast.csv"
        assert cli_main([*predict, "--out", str(fast), "--heads", "1"]) == 0
        assert json.loads(fast.with_suffix(".json").read_text())["predict"]["heads"] == "1"
        assert cli_main([*predict, "--out", str(fast), "--heads", "3"]) == 2  # 2 heads only
        capsys.readouterr()
        assert cli_main(["evaluate", "--model", str(model_dir), "--heads", "2", "--json"]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["settings"]["heads"] == "2"


def test_time_budget_stops_training_and_evaluates_the_last_epoch(tiny_demo, tmp_path):
    model_dir = tmp_path / "budget"
    args = ["train", "--preset", "demo", *TINY, "--eval-every", "4", "--epochs", "5"]
    args += ["--max-minutes", "0.0001", "--no-tune", "--images", str(tiny_demo.train_dir)]
    assert cli_main([*args, "--out", str(model_dir)]) == 0
    scores = json.loads((model_dir / "scores.json").read_text())
    assert scores["epochs_run"] == 1 and scores["stopped_by"] == "time budget"
    assert scores["max_minutes"] == 0.0001 and scores["validation_score"] is not None


def test_nucleus_scale_policy_trains_predicts_and_submits(tiny_demo, tmp_path, capsys):
    """``--resize-policy nucleus``: recorded in the model's config, and every stage after
    training (tuning, evaluation, prediction) runs its two-pass scale estimate."""
    model_dir = tmp_path / "nucleus"
    train = ["train", "--preset", "demo", *TINY, "--epochs", "1"]
    train += ["--resize-policy", "nucleus", "--nucleus-diameter", "16"]
    assert cli_main([*train, "--images", str(tiny_demo.train_dir), "--out", str(model_dir)]) == 0
    config = json.loads((model_dir / "config.json").read_text())
    assert config["train"]["resize_policy"] == "nucleus"
    assert config["train"]["nucleus_diameter"] == 16.0
    assert json.loads((model_dir / "scores.json").read_text())["validation_score"] is not None
    submission = tmp_path / "nucleus.csv"
    predict = ["predict", "--model", str(model_dir), "--images", str(tiny_demo.test_dir)]
    assert cli_main([*predict, "--out", str(submission)]) == 0
    assert cli_main(["check-submission", str(submission), "--images", str(tiny_demo.test_dir)]) == 0
    # Fixed test-time scales would fight the policy's own: asked for, they are refused.
    status, _, err = run_cli([*predict, "--scales", "0.5,1", "--out", str(submission)], capsys)
    assert status == 2
    assert one_error_line(err).endswith(
        "--scales 0.5,1 needs a model trained at the images' own scale (resize_policy native); "
        "this one's is nucleus, which sets the scale itself"
    )


def test_a_held_out_condition_split_validates_on_conditions_it_never_trained_on(
    tiny_demo, tmp_path, capsys
):
    model_dir = tmp_path / "held-out"
    argv = ["train", "--preset", "demo", *TINY, "--epochs", "1", "--split", "conditions"]
    assert cli_main([*argv, "--images", str(tiny_demo.train_dir), "--out", str(model_dir)]) == 0
    split = json.loads((model_dir / "split.json").read_text())
    assert split["held_out_conditions"] and split["val"]
    from pipeline.data.dataset import load_samples
    from pipeline.learning.splits import condition_of

    conditions = {s.image_id: condition_of(s) for s in load_samples(tiny_demo.train_dir, False)}
    trained_on = {conditions[i] for i in split["train"]}
    assert {conditions[i] for i in split["val"]} == set(split["held_out_conditions"])
    assert not trained_on & set(split["held_out_conditions"])
    capsys.readouterr()
    assert cli_main(["evaluate", "--model", str(model_dir), "--json"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(printed.strip().splitlines()[-1])
    assert result["split"] == "conditions"
    assert result["held_out_conditions"] == split["held_out_conditions"]
    assert "images, held-out conditions: " in printed
