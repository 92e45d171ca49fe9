"""Speed, memory and score of a model's training and prediction on this machine.

    .venv/bin/python bench/bench_speed.py [--model models/default] [--steps 20]

Each phase runs in its own process, so its peak memory (max RSS) is its own:

- ``train-<precision>``: training steps on augmented crops of real training images, with
  the model's config (float32 and mixed bfloat16);
- ``matmul``: this machine's matrix-multiply peak (float32 GFLOP/s through the backend);
- ``predict``: the ``predict`` stage's code on every image of ``input/stage1_test``
  (whole images, at their own size; ``--limit N``: the first N), including
  post-processing, the network run by Keras (``-ort``: by ONNX Runtime, the network
  exported once, `pipeline.inference.engines`), with the network's
  FLOP per pixel (`network_flops_per_pixel`) and the GFLOP/s that makes, as a fraction of
  the matrix-multiply peak measured in the same run.

Prints a table and writes the numbers to ``bench/results/speed-<host kind>.json``.
The scores are the ones recorded in the model's ``scores.json`` (validation, by the
training run; stage1_test, by ``./run.sh``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_commands import write_results  # noqa: E402


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase_train(model_dir: Path, precision: str, steps: int, images_dir: Path) -> dict:
    """Images per second of training steps on augmented real crops."""
    import keras
    import numpy as np

    from pipeline.core import device
    from pipeline.core.model_store import load_config, target_channels
    from pipeline.core.models import build_model, model_outputs
    from pipeline.data.dataset import list_image_ids, load_samples
    from pipeline.learning.losses import get_loss
    from pipeline.learning.training import BatchSource

    config = load_config(model_dir)
    choice = device.check_device("auto", precision)
    description = choice.description
    ids = list_image_ids(images_dir)[:64]
    samples = load_samples(images_dir, with_labels=True, ids=ids)
    with device.precision_scope(choice):  # the network keeps the policy it is built with
        channels = len(target_channels(config))
        model = build_model(config.model, out_channels=channels, pretrained=False)
    batches = BatchSource(samples, config, steps + 2, seed=0, outputs=model_outputs(model))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=get_loss(config.train.loss))
    data = [batches.batch(0, i) for i in range(steps + 2)]
    for x, y in data[:2]:  # warm-up: tracing and memory allocation
        model.train_on_batch(x, y)
    started = time.perf_counter()
    for x, y in data[2:]:
        model.train_on_batch(x, y)
    seconds = time.perf_counter() - started
    images = steps * config.train.batch_size
    n_train = 596 * (1 - config.train.val_fraction)
    per_epoch = (config.train.steps_per_epoch or n_train // config.train.batch_size) * (
        config.train.batch_size
    )
    return {
        "phase": f"train-{precision}",
        "device": description,
        "crop": config.train.crop_size,
        "batch": config.train.batch_size,
        "images_per_s": round(images / seconds, 2),
        "s_per_epoch": round(per_epoch / (images / seconds), 1),
        "peak_mib": round(_peak_mib()),
        "loss_finite": bool(np.isfinite(model.evaluate(*data[-1], verbose=0))),
    }


def phase_matmul(size: int = 2048, repeats: int = 20) -> dict:
    """This machine's matrix-multiply peak: float32 GFLOP/s of ``size``-square products
    through the Keras backend (the same library and threads prediction uses)."""
    import keras
    import numpy as np

    from pipeline.core import device

    description = device.check_device("auto", "float32").description
    rng = np.random.default_rng(0)
    a, b = (keras.ops.convert_to_tensor(rng.random((size, size), dtype=np.float32)) for _ in "ab")
    keras.ops.convert_to_numpy(keras.ops.matmul(a, b))  # warm-up
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(repeats):
            product = keras.ops.matmul(a, b)
        keras.ops.convert_to_numpy(product)
        best = min(best, time.perf_counter() - started)
    return {
        "phase": "matmul",
        "device": description,
        "gflop_per_s": round(2 * size**3 * repeats / best / 1e9, 1),
        "images_per_s": "",
        "peak_mib": round(_peak_mib()),
    }


def network_flops_per_pixel(model, side: int = 256) -> float:
    """Multiply-adds (as 2 FLOP) of the network's convolutions per input pixel, counted on
    a ``side``-square input; the rest (batch norm, activations, pooling) is negligible."""
    import keras

    clone = keras.models.clone_model(model, input_tensors=keras.Input((side, side, 3)))
    total = 0
    for layer in clone._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.Conv2DTranspose):
            kh, kw, c_out, c_in = layer.kernel.shape
            total += 2 * kh * kw * c_in * c_out * layer.input.shape[1] * layer.input.shape[2]
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw, c_in, c_out = layer.kernel.shape
            total += 2 * kh * kw * c_in * c_out * layer.output.shape[1] * layer.output.shape[2]
    return total / side**2


def phase_predict(
    model_dir: Path,
    images_dir: Path,
    tta: bool,
    precision: str = "float32",
    engine: str = "keras",
    limit: int = 0,
) -> dict:
    """Images per second of the predict stage's code over a folder (its first ``limit``
    images, 0: all), post-processing included, in ``precision`` (float32 or bfloat16,
    `PredictConfig.precision`), the network run by ``engine`` (`PredictConfig.engine`)."""
    from pipeline.core import device
    from pipeline.core.model_store import load_trained_network
    from pipeline.data.dataset import list_image_ids
    from pipeline.inference.model import NucleusModel
    from pipeline.inference.predict import iter_predictions

    description = device.check_device("auto", precision).description
    settings = {"engine": engine, "precision": precision, "tta": tta}
    model = NucleusModel.load(model_dir, settings, device="auto")
    keras_model = model.network if engine == "keras" else load_trained_network(model_dir)
    if engine != "keras":
        import onnxruntime

        description = f"CPU, {precision}, onnxruntime {onnxruntime.__version__}"
    ids = list_image_ids(images_dir)[: limit or None]
    list(iter_predictions(model, images_dir, ids[:2], progress=False))  # warm-up
    started = time.perf_counter()
    pixels = 0
    for _, labels in iter_predictions(model, images_dir, ids, progress=False):
        pixels += labels.size
    seconds = time.perf_counter() - started
    flops = network_flops_per_pixel(keras_model) * (8 if tta else 1)
    return {
        "phase": "predict"
        + ("-tta" if tta else "")
        + ("-bf16" if precision != "float32" else "")
        + ("-ort" if engine == "onnxruntime" else ""),
        "device": description,
        "images": len(ids),
        "images_per_s": round(len(ids) / seconds, 2),
        "megapixels_per_s": round(pixels / seconds / 1e6, 3),
        "network_kflop_per_pixel": round(flops / 1e3, 1),
        "gflop_per_s": round(pixels * flops / seconds / 1e9, 1),
        "seconds": round(seconds, 1),
        "peak_mib": round(_peak_mib()),
    }


def _run_phase(args: argparse.Namespace, phase: str) -> dict:
    command = [
        sys.executable,
        __file__,
        "--phase",
        phase,
        "--model",
        str(args.model),
        "--steps",
        str(args.steps),
        "--train-images",
        str(args.train_images),
        "--test-images",
        str(args.test_images),
        "--limit",
        str(args.limit),
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"phase {phase} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--train-images", type=Path, default=ROOT / "input" / "stage1_train")
    parser.add_argument("--test-images", type=Path, default=ROOT / "input" / "stage1_test")
    parser.add_argument(
        "--phases",
        default="matmul,train-float32,train-bfloat16,predict,predict-tta,predict-bf16",
    )
    parser.add_argument(
        "--limit", type=int, default=0, help="predict only the first N test images (0: all)"
    )
    parser.add_argument(
        "--section",
        default=None,
        help="write this run's rows under this key of the existing results file, keeping "
        "the rest (a run of some phases beside an earlier full one)",
    )
    parser.add_argument("--note", default="", help="a remark stored with --section's rows")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase:
        if args.phase == "matmul":
            row = phase_matmul()
        elif args.phase.startswith("train-"):
            row = phase_train(
                args.model, args.phase.split("-", 1)[1], args.steps, args.train_images
            )
        else:
            row = phase_predict(
                args.model,
                args.test_images,
                tta="-tta" in args.phase,
                precision="bfloat16" if "-bf16" in args.phase else "float32",
                engine="onnxruntime" if args.phase.endswith("-ort") else "keras",
                limit=args.limit,
            )
        print(json.dumps(row))
        return 0

    rows = [_run_phase(args, phase) for phase in args.phases.split(",")]
    peak = next((row["gflop_per_s"] for row in rows if row["phase"] == "matmul"), None)
    for row in rows:
        if row["phase"].startswith("predict") and peak:
            # The whole predict stage's work (post-processing included) against the peak.
            row["fraction_of_matmul_peak"] = round(row["gflop_per_s"] / peak, 3)
    scores = json.loads((args.model / "scores.json").read_text())
    summary = {
        "model": str(args.model.resolve().relative_to(ROOT)),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "validation_score": scores.get("validation_score"),
        "stage1_test_score": scores.get("stage1_test_score"),
        "recorded_train_seconds": scores.get("train_seconds"),
        "recorded_seconds_per_epoch": scores.get("seconds_per_epoch"),
        "phases": rows,
        "command": "python bench/bench_speed.py " + " ".join(sys.argv[1:]),
    }
    print(f"model {summary['model']} on {summary['machine']}")
    print(
        f"{'phase':<16}{'images/s':>10}{'s/epoch':>10}{'GFLOP/s':>10}{'of peak':>9}"
        f"{'peak MiB':>10}  device"
    )
    for row in rows:
        print(
            f"{row['phase']:<16}{row['images_per_s']:>10}{row.get('s_per_epoch', ''):>10}"
            f"{row.get('gflop_per_s', ''):>10}{row.get('fraction_of_matmul_peak', ''):>9}"
            f"{row['peak_mib']:>10}  {row['device']}"
        )
    print(
        f"validation score {summary['validation_score']}, "
        f"stage1_test score {summary['stage1_test_score']}, "
        f"recorded training time {summary['recorded_train_seconds']} s"
    )
    kind = "gpu" if any(row["device"].startswith("GPU") for row in rows) else "cpu"
    out = args.out or ROOT / "bench" / "results" / f"speed-{kind}.json"
    if args.section:
        section = {"note": args.note, "images_limit": args.limit, "phases": rows}
        section["command"] = summary["command"]
        summary = {**json.loads(out.read_text()), args.section: section}
    write_results(out, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
