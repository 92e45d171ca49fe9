"""The main job (``./run.sh`` with no stage): data, train, predict, check, score.

1. **data**: reuse ``input/`` when it holds the competition files; otherwise download them
   with the Kaggle API when credentials exist; otherwise run on the embedded synthetic
   demo set (announced as such), so a newcomer sees every stage work in minutes.
2. **train**: skipped when a finished model with the same training settings exists
   (``models/default`` is shipped, so a fresh clone goes straight to prediction);
   an unfinished one is resumed, one stopped before its first checkpoint started over.
3. **predict** the test images into ``submissions/<model>.csv`` (an interrupted
   prediction goes on after its last complete image), **check** it, **score** it against
   the solution (a line on the local leaderboard) and record the score in the model's
   ``scores.json``.

So ``./run.sh`` after a kill at any point completes on the next call. ``--resume`` says
that this is what is wanted: it refuses to start anything new when nothing was interrupted.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from pipeline import paths
from pipeline.config import Config, preset
from pipeline.core.device import DEVICES, select_device
from pipeline.core.model_store import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    LAST_MODEL_FILE,
    SCORES_FILE,
    is_complete,
    read_json,
    write_json,
)
from pipeline.data import download
from pipeline.data.dataset import list_image_ids
from pipeline.data.reconcile import check_submission
from pipeline.data.submission import read_submission
from pipeline.data.synthetic import make_demo_dataset
from pipeline.errors import PipelineError
from pipeline.evaluation.score import score_and_record
from pipeline.inference.run import run_prediction
from pipeline.learning.training import folder_state, train_model
from pipeline.locks import output_lock
from pipeline.stages.train import evaluation_scoring

log = logging.getLogger(__name__)

# Size of the synthetic demo set the main job falls back to (tests make it smaller).
DEMO_SET: dict = {}


@dataclass(frozen=True)
class JobData:
    """Where the main job reads its data."""

    train_dir: Path
    test_dir: Path
    solution_csv: Path | None
    demo: bool
    stage: int = 1
    # stage 2: the sample submission, whose ids the submission must hold exactly
    sample_submission: Path | None = None


def competition_data_present(input_dir: Path) -> bool:
    """Whether ``input/`` holds unpacked stage-1 training and test images."""
    try:
        return bool(list_image_ids(input_dir / "stage1_train")) and bool(
            list_image_ids(input_dir / "stage1_test")
        )
    except PipelineError:
        return False


def find_data(demo: bool, input_dir: Path) -> JobData:
    """Step 1: competition data from ``input/`` or Kaggle, else the synthetic demo set."""
    if not demo and not competition_data_present(input_dir):
        if download.kaggle_credentials_available():
            log.info("input/ has no competition data: downloading it with the Kaggle API")
            download.download_from_kaggle(input_dir)
        else:
            log.warning(
                "\n*** No competition data in %s and no Kaggle credentials: running the "
                "DEMO on a small synthetic nuclei set. ***\n"
                "For the real data: ./run.sh download (Kaggle credentials), or "
                "./run.sh download --from DIR (a folder with the competition zips).\n",
                input_dir,
            )
            demo = True
    if demo:
        made = make_demo_dataset(input_dir / "demo", **DEMO_SET)
        return JobData(made.train_dir, made.test_dir, made.solution_csv, demo=True)
    solution = input_dir / "stage1_solution.csv"
    return JobData(
        input_dir / "stage1_train",
        input_dir / "stage1_test",
        solution if solution.is_file() else None,
        demo=False,
    )


#: Stage 2's files in input/, as ./run.sh download unpacks them from Kaggle.
STAGE2_TEST = "stage2_test_final"
STAGE2_SAMPLE = "stage2_sample_submission_final.csv"


def stage2_data(input_dir: Path) -> JobData:
    """Stage 2's data: stage1_train to train on, stage 2's test images and sample
    submission (no solution: Kaggle scores them)."""
    train_dir = input_dir / "stage1_train"
    test_dir, sample = input_dir / STAGE2_TEST, input_dir / STAGE2_SAMPLE
    missing = [p.name for p in (train_dir, test_dir, sample) if not p.exists()]
    if missing:
        raise PipelineError(
            f"{input_dir}: stage 2 needs {STAGE2_TEST}/, {STAGE2_SAMPLE} and stage1_train/ "
            f"there, {' and '.join(missing)} missing (./run.sh download fetches them from "
            "Kaggle, or --from DIR imports them)"
        )
    return JobData(train_dir, test_dir, None, False, stage=2, sample_submission=sample)


def check_against_sample(submission: Path, sample: Path) -> None:
    """Refuse a submission whose ImageIds are not exactly those of the sample submission."""
    wanted = set(read_submission(sample)["ImageId"])
    written = set(read_submission(submission)["ImageId"])
    missing, unknown = sorted(wanted - written), sorted(written - wanted)
    if missing or unknown:
        raise PipelineError(
            f"{submission}: {len(missing)} ImageIds of {sample.name} missing "
            f"{missing[:3]}, {len(unknown)} unknown {unknown[:3]}"
        )
    log.info("[check] %s: every ImageId of %s, no other", submission, sample.name)


def _shown(path: Path) -> str:
    """A path as a user would type it from the repository root."""
    path = Path(path).resolve()
    return (
        str(path.relative_to(paths.REPO_ROOT))
        if path.is_relative_to(paths.REPO_ROOT)
        else str(path)
    )


def choose_model_dir(config: Config, models_dir: Path) -> Path:
    """``models/<name>`` if it is free or holds this config's model, else a fingerprinted one."""
    candidate = models_dir / config.name
    if not candidate.exists():
        return candidate
    recorded = read_json(candidate / SCORES_FILE).get("training_fingerprint")
    if recorded == config.training_fingerprint():
        return candidate
    if not (candidate / SCORES_FILE).exists():
        if (candidate / CONFIG_FILE).is_file() and Config.load(
            candidate / CONFIG_FILE
        ).training_fingerprint() == config.training_fingerprint():
            return candidate  # an unfinished run of this config: resume it
    return models_dir / f"{config.name}-{config.training_fingerprint()}"


