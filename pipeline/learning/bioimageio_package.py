"""A finished model as a bioimage.io model package: ``./run.sh export --model DIR --out
NAME.bioimageio.zip``.

The package follows the bioimage.io model format 0.5 (`bioimageio.spec`). It holds

- ``rdf.yaml``: the input ``image`` (axes batch, y, x, channel: red, green, blue) and
  the output ``probabilities`` (batch, y, x, channel: the model's target channels, in
  [0, 1]), the preprocessing the network expects, the weights, the test tensors, the
  citations, the licence, and under ``config.dsb2018`` the tuned post-processing settings
  and where the package came from;
- ``weights.keras`` (``keras_v3``, the original) and ``weights.onnx`` (``onnx``,
  converted from it by `pipeline.core.onnx_export`);
- ``test_input.npy`` and ``test_output.npy``: a synthetic image
  (`pipeline.data.synthetic`, never competition data) and this network's output on it,
  and the same as TIFF images to look at (``sample_input.tif``, ``sample_output.tif``);
- ``cover.png``: that image beside its foreground probability;
- ``README.md`` (`templates/bioimageio_README.md`): what the network outputs, that the
  instance step (the watershed and the thresholds of ``thresholds.json``, their tuned
  values listed) is this pipeline's, the scores, the training data with their licences,
  the citations, and how to open the package in Fiji (deepImageJ), ilastik and napari
  (`templates/bioimageio_open.txt`, which ``./run.sh export --help`` shows too).

The network is the one that prediction runs: a model with several output heads (U-Net++)
is exported as one output, the mean of its heads or the head that ``heads`` names.

`pipeline.core.preprocess.normalise_image` is bioimage.io's ``zero_mean_unit_variance``
over y, x and channel jointly, per image, for a model with the ``rgb`` input space that
does not invert light backgrounds: the input is then the RGB image itself. Inverting a
light background (``--invert-light``, and always in the ``grey`` input space) depends on
the image, and no bioimage.io operation does it: the rdf then declares no preprocessing
and says so, and the input (the test input too) is the normalised image.

Offline validation: `bioimageio.spec` checks the package's files (``perform_io_checks``,
on by default: checksums, test tensors against the axes, the README) and asks every URL
in ``rdf.yaml`` whether it answers, the one check that needs a network. Nothing in
``rdf.yaml`` is a URL (the citations are DOIs), so that check has nothing to ask and the
package validates offline with every file check on, as it is written here and in
``tests/test_bioimageio_export.py`` (sockets switched off). ``perform_io_checks=False``
(``BIOIMAGEIO_PERFORM_IO_CHECKS=false``) would switch the URL checks off, but every file
check with them.
"""

from __future__ import annotations

import importlib
import logging
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import keras
import numpy as np
import onnx
import onnxruntime
import tifffile
from bioimageio.spec import save_bioimageio_package
from bioimageio.spec.model import v0_5
from bioimageio.spec.utils import read_yaml
from matplotlib import colormaps
from PIL import Image

from pipeline.config import Config, section_fields
from pipeline.core.model_store import (
    SCORES_FILE,
    THRESHOLDS_FILE,
    check_complete,
    load_config,
    load_trained_network,
    read_json,
    target_channels,
)
from pipeline.core.models import input_multiple, model_outputs, select_heads
from pipeline.core.onnx_export import export_onnx
from pipeline.core.preprocess import normalise_image
from pipeline.core.scale_policy import scale_policy
from pipeline.data.synthetic import make_sample
from pipeline.errors import PipelineError
from pipeline.fileio import atomic_path, check_writable_file, temporary_prefix
from pipeline.learning.data_card import data_card
from pipeline.locks import output_lock
from pipeline.outputs import check_not_input, check_replaceable
from pipeline.provenance import git_commit

log = logging.getLogger(__name__)

