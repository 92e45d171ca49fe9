"""The architectures compared on the same training budget: U-Net, U-Net++, MobileNetV2 U-Net.

    .venv/bin/python bench/compare_architectures.py [--minutes 60] [--epochs 100]
        [--arch unet --arch unetpp ...] [--update-readme]
    .venv/bin/python bench/compare_architectures.py --demo --minutes 0.5   # a dry run

Every row is produced by the project's own commands: ``./run.sh train --arch A --out
models/arch/A --epochs N --max-minutes M`` (only for a model folder without
``scores.json``; the same preset, seed and split for every architecture, training stops
before an epoch that would end past the budget), ``./run.sh evaluate --model DIR --json``
on the model's validation split with its tuned post-processing (the score choices are
made on) and ``./run.sh predict`` + ``./run.sh score`` on stage1_test (the leaderboard:
each scoring adds its line there; looked at, never tuned on). Per architecture: the
number of parameters, the CPU seconds per epoch and the epochs the budget allowed (from
the model's ``scores.json``), the validation score and the stage1_test score.

Writes ``bench/results/architectures.json`` and ``bench/results/architectures.md`` (the
table), and with ``--update-readme`` puts the table into docs/experiments.md between its
architecture markers. ``--demo`` runs the same commands on the synthetic demo set, with
models, submissions, leaderboard and results in a scratch folder (``--work``), so nothing
of the real comparison is touched. The real run takes the budget times the number of
architectures, plus about ten minutes of evaluation each, on the 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_commands import last_json, publish, run_command, shown  # noqa: E402

RUN = str(ROOT / "run.sh")
ARCHITECTURES = ("unet", "unetpp", "mobilenetv2_unet")
LABELS = {
    "unet": "U-Net",
    "unetpp": "U-Net++ (deep supervision, heads averaged)",
    "mobilenetv2_unet": "MobileNetV2 encoder (ImageNet) + U-Net decoder",
}


def run_architecture(arch: str, args: argparse.Namespace, data: dict[str, Path]) -> dict:
    """Train (when missing), evaluate, predict and score one architecture."""
    model = data["models"] / arch
    if not (model / "scores.json").is_file():
        train = [RUN, "train", "--arch", arch, "--out", str(model), "--epochs", str(args.epochs)]
        if args.minutes:
            train += ["--max-minutes", str(args.minutes)]
        if args.demo:
            train += ["--demo"]
        if arch == "mobilenetv2_unet" and args.encoder_weights:
            train += ["--encoder-weights", args.encoder_weights]
        run_command(train + args.train_args)
    started = time.time()
    validation = last_json(run_command([RUN, "evaluate", "--model", str(model), "--json"]))
    csv = data["submissions"] / f"{arch}.csv"
    run_command(
        [RUN, "predict", "--model", str(model), "--images", str(data["test"]), "--out", str(csv)]
    )
    score = [RUN, "score", str(csv), "--json", "--solution", str(data["solution"])]
    if args.demo:
        score += ["--leaderboard", str(data["leaderboard"])]
    test = last_json(run_command(score))
    scores = json.loads((model / "scores.json").read_text())
    config = json.loads((model / "config.json").read_text())
    return {
        "arch": arch,
        "model": shown(model),
        "parameters": scores.get("parameters"),
        "seconds_per_epoch": scores.get("seconds_per_epoch"),
        "epochs_run": scores.get("epochs_run"),
        "train_seconds": scores.get("train_seconds"),
        "stopped_by": scores.get("stopped_by"),
        "max_minutes": scores.get("max_minutes"),
        "encoder_weights": config["model"]["encoder_weights"]
        if arch == "mobilenetv2_unet"
        else None,
        "validation": round(validation["score"], 4),
        "validation_per_kind": {k: round(v, 4) for k, v in validation["per_kind"].items()},
        "stage1_test": round(test["score"], 4),
        "settings": validation["settings"],
        "device": scores.get("device"),
        "evaluation_seconds": round(time.time() - started),
        "commands": [
            f"./run.sh evaluate --model {shown(model)} --json",
            f"./run.sh predict --model {shown(model)} --out {shown(csv)}",
            f"./run.sh score {shown(csv)}",
        ],
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| architecture | parameters | s / epoch | epochs | validation | stage1_test |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        label = LABELS.get(row["arch"], row["arch"])
        if row["arch"] == "mobilenetv2_unet" and row["encoder_weights"] == "none":
            label = "MobileNetV2 encoder (random init.) + U-Net decoder"
        lines.append(
            f"| {label} (`{row['arch']}`) | {row['parameters'] or 0:,} | "
            f"{row['seconds_per_epoch']} | {row['epochs_run']} | {row['validation']:.4f} | "
            f"{row['stage1_test']:.4f} |"
        )
    budget = {row["max_minutes"] for row in rows}
    if budget and None not in budget:
        lines.append("")
        lines.append(
            f"Each trained for at most {', '.join(f'{m:g}' for m in sorted(budget))} minutes "
            f"(`--max-minutes`) on {rows[0]['device']}; validation with the tuned "
            "post-processing (`./run.sh evaluate`)."
        )
    return "\n".join(lines)


def _data(args: argparse.Namespace) -> dict[str, Path]:
    if not args.demo:
        return {
            "train": ROOT / "input" / "stage1_train",
            "test": ROOT / "input" / "stage1_test",
            "solution": ROOT / "input" / "stage1_solution.csv",
            "models": ROOT / "models" / "arch",
            "submissions": ROOT / "submissions" / "arch",
            "leaderboard": ROOT / "submissions" / "leaderboard.csv",
            "results": ROOT / "bench" / "results",
        }
    from pipeline.data.synthetic import make_demo_dataset
    from pipeline.paths import INPUT_DIR

    demo = make_demo_dataset(INPUT_DIR / "demo")
    work = Path(args.work or tempfile.mkdtemp(prefix="compare-architectures-"))
    return {
        "train": demo.train_dir,
        "test": demo.test_dir,
        "solution": demo.solution_csv,
        "models": work / "models",
        "submissions": work / "submissions",
        "leaderboard": work / "leaderboard.csv",
        "results": work / "results",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--arch", action="append", choices=ARCHITECTURES, help="(repeatable; default: all)"
    )
    parser.add_argument(
        "--minutes", type=float, default=60.0, help="training budget of each architecture"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=100,
        help="epochs: an upper bound under the budget, and the length of the learning-rate "
        "schedule (so best near what the budget allows)",
    )
    parser.add_argument(
        "--encoder-weights",
        choices=("imagenet", "none"),
        default=None,
        help="mobilenetv2_unet's encoder (default: the preset's; imagenet is downloaded once "
        "into ~/.keras/models/)",
    )
    parser.add_argument("--demo", action="store_true", help="a dry run on the synthetic demo set")
    parser.add_argument("--work", type=Path, default=None, help="--demo: scratch folder")
    parser.add_argument(
        "--train-args",
        default="",
        help="more ./run.sh train options for every architecture, in one string",
    )
    parser.add_argument("--update-readme", action="store_true")
    args = parser.parse_args()
    args.train_args = args.train_args.split()
    if args.demo and args.update_readme:
        parser.error("--update-readme takes the real comparison, not the --demo dry run")
    data = _data(args)
    for folder in ("models", "submissions", "results"):
        data[folder].mkdir(parents=True, exist_ok=True)
    rows = []
    for arch in args.arch or ARCHITECTURES:
        rows.append(run_architecture(arch, args, data))
        print(json.dumps(rows[-1]), flush=True)
    markdown = table(rows)
    publish(
        data["results"] / "architectures.json",
        rows,
        markdown,
        "architectures" if args.update_readme else None,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
