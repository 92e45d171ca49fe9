"""The trained model as one object (`pipeline.inference.model.NucleusModel`): what it owns,
how it pickles, and that it is the one way to predict (no ``(model, config)`` pairs or
request tuples cross a module boundary; read from the source with `ast`)."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import Config
from pipeline.errors import PipelineError
from pipeline.inference.model import NucleusModel

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
BENCH = Path(__file__).resolve().parents[1] / "bench"

#: Public functions that take a network together with its config, each with its reason:
#: the object's own constructor, and the adapter that gives training's validation one.
NETWORK_AND_CONFIG_ALLOWED = {
    "pipeline/inference/model.py:of_network": "makes the object of a network in memory",
    "pipeline/stages/train.py:score_network": "wraps the network being trained in the object",
}
#: The modules that predict, and so must use the object (and never load a network).
PREDICTING_MODULES = (
    "inference/predict.py",
    "inference/run.py",
    "inference/dask_predict.py",
    "serving/segmenter.py",
    "evaluation/validation.py",
    "evaluation/tuning.py",
)
NETWORK_LOADERS = {"load_network", "load_trained_network", "load_model"}


def _images(tiny_demo) -> list[np.ndarray]:
    from pipeline.data.dataset import load_samples

    return [s.image for s in load_samples(tiny_demo.test_dir, with_labels=False)]


def test_a_loaded_model_owns_its_settings_channels_and_scale(tiny_model):
    from pipeline.core.model_store import load_config

    model = NucleusModel.load(tiny_model, {"threshold": 0.42, "min_size": None}, device="cpu")
    saved = load_config(tiny_model, tuned=True)
    assert model.config.predict.threshold == 0.42
    assert model.config.predict.min_size == saved.predict.min_size  # None: the saved value
    assert model.overrides == {"threshold": 0.42}
    assert model.channels[0] == "foreground"
    assert model.scale_policy.name == saved.train.resize_policy
    assert model.postprocess_params()["threshold"] == 0.42


def test_a_model_pickles_as_its_folder_and_settings_and_predicts_the_same(tiny_model, tiny_demo):
    images = _images(tiny_demo)
    model = NucleusModel.load(tiny_model, {"threshold": 0.4}, device="cpu")
    data = pickle.dumps(model)
    weights = (tiny_model / "model.weights.h5").stat().st_size
    assert len(data) < 1000 < weights  # the folder's path and settings, not the network
    copy = pickle.loads(data)
    assert copy._network is None and copy._config is None  # read on first use
    assert copy.folder == tiny_model.resolve() and copy.overrides == {"threshold": 0.4}
    assert copy.key == pickle.loads(pickle.dumps(model)).key
    for mine, theirs in zip(copy.predict_labels(images), model.predict_labels(images), strict=True):
        assert np.array_equal(mine, theirs)


def test_an_unpickled_model_whose_folder_is_gone_says_so(model_copy):
    import shutil

    data = pickle.dumps(NucleusModel.load(model_copy, device="cpu", network=False))
    shutil.rmtree(model_copy)
    with pytest.raises(PipelineError, match=r"model: no such model folder"):
        pickle.loads(data).config  # noqa: B018 - reading it is the test


def test_a_network_in_memory_does_not_pickle():
    model = NucleusModel.of_network(object(), Config())
    with pytest.raises(TypeError, match="network in memory cannot be pickled"):
        pickle.dumps(model)


def test_other_settings_make_a_copy_that_shares_the_network():
    config = Config()
    network = object()
    model = NucleusModel.of_network(network, config)
    other = model.with_settings(threshold=0.7, tta=None)
    assert other.config.predict.threshold == 0.7 and other.network is network
    assert other.config.predict.tta == config.predict.tta  # None: unchanged
    assert model.config.predict.threshold == Config().predict.threshold  # the original kept
    with pytest.raises(TypeError, match="unknown prediction setting 'treshold'"):
        model.with_settings(treshold=0.5)
    with pytest.raises(TypeError, match="unknown prediction setting 'epochs'"):
        NucleusModel(Path("m"), {"epochs": 3})


def test_a_scale_the_model_cannot_take_is_refused_when_it_loads(model_copy):
    """The refusal lives in the scale policy; loading applies it once, for every caller."""
    with pytest.raises(PipelineError, match="--diameter sets the scale itself"):
        NucleusModel.load(model_copy, {"diameter": 20.0, "scales": "0.5,1"}, network=False)


def _public_functions(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if not node.name.startswith("_"):
                yield node


def _parameters(node: ast.FunctionDef) -> set[str]:
    args = node.args
    return {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}


def _takes_a_tuple_request(node: ast.FunctionDef) -> bool:
    """A ``request`` parameter annotated as a tuple (an HTTP request is no such thing)."""
    for arg in node.args.posonlyargs + node.args.args + node.args.kwonlyargs:
        if arg.arg == "request" and arg.annotation is not None:
            if ast.unparse(arg.annotation).startswith(("tuple", "Tuple")):
                return True
    return False


def test_no_model_and_config_pairs_cross_a_module_boundary():
    """No public function takes a network (``model``, ``network``) with a ``config``, or
    returns the two as a tuple, or takes a ``request`` tuple, except those listed with
    their reasons; private helpers stay within their module."""
    found = []
    for path in sorted([*PACKAGE.rglob("*.py"), *BENCH.glob("*.py")]):
        where = path.relative_to(PACKAGE.parent).as_posix()
        for node in _public_functions(path):
            names = _parameters(node)
            paired = "config" in names and names & {"model", "network", "keras_model"}
            if (paired or _takes_a_tuple_request(node)) and f"{where}:{node.name}" not in (
                NETWORK_AND_CONFIG_ALLOWED
            ):
                found.append(f"{where}:{node.lineno} {node.name}({', '.join(sorted(names))})")
            for inner in ast.walk(node):
                if isinstance(inner, ast.Return) and isinstance(inner.value, ast.Tuple):
                    returned = {getattr(e, "id", None) for e in inner.value.elts}
                    if "config" in returned and returned & {"model", "network"}:
                        found.append(f"{where}:{inner.lineno} {node.name} returns a pair")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("module", PREDICTING_MODULES)
def test_every_predicting_module_uses_the_model_object(module):
    """The CLI's runs, Dask, the page, validation and tuning predict through the object:
    each imports it, and none loads a network itself."""
    tree = ast.parse((PACKAGE / module).read_text())
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert "NucleusModel" in imported
    assert not imported & NETWORK_LOADERS, sorted(imported & NETWORK_LOADERS)


def test_each_network_keeps_its_precision_and_the_process_keeps_its_own(tiny_model):
    """``predict.precision`` is the network's: a bfloat16 model and a float32 one live side
    by side, and Keras' process-wide dtype policy is not changed by loading either."""
    import keras

    before = keras.config.dtype_policy().name
    plain = NucleusModel.load(tiny_model, {"precision": "float32"}, device="cpu")
    mixed = NucleusModel.load(tiny_model, {"precision": "bfloat16"}, device="cpu")
    assert keras.config.dtype_policy().name == before == "float32"
    convolutions = [
        [layer for layer in model.network.layers if isinstance(layer, keras.layers.Conv2D)]
        for model in (mixed, plain)
    ]
    *hidden, head = convolutions[0]  # the sigmoid head stays float32 (core/models.py)
    assert {layer.compute_dtype for layer in hidden} == {"bfloat16"}
    assert head.compute_dtype == "float32"
    assert {layer.compute_dtype for layer in convolutions[1]} == {"float32"}
    assert {layer.variable_dtype for layer in convolutions[0]} == {"float32"}


def test_the_manuals_python_example_runs(tiny_model, tiny_demo, tmp_path, capsys):
    """docs/your-images.md's "From Python" example, on the tiny model and a demo image."""
    import re

    manual = (PACKAGE.parent / "docs" / "your-images.md").read_text()
    section = manual.split("## From Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    image = next(tiny_demo.test_dir.glob("*/images/*.png"))
    code = code.replace('"models/default"', repr(str(tiny_model)))
    exec(code.replace('"my_image.tif"', repr(str(image))), {})  # noqa: S102 - the manual's own code
    printed = re.fullmatch(r"(\d+) nuclei; (\d+) at threshold 0.6\n", capsys.readouterr().out)
    assert printed is not None and int(printed.group(1)) > 0
