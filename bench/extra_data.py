"""Extra annotated data: the ablation (none / + H&E sets / + lpc / + all) and fine-tuning.

    .venv/bin/python bench/extra_data.py [--train] [--row NAME ...] [--finetune]
        [--update-readme]

**Ablation.** Each row is a set of ``./run.sh train`` flags on top of the default preset:
one recipe (grey input space, random rescaling 0.6-1.8x, patience 10, at most 50 epochs or
40 minutes: the default preset's since the ``none`` row was shipped as models/default, the
flags spelled out all the same) with no extra set, the two H&E sets (cpm15, monuseg), lpc's
fluorescence tiles, or all three (``--extra``, `pipeline.data.extra`); and three variants
of the last: trained longer (80 epochs, 70 minutes), with every training image drawn alike
(``--source-weighting size``: lpc's 621 training tiles then make over half of the draws,
stage1_train's 507 images 43%, against about 56% with the square root), the same with
every image scaled so that its median nucleus is 20 pixels across (``--resize-policy
nucleus``: the sets' nuclei are 14 to 35 pixels across), and in the first default's RGB
input space. Each row is
trained twice, once per validation split (``--split random``: stage1_train images of
every kind on both sides; ``--split conditions``: whole acquisition conditions of
stage1_train held out, and one of the two H&E sets held out whole). For every model, with
the project's own commands:

- ``./run.sh evaluate --model DIR --json``: its validation score (tuned settings) on
  stage1_train images, which is what chooses;
- the extra sets' own held-out scores, as training measured them (``scores.json``'s
  ``extra_validation``), reported beside it, never chosen on;
- ``./run.sh predict --model DIR`` on stage1_test then ``./run.sh score --json
  --no-leaderboard``: the leaderboard score, looked at and never chosen on, overall and per
  test group (size and kind, as ``bench/test_groups.py`` groups them).

Rows are compared with the ``none`` row on the same split by paired per-image differences
(mean ± standard error), or, where that row is not trained, with the first default (the
random split: the same 89 validation images, seed 42). The first default, shipped until
the ``none`` row replaced it, is the base of the choosing rule (a random split no more than
0.01 below it); its folder is taken from git into ``models/first-default``.
Models live in ``models/extra/<row>-<split>``; predictions and scores are kept in
``submissions/extra/`` and reused while the model and the commands are unchanged.

**Fine-tuning.** With ``--finetune``: MoNuSeg's 14 test-split images (the set the shipped
default never saw), 5 of them (seeded) to fine-tune on, the other 9 to score. The shipped
default is scored on the 9; then ``./run.sh train --init models/default --images FIVE
...`` fine-tunes it (at most 10 minutes), and the result is scored on the same 9, paired
per image. The images are linked from ``input/external/monuseg`` into
``bench/finetune-monuseg/`` (never committed).

Writes ``bench/results/extra-data.{json,md}`` (and the tables in docs/experiments.md with
``--update-readme``).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_commands import (  # noqa: E402
    last_json,
    paired,
    paired_text,
    publish,
    run_command,
    update_readme,
)

RUN = str(ROOT / "run.sh")
MODELS = "models/extra"
SPLITS = ("random", "conditions")
RECIPE = ("--input-space", "grey", "--scale-min", "0.6", "--scale-max", "1.8")
RECIPE += ("--patience", "10", "--epochs", "50", "--max-minutes", "40")
HE = ("--extra", "cpm15", "--extra", "monuseg")
LPC = ("--extra", "lpc")
ROWS: dict[str, tuple[str, tuple[str, ...]]] = {
    "none": ("the recipe on stage1_train alone", RECIPE),
    "he": ("+ the H&E sets (cpm15, monuseg)", (*RECIPE, *HE)),
    "lpc": ("+ lpc's fluorescence tiles", (*RECIPE, *LPC)),
    "all": ("+ all three sets", (*RECIPE, *HE, *LPC)),
    "all-long": (
        "+ all three sets, trained longer: at most 80 epochs or 70 minutes",
        (*RECIPE[:-4], "--epochs", "80", "--max-minutes", "70", *HE, *LPC),
    ),
    "all-size": (
        "+ all three sets, each training image drawn alike (--source-weighting size)",
        (*RECIPE, *HE, *LPC, "--source-weighting", "size"),
    ),
    "all-size-nucleus": (
        "+ all three sets drawn alike, every image scaled to a 20-pixel nucleus "
        "(--resize-policy nucleus)",
        (*RECIPE, *HE, *LPC, "--source-weighting", "size", "--resize-policy", "nucleus"),
    ),
    "all-rgb": (
        "+ all three sets, RGB input (the first default's input space)",
        ("--input-space", "rgb", *RECIPE[2:], *HE, *LPC),
    ),
}
#: MoNuSeg's 13 converted training images (../shared/external/README.md); the other 14 are
#: its test split.
MONUSEG_TRAINING = {
    f"monuseg_TCGA-{name}"
    for name in (
        "21-5784-01Z-00-DX1", "21-5786-01Z-00-DX1", "50-5931-01Z-00-DX1", "A7-A13E-01Z-00-DX1",
        "AR-A1AK-01Z-00-DX1", "AR-A1AS-01Z-00-DX1", "B0-5698-01Z-00-DX1", "B0-5710-01Z-00-DX1",
        "B0-5711-01Z-00-DX1", "CH-5767-01Z-00-DX1", "E2-A1B5-01Z-00-DX1", "G9-6362-01Z-00-DX1",
        "NH-A8F7-01A-01-TS1",
    )
}  # fmt: skip
FINETUNE_FLAGS = ("--epochs", "30", "--steps-per-epoch", "8", "--learning-rate", "3e-4")
FINETUNE_FLAGS += ("--max-minutes", "10", "--val-fraction", "0.2", "--eval-every", "3")


#: The first default model (shipped until the grey recipe replaced it in d30bf4c), the base
#: of the choosing rule ("the random split must not drop by more than 0.01"): its files as
#: git holds them at this revision, written once into FIRST_DEFAULT.
FIRST_DEFAULT_REVISION = "d30bf4c^"
FIRST_DEFAULT = "models/first-default"


def first_default_model() -> str:
    """``models/first-default``: the first default's folder, taken from git once."""
    folder = ROOT / FIRST_DEFAULT
    if not (folder / "complete.json").is_file():
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", FIRST_DEFAULT_REVISION, "models/default"],
            check=True,
            capture_output=True,
        ).stdout
        folder.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    data = tar.extractfile(member).read()
                    (folder / Path(member.name).name).write_bytes(data)
        print(f"wrote {FIRST_DEFAULT} from git ({FIRST_DEFAULT_REVISION})", flush=True)
    return FIRST_DEFAULT