#: How ``rdf.yaml`` marks a package this pipeline wrote: ``config.dsb2018.exported_by``.
EXPORTED_BY = "dsb2018-pipeline export"
#: The input and output tensors, as ``rdf.yaml`` names them.
INPUT_ID, OUTPUT_ID = "image", "probabilities"
INPUT_CHANNELS = ("red", "green", "blue")
#: bioimage.io's ``zero_mean_unit_variance`` divides by ``std + EPS``.
EPS = 1e-6
#: How far the ONNX weights' output on the test image may be from the Keras network's.
ONNX_TOLERANCE = 1e-4
#: The side of the synthetic test image (rounded up to the network's multiple).
TEST_SIDE = 96
TEST_SEED = 2018
#: The package's citations: the data set's paper and the network's.
CITATIONS = (
    (
        "J. C. Caicedo et al., Nucleus segmentation across imaging experiments: the 2018 "
        "Data Science Bowl, Nature Methods 16:1247-1253 (2019)",
        "10.1038/s41592-019-0612-7",
    ),
    (
        "O. Ronneberger, P. Fischer, T. Brox, U-Net: Convolutional Networks for Biomedical "
        "Image Segmentation, MICCAI 2015, LNCS 9351:234-241",
        "10.1007/978-3-319-24574-4_28",
    ),
)
#: The architectures' names, for people.
ARCHITECTURE_NAMES = {
    "unet": "U-Net",
    "unetpp": "U-Net++",
    "mobilenetv2_unet": "MobileNetV2 U-Net",
}
#: What each output channel holds (`pipeline.core.targets`).
CHANNEL_MEANINGS = {
    "foreground": "the probability that the pixel belongs to a nucleus",
    "border": "the probability that the pixel is on a nucleus's rim or where two nuclei touch",
    "centre": "the pixel's distance to its nucleus's edge, divided by the nucleus's "
    "largest (1 at the centre, 0 on background)",
}


@dataclass(frozen=True)
class PackageFiles:
    """The files of a package before it is zipped, in a staging folder."""

    keras_weights: Path
    onnx_weights: Path
    test_input: Path
    test_output: Path
    sample_input: Path
    sample_output: Path
    cover: Path
    readme: Path

    @classmethod
    def in_folder(cls, staging: Path) -> PackageFiles:
        """The files' names in ``staging`` (their names in the package too)."""
        names = ("weights.keras", "weights.onnx", "test_input.npy", "test_output.npy")
        names += ("sample_input.tif", "sample_output.tif", "cover.png", "README.md")
        return cls(*(staging / name for name in names))


def check_package_target(out: Path, force: bool, model_dir: Path) -> None:
    """Refuse, before any work, an ``--out`` that is not a ``.zip``, cannot be written, is
    in the model folder, or exists and is not a package this pipeline exported (unless
    ``force``; a device even then), following `pipeline.outputs`."""
    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise PipelineError(
            f"{out}: a bioimage.io package is a .zip file; name it like "
            f"{out.stem or 'model'}.bioimageio.zip"
        )
    check_writable_file(out, "--out")
    check_not_input(out, "--out", [(model_dir, "the model")])
    if out.exists():
        check_replaceable(
            out,
            "--out",
            is_exported_package(out),
            force,
            f"not a package written by ./run.sh export: its rdf.yaml has no "
            f"config.dsb2018.exported_by = {EXPORTED_BY!r}",
        )


def is_exported_package(path: Path) -> bool:
    """Whether ``path`` is a zip whose ``rdf.yaml`` says this pipeline exported it."""
    try:
        with zipfile.ZipFile(path) as archive:
            rdf = read_yaml(zipfile.Path(archive, "rdf.yaml"))
    except Exception:  # noqa: BLE001 - no zip, no rdf.yaml, or YAML that cannot be read
        return False
    config = rdf.get("config") if isinstance(rdf, dict) else None
    section = config.get("dsb2018") if isinstance(config, dict) else None
    return isinstance(section, dict) and section.get("exported_by") == EXPORTED_BY


def export_package(model_dir: Path, out: Path, force: bool = False) -> Path:
    """Write the bioimage.io package of a finished model to ``out`` (a ``.zip``), whole or
    not at all; ``./run.sh export --out``. Returns ``out``.

    Refuses an ``--out`` that `check_package_target` refuses, an unfinished model or one
    whose files changed since it was finished, and an ``--out`` another run is writing
    (`pipeline.locks`). The package is validated by `bioimageio.spec` as it is written.
    """
    model_dir, out = Path(model_dir), Path(out)
    check_package_target(out, force, model_dir)
    with output_lock(out, "--out"):
        record = check_complete(model_dir)
        trained = load_trained_network(model_dir)
        config = load_config(model_dir, tuned=True)
        network = package_network(trained, config.predict.heads)
        with tempfile.TemporaryDirectory(
            prefix=temporary_prefix(out.name), dir=out.parent
        ) as staging:
            files = _write_package_files(Path(staging), network, model_dir, config)
            description = _model_description(model_dir, config, record, network, files)
            with atomic_path(out) as tmp:
                zip_tmp = tmp.with_suffix(".zip")
                try:
                    save_bioimageio_package(description, output_path=zip_tmp)
                except ValueError as error:  # the library refuses an invalid package
                    first = str(error).strip().splitlines()[0]
                    raise PipelineError(f"{out}: the package is not valid ({first})") from None
                finally:
                    if zip_tmp.exists():
                        zip_tmp.replace(tmp)
    log.info("wrote %s (bioimage.io model package of %s)", out, model_dir)
    return out


