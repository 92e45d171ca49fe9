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

Each lever is compared with its base row (the shipped default's recipe unless it says
otherwise: a lever added on top of another is compared with that one) on the same split by
the paired per-image differences of its validation and of its stage1_test scores: mean and
standard error.
Models live in ``models/generalisation/<lever>-<split>`` (the shipped ``models/default`` is
the default recipe on the random split). Without ``--train`` a missing model is listed as
not trained; with it, it is trained (about 20 minutes each on a quiet 2-core CPU, more on
held-out conditions, whose validation images are larger).

Writes ``bench/results/generalisation.json`` and ``.md``; with ``--update-readme`` the
table goes into docs/experiments.md between its generalisation markers.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_commands import last_json, paired, paired_text, publish, run_command  # noqa: E402

RUN = str(ROOT / "run.sh")
MODELS = "models/generalisation"
SPLITS = ("conditions", "random")


@dataclass(frozen=True)
class Lever:
    """One row: what it is, its ``./run.sh train`` flags on top of the default preset, and
    for a post-processing lever the flags of ``evaluate`` and ``predict`` and the row whose
    models it reuses (``model_of``); each row is compared with row ``base``."""

    what: str
    train_flags: tuple[str, ...] = ()
    post_flags: tuple[str, ...] = ()
    model_of: str | None = None
    base: str = "default"
    splits: tuple[str, ...] = ("conditions", "random")


GREY_SCALE = ("--input-space", "grey", "--scale-min", "0.5", "--scale-max", "2")
LEVERS: dict[str, Lever] = {
    "default": Lever("the shipped default's recipe (RGB input)"),
    "grey": Lever("one input space: grey, light backgrounds inverted", ("--input-space", "grey")),
    "grey-scale": Lever("grey + random rescaling 0.5-2x in training", GREY_SCALE),
    "grey-border": Lever(
        "grey + a border channel (watershed markers from foreground - border)",
        ("--input-space", "grey", "--targets", "border"),
    ),
    "grey-scale-stain": Lever(
        "grey-scale + 30% of the fluorescence samples re-coloured as H&E (--stain-tissue 0.3)",
        (*GREY_SCALE, "--stain-tissue", "0.3"),
        base="grey-scale",
    ),
    "grey-scale-paste": Lever(
        "grey-scale + copies of nuclei pasted against others in 50% of the samples "
        "(--paste-nuclei 0.5)",
        (*GREY_SCALE, "--paste-nuclei", "0.5"),
        base="grey-scale",
    ),
    "longer": Lever(
        "the default's recipe trained longer: 80 epochs (cosine schedule over 80), patience 10, "
        "bfloat16 to buy the epochs",
        ("--epochs", "80", "--patience", "10", "--precision", "bfloat16"),
    ),
    "random-walker": Lever(
        "the default's models, random walker instead of watershed (same markers)",
        post_flags=("--method", "random_walker"),
        model_of="default",
        # The RGB model finds no nucleus on held-out conditions but wide, many-seeded
        # foreground, on which the walk runs for hours: only its random-split cell.
        splits=("random",),
    ),
    "grey-scale-random-walker": Lever(
        "grey-scale's models, random walker instead of watershed (same markers)",
        post_flags=("--method", "random_walker"),
        model_of="grey-scale",
        base="grey-scale",
        splits=("conditions",),
    ),
    "scales": Lever(
        "the default's models, each image predicted at 0.5x, 1x and 2x and the most confident "
        "kept (--scales 0.5,1,2)",
        post_flags=("--scales", "0.5,1,2"),
        model_of="default",
        # As for the random walker: the RGB model finds nothing on held-out conditions.
        splits=("random",),
    ),
    "scales-half": Lever(
        "the default's models, each image predicted at 0.5x and 1x and the more confident "
        "kept (--scales 0.5,1)",
        post_flags=("--scales", "0.5,1"),
        model_of="default",
    ),
    "grey-scale-scales": Lever(
        "grey-scale's models, each image predicted at 0.5x, 1x and 2x and the most confident "
        "kept (--scales 0.5,1,2)",
        post_flags=("--scales", "0.5,1,2"),
        model_of="grey-scale",
        base="grey-scale",
        # Its random-split cell was stopped for the CPU time (five predictions an image);
        # the 0.5,1 row below has both.
        splits=("conditions",),
    ),
    "grey-scale-scales-half": Lever(
        "grey-scale's models, each image predicted at 0.5x and 1x and the more confident "
        "kept (--scales 0.5,1)",
        post_flags=("--scales", "0.5,1"),
        model_of="grey-scale",
        base="grey-scale",
    ),
}