def _train_step(
    config: Config,
    data: JobData,
    models_dir: Path,
    retrain: bool,
    device: str,
    command: str | None,
) -> Path:
    """[train]: the model folder of ``config``, trained (or resumed) unless complete."""
    model_dir = choose_model_dir(config, models_dir)
    if retrain and model_dir.exists():
        model_dir = models_dir / f"{config.name}-{config.training_fingerprint()}-retrain"
        if model_dir.exists():
            shutil.rmtree(model_dir)
    if is_complete(model_dir):
        log.info(
            "[train] skipped: %s already holds a model trained with these settings "
            "(--retrain to train again)",
            model_dir,
        )
        return model_dir
    resume = (model_dir / CHECKPOINT_DIR / LAST_MODEL_FILE).is_file()
    log.info("[train] %s %s", "resuming" if resume else "training", model_dir)
    typed = " ".join(["./run.sh"] + ["--demo"] * data.demo + ["--retrain"] * retrain)
    with output_lock(model_dir, "model folder"):
        train_model(
            config,
            data.train_dir,
            model_dir,
            resume=resume,
            device=device,
            command=command or typed,
            scoring=evaluation_scoring(),
        )
    return model_dir


def _predict_step(model_dir: Path, data: JobData, submissions_dir: Path, device: str) -> Path:
    """[predict] and [check]: the test images' submission, checked."""
    suffix = "-stage2" if data.stage == 2 else ""
    submission = submissions_dir / f"{model_dir.name}{suffix}.csv"
    log.info("[predict] %s -> %s", data.test_dir, submission)
    # Stage 2's thousands of images: an interrupted run goes on where it stopped.
    # An interrupted run goes on where it stopped (same model, settings and images).
    # submissions/ is the pipeline's own folder: its file there is replaced (force).
    run_prediction(model_dir, data.test_dir, submission, device=device, resume=True, force=True)
    log.info("[check] %s", submission)
    problems = check_submission(submission, data.test_dir)
    if problems:
        for problem in problems:
            log.error("%s", problem)
        raise PipelineError(f"{submission}: {len(problems)} problems; see above")
    if data.sample_submission is not None:
        check_against_sample(submission, data.sample_submission)
    return submission


def _score_step(model_dir: Path, data: JobData, submission: Path, leaderboard_csv: Path):
    """[score]: the submission's score, on the leaderboard and in the model's scores.json."""
    log.info("[score] %s against %s", submission, data.solution_csv)
    score = score_and_record(submission, data.solution_csv, leaderboard_csv)
    scores = read_json(model_dir / SCORES_FILE)
    key = "demo_test_score" if data.demo else "stage1_test_score"
    scores[key] = round(float(score), 6)
    scores[f"{key}_command"] = (
        f"./run.sh predict --model {_shown(model_dir)} --images {_shown(data.test_dir)}"
        f" --out X.csv && ./run.sh score X.csv --solution {_shown(data.solution_csv)}"
    )
    write_json(model_dir / SCORES_FILE, scores)
    return score


