"""``predict --dask``: images spread over Dask workers give the same submission, byte for
byte, as one process; a worker killed mid-run has its images re-run; bad addresses end in
one error line."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from conftest import one_error_line, run_cli

pytestmark = pytest.mark.slow


def _predict(model: Path, images: Path, out: Path, capsys, *extra: str) -> None:
    argv = ["predict", "--model", str(model), "--images", str(images), "--out", str(out)]
    status, _, err = run_cli([*argv, *extra], capsys)
    assert status == 0, err


def test_local_cluster_writes_the_same_bytes(tiny_demo, tiny_model, tmp_path, capsys):
    single, spread = tmp_path / "single.csv", tmp_path / "spread.csv"
    _predict(tiny_model, tiny_demo.test_dir, single, capsys)
    _predict(tiny_model, tiny_demo.test_dir, spread, capsys, "--dask", "local:2")
    assert spread.read_bytes() == single.read_bytes()
    assert len(single.read_text().splitlines()) > 1 + 3  # the 3 images have nuclei


def _kill_first_busy_worker(client, pids: dict[str, int], killed: list[str]) -> None:
    """SIGKILL the first worker seen working on a chunk (its model still loading)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not killed:
        for worker, tasks in client.processing().items():
            if tasks:
                os.kill(pids[worker], signal.SIGKILL)
                killed.append(worker)
                return
        time.sleep(0.02)


def test_killed_worker_has_its_images_rerun(tiny_model, tmp_path):
    """12 images in chunks of 2 (6 tasks) on 2 workers; one worker is killed while it
    holds a chunk: the CSV is complete and identical to one process's."""
    from distributed import Client, LocalCluster

    from pipeline.data.synthetic import make_demo_dataset
    from pipeline.inference.run import run_prediction

    images = make_demo_dataset(
        tmp_path / "set", n_train=1, n_test=12, size_range=(64, 96), seed=5
    ).test_dir
    reference, spread = tmp_path / "single.csv", tmp_path / "spread.csv"
    run_prediction(tiny_model, images, reference, chunk_images=2)
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, scheduler_kwargs={"dashboard": False}
        ) as cluster,
        Client(cluster) as client,
    ):
        pids = client.run(os.getpid)
        killed: list[str] = []
        killer = threading.Thread(target=_kill_first_busy_worker, args=(client, pids, killed))
        killer.start()
        run_prediction(tiny_model, images, spread, dask=cluster.scheduler_address, chunk_images=2)
        killer.join()
    assert killed, "no worker was seen working"
    assert spread.read_bytes() == reference.read_bytes()
    assert len(reference.read_text().splitlines()) >= 1 + 12


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("local:0", "--dask local:0: the number of workers must be 1 or more"),
        ("local:two", "--dask local:two: the number of workers must be 1 or more"),
        ("tcp://127.0.0.1:9", "--dask tcp://127.0.0.1:9: cannot reach the scheduler"),
    ],
)
def test_bad_address_is_one_error_line(address, message, tiny_demo, tiny_model, tmp_path,
                                       capsys, monkeypatch):  # fmt: skip
    from pipeline.inference import dask_predict

    monkeypatch.setattr(dask_predict, "CONNECT_SECONDS", 2)
    out = tmp_path / "out.csv"
    argv = ["predict", "--model", str(tiny_model), "--images", str(tiny_demo.test_dir)]
    status, _, err = run_cli([*argv, "--out", str(out), "--dask", address], capsys)
    assert status == 2
    assert one_error_line(err).startswith(f"error: {message}")
    assert not out.exists()


def test_a_failure_on_a_worker_is_one_error_line(tiny_demo, tiny_model, tmp_path, capsys):
    """A damaged image is found by the worker that reads it: its message comes back as
    the run's one error line, and no submission is written."""
    import shutil

    folder = tmp_path / "plain"
    folder.mkdir()
    first = next(iter(sorted(tiny_demo.test_dir.iterdir())))
    shutil.copy(first / "images" / f"{first.name}.png", folder / "good.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    out = tmp_path / "out.csv"
    argv = ["predict", "--model", str(tiny_model), "--images", str(folder), "--out", str(out)]
    status, _, err = run_cli([*argv, "--dask", "local:1"], capsys)
    assert status == 2
    assert "broken.png" in one_error_line(err)
    assert not out.exists()