def package_network(model: keras.Model, heads: str) -> keras.Model:
    """The network with one output, the probabilities that prediction post-processes: the
    model itself, or for several heads (U-Net++) their mean (``heads="all"``) or the head
    ``heads`` names."""
    if model_outputs(model) == 1:
        return model
    if heads != "all":
        return select_heads(model, heads)
    mean = keras.layers.Average(name="mean_of_heads")(model.outputs)
    return keras.Model(model.inputs, mean, name=f"{model.name}_mean")


def normalisation_expressible(config: Config) -> bool:
    """Whether bioimage.io's ``zero_mean_unit_variance`` is this model's normalisation
    (no inversion of light backgrounds, the ``rgb`` input space).

    >>> from pipeline.config import ModelConfig
    >>> config = Config(model=ModelConfig(invert_light_background=False))
    >>> normalisation_expressible(config)
    True
    >>> config.model.input_space = "grey"
    >>> normalisation_expressible(config)
    False
    """
    return config.model.input_space == "rgb" and not config.model.invert_light_background


def synthetic_test_image(config: Config) -> np.ndarray:
    """The synthetic RGB uint8 image of the test tensors: fluorescence-like, its side
    `TEST_SIDE` rounded up to the network's multiple (the crop size for a model that
    resizes images)."""
    multiple = input_multiple(config.model)
    side = scale_policy(config).fixed_side or -(-TEST_SIDE // multiple) * multiple
    image, _ = make_sample(np.random.default_rng(TEST_SEED), side, side, "fluorescence")
    return image


def _write_package_files(
    staging: Path, network: keras.Model, model_dir: Path, config: Config
) -> PackageFiles:
    """Write the package's files into ``staging``: both weights, the test tensors (the
    network's own output on `synthetic_test_image`), the cover and the README."""
    files = PackageFiles.in_folder(staging)
    network.save(files.keras_weights)
    export_onnx(network, files.onnx_weights)
    image = synthetic_test_image(config)
    model_input = normalise_image(
        image, config.model.invert_light_background, config.model.input_space
    )[None]
    output = np.asarray(network.predict_on_batch(model_input), np.float32)
    check_onnx_output(files.onnx_weights, model_input, output)
    expressible = normalisation_expressible(config)
    test_input = image[None].astype(np.float32) if expressible else model_input
    np.save(files.test_input, test_input)
    np.save(files.test_output, output)
    write_tiff(files.sample_input, test_input[0])
    write_tiff(files.sample_output, output[0])
    write_cover(files.cover, image, output[0, ..., 0])
    files.readme.write_text(readme(model_dir, config, expressible), encoding="utf-8")
    return files


def check_onnx_output(onnx_weights: Path, model_input: np.ndarray, output: np.ndarray) -> None:
    """Refuse ONNX weights whose output on the test input is not the Keras network's (to
    within `ONNX_TOLERANCE`): the package would otherwise describe two networks."""
    session = onnxruntime.InferenceSession(str(onnx_weights), providers=["CPUExecutionProvider"])
    onnx_output = session.run(None, {session.get_inputs()[0].name: model_input})[0]
    difference = float(np.abs(onnx_output - output).max())
    if not difference <= ONNX_TOLERANCE:
        raise PipelineError(
            f"{onnx_weights.name}: the exported ONNX network differs from the Keras one by "
            f"{difference:.2g} on the test image (more than {ONNX_TOLERANCE:g}); not written"
        )


def write_tiff(path: Path, tensor: np.ndarray) -> None:
    """A (height, width, channels) float32 tensor as a TIFF image, its channels as samples
    of each pixel (one channel: a plain grey image)."""
    if tensor.shape[-1] == 1:
        tifffile.imwrite(path, tensor[..., 0], photometric="minisblack")
    else:
        tifffile.imwrite(path, tensor, photometric="minisblack", planarconfig="contig")


def write_cover(path: Path, image: np.ndarray, foreground: np.ndarray) -> None:
    """The cover: the image beside its foreground probability (magma), twice the size."""
    shown = colormaps["magma"](np.clip(foreground, 0, 1))[..., :3] * 255
    both = np.concatenate([image, shown.round().astype(np.uint8)], axis=1)
    both = np.repeat(np.repeat(both, 2, axis=0), 2, axis=1)
    Image.fromarray(both).save(path, format="PNG")


def _setting_rows(config: Config) -> list[dict[str, Any]]:
    """The post-processing settings prediction uses, each with its value and help."""
    return [
        {
            "name": item.name,
            "value": getattr(config.predict, item.name),
            "help": item.metadata["help"],
        }
        for item in section_fields("predict")
        if item.metadata.get("postprocess")
        or item.metadata.get("tunable")
        or item.name in ("heads", "scales", "tile_size", "tile_margin")
    ]


def readme(model_dir: Path, config: Config, expressible: bool) -> str:
    """The package's ``README.md`` (`templates/bioimageio_README.md`)."""
    thresholds = read_json(Path(model_dir) / THRESHOLDS_FILE)
    channel_names = target_channels(config)
    card = data_card(model_dir).splitlines()[1:]  # without its own title
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline.learning", "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return environment.get_template("bioimageio_README.md").render(
        name=Path(model_dir).name,
        architecture=ARCHITECTURE_NAMES.get(config.model.arch, config.model.arch),
        config=config,
        channels=[(name, CHANNEL_MEANINGS.get(name, name)) for name in channel_names],
        channel_names=channel_names,
        multiple=input_multiple(config.model),
        fixed_side=scale_policy(config).fixed_side,
        expressible=expressible,
        eps=EPS,
        onnx_tolerance=f"{ONNX_TOLERANCE:g}",
        settings=_setting_rows(config),
        tuned=bool(thresholds.get("params")),
        thresholds=thresholds,
        scores=read_json(Path(model_dir) / SCORES_FILE),
        data_card="\n".join(card).strip(),
        citations=CITATIONS,
    )


def _input_descr(config: Config, files: PackageFiles) -> v0_5.InputTensorDescr:
    """The input ``image``: batch, y, x, channel (RGB); sides a multiple of the network's
    (the crop size for a model that resizes images); its preprocessing when bioimage.io
    can express it."""
    multiple = input_multiple(config.model)
    size: int | v0_5.ParameterizedSize = v0_5.ParameterizedSize(min=multiple, step=multiple)
    fixed_side = scale_policy(config).fixed_side
    if fixed_side is not None:
        size = fixed_side
    expressible = normalisation_expressible(config)
    preprocessing = []
    if expressible:
        axes = [v0_5.AxisId(name) for name in ("y", "x", "channel")]
        kwargs = v0_5.ZeroMeanUnitVarianceKwargs(axes=axes, eps=EPS)
        preprocessing.append(v0_5.ZeroMeanUnitVarianceDescr(kwargs=kwargs))
    return v0_5.InputTensorDescr(
        id=v0_5.TensorId(INPUT_ID),
        description=(
            "an RGB image (grey: the same in all three channels), any range"
            if expressible
            else "the image normalised by dsb2018's normalise_image (not a bioimage.io op; "
            "see README)"
        ),
        axes=[
            v0_5.BatchAxis(),
            v0_5.SpaceInputAxis(id=v0_5.AxisId("y"), size=size),
            v0_5.SpaceInputAxis(id=v0_5.AxisId("x"), size=size),
            v0_5.ChannelAxis(channel_names=list(INPUT_CHANNELS)),
        ],
        test_tensor=v0_5.FileDescr(source=files.test_input),
        sample_tensor=v0_5.FileDescr(source=files.sample_input),
        data=v0_5.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=preprocessing,
    )


def _output_descr(config: Config, files: PackageFiles) -> v0_5.OutputTensorDescr:
    """The output ``probabilities``: batch, y, x (the input's size), channel (the model's
    target channels), float32 in [0, 1]."""
    same = {
        axis: v0_5.SizeReference(tensor_id=v0_5.TensorId(INPUT_ID), axis_id=v0_5.AxisId(axis))
        for axis in ("y", "x")
    }
    return v0_5.OutputTensorDescr(
        id=v0_5.TensorId(OUTPUT_ID),
        description="per-pixel probabilities, one channel per target (see README); the "
        "instances are this pipeline's step",
        axes=[
            v0_5.BatchAxis(),
            v0_5.SpaceOutputAxis(id=v0_5.AxisId("y"), size=same["y"]),
            v0_5.SpaceOutputAxis(id=v0_5.AxisId("x"), size=same["x"]),
            v0_5.ChannelAxis(channel_names=list(target_channels(config))),
        ],
        test_tensor=v0_5.FileDescr(source=files.test_output),
        sample_tensor=v0_5.FileDescr(source=files.sample_output),
        data=v0_5.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
    )


def _weights_descr(files: PackageFiles) -> v0_5.WeightsDescr:
    """Keras 3 weights (the original, with the backend that wrote them) and the ONNX
    file converted from them (its opset read from the file)."""
    backend = keras.backend.backend()
    backend_version = importlib.import_module(backend).__version__
    proto = onnx.load(str(files.onnx_weights), load_external_data=False)
    opset = next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))
    return v0_5.WeightsDescr(
        keras_v3=v0_5.KerasV3WeightsDescr(
            source=files.keras_weights,
            keras_version=v0_5.Version(keras.__version__),
            backend=(backend, v0_5.Version(backend_version)),
        ),
        onnx=v0_5.OnnxWeightsDescr(
            source=files.onnx_weights,
            opset_version=opset,
            parent="keras_v3",
            comment="exported by Keras (model.export(format='onnx'), tf2onnx)",
        ),
    )