def model_folder(lever: str, split: str) -> str:
    """Where the lever's model for a split lives (the shipped default for its own cell)."""
    lever = LEVERS[lever].model_of or lever
    if (lever, split) == ("default", "random"):
        return "models/default"
    return f"{MODELS}/{lever}-{split}"


def score_model(model: str, name: str, post_flags: tuple[str, ...]) -> dict:
    """Validation (tuned) and stage1_test scores of one model folder.

    Kept in ``submissions/generalisation/<name>.json`` with the model's ``complete.json``
    and ``thresholds.json``: a later run reuses them while the model and the commands are
    the same (evaluating and predicting one model takes minutes).
    """
    commands = _commands(model, name, post_flags)
    shown = [" ".join(["./run.sh", *command[1:]]) for command in commands]
    files = {
        file: (ROOT / model / file).read_text() for file in ("complete.json", "thresholds.json")
    }
    kept = ROOT / "submissions" / "generalisation" / f"{name}.json"
    if kept.is_file():
        result = json.loads(kept.read_text())
        if result.get("model_files") == files and result.get("commands") == shown:
            print(f"reusing {kept.relative_to(ROOT)}", flush=True)
            return result
    evaluate, predict, score = commands
    validation = last_json(run_command(evaluate))
    run_command(predict)
    test = last_json(run_command(score))
    result = {
        "model": model,
        "validation": validation["score"],
        "validation_per_image": validation["per_image"],
        "stage1_test": test["score"],
        "stage1_test_per_image": test["per_image"],
        "commands": shown,
        "model_files": files,
    }
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text(json.dumps(result, indent=1) + "\n")
    return result


def _commands(model: str, name: str, post_flags: tuple[str, ...]) -> list[list[str]]:
    csv = f"submissions/generalisation/{name}.csv"
    return [
        [RUN, "evaluate", "--model", model, *post_flags, "--json"],
        [RUN, "predict", "--model", model, *post_flags, "--out", csv],
        [RUN, "score", csv, "--json", "--no-leaderboard"],
    ]


def cell(result: dict | None, base: dict | None, missing: str = "not trained") -> str:
    if result is None:
        return f"{missing} | - | - | -"
    validation = paired_text(paired(result, base, "validation_per_image"))
    test = paired_text(paired(result, base, "stage1_test_per_image"))
    return f"{result['validation']:.4f} | {validation} | {result['stage1_test']:.4f} | {test}"


def table(results: dict[str, dict[str, dict | None]]) -> str:
    lines = [
        "| lever | held-out conditions | paired vs its base | stage1_test | paired vs its base"
        " | random split | paired vs its base | stage1_test | paired vs its base |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for lever, by_split in results.items():
        base = results.get(LEVERS[lever].base, {})
        # A prediction-time lever reuses models: what it lacks was not measured.
        missing = "not measured" if LEVERS[lever].model_of else "not trained"
        cells = [cell(by_split[s], base.get(s), missing) for s in SPLITS]
        lines.append(f"| {lever}: {LEVERS[lever].what} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", action="store_true", help="train the missing models")
    parser.add_argument("--lever", action="append", choices=sorted(LEVERS), help="(repeatable)")
    parser.add_argument("--update-readme", action="store_true")
    args = parser.parse_args()
    asked = args.lever or list(LEVERS)
    chosen = [
        name for name in LEVERS if name in asked or any(LEVERS[a].base == name for a in asked)
    ]
    results: dict[str, dict[str, dict | None]] = {}
    for lever in chosen:
        results[lever] = {}
        for split in SPLITS:
            if split not in LEVERS[lever].splits:
                results[lever][split] = None
                continue
            model = model_folder(lever, split)
            if not (ROOT / model / "scores.json").is_file():
                if not args.train or LEVERS[lever].model_of:
                    results[lever][split] = None
                    continue
                flags = ["--split", split, *LEVERS[lever].train_flags]
                run_command([RUN, "train", "--out", model, *flags])
            name = f"{lever}-{split}"
            results[lever][split] = score_model(model, name, LEVERS[lever].post_flags)
    section = "generalisation" if args.update_readme else None
    publish(ROOT / "bench" / "results" / "generalisation.json", results, table(results), section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
