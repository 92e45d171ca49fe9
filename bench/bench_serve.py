"""The web server under load: 20 concurrent requests of stage1_test images.

    .venv/bin/python bench/bench_serve.py [--requests 20] [--model models/default]

Starts ``./run.sh serve`` on a free local port, sends each image once on its own (the
reference count and the unloaded latency), then all of them at once from 20 threads, and
checks that every concurrent answer succeeds with the reference count. Reports the
latency (median and worst, from sending to the answer), the wall time of the burst and
the server's peak memory (its peak resident set, from /proc), and writes
``bench/results/serve-cpu.json`` and ``.md``. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_commands import publish, shown  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str, port: int) -> subprocess.Popen:
    """``./run.sh serve`` in the background, once it answers /api/health."""
    server = subprocess.Popen(
        [str(ROOT / "run.sh"), "serve", "--model", model, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("the server did not start within 180 s")


def peak_memory_gib(pid: int) -> float:
    """The process's peak resident set (VmHWM), in GiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2
    return float("nan")


def segment(port: int, image: Path) -> tuple[int, float, int]:
    """(status, seconds, count) of one request."""
    started = time.perf_counter()
    with image.open("rb") as handle:
        answer = httpx.post(
            f"http://127.0.0.1:{port}/api/segment",
            files={"image": (image.name, handle, "image/png")},
            timeout=600,
        )
    seconds = time.perf_counter() - started
    count = answer.json().get("count", -1) if answer.status_code == 200 else -1
    return answer.status_code, seconds, count


def measure(port: int, images: list[Path], pid: int) -> dict:
    alone = {image.name: segment(port, image) for image in images}
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(images)) as pool:
        answers = list(pool.map(lambda image: segment(port, image), images))
    burst = dict(zip([image.name for image in images], answers, strict=True))
    wall = time.perf_counter() - started
    latencies = [seconds for _, seconds, _ in burst.values()]
    return {
        "requests": len(images),
        "all_succeeded": all(status == 200 for status, _, _ in burst.values()),
        "counts_as_alone": all(burst[n][2] == alone[n][2] for n in burst),
        "alone_median_s": round(statistics.median(s for _, s, _ in alone.values()), 2),
        "burst_median_s": round(statistics.median(latencies), 2),
        "burst_worst_s": round(max(latencies), 2),
        "burst_wall_s": round(wall, 1),
        "server_peak_gib": round(peak_memory_gib(pid), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--model", default="models/default")
    args = parser.parse_args()
    test_dir = ROOT / "input" / "stage1_test"
    images = sorted(test_dir.glob("*/images/*.png"))[: args.requests]
    if len(images) < args.requests:
        raise SystemExit(f"{shown(test_dir)}: {args.requests} images needed (./run.sh download)")
    port = free_port()
    server = start_server(args.model, port)
    try:
        result = {"model": args.model, **measure(port, images, server.pid)}
    finally:
        server.terminate()
        server.wait(timeout=30)
    markdown = "\n".join(
        [
            "| requests | all succeeded | counts as alone | alone, median | concurrent: median"
            " / worst latency | burst wall time | server peak memory |",
            "|---|---|---|---|---|---|---|",
            f"| {result['requests']} | {result['all_succeeded']} | {result['counts_as_alone']} "
            f"| {result['alone_median_s']} s | {result['burst_median_s']} s / "
            f"{result['burst_worst_s']} s | {result['burst_wall_s']} s "
            f"| {result['server_peak_gib']} GiB |",
        ]
    )
    publish(ROOT / "bench" / "results" / "serve-cpu.json", result, markdown)
    return 0 if result["all_succeeded"] and result["counts_as_alone"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
