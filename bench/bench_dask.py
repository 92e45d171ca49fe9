"""Prediction over Dask workers: images/s, memory per worker and scaling, 1,000 images.

    .venv/bin/python bench/bench_dask.py [--images 1000] [--workers 0 1 2]
        [--model models/default] [--folder bench/dask-synthetic] [--no-tta]

Writes ``--images`` synthetic images in the stage-2 size mix (`bench_stage2.write_images`:
256x256 up to 1040x1388 and a few of 2048x2048, Kaggle layout, seeded; made once, kept in
``--folder``, which git ignores), then predicts them with ``./run.sh predict``: in one
process (``--workers 0``) and with ``--dask local:N`` for each other N of ``--workers``.
For each run it reports the wall time (the cluster's start included), images/s, the peak
resident memory of the ``predict`` process (the client) and of each worker process, the
client's CPU seconds, and the speed-up and scaling efficiency against one worker. Each run's CSV is
compared with the first run's (they must be identical). The model's tuned settings are
used (test-time augmentation included, unless ``--no-tta``).

Writes ``bench/results/dask-cpu.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_commands import publish, shown  # noqa: E402
from bench_stage2 import write_images  # noqa: E402


def _tree(process) -> list:
    """The process and all its descendants that are still alive."""
    import psutil

    try:
        return [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _is_worker(process) -> bool:
    """A Dask worker process (not the nanny that watches it, nor the resource tracker)."""
    try:
        command = " ".join(process.cmdline())
    except Exception:  # noqa: BLE001 - a process that just ended is no worker
        return False
    return "multiprocessing" in command and "resource_tracker" not in command


def watch(command: list[str]) -> dict:
    """Run ``command``; its wall time, the client's peak memory and CPU seconds, and the
    peak memory of each worker process it started."""
    import psutil

    started = time.perf_counter()
    process = psutil.Popen(command, cwd=ROOT, stderr=subprocess.DEVNULL)
    client_peak, client_cpu, worker_peaks = 0, 0.0, {}
    while process.poll() is None:
        for member in _tree(process):
            try:
                rss = member.memory_info().rss
                if member.pid == process.pid:
                    client_peak = max(client_peak, rss)
                    client_cpu = sum(member.cpu_times()[:2])
                elif _is_worker(member):
                    worker_peaks[member.pid] = max(worker_peaks.get(member.pid, 0), rss)
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.5)
    if process.returncode != 0:
        raise SystemExit(f"failed ({process.returncode}): {' '.join(command)}")
    gib = 1024**3
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "client_peak_gib": round(client_peak / gib, 2),
        "client_cpu_s": round(client_cpu, 1),
        "worker_peak_gib": [round(peak / gib, 2) for peak in sorted(worker_peaks.values())],
    }


def scaling(rows: list[dict]) -> list[dict]:
    """Each row with its speed-up over the one-worker run and its scaling efficiency
    (speed-up / workers); the one-process row has neither.

    >>> rows = scaling([{"workers": 0, "images_per_s": 2.0}, {"workers": 1, "images_per_s": 1.0},
    ...                 {"workers": 2, "images_per_s": 1.5}])
    >>> [(r.get("speed_up"), r.get("efficiency")) for r in rows]
    [(None, None), (1.0, 1.0), (1.5, 0.75)]
    """
    one = next((r["images_per_s"] for r in rows if r["workers"] == 1), None)
    out = []
    for row in rows:
        if row["workers"] and one:
            speed_up = round(row["images_per_s"] / one, 2)
            row = {**row, "speed_up": speed_up, "efficiency": round(speed_up / row["workers"], 2)}
        out.append(row)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[0, 1, 2], help="0: one process, no Dask"
    )
    parser.add_argument("--model", default="models/default")
    parser.add_argument("--folder", type=Path, default=ROOT / "bench" / "dask-synthetic")
    parser.add_argument(
        "--no-tta", action="store_true", help="predict without test-time augmentation"
    )
    args = parser.parse_args()
    write_images(args.folder, args.images)
    out_dir = ROOT / "submissions" / "bench"
    base = [str(ROOT / "run.sh"), "predict", "--model", args.model, "--images",
            str(args.folder), "--no-check", "--force"]  # fmt: skip
    base += ["--no-tta"] if args.no_tta else []
    rows, reference = [], None
    for workers in args.workers:
        out = out_dir / f"dask-synthetic-{workers}.csv"
        command = [*base, "--out", str(out)] + (["--dask", f"local:{workers}"] if workers else [])
        print("$", " ".join(command[1:]), flush=True)
        row = {"workers": workers, **watch(command)}
        row["images_per_s"] = round(args.images / row["seconds"], 2)
        reference = reference or out.read_bytes()
        row["csv_identical"] = out.read_bytes() == reference
        rows.append(row)
    rows = scaling(rows)
    lines = [
        f"{args.images} synthetic images ({shown(args.folder)}), `{' '.join(base[1:])}`"
        f" and `--dask local:N`; this machine: {os.cpu_count()} CPU cores",
        "",
        "| run | seconds | images/s | speed-up | efficiency | client peak | client CPU s"
        " | peak per worker | CSV identical |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        run = f"--dask local:{r['workers']}" if r["workers"] else "one process"
        peaks = ", ".join(f"{p} GiB" for p in r["worker_peak_gib"]) or "-"
        lines.append(
            f"| {run} | {r['seconds']} | {r['images_per_s']} | {r.get('speed_up', '-')} | "
            f"{r.get('efficiency', '-')} | {r['client_peak_gib']} GiB | {r['client_cpu_s']} | "
            f"{peaks} | {'yes' if r['csv_identical'] else 'NO'} |"
        )
    result = {"model": args.model, "images": args.images, "tta": not args.no_tta, "rows": rows}
    publish(ROOT / "bench" / "results" / "dask-cpu.json", result, "\n".join(lines))
    return 0 if all(r["csv_identical"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