def _check_something_to_resume(
    config: Config, data: JobData, models_dir: Path, submissions_dir: Path
) -> None:
    """For ``--resume``: refuse when no training and no prediction was interrupted."""
    model_dir = choose_model_dir(config, models_dir)
    suffix = "-stage2" if data.stage == 2 else ""
    partial = submissions_dir / f"{model_dir.name}{suffix}.csv.partial.json"
    if folder_state(model_dir) in ("checkpoint", "started") or partial.is_file():
        return
    raise PipelineError(
        f"--resume: nothing was interrupted ({_shown(model_dir)} holds no unfinished "
        f"training, and no prediction into {_shown(submissions_dir)} was left partial); "
        "run ./run.sh without --resume"
    )


def run_main_job(
    config: Config,
    demo: bool = False,
    retrain: bool = False,
    device: str = "auto",
    input_dir: Path | None = None,
    models_dir: Path | None = None,
    submissions_dir: Path | None = None,
    leaderboard_csv: Path | None = None,
    command: str | None = None,
    stage: int = 1,
    resume: bool = False,
) -> dict:
    """Run every stage; return ``{"model_dir", "submission", "score"}``.

    ``stage`` 2 predicts stage 2's test images (``stage2_test_final``), resumably, checks
    the submission against ``stage2_sample_submission_final.csv`` and scores nothing.

    ``command`` is recorded in a newly trained model's ``scores.json`` as the command that
    trained it; by default the ``./run.sh`` line these arguments stand for. The folders
    left out are the pipeline's own (`pipeline.paths`), resolved when it starts.
    """
    input_dir = paths.INPUT_DIR if input_dir is None else input_dir
    models_dir = paths.MODELS_DIR if models_dir is None else models_dir
    submissions_dir = paths.SUBMISSIONS_DIR if submissions_dir is None else submissions_dir
    leaderboard_csv = paths.LEADERBOARD_CSV if leaderboard_csv is None else leaderboard_csv
    data = stage2_data(input_dir) if stage == 2 else find_data(demo, input_dir)
    if data.demo and config.name == "default":
        config = preset("demo")
    if resume:
        _check_something_to_resume(config, data, models_dir, submissions_dir)
    model_dir = _train_step(config, data, models_dir, retrain, device, command)
    submission = _predict_step(model_dir, data, submissions_dir, device)
    result = {"model_dir": str(model_dir), "submission": str(submission), "score": None}
    if data.stage == 2:
        log.info(
            "[score] none: stage 2 has no local solution; Kaggle scores it "
            "(./run.sh submit %s -m MESSAGE)",
            _shown(submission),
        )
        return result
    if data.solution_csv is None:
        log.info("[score] skipped: no solution file in %s", input_dir)
        return result
    result["score"] = _score_step(model_dir, data, submission, leaderboard_csv)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset", default="default", help="configuration to train and predict with"
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="run on the synthetic demo set even when real data is present",
    )
    parser.add_argument(
        "--retrain",
        action="store_true",
        help="train a new model even when one with these settings exists",
    )
    parser.add_argument(
        "--stage",
        type=int,
        choices=(1, 2),
        default=1,
        help="1: predict and score stage1_test; 2: predict stage2_test_final into "
        "submissions/<model>-stage2.csv, checked against the stage-2 sample submission "
        "(resumes an interrupted run; no local score)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run (a plain ./run.sh does so too); refuses to start "
        "anything new when nothing was interrupted",
    )
    parser.add_argument("--device", choices=DEVICES, default="auto")


def main(args: argparse.Namespace) -> int:
    select_device(args.device)
    result = run_main_job(
        preset(args.preset),
        demo=args.demo,
        retrain=args.retrain,
        device=args.device,
        command=getattr(args, "command_line", None),
        stage=args.stage,
        resume=args.resume,
    )
    if args.stage == 2:
        print(f"\n{result['submission']}: written and checked; stage 2 is scored by Kaggle")
    elif result["score"] is not None:
        print(
            f"\n{result['submission']}: score {result['score']:.4f} "
            f"(model {result['model_dir']}; ./run.sh leaderboard lists every run)"
        )
    else:
        print(f"\n{result['submission']}: written and checked (no solution file to score)")
    return 0
