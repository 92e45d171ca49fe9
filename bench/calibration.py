"""How a model's instances compare in size with the labels, on validation and stage1_test.

    .venv/bin/python bench/calibration.py [--model models/default ...] [--grow 0 1 2]
        [--update-readme]

For each model: its tuned post-processing (without TTA, to save time) on its validation
split of stage1_train and on stage1_test, and per set

- the competition score,
- the median of (predicted foreground area / true foreground area) over images,
- for every true nucleus matched at IoU > 0.5, the median of (predicted area / true area)
  and of the IoU,
- the score with every predicted instance grown by ``g`` pixels (``expand_labels``: into
  background only, never into another instance) for each ``--grow`` value.

It reads ``stage1_test`` and ``stage1_solution.csv`` from ``input/`` and only measures:
nothing here feeds back into a model or its thresholds (growth is not a pipeline
setting). Prints a table and writes ``bench/results/calibration.{json,md}`` (and the
table in docs/experiments.md with ``--update-readme``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_commands import publish  # noqa: E402


def size_figures(pairs: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Median foreground-area ratio, matched-pair area ratio and matched IoU."""
    from pipeline.evaluation.metric import iou_matrix

    image_ratios, pair_ratios, ious = [], [], []
    for true, pred in pairs.values():
        image_ratios.append((pred > 0).sum() / max(int((true > 0).sum()), 1))
        matrix = iou_matrix(true, pred)
        if not matrix.size:
            continue
        true_areas = np.bincount(true.ravel())[1:]
        pred_areas = np.bincount(pred.ravel())[1:]
        best = matrix.argmax(axis=1)
        for index, column in enumerate(best):
            if matrix[index, column] > 0.5:
                pair_ratios.append(pred_areas[column] / true_areas[index])
                ious.append(matrix[index, column])
    return {
        "foreground_area_ratio": round(float(np.median(image_ratios)), 3),
        "matched_area_ratio": round(float(np.median(pair_ratios)), 3),
        "matched_iou": round(float(np.median(ious)), 3),
        "matched_nuclei": len(ious),
    }


def measure(model_dir: Path, grow: list[int]) -> list[dict]:
    from skimage.segmentation import expand_labels

    from pipeline.data.dataset import labels_from_rle_csv, load_samples
    from pipeline.evaluation.metric import score_images
    from pipeline.evaluation.validation import validation_samples
    from pipeline.inference.model import NucleusModel

    settings = {"engine": "keras", "precision": "float32", "tta": False}
    model = NucleusModel.load(model_dir, settings, device="cpu")
    truth = labels_from_rle_csv(ROOT / "input" / "stage1_solution.csv")
    sets = {
        "validation": validation_samples(model_dir),
        "stage1_test": load_samples(ROOT / "input" / "stage1_test", with_labels=False),
    }
    rows = []
    for name, samples in sets.items():
        pairs = {}
        for start in range(0, len(samples), 8):
            chunk = samples[start : start + 8]
            predicted = model.predict_labels([s.image for s in chunk])
            for sample, labels in zip(chunk, predicted, strict=True):
                true = sample.labels if name == "validation" else truth[sample.image_id]
                pairs[sample.image_id] = (true, labels)
        row = {"model": str(model_dir), "set": name, "images": len(pairs)}
        row |= size_figures(pairs)
        for pixels in grow:
            grown = {i: (t, expand_labels(p, pixels)) for i, (t, p) in pairs.items()}
            row[f"score_grow_{pixels}"] = round(float(score_images(grown).score), 4)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def table(rows: list[dict], grow: list[int]) -> str:
    lines = [
        "| model | set | foreground area, predicted / true | matched nucleus area, "
        "predicted / true | matched IoU | "
        + " | ".join(f"score, grown {g} px" for g in grow)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(grow),
    ]
    for row in rows:
        lines.append(
            f"| `{row['model']}` | {row['set']} | {row['foreground_area_ratio']:.2f} | "
            f"{row['matched_area_ratio']:.2f} | {row['matched_iou']:.3f} | "
            + " | ".join(f"{row[f'score_grow_{g}']:.4f}" for g in grow)
            + " |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", type=Path, default=[Path("models/default")])
    parser.add_argument("--grow", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--update-readme", action="store_true")
    args = parser.parse_args()
    rows = [row for model_dir in args.model for row in measure(model_dir, args.grow)]
    markdown = table(rows, args.grow)
    publish(
        ROOT / "bench" / "results" / "calibration.json",
        rows,
        markdown,
        "calibration" if args.update_readme else None,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
