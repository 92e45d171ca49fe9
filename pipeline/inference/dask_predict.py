"""Prediction spread over the workers of a Dask cluster (``predict --dask ADDRESS``).

The ``predict`` process is the client: it cuts the images into the chunks a
single-process run predicts (`pipeline.inference.predict.CHUNK_IMAGES` images, the same
boundaries, so the same batches and the same bytes), sends each chunk to a worker as one
task with the model (`pipeline.inference.model.NucleusModel`, which pickles as its folder
and settings), and hands the results to the one submission writer in image order as they
come back. Each worker process chooses its device once (`_start_worker`, its first chunk),
loads the model's network once (`_worker_model`) and keeps it for every chunk it is given. At most
``TASKS_PER_WORKER`` chunks per worker are in flight, so the client's memory and each
worker's stay bounded however many images there are. A worker that dies has its chunks
re-run on another (Dask reschedules the tasks of a lost worker; a chunk that has killed
``distributed.scheduler.allowed-failures`` workers ends the run with an error).

``ADDRESS`` is ``local:N`` (a cluster of N worker processes on this machine, started and
stopped with the run) or a running scheduler's address (``tcp://host:8786``). The workers
of a remote cluster read the model folder and the images at the same paths as the client
(a shared file system) and import this package (start them from the repository root:
``PYTHONPATH=. .venv/bin/dask worker tcp://host:8786``).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core.device import select_device
from pipeline.data.images import read_pixels, to_rgb_uint8
from pipeline.errors import PipelineError
from pipeline.inference.model import NucleusModel
from pipeline.inference.predict import progress_bar

if TYPE_CHECKING:
    from distributed import Client

    from pipeline.data.dataset import ImageFile

log = logging.getLogger(__name__)

LOCAL_PREFIX = "local:"
TASKS_PER_WORKER = 2  # chunks queued on a worker: one running, one ready to start
CONNECT_SECONDS = 30  # how long to wait for a scheduler, then for its first worker

# One model per worker process, loaded by its first chunk: {its key: the loaded model};
# the lock keeps a worker that runs several threads from loading it twice at once.
_WORKER_MODELS: dict[tuple, NucleusModel] = {}
_WORKER_LOCK = threading.Lock()
# The device this worker process chose (`_start_worker`), once: [] until its first chunk.
_WORKER_STARTED: list[str] = []


def parse_address(spec: str) -> tuple[str, int]:
    """``("local", N)`` for ``local:N``, else ``(address, 0)`` for a scheduler's address.

    >>> parse_address("local:2"), parse_address("tcp://10.0.0.5:8786")
    (('local', 2), ('tcp://10.0.0.5:8786', 0))
    >>> parse_address("local:0")
    Traceback (most recent call last):
    ...
    pipeline.errors.PipelineError: --dask local:0: the number of workers must be 1 or more
    """
    if spec.startswith(LOCAL_PREFIX):
        count = spec[len(LOCAL_PREFIX) :]
        if not count.isdigit() or int(count) < 1:
            raise PipelineError(f"--dask {spec}: the number of workers must be 1 or more")
        return "local", int(count)
    if not spec or spec.isspace():
        raise PipelineError("--dask: give local:N or a scheduler address (tcp://host:8786)")
    return spec, 0


def _local_threads(n_workers: int) -> int:
    """Threads for each worker's network: this machine's cores shared out, at least one."""
    return max(1, (os.cpu_count() or 1) // n_workers)


@contextlib.contextmanager
def open_client(spec: str) -> Iterator[Client]:
    """A Dask client for ``--dask SPEC``: a local cluster started for the run (and stopped
    after it), or a connection to a running scheduler that has at least one worker."""
    # Lazy: distributed is heavy and only --dask needs it
    from distributed import Client

    address, n_local = parse_address(spec)
    logging.getLogger("distributed").setLevel(logging.WARNING)  # its start and stop chatter
    with contextlib.ExitStack() as stack:
        if n_local:
            client = stack.enter_context(Client(stack.enter_context(_local_cluster(n_local))))
        else:
            try:
                client = stack.enter_context(Client(address, timeout=CONNECT_SECONDS))
            except (OSError, TimeoutError, ValueError) as error:
                message = f"--dask {spec}: cannot reach the scheduler ({error})"
                raise PipelineError(message) from None
        try:
            client.wait_for_workers(1, timeout=CONNECT_SECONDS)
        except TimeoutError:
            raise PipelineError(
                f"--dask {spec}: the scheduler has no worker after {CONNECT_SECONDS} s"
            ) from None
        yield client


def _local_cluster(n_workers: int):
    """A cluster of ``n_workers`` processes on this machine, one task at a time each, the
    cores shared out among their networks."""
    # Lazy: distributed is heavy and only --dask needs it
    from distributed import LocalCluster

    threads = _local_threads(n_workers)
    log.info(
        "starting a local Dask cluster: %d worker processes, %d network threads each",
        n_workers, threads,
    )  # fmt: skip
    try:
        return LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            silence_logs=logging.WARNING,
            scheduler_kwargs={"dashboard": False},
            env={
                "OMP_NUM_THREADS": str(threads),
                "TF_NUM_INTRAOP_THREADS": str(threads),
                # several processes share a GPU: none takes all its memory at the start
                "TF_FORCE_GPU_ALLOW_GROWTH": "true",
                "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
            },
        )
    except Exception as error:  # noqa: BLE001 - any failure to start is one message
        raise PipelineError(
            f"--dask local:{n_workers}: cannot start the local cluster: "
            f"{type(error).__name__}: {error}"
        ) from None


def _worker_model(model: NucleusModel) -> NucleusModel:
    """This worker process's loaded copy of ``model`` (each task unpickles a new one), its
    network loaded once: a model with other settings replaces the one kept."""
    with _WORKER_LOCK:
        if model.key not in _WORKER_MODELS:
            _WORKER_MODELS.clear()  # one model per worker: a new one replaces the old
            _WORKER_MODELS[model.key] = _load_worker_model(model)
        return _WORKER_MODELS[model.key]


def _start_worker(device: str) -> None:
    """The worker process's entry point, run by its first chunk (Dask starts the process,
    not a stage's ``main``): choose the device once, before the model loads Keras."""
    if not _WORKER_STARTED:
        select_device(device)
        _WORKER_STARTED.append(device)


