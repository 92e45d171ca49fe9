"""The engines that run a model's network: Keras (the default) and ONNX Runtime.

``predict --engine onnxruntime`` runs the network exported once from the model's weights
(`pipeline.core.onnx_export.onnx_file`) with ONNX Runtime on the CPU; everything
before and after the network (normalisation, tiles, TTA, scales, post-processing) is the
same code as with Keras. `OnnxNetwork` pickles as its file, so that a Dask worker or a
page loads its own session.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from pipeline.config import check_heads
from pipeline.core.model_store import load_trained_network
from pipeline.core.onnx_export import onnx_file
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

ENGINES = ("keras", "onnxruntime")


def session_threads() -> int:
    """ONNX Runtime's threads for one network: ``OMP_NUM_THREADS`` when set (a Dask
    worker's share of the cores), else 0 (ONNX Runtime's default: one per core)."""
    text = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else 0


class OnnxNetwork:
    """A model's network in an ONNX Runtime session (CPU, every graph optimisation).

    Parameters
    ----------
    path
        The ONNX file (`pipeline.core.onnx_export.onnx_file`).
    threads
        Intra-op threads; 0: `session_threads`.
    """

    def __init__(self, path: Path, threads: int = 0) -> None:
        self.path = Path(path)
        self.threads = threads
        self._session = self._open()
        self.input_name = self._session.get_inputs()[0].name
        self.n_outputs = len(self._session.get_outputs())

    def _open(self):
        try:
            # Lazy: onnxruntime is heavy and only --engine onnxruntime needs it
            import onnxruntime
        except ImportError as error:
            raise PipelineError(
                f"--engine onnxruntime needs the onnxruntime package ({error}); ./run.sh "
                "installs it from requirements.lock"
            ) from None
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads or session_threads()
        options.log_severity_level = 3  # errors only
        # Threads that spin between runs take the cores from the numpy work between them
        # (TTA's flips, post-processing): on 2 cores, TTA ran at 0.62 images/s spinning and
        # 1.33 without (bench/bench_speed.py --phases predict-tta-ort --limit 24).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            return onnxruntime.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own kinds
            first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
            raise PipelineError(
                f"{self.path}: ONNX Runtime cannot load it ({type(error).__name__}: {first}); "
                "remove it to have it exported again"
            ) from None

    def __getstate__(self) -> dict:
        return {"path": self.path, "threads": self.threads}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["threads"])

    def outputs(self, batch: np.ndarray, heads: str = "all") -> list[np.ndarray]:
        """The network's output heads for a (N, H, W, C) float32 batch: all of them, or
        the one head ``heads`` names (1-based)."""
        heads = check_heads(heads)
        if heads != "all" and int(heads) > self.n_outputs:
            raise PipelineError(
                f"heads {heads}: the network in {self.path.name} has {self.n_outputs} "
                f"output head" + ("s" if self.n_outputs > 1 else "")
            )
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        outputs = self._session.run(None, {self.input_name: batch})
        return outputs if heads == "all" else [outputs[int(heads) - 1]]


def load_network(
    model_dir: Path, engine: str, precision: str, edited_ok: bool = False, finished: bool = True
):
    """The network of a model as ``engine`` runs it: a Keras model, or an `OnnxNetwork`
    (float32 only). ``finished``: the folder must be a finished model (False only for
    training's own steps, with the Keras engine).

    Raises ``PipelineError`` for an unknown engine or a precision it cannot run.
    """
    if engine == "keras":
        return load_trained_network(model_dir, finished=finished, edited_ok=edited_ok)
    if engine != "onnxruntime":
        raise PipelineError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    if precision != "float32":
        raise PipelineError(
            f"--engine onnxruntime runs the network in float32; --precision {precision} is "
            "for --engine keras"
        )
    network = OnnxNetwork(onnx_file(model_dir, edited_ok))
    log.info("engine: ONNX Runtime on the CPU (%s)", network.path)
    return network