def _kept(name: str, model: str, commands: list[list[str]]) -> tuple[Path, dict | None]:
    shown = [" ".join(["./run.sh", *command[1:]]) for command in commands]
    files = {f: (ROOT / model / f).read_text() for f in ("complete.json", "thresholds.json")}
    kept = ROOT / "submissions" / "extra" / f"{name}.json"
    if kept.is_file():
        result = json.loads(kept.read_text())
        if result.get("model_files") == files and result.get("commands") == shown:
            print(f"reusing {kept.relative_to(ROOT)}", flush=True)
            return kept, result
    return kept, {"model_files": files, "commands": shown}


def score_model(model: str, name: str) -> dict:
    """Validation, extra held-out and stage1_test scores of one model folder."""
    csv = f"submissions/extra/{name}.csv"
    evaluate = [RUN, "evaluate", "--model", model, "--json"]
    predict = [RUN, "predict", "--model", model, "--out", csv, "--force"]
    score = [RUN, "score", csv, "--json", "--no-leaderboard"]
    kept, result = _kept(name, model, [evaluate, predict, score])
    if "stage1_test" in result:
        return result
    validation = last_json(run_command(evaluate))
    run_command(predict)
    test = last_json(run_command(score))
    scores = json.loads((ROOT / model / "scores.json").read_text())
    result.update(
        {
            "model": model,
            "validation": validation["score"],
            "validation_per_image": validation["per_image"],
            "extra_validation": {
                set_name: {
                    "score": item["score"],
                    "images": item["images"],
                    "held_out_whole": item["held_out_whole"],
                }
                for set_name, item in scores.get("extra_validation", {}).items()
            },  # fmt: skip
            "stage1_test": test["score"],
            "stage1_test_per_image": test["per_image"],
            "epochs_run": scores.get("epochs_run"),
            "best_epoch": scores.get("best_epoch"),
            "train_minutes": round(scores.get("train_seconds", 0) / 60, 1),
        }
    )
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text(json.dumps(result, indent=1) + "\n")
    return result