def _load_worker_model(model: NucleusModel) -> NucleusModel:
    _start_worker(model.device)
    if not model.folder.is_dir():
        raise PipelineError(
            f"{model.folder}: no such model folder on Dask worker {os.uname().nodename} "
            "(the workers read the model at the client's path)"
        )
    model.network  # noqa: B018 - loaded here, once, not by the chunk that first predicts
    return model


def predict_chunk(model: NucleusModel, image_paths: Sequence[str]) -> list[np.ndarray]:
    """The instance labels of one chunk of images, on a worker (a Dask task)."""
    model = _worker_model(model)
    images = [to_rgb_uint8(read_pixels(Path(path))) for path in image_paths]
    probs = model.predict_probabilities(images)
    del images
    return [model.labels_from_probabilities(prob) for prob in probs]


def iter_dask_predictions(
    client: Client,
    model: NucleusModel,
    image_files: Sequence[ImageFile],
    chunk_images: int,
    with_pixels: bool = False,
    done: int = 0,
    progress: bool = True,
) -> Iterator[tuple[ImageFile, np.ndarray, np.ndarray | None]]:
    """Yield ``(image_file, labels, pixels)`` in the order of ``image_files``, predicted on
    the cluster's workers a chunk of ``chunk_images`` at a time.

    The workers receive ``model`` (its folder and settings) and load its network.
    ``pixels`` are read here, and only ``with_pixels`` (the measurements need them); else
    None. ``done`` images of the run were predicted before (a resumed run): the progress
    bar starts there, and moves as the chunks come back.
    """
    bar = progress_bar(done + len(image_files), done, progress)
    try:  # the bar closed on errors too
        chunks = [
            image_files[i : i + chunk_images] for i in range(0, len(image_files), chunk_images)
        ]
        n_workers = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
        limit = TASKS_PER_WORKER * n_workers
        pending: collections.deque = collections.deque()
        next_chunk = 0
        while next_chunk < len(chunks) or pending:
            while next_chunk < len(chunks) and len(pending) < limit:
                chunk = chunks[next_chunk]
                paths = [str(Path(f.path).resolve()) for f in chunk]
                future = client.submit(predict_chunk, model, paths, pure=False)
                pending.append((chunk, future))
                next_chunk += 1
            chunk, future = pending.popleft()
            try:
                labels_list = _chunk_result(future, chunk)
            finally:
                future.release()
            for image_file, labels in zip(chunk, labels_list, strict=True):
                bar.update(1)
                yield image_file, labels, read_pixels(image_file.path) if with_pixels else None
    finally:
        bar.close()


def _chunk_result(future, chunk: Sequence[ImageFile]) -> list[np.ndarray]:
    """A chunk's labels; what went wrong on the cluster as one `PipelineError` naming the
    chunk (a message the worker raised as one is passed on as it is)."""
    # Lazy: distributed is heavy and only --dask needs it
    from distributed import KilledWorker

    try:
        return future.result()
    except PipelineError:
        raise
    except KilledWorker as error:
        raise PipelineError(
            f"{chunk[0].path}: its chunk of {len(chunk)} images killed Dask workers "
            f"repeatedly ({error}); predict it without --dask to see why"
        ) from None
    except Exception as error:  # noqa: BLE001 - whatever a remote worker or the cluster raised
        raise PipelineError(
            f"{chunk[0].path}: its chunk of {len(chunk)} images failed on the Dask cluster: "
            f"{type(error).__name__}: {error}"
        ) from None