def package_name(model_dir: Path, arch: str) -> str:
    """The package's name: the architecture's and the model folder's, in the characters
    bioimage.io allows.

    >>> package_name(Path("models/extra.all"), "unetpp")
    'DSB2018 nuclei U-Net++ extra-all'
    """
    folder = re.sub(r"[^A-Za-z0-9_+\- ()]", "-", Path(model_dir).name)
    return f"DSB2018 nuclei {ARCHITECTURE_NAMES.get(arch, arch)} {folder}"[:64]


def licence(model_dir: Path) -> str:
    """The package's SPDX licence: the pipeline's (BSD-3-Clause), or CC BY-NC-SA 4.0 when
    its training data (`pipeline.learning.data_card`, a fine-tuned model's starting
    model's included) hold a set under it (MoNuSeg): a model carries its data's terms."""
    return "CC-BY-NC-SA-4.0" if "BY-NC-SA" in data_card(model_dir) else "BSD-3-Clause"


def _dsb2018_config(model_dir: Path, config: Config, record: dict[str, Any]) -> dict[str, Any]:
    """``config.dsb2018`` of ``rdf.yaml``: who wrote the package (`EXPORTED_BY`, which
    `is_exported_package` reads) from which model, whether the preprocessing is declared,
    and the post-processing settings."""
    expressible = normalisation_expressible(config)
    return {
        "exported_by": EXPORTED_BY,
        "model_folder": Path(model_dir).name,
        "weights_sha256": record["weights_sha256"],
        "git_commit": git_commit(),
        "preprocessing_in_rdf": expressible,
        "preprocessing": (
            "zero_mean_unit_variance over y, x, channel per image"
            if expressible
            else "not expressible in bioimage.io ops (light backgrounds inverted, or the "
            "grey input space): the input is already normalised, see README"
        ),
        "postprocessing": {row["name"]: row["value"] for row in _setting_rows(config)},
        "tuned": bool(read_json(Path(model_dir) / THRESHOLDS_FILE).get("params")),
    }


