"""Generalisation levers: each one scored on held-out conditions, a random split and stage1_test.

    .venv/bin/python bench/generalisation.py [--train] [--lever NAME ...] [--update-readme]

Issue 12's question is how well a model does on acquisition conditions it never saw. For
each lever (a set of ``./run.sh train`` flags) two models are trained, one per validation
split (``--split conditions``: whole conditions, size and kind, held out; ``--split
random``: every kind on both sides), and each is scored with the project's own commands:

- ``./run.sh evaluate --model DIR --json``: its validation score with its tuned settings
  (the held-out-condition score for the ``conditions`` model, the random-split score for
  the other), and the per-image scores for the paired differences;
- ``./run.sh predict --model DIR`` then ``./run.sh score --json --no-leaderboard``: its
  stage1_test score (the leaderboard: looked at, never chosen on).

Each lever is compared with the first row (the shipped default's recipe) on the same split
by the paired per-image difference of the validation scores: mean and standard error.
Models live in ``models/generalisation/<lever>-<split>`` (the shipped ``models/default`` is
the default recipe on the random split). Without ``--train`` a missing model is listed as
not trained; with it, it is trained (about 20 minutes each on a quiet 2-core CPU, more on
held-out conditions, whose validation images are larger).

Writes ``bench/results/generalisation.json`` and ``.md``; with ``--update-readme`` the
table goes into docs/experiments.md between its generalisation markers.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_commands import last_json, publish, run_command  # noqa: E402

RUN = str(ROOT / "run.sh")
MODELS = "models/generalisation"
SPLITS = ("conditions", "random")

#: lever name -> (what it is, ./run.sh train flags on top of the default preset)
LEVERS: dict[str, tuple[str, list[str]]] = {
    "default": ("the shipped default's recipe (RGB input)", []),
    "grey": ("one input space: grey, light backgrounds inverted", ["--input-space", "grey"]),
    "grey-scale": (
        "grey + random rescaling 0.5-2x in training",
        ["--input-space", "grey", "--scale-min", "0.5", "--scale-max", "2"],
    ),
    "grey-border": (
        "grey + a border channel (watershed markers from foreground - border)",
        ["--input-space", "grey", "--targets", "border"],
    ),
}


def model_folder(lever: str, split: str) -> str:
    """Where the lever's model for a split lives (the shipped default for its own cell)."""
    if (lever, split) == ("default", "random"):
        return "models/default"
    return f"{MODELS}/{lever}-{split}"


def score_model(model: str) -> dict:
    """Validation (tuned) and stage1_test scores of one model folder."""
    validation = last_json(run_command([RUN, "evaluate", "--model", model, "--json"]))
    csv = f"submissions/generalisation/{Path(model).name}.csv"
    run_command([RUN, "predict", "--model", model, "--out", csv])
    test = last_json(run_command([RUN, "score", csv, "--json", "--no-leaderboard"]))
    return {
        "model": model,
        "validation": validation["score"],
        "validation_per_image": validation["per_image"],
        "stage1_test": test["score"],
        "commands": [
            f"./run.sh evaluate --model {model} --json",
            f"./run.sh predict --model {model} --out {csv}",
            f"./run.sh score {csv} --json --no-leaderboard",
        ],
    }


def paired(row: dict, base: dict | None) -> tuple[float, float] | None:
    """Mean and standard error of the per-image validation differences, row - base."""
    if not base or not row or row is base:
        return None
    ids = sorted(set(row["validation_per_image"]) & set(base["validation_per_image"]))
    diffs = [row["validation_per_image"][i] - base["validation_per_image"][i] for i in ids]
    if len(diffs) < 2:
        return None
    mean = sum(diffs) / len(diffs)
    spread = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    return mean, spread / math.sqrt(len(diffs))


def cell(result: dict | None, base: dict | None) -> str:
    if result is None:
        return "not trained | - | -"
    difference = paired(result, base)
    shown = f"{difference[0]:+.3f} ± {difference[1]:.3f}" if difference else "-"
    return f"{result['validation']:.4f} | {shown} | {result['stage1_test']:.4f}"


def table(results: dict[str, dict[str, dict | None]]) -> str:
    lines = [
        "| lever | held-out conditions | paired vs default | stage1_test | random split"
        " | paired vs default | stage1_test |",
        "|---|---|---|---|---|---|---|",
    ]
    for lever, by_split in results.items():
        cells = [cell(by_split[s], results["default"][s]) for s in SPLITS]
        lines.append(f"| {lever}: {LEVERS[lever][0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", action="store_true", help="train the missing models")
    parser.add_argument("--lever", action="append", choices=sorted(LEVERS), help="(repeatable)")
    parser.add_argument("--update-readme", action="store_true")
    args = parser.parse_args()
    chosen = ["default", *[name for name in LEVERS if name in (args.lever or LEVERS)]]
    results: dict[str, dict[str, dict | None]] = {}
    for lever in dict.fromkeys(chosen):
        results[lever] = {}
        for split in SPLITS:
            model = model_folder(lever, split)
            if not (ROOT / model / "scores.json").is_file():
                if not args.train:
                    results[lever][split] = None
                    continue
                flags = ["--split", split, *LEVERS[lever][1]]
                run_command([RUN, "train", "--out", model, *flags])
            results[lever][split] = score_model(model)
    section = "generalisation" if args.update_readme else None
    publish(ROOT / "bench" / "results" / "generalisation.json", results, table(results), section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
