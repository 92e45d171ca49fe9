"""``predict --diameter`` on the stage1_test groups of large nuclei, scored with and without.

    .venv/bin/python bench/bench_diameter.py

For each group (size and kind, as ``bench/test_groups.py`` has them) it reads the diameter
a user would read off one image: the median equivalent diameter of the labels of the
group's first image by id, from ``input/stage1_solution.csv``. It predicts the group's
images with ``./run.sh predict --model models/default --diameter D`` and without (a
Kaggle-layout folder of links under the git-ignored ``submissions/diameter/``), scores
both with ``./run.sh score`` against the solution rows of those images, and prints the
scores and the paired per-image difference (mean ± standard error). Writes
``bench/results/diameter-cpu.{json,md}``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_commands import last_json, run_command, write_results  # noqa: E402
from test_groups import groups_of  # noqa: E402

RUN = str(ROOT / "run.sh")
MODEL = "models/default"
GROUPS = ("512x640 fluorescence", "512x680 histology")
WORK = ROOT / "submissions" / "diameter"  # git-ignored


def read_diameter(solution: pd.DataFrame, image_id: str) -> float:
    """The median equivalent diameter of the nuclei of ``image_id`` in the solution."""
    from pipeline.core.nucleus_size import median_nucleus_diameter
    from pipeline.data.rle import decode_labels

    rows = solution[solution.ImageId == image_id]
    shape = (int(rows.Height.iloc[0]), int(rows.Width.iloc[0]))
    return median_nucleus_diameter([decode_labels(list(rows.EncodedPixels), shape)])[0]


def group_folder(ids: list[str], name: str) -> Path:
    """A Kaggle-layout folder of links to the test images ``ids``."""
    folder = WORK / name / "images"
    for image_id in ids:
        link = folder / image_id
        if not link.exists():
            folder.mkdir(parents=True, exist_ok=True)
            link.symlink_to(ROOT / "input" / "stage1_test" / image_id)
    return folder


def scores(images: Path, solution: Path, name: str, *flags: str) -> dict[str, float]:
    """Per-image scores of ``./run.sh predict`` of ``images`` with ``flags``."""
    csv = WORK / f"{name}.csv"
    run_command([RUN, "predict", "--model", MODEL, "--images", str(images), "--out", str(csv)]
                + ["--force", *flags])  # fmt: skip
    command = [RUN, "score", str(csv), "--solution", str(solution), "--json", "--no-leaderboard"]
    return last_json(run_command(command))["per_image"]


def measure_group(group: str, ids: list[str], solution: pd.DataFrame, trained: float) -> dict:
    """The row of one group."""
    name = group.replace(" ", "-")
    images = group_folder(ids, name)
    solution_csv = WORK / f"{name}-solution.csv"
    columns = ["ImageId", "EncodedPixels", "Height", "Width"]
    solution[solution.ImageId.isin(ids)][columns].to_csv(solution_csv, index=False)
    diameter = round(read_diameter(solution, ids[0]), 1)
    without = scores(images, solution_csv, f"{name}-without")
    with_ = scores(images, solution_csv, f"{name}-with", "--diameter", str(diameter))
    difference = np.array([with_[i] - without[i] for i in ids])
    return {
        "group": group,
        "images": len(ids),
        "diameter_from": ids[0],
        "diameter": diameter,
        "training_median": trained,
        "score_without": round(float(np.mean([without[i] for i in ids])), 4),
        "score_with": round(float(np.mean([with_[i] for i in ids])), 4),
        "difference_mean": round(float(difference.mean()), 4),
        "difference_se": round(float(difference.std(ddof=1) / np.sqrt(len(ids))), 4),
    }


def table(rows: list[dict]) -> str:
    """The markdown table of the rows."""
    frame = pd.DataFrame(
        {
            "test group": [row["group"] for row in rows],
            "images": [row["images"] for row in rows],
            "diameter read (px)": [row["diameter"] for row in rows],
            "training median (px)": [row["training_median"] for row in rows],
            "score without": [f"{row['score_without']:.3f}" for row in rows],
            "score with --diameter": [f"{row['score_with']:.3f}" for row in rows],
            "paired difference": [
                f"{row['difference_mean']:+.3f} ± {row['difference_se']:.3f}" for row in rows
            ],
        }
    )
    lines = ["| " + " | ".join(frame.columns) + " |", "|---" * len(frame.columns) + "|"]
    lines += ["| " + " | ".join(str(v) for v in values) + " |" for values in frame.to_numpy()]
    return "\n".join(lines)  # DataFrame.to_markdown needs tabulate, not installed


def main() -> int:
    from pipeline.core.model_store import load_config
    from pipeline.core.scale_policy import training_median_diameter

    trained, _ = training_median_diameter(ROOT / MODEL, load_config(ROOT / MODEL))
    solution = pd.read_csv(ROOT / "input" / "stage1_solution.csv")
    groups = groups_of(ROOT / "input" / "stage1_test")
    rows = []
    for group in GROUPS:
        ids = sorted(image_id for image_id, g in groups.items() if g == group)
        rows.append(measure_group(group, ids, solution, trained))
    markdown = table(rows)
    print(markdown)
    write_results(ROOT / "bench" / "results" / "diameter-cpu.json", rows, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