def _model_description(
    model_dir: Path,
    config: Config,
    record: dict[str, Any],
    network: keras.Model,
    files: PackageFiles,
) -> v0_5.ModelDescr:
    """The package's ``rdf.yaml``, as a `bioimageio.spec` model description."""
    return v0_5.ModelDescr(
        name=package_name(model_dir, config.model.arch),
        description=(
            f"Per-pixel nucleus probabilities ({', '.join(target_channels(config))}) of a "
            f"{ARCHITECTURE_NAMES.get(config.model.arch, config.model.arch)} trained by the "
            "DSB2018 pipeline; the instances (watershed, tuned thresholds) are the "
            "pipeline's step, in README.md."
        ),
        authors=[v0_5.Author(name="dsb2018-pipeline")],
        cite=[v0_5.CiteEntry(text=text, doi=v0_5.Doi(doi)) for text, doi in CITATIONS],
        license=licence(model_dir),
        documentation=v0_5.FileDescr(source=files.readme),
        covers=[v0_5.FileDescr(source=files.cover)],
        inputs=[_input_descr(config, files)],
        outputs=[_output_descr(config, files)],
        weights=_weights_descr(files),
        tags=[
            "nuclei",
            "2d",
            "unet",
            "tensorflow",
            "semantic-segmentation",
            "fluorescence-light-microscopy",
            "transmission-light-microscopy",
            "deepimagej",
            "ilastik",
            "dsb2018",
        ],  # fmt: skip
        config=v0_5.Config(
            bioimageio=v0_5.BioimageioConfig(
                architecture_type=config.model.arch,
                model_parameter_count=int(network.count_params()),
                target_structure=["nuclei"],
                task="segmentation (per-pixel probabilities)",
            ),
            dsb2018=_dsb2018_config(model_dir, config, record),
        ),
    )
