"""Peak memory and time of predicting one large image whole and in overlapping tiles.

    .venv/bin/python bench/bench_tiling.py [--model models/default] [--side 2048]

A synthetic fluorescence image of ``side`` x ``side`` pixels (``pipeline.data.synthetic``; no
competition data needed) is predicted by the ``predict`` stage's code, once with
``tile_size 0`` (the whole image at once) and once per tile size given, each in its own
process so that its peak memory (max RSS) is its own. Prints a table and writes the
numbers to ``bench/results/tiling-cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_commands import write_results  # noqa: E402


def phase(model_dir: Path, side: int, tile_size: int) -> dict:
    """Predict the synthetic image once (after loading the model); time and peak memory."""
    import numpy as np

    from pipeline.data.synthetic import make_sample
    from pipeline.inference.model import NucleusModel

    settings = {"engine": "keras", "precision": "float32", "tta": False, "tile_size": tile_size}
    model = NucleusModel.load(model_dir, settings, device="cpu")
    image, _ = make_sample(np.random.default_rng(0), side, side, "fluorescence")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    prob = model.predict_probabilities([image])[0]
    seconds = time.perf_counter() - started
    return {
        "side": side,
        "tile_size": tile_size,
        "seconds": round(seconds, 1),
        "peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "peak_mib_before_prediction": round(before),
        "foreground_fraction": round(float((prob[..., 0] > 0.5).mean()), 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--side", type=int, default=2048)
    parser.add_argument("--tiles", type=int, nargs="+", default=[1024, 512])
    parser.add_argument("--phase", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase is not None:
        print(json.dumps(phase(args.model, args.side, args.phase)))
        return 0
    rows = []
    for tile_size in [0, *args.tiles]:
        command = [sys.executable, __file__, "--model", str(args.model), "--side", str(args.side)]
        done = subprocess.run(
            [*command, "--phase", str(tile_size)], capture_output=True, text=True, check=True
        )
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n| {args.side}x{args.side} image | seconds | peak memory | foreground fraction |")
    print("|---|---|---|---|")
    for row in rows:
        how = "whole" if row["tile_size"] == 0 else f"tiles of {row['tile_size']}"
        print(
            f"| {how} | {row['seconds']} | {row['peak_mib'] / 1024:.1f} GiB | "
            f"{row['foreground_fraction']} |"
        )
    write_results(ROOT / "bench" / "results" / "tiling-cpu.json", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
