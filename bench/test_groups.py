"""A submission's stage1_test score by image group (size and kind), beside stage1_train.

    .venv/bin/python bench/test_groups.py [SUBMISSION.csv ...] [--target 0.5]
        [--update-readme]

stage1_test mixes image types, and most of them come in sets of one size (the 512x680
H&E slides, the 520x348 crowded fluorescence, ...). For each group of test images of one
size and kind (`pipeline.data.dataset.image_kind`), and each submission (default
``submissions/default.csv``), it prints

- the number of test images, and of stage1_train images of the same size and kind,
- the group's mean score (the competition metric, as ``./run.sh score`` computes it),
- the true and predicted nuclei, the share of true nuclei matched at IoU > 0.5, and the
  median area of a matched prediction over its label's (`calibration.size_figures`),

then, for ``--target``: the mean score every image outside the best-scored large group
(the 256x256 fluorescence) would need for the whole set to reach it. It only reads
submissions and ``input/`` (``stage1_test``, ``stage1_train``, ``stage1_solution.csv``);
nothing here feeds back into a model. Writes ``bench/results/test-groups.{json,md}`` (and
the table in docs/experiments.md with ``--update-readme``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_commands import publish, shown  # noqa: E402
from calibration import size_figures  # noqa: E402

SUBMISSION = ROOT / "submissions" / "default.csv"  # what ./run.sh writes


def group_of(image: np.ndarray) -> str:
    """``"HxW kind"``, e.g. ``"256x256 fluorescence"``."""
    from pipeline.data.dataset import image_kind

    return f"{image.shape[0]}x{image.shape[1]} {image_kind(image)}"


def groups_of(images_dir: Path) -> dict[str, str]:
    """Each image's group, by image id."""
    from pipeline.data.dataset import iter_images

    return {sample.image_id: group_of(sample.image) for sample in iter_images(images_dir)}


def nuclei(labels: np.ndarray) -> int:
    """How many instances a label image holds."""
    return len(np.unique(labels[labels > 0]))


def measure(submission: Path, test_groups: dict[str, str], train_counts: Counter) -> list[dict]:
    """One row per test group, largest first, for one submission."""
    from pipeline.evaluation.metric import score_image
    from pipeline.evaluation.score import labelled_pairs

    pairs_by_group: dict[str, dict] = defaultdict(dict)
    scores: dict[str, list[float]] = defaultdict(list)
    solution = ROOT / "input" / "stage1_solution.csv"
    for image_id, (true, pred) in labelled_pairs(submission, solution):
        group = test_groups[image_id]
        pairs_by_group[group][image_id] = (true, pred)
        scores[group].append(score_image(true, pred).score)
    rows = []
    for group, pairs in sorted(pairs_by_group.items(), key=lambda item: (-len(item[1]), item[0])):
        n_true = sum(nuclei(true) for true, _ in pairs.values())
        n_pred = sum(nuclei(pred) for _, pred in pairs.values())
        figures = size_figures(pairs)
        rows.append(
            {
                "submission": shown(submission),
                "group": group,
                "test_images": len(pairs),
                "train_images": train_counts.get(group, 0),
                "score": round(float(np.mean(scores[group])), 4),
                "true_nuclei": n_true,
                "predicted_nuclei": n_pred,
                "matched_share": round(figures["matched_nuclei"] / max(n_true, 1), 3),
                "matched_area_ratio": figures["matched_area_ratio"],
            }
        )
    return rows


def needed_elsewhere(rows: list[dict], target: float) -> dict:
    """The mean score the images outside the first (largest) group would need for ``target``."""
    best, rest = rows[0], rows[1:]
    total = sum(row["test_images"] for row in rows)
    others = total - best["test_images"]
    now = sum(row["score"] * row["test_images"] for row in rest) / max(others, 1)
    needed = (target * total - best["score"] * best["test_images"]) / max(others, 1)
    return {
        "submission": best["submission"],
        "kept_group": best["group"],
        "other_images": others,
        "other_score_now": round(now, 4),
        "other_score_needed": round(needed, 4),
        "target": target,
    }


def table(rows: list[dict], needs: list[dict]) -> str:
    lines = [
        "| submission | test group (size, kind) | test images | train images | score | "
        "nuclei, true / predicted | true nuclei matched (IoU > 0.5) | matched area, "
        "predicted / true |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| `{row['submission']}` | {row['group']} | {row['test_images']} | "
            f"{row['train_images']} | {row['score']:.3f} | {row['true_nuclei']} / "
            f"{row['predicted_nuclei']} | {row['matched_share']:.2f} | "
            f"{row['matched_area_ratio']:.2f} |"
        )
    for need in needs:
        lines.append("")
        lines.append(
            f"For `{need['submission']}` to reach {need['target']:.2f} with its "
            f"{need['kept_group']} images as they are, the other {need['other_images']} "
            f"images would need a mean of {need['other_score_needed']:.3f}; they score "
            f"{need['other_score_now']:.3f}."
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("submissions", nargs="*", type=Path, default=[SUBMISSION])
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--update-readme", action="store_true")
    args = parser.parse_args()
    missing = [str(path) for path in args.submissions if not path.is_file()]
    if missing:
        parser.error(f"no such submission: {', '.join(missing)}")
    test_groups = groups_of(ROOT / "input" / "stage1_test")
    train_counts = Counter(groups_of(ROOT / "input" / "stage1_train").values())
    rows, needs = [], []
    for submission in args.submissions:
        submission_rows = measure(submission, test_groups, train_counts)
        for row in submission_rows:
            print(json.dumps(row), flush=True)
        rows += submission_rows
        needs.append(needed_elsewhere(submission_rows, args.target))
    publish(
        ROOT / "bench" / "results" / "test-groups.json",
        {"groups": rows, "needed": needs},
        table(rows, needs),
        "test-groups" if args.update_readme else None,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