def _extra_text(result: dict) -> str:
    items = result.get("extra_validation", {})
    return (
        ", ".join(
            f"{name} {item['score']:.3f}{' (whole set)' if item['held_out_whole'] else ''}"
            for name, item in sorted(items.items())
        )
        or "-"
    )


def test_groups() -> dict[str, str]:
    """Each stage1_test image's group (size and kind), as bench/test_groups.py has them."""
    from test_groups import groups_of

    return groups_of(ROOT / "input" / "stage1_test")


def group_scores(result: dict, groups: dict[str, str]) -> dict[str, float]:
    by_group: dict[str, list[float]] = defaultdict(list)
    for image_id, value in result["stage1_test_per_image"].items():
        by_group[groups[image_id]].append(value)
    return {group: sum(v) / len(v) for group, v in by_group.items()}


def ablation_table(results: dict[str, dict[str, dict | None]]) -> str:
    lines = [
        "| row | split | validation (stage1_train) | paired vs base | extra sets' held-out "
        "images | stage1_test | paired vs base | epochs (best) | minutes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row, by_split in results.items():
        for split, result in by_split.items():
            # The row without extra sets on the same split, else the first default (its
            # random split holds the same 89 stage1_train validation images: seed 42).
            base = results.get("none", {}).get(split) or results["first-default"].get(split)
            what = ROWS[row][0] if row in ROWS else "the first default (RGB, 40 epochs)"
            if result is None:
                lines.append(f"| {row}: {what} | {split} | not trained | - | - | - | - | - | - |")
                continue
            validation = paired_text(paired(result, base, "validation_per_image"))
            test = paired_text(paired(result, base, "stage1_test_per_image"))
            lines.append(
                f"| {row}: {what} | {split} | {result['validation']:.4f} | {validation} | "
                f"{_extra_text(result)} | {result['stage1_test']:.4f} | {test} | "
                f"{result.get('epochs_run', '-')} ({result.get('best_epoch', '-')}) | "
                f"{result.get('train_minutes', '-')} |"
            )
    return "\n".join(lines)


def groups_table(results: dict[str, dict[str, dict | None]], groups: dict[str, str]) -> str:
    sizes = defaultdict(int)
    for group in groups.values():
        sizes[group] += 1
    order = sorted(sizes, key=lambda g: (-sizes[g], g))
    lines = [
        "| row | split | " + " | ".join(f"{g} ({sizes[g]})" for g in order) + " |",
        "|---|---|" + "---|" * len(order),
    ]
    for row, by_split in results.items():
        for split, result in by_split.items():
            if result is None:
                continue
            scores = group_scores(result, groups)
            lines.append(
                f"| {row} | {split} | " + " | ".join(f"{scores[g]:.3f}" for g in order) + " |"
            )
    return "\n".join(lines)


def run_ablation(rows: list[str], train: bool) -> dict[str, dict[str, dict | None]]:
    results: dict[str, dict[str, dict | None]] = {
        "first-default": {"random": score_model(first_default_model(), "first-default-random")}
    }
    for row in rows:
        results[row] = {}
        for split in SPLITS:
            model = f"{MODELS}/{row}-{split}"
            if not (ROOT / model / "complete.json").is_file():
                if not train:
                    results[row][split] = None
                    continue
                run_command([RUN, "train", "--out", model, "--split", split, *ROWS[row][1]])
            results[row][split] = score_model(model, f"{row}-{split}")
    return results


# --------------------------------------------------------------------------- fine-tuning


def _link_samples(ids: list[str], folder: Path) -> None:
    source = ROOT / "input" / "external" / "monuseg"
    folder.mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        link = folder / image_id
        if not link.exists():
            link.symlink_to(source / image_id, target_is_directory=True)


def _solution_csv(ids: list[str], path: Path) -> None:
    """The labels of ``ids`` as a solution CSV (``ImageId,EncodedPixels,Height,Width``)."""
    from pipeline.data.dataset import load_samples
    from pipeline.data.rle import encode_labels

    lines = ["ImageId,EncodedPixels,Height,Width"]
    for sample in load_samples(ROOT / "input" / "external" / "monuseg", ids=ids):
        height, width = sample.shape
        lines += [
            f"{sample.image_id},{rle},{height},{width}" for rle in encode_labels(sample.labels)
        ]
    path.write_text("\n".join(lines) + "\n")


def _score_on(model: str, images: Path, solution: Path, name: str) -> dict:
    csv = f"submissions/extra/{name}.csv"
    run_command(
        [RUN, "predict", "--model", model, "--images", str(images), "--out", csv, "--force"]
    )
    result = last_json(
        run_command([RUN, "score", csv, "--solution", str(solution), "--json", "--no-leaderboard"])
    )
    return {"score": result["score"], "per_image": result["per_image"]}


def run_finetune() -> dict:
    import numpy as np

    source = ROOT / "input" / "external" / "monuseg"
    if not source.is_dir():
        raise SystemExit(f"{source} missing: ./run.sh download --from ../shared/external")
    test_split = sorted(
        p.name for p in source.iterdir() if p.is_dir() and p.name not in MONUSEG_TRAINING
    )
    order = np.random.default_rng(0).permutation(len(test_split))
    tune_ids = sorted(test_split[i] for i in order[:5])
    score_ids = sorted(test_split[i] for i in order[5:])
    work = Path("bench") / "finetune-monuseg"  # the commands run from the repository root
    _link_samples(tune_ids, ROOT / work / "train")
    _link_samples(score_ids, ROOT / work / "score")
    solution = work / "score_solution.csv"
    _solution_csv(score_ids, ROOT / solution)
    before = _score_on("models/default", work / "score", solution, "finetune-before")
    model = f"{MODELS}/finetune-monuseg"
    command = [RUN, "train", "--init", "models/default", "--images", str(work / "train")]
    command += ["--out", model, *FINETUNE_FLAGS]
    if not (ROOT / model / "complete.json").is_file():
        run_command(command)
    after = _score_on(model, work / "score", solution, "finetune-after")
    scores = json.loads((ROOT / model / "scores.json").read_text())
    return {
        "test_split": test_split,
        "fine_tune_images": tune_ids,
        "scored_images": score_ids,
        "before": before,
        "after": after,
        "paired": paired({"p": after["per_image"]}, {"p": before["per_image"]}, "p"),
        "train_command": " ".join(["./run.sh", *command[1:]]),
        "train_minutes": round(scores.get("train_seconds", 0) / 60, 1),
        "epochs_run": scores.get("epochs_run"),
        "best_epoch": scores.get("best_epoch"),
    }


def finetune_table(result: dict) -> str:
    difference = paired_text(result["paired"])
    return "\n".join(
        [
            "| model | MoNuSeg, 9 held-out test-split images | paired vs before |",
            "|---|---|---|",
            f"| `models/default` (never saw MoNuSeg) | {result['before']['score']:.4f} | - |",
            f"| fine-tuned on 5 MoNuSeg images ({result['train_minutes']} min, "
            f"{result['epochs_run']} epochs, best {result['best_epoch']}) | "
            f"{result['after']['score']:.4f} | {difference} |",
            "",
            f"Fine-tuned with `{result['train_command']}` (4 of the 5 images train, 1 "
            "validates and tunes); scored with `./run.sh predict --images "
            "bench/finetune-monuseg/score` and `./run.sh score --solution "
            "bench/finetune-monuseg/score_solution.csv`.",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", action="store_true", help="train the missing models")
    parser.add_argument("--row", action="append", choices=sorted(ROWS), help="(repeatable)")
    parser.add_argument("--finetune", action="store_true", help="also the fine-tuning run")
    parser.add_argument("--update-readme", action="store_true")
    args = parser.parse_args()
    results = run_ablation(args.row or list(ROWS), args.train)
    groups = test_groups()
    data: dict = {"ablation": results, "groups": groups}
    markdown = ablation_table(results) + "\n\n" + groups_table(results, groups)
    published = ROOT / "bench" / "results" / "extra-data.json"
    if args.finetune:
        data["finetune"] = run_finetune()
    elif published.is_file() and "finetune" in json.loads(published.read_text()):
        data["finetune"] = json.loads(published.read_text())["finetune"]  # kept as measured
    if "finetune" in data:
        markdown += "\n\n" + finetune_table(data["finetune"])
    publish(published, data, markdown)
    if args.update_readme:
        update_readme(
            "extra-data", ablation_table(results) + "\n\n" + groups_table(results, groups)
        )
        if args.finetune:
            update_readme("finetune", finetune_table(data["finetune"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
