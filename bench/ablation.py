"""Ablation: each step's effect on the validation and stage1_test scores.

    .venv/bin/python bench/ablation.py [--update-readme]

Every row is produced by the project's own commands: ``./run.sh train`` (only for a model
folder that does not exist yet), ``./run.sh evaluate`` on the model's validation split
(the score that choices are made on) and ``./run.sh predict`` + ``./run.sh score`` on
stage1_test (the leaderboard, looked at, never tuned on). Rows add one step at a time:

1. the seeds' baseline: whole images resized to 128x128, connected components;
2. crops at the images' own scale, whole images predicted at their own size;
3. light-background images inverted before standardising;
4. marker-controlled watershed, markers from the foreground mask's distance map;
5. a border channel, the watershed's markers from foreground minus border;
6. strong intensity and stain augmentation (wide gamma, hue, grey, blur), 60 epochs;
7. post-processing thresholds tuned on validation (``thresholds.json``);
8. test-time augmentation (8 flips and rotations averaged).

Rows 2-5 train with mild augmentation for 40 epochs. The last three rows are the shipped
default (``models/default``, the best of these on validation): row 2's configuration,
without inversion or a border channel, with the distance-map watershed, untuned, tuned
and with TTA.

Writes ``bench/results/ablation.json`` and ``bench/results/ablation.md`` (the table), and
with ``--update-readme`` puts the table into docs/experiments.md between its ablation markers.
Training the missing models takes about twenty minutes each on the 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_commands import last_json, publish, run_command  # noqa: E402

RUN = str(ROOT / "run.sh")
ABLATION_MODELS = "models/ablation"
KINDS = ("fluorescence", "brightfield", "histology")

# (label, model folder, train arguments, predict/evaluate arguments)
MILD = ["--augment-strength", "default", "--epochs", "40"]  # the first default's training
BORDER = ["--targets", "border", "--invert-light"]
STRONG = ["--augment-strength", "strong", "--epochs", "60"]
ROWS = [
    (
        "seeds' baseline: 128x128 resize, components",
        f"{ABLATION_MODELS}/seeds-baseline",
        ["--preset", "seeds-baseline"],
        ["--untuned"],
    ),
    (
        "+ native-scale crops, whole-image prediction",
        f"{ABLATION_MODELS}/native",
        ["--targets", "foreground", "--no-invert-light", *MILD],
        ["--untuned", "--method", "components"],
    ),
    (
        "+ light backgrounds inverted",
        f"{ABLATION_MODELS}/native-invert",
        ["--targets", "foreground", "--invert-light", *MILD],
        ["--untuned", "--method", "components"],
    ),
    (
        "+ watershed on the mask's distance map",
        f"{ABLATION_MODELS}/native-invert",
        ["--targets", "foreground", "--invert-light", *MILD],
        ["--untuned"],
    ),
    (
        "+ border channel: watershed markers from foreground - border",
        f"{ABLATION_MODELS}/border",
        [*BORDER, *MILD],
        ["--untuned"],
    ),
    (
        "+ strong intensity and stain augmentation, 60 epochs",
        f"{ABLATION_MODELS}/border-strong",
        [*BORDER, *STRONG],
        ["--untuned"],
    ),
    (
        "+ thresholds tuned on validation",
        f"{ABLATION_MODELS}/border-strong",
        [*BORDER, *STRONG],
        ["--no-tta"],
    ),
    (
        "+ test-time augmentation (flips, rotations)",
        f"{ABLATION_MODELS}/border-strong",
        [*BORDER, *STRONG],
        ["--tta"],
    ),
    (
        "shipped default: row 2's model, distance-map watershed, untuned",
        "models/default",
        [],
        ["--untuned"],
    ),
    ("shipped default, thresholds tuned on validation", "models/default", [], ["--no-tta"]),
    ("shipped default, tuned, with test-time augmentation", "models/default", [], ["--tta"]),
]


def kinds_of_images(test_dir: Path) -> dict[str, str]:
    from pipeline.data.dataset import image_kind, image_path, list_image_ids, read_image

    return {i: image_kind(read_image(image_path(test_dir, i))) for i in list_image_ids(test_dir)}


def run_row(label: str, model: str, train_args: list[str], flags: list[str], kinds: dict) -> dict:
    model_dir = ROOT / model
    if not (model_dir / "scores.json").is_file():
        run_command([RUN, "train", "--out", model, *train_args])
    started = time.time()
    validation = last_json(run_command([RUN, "evaluate", "--model", model, *flags, "--json"]))
    slug = model.rstrip("/").split("/")[-1] + "-" + "-".join(f.strip("-") for f in flags)
    csv = f"submissions/ablation/{slug}.csv"
    run_command([RUN, "predict", "--model", model, "--out", csv, *flags])
    test = last_json(run_command([RUN, "score", csv, "--json"]))
    test_per_kind = {
        kind: sum(s for i, s in test["per_image"].items() if kinds[i] == kind)
        / max(1, sum(1 for i in test["per_image"] if kinds[i] == kind))
        for kind in KINDS
        if any(kinds[i] == kind for i in test["per_image"])
    }
    scores = json.loads((model_dir / "scores.json").read_text())
    return {
        "step": label,
        "model": model,
        "flags": flags,
        "validation": round(validation["score"], 4),
        "validation_per_kind": {k: round(v, 4) for k, v in validation["per_kind"].items()},
        "stage1_test": round(test["score"], 4),
        "stage1_test_per_kind": {k: round(v, 4) for k, v in test_per_kind.items()},
        "settings": validation["settings"],
        "train_seconds": scores.get("train_seconds"),
        "evaluation_seconds": round(time.time() - started),
        "commands": [
            f"./run.sh evaluate --model {model} {' '.join(flags)}",
            f"./run.sh predict --model {model} --out {csv} {' '.join(flags)}",
            f"./run.sh score {csv}",
        ],
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| step | validation | val. fluo / bright / histo | stage1_test | test fluo / histo |"
        " training |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        vk = row["validation_per_kind"]
        tk = row["stage1_test_per_kind"]
        lines.append(
            f"| {row['step']} | {row['validation']:.4f} | "
            + " / ".join(f"{vk[k]:.3f}" if k in vk else "-" for k in KINDS)
            + f" | {row['stage1_test']:.4f} | "
            + " / ".join(f"{tk[k]:.3f}" if k in tk else "-" for k in ("fluorescence", "histology"))
            + f" | {round((row['train_seconds'] or 0) / 60)} min |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update-readme", action="store_true")
    args = parser.parse_args()
    kinds = kinds_of_images(ROOT / "input" / "stage1_test")
    rows = []
    for label, model, train_args, flags in ROWS:
        rows.append(run_row(label, model, train_args, flags, kinds))
        print(json.dumps(rows[-1]), flush=True)
    markdown = table(rows)
    publish(
        ROOT / "bench" / "results" / "ablation.json",
        rows,
        markdown,
        "ablation" if args.update_readme else None,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
