"""Stage-2-sized prediction: throughput and memory over 3,019 synthetic images.

    .venv/bin/python bench/bench_stage2.py [--images 3019] [--model models/default]
        [--folder bench/stage2-synthetic] [--no-tta]

Stage 2 of the competition had 3,019 test images of many sizes. This bench writes as many
synthetic images (`pipeline.data.synthetic.make_sample`, Kaggle layout, seeded) in a
stage-2 size mix, from 256x256 up to 1040x1388 and a few of 2048x2048, then runs
``./run.sh predict --resume`` on them and, while it runs, reads the run's progress
(``OUT.partial.json``) and the process's memory (``/proc/PID/status``). It reports the
images per second and the resident memory when 10%, 50% and 100% of the images are done:
prediction streams (bounded chunks, rows written as they come), so memory should stay
flat. Writes ``bench/results/stage2-cpu.json`` and ``.md``. The images are made once and
kept in ``--folder`` (git ignores it).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_commands import publish, shown  # noqa: E402

#: (height, width, share of the images): the size mix of the synthetic stage-2 set.
SIZE_MIX = (
    (256, 256, 0.40),
    (256, 320, 0.08),
    (360, 360, 0.08),
    (512, 640, 0.10),
    (520, 696, 0.15),
    (1024, 1024, 0.07),
    (1040, 1388, 0.10),
    (2048, 2048, 0.02),
)
MILESTONES = (0.1, 0.5, 1.0)


def write_images(folder: Path, count: int, seed: int = 2018) -> None:
    """``count`` synthetic images of the size mix, in Kaggle layout (once)."""
    from PIL import Image

    from pipeline.data.synthetic import make_sample
    from pipeline.fileio import atomic_path

    rng = np.random.default_rng(seed)
    shapes = rng.choice(len(SIZE_MIX), size=count, p=[share for *_, share in SIZE_MIX])
    # Drawn for every image up front: an image's kind does not depend on which exist.
    kinds = np.where(rng.random(count) < 0.2, "histology", "fluorescence")
    for index, (shape, kind) in enumerate(zip(shapes, kinds, strict=True)):
        image_id = f"stage2-synthetic-{index:05d}"
        path = folder / image_id / "images" / f"{image_id}.png"
        if path.is_file():
            continue
        height, width, _ = SIZE_MIX[shape]
        image, _labels = make_sample(np.random.default_rng([seed, index]), height, width, str(kind))
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:  # a killed run leaves no truncated image
            Image.fromarray(image).save(tmp, format="PNG")


def resident_gib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024**2
    return float("nan")


def images_done(progress: Path) -> int:
    import json

    try:
        return int(json.loads(progress.read_text())["images"])
    except (OSError, ValueError, KeyError):
        return 0


def watch(command: list[str], progress: Path, count: int) -> list[dict]:
    """Run ``command``; the time and memory when each milestone share of images is done."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.DEVNULL)
    rows: list[dict] = []
    peak = 0.0
    while process.poll() is None:
        peak = max(peak, resident_gib(process.pid))
        done = images_done(progress)
        for share in MILESTONES[len(rows) :]:
            if done >= share * count and share < 1.0:
                seconds = time.perf_counter() - started
                rows.append(_milestone(share, done, seconds, resident_gib(process.pid), peak))
        time.sleep(0.5)
    if process.returncode != 0:
        raise SystemExit(f"failed ({process.returncode}): {' '.join(command)}")
    rows.append(_milestone(1.0, count, time.perf_counter() - started, peak, peak))
    return rows


def _milestone(share: float, done: int, seconds: float, resident: float, peak: float) -> dict:
    return {
        "done": f"{share:.0%}",
        "images": done,
        "seconds": round(seconds, 1),
        "images_per_s": round(done / seconds, 2),
        "resident_gib": round(resident, 2),
        "peak_so_far_gib": round(peak, 2),
    }


def with_interval_rates(rows: list[dict]) -> list[dict]:
    """Each row with the images per second since the row before (the first: since the
    start, start-up included): whether the run slows down as it goes, which the running
    mean hides.

    >>> with_interval_rates([{"images": 10, "seconds": 10.0}, {"images": 30, "seconds": 20.0}])
    [{'images': 10, 'seconds': 10.0, 'interval_images_per_s': 1.0}, \
{'images': 30, 'seconds': 20.0, 'interval_images_per_s': 2.0}]
    """
    before = {"images": 0, "seconds": 0.0}
    out = []
    for row in rows:
        rate = (row["images"] - before["images"]) / (row["seconds"] - before["seconds"])
        out.append({**row, "interval_images_per_s": round(rate, 2)})
        before = row
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3019)
    parser.add_argument("--model", default="models/default")
    parser.add_argument("--folder", type=Path, default=ROOT / "bench" / "stage2-synthetic")
    parser.add_argument("--no-tta", action="store_true", help="predict without TTA")
    args = parser.parse_args()
    write_images(args.folder, args.images)
    out = ROOT / "submissions" / "bench" / "stage2-synthetic.csv"
    for stale in (
        out,
        out.with_name(out.name + ".partial"),
        out.with_name(out.name + ".partial.json"),
    ):
        stale.unlink(missing_ok=True)
    command = [str(ROOT / "run.sh"), "predict", "--model", args.model, "--images",
               str(args.folder), "--out", str(out), "--resume", "--no-check"]  # fmt: skip
    command += ["--no-tta"] if args.no_tta else []
    rows = with_interval_rates(
        watch(command, out.with_name(out.name + ".partial.json"), args.images)
    )
    lines = [
        f"{args.images} synthetic images ({shown(args.folder)}), `{' '.join(command[1:])}`",
        "",
        "| done | images | seconds | images/s so far | images/s since the row before"
        " | resident memory | peak so far |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['done']} | {r['images']} | {r['seconds']} | {r['images_per_s']} | "
        f"{r['interval_images_per_s']} | {r['resident_gib']} GiB | {r['peak_so_far_gib']} GiB |"
        for r in rows
    ]
    result = {"model": args.model, "images": args.images, "tta": not args.no_tta, "rows": rows}
    publish(ROOT / "bench" / "results" / "stage2-cpu.json", result, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
