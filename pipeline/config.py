"""The one typed configuration of a run: model, training and prediction settings.

A ``Config`` is written as ``config.json`` beside every model, and beside every
submission with its score, so a result can always be traced to what produced it.
Presets name the configurations people ask for: ``default`` (the best CPU-trainable
model), ``seeds-baseline`` (the 128x128 resize U-Net the project grew from) and ``demo``
(a tiny model for the synthetic demo set).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.fileio import atomic_write_text

#: The allowed values of the settings that take a name; the modules that implement them
#: check against these tuples.
ARCHITECTURES = ("unet", "unetpp", "mobilenetv2_unet")
ENCODER_WEIGHTS = ("imagenet", "none")
INPUT_SPACES = ("rgb", "grey")
RESIZE_POLICIES = ("native", "resize", "nucleus")
SPLITS = ("random", "conditions")
AUGMENT_STRENGTHS = ("default", "strong")
LOSSES = ("bce_dice", "bce", "dice")
PRECISIONS = ("auto", "float32", "bfloat16")
METHODS = ("components", "watershed", "random_walker")
SOURCE_WEIGHTINGS = ("sqrt", "size", "equal")
#: The target sets ``targets`` names -> the channels the network learns of each
#: (`pipeline.core.targets`); the first is always ``foreground``.
TARGET_SETS: dict[str, tuple[str, ...]] = {
    "foreground": ("foreground",),
    "border": ("foreground", "border"),
    "border_centre": ("foreground", "border", "centre"),
}


def setting(
    default: Any,
    help: str,  # noqa: A002 - argparse's name for it
    *,
    choices: tuple[str, ...] | None = None,
    low: float | None = None,
    high: float | None = None,
    flag: str | None = None,
    negate: bool = False,
    parse: Callable[[str], Any] | None = None,
    group: str | None = None,
    metavar: str | None = None,
    tunable: bool = False,
    postprocess: bool = False,
    repeat: bool = False,
    neutral: bool | Callable[[dict[str, dict[str, Any]]], bool] = False,
) -> Any:
    """A config field with everything declared about it, in one place.

    Parameters
    ----------
    default, help
        The value a new config takes, and what the setting means (the flag's help).
    choices, low, high
        The allowed values: one of ``choices``, or a number in ``[low, high]``.
    flag, negate
        The command-line flag, when not ``--`` and the field's name with dashes; with
        ``negate`` the flag says the opposite of the field (``--freeze-encoder`` sets
        ``encoder_trainable`` to False).
    parse
        Turns the flag's text into the value (raising ``PipelineError`` when it cannot).
    group, metavar
        The help's group for the flag, and the name of its value.
    tunable, postprocess
        Saved in a model's ``thresholds.json`` by ``tune``; passed to the post-processing
        (``pipeline.inference.postprocess``) as a parameter.
    repeat
        A text setting whose flag may be given several times; the values are kept joined
        by commas (`split_list`).
    neutral
        Left out of `Config.training_fingerprint` while it trains as before it existed, so
        older models keep theirs: True at its default, or a function of the model and train
        sections (as `Config.to_dict` gives them) that says when the setting is unused.
    """
    metadata = {
        "help": help,
        "choices": choices,
        "low": low,
        "high": high,
        "flag": flag,
        "negate": negate,
        "parse": parse,
        "group": group,
        "metavar": metavar,
        "tunable": tunable or postprocess,
        "postprocess": postprocess,
        "repeat": repeat,
        "neutral": neutral,
    }
    return field(default=default, metadata=metadata)


def declared_types(section: type) -> type:
    """Give each field of a dataclass of settings its declared type (``bool``, ``int``,
    ``float`` or ``str``) as ``Field.type``, where ``from __future__ import annotations``
    leaves the annotation's text (``"bool"``): checks then compare types, not strings.

    >>> [item.type for item in dataclasses.fields(ModelConfig)][:2]
    [<class 'str'>, <class 'int'>]
    """
    hints = typing.get_type_hints(section)
    for item in dataclasses.fields(section):
        item.type = hints[item.name]
    return section


def check_heads(heads: str) -> str:
    """``heads`` as ``PredictConfig.heads`` holds it: "all" or a head number from 1.

    >>> check_heads("2"), check_heads("all")
    ('2', 'all')
    """
    heads = str(heads).strip().lower()
    if heads == "all" or (heads.isdigit() and int(heads) >= 1):
        return heads
    raise PipelineError(f"heads must be 'all' or a head number from 1, got {heads!r}")


#: The range of every scale factor (`pipeline.core.scale`): no image is shrunk or enlarged
#: more than four times.
FACTOR_LIMITS = (0.25, 4.0)


def check_scales(scales: str) -> str:
    """``scales`` as ``PredictConfig.scales`` holds it: test-time scale factors, separated by
    commas, each within `FACTOR_LIMITS`, none twice.

    >>> check_scales(" 0.5, 1,2 "), check_scales("1")
    ('0.5,1,2', '1')
    """
    low, high = FACTOR_LIMITS
    factors = []
    for part in str(scales).split(","):
        try:
            factor = float(part)
        except ValueError:
            factor = math.nan
        if not low <= factor <= high:
            raise PipelineError(
                f"scales must be factors from {low:g} to {high:g} separated by commas, "
                f"got {scales!r}"
            )
        factors.append(factor)
    if len(set(factors)) < len(factors):
        raise PipelineError(f"scales must not repeat a factor, got {scales!r}")
    return ",".join(f"{factor:g}" for factor in factors)


def check_extra(extra: str) -> str:
    """``extra`` as ``TrainConfig.extra`` holds it: entries separated by commas, none twice.

    >>> check_extra(" lpc, my_cells.zip ")
    'lpc,my_cells.zip'
    """
    entries = split_list(extra)
    if len(set(entries)) < len(entries):
        raise PipelineError(f"extra must not name a set twice, got {extra!r}")
    return ",".join(entries)


#: The smallest tile ``predict --tile-size`` takes (0: never tile).
MIN_TILE_SIZE = 16


def check_tile_size(text: str | int) -> int:
    """``tile_size`` as ``PredictConfig.tile_size`` holds it: 0 (never tile) or a side of at
    least `MIN_TILE_SIZE` pixels (a smaller one once meant "never tile", silently).

    >>> check_tile_size("512"), check_tile_size("0")
    (512, 0)
    """
    try:
        value = int(text)
    except (TypeError, ValueError):
        value = -1
    if value == 0 or value >= MIN_TILE_SIZE:
        return value
    raise PipelineError(
        f"tile_size must be 0 (never tile) or at least {MIN_TILE_SIZE} pixels, got {text!r}"
    )


#: The largest nucleus diameter ``--diameter`` takes, in pixels.
MAX_DIAMETER = 1000.0


def check_diameter(value: str | float) -> float:
    """``diameter`` as ``PredictConfig.diameter`` holds it: 0 (off: each image at the
    model's own choice of scale), or a nucleus diameter in pixels, up to `MAX_DIAMETER`.
    Given as text (a flag, a request) it must be a diameter: ``0`` there is refused, as
    leaving the flag out is the way to keep the model's scale.

    >>> check_diameter("60"), check_diameter(0.0)
    (60.0, 0.0)
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    given = isinstance(value, str)
    if math.isfinite(number) and (0 < number <= MAX_DIAMETER or (number == 0 and not given)):
        return number
    raise PipelineError(
        f"diameter must be a typical nucleus diameter in pixels, above 0 and at most "
        f"{MAX_DIAMETER:g}, got {value!r} (leave it out to keep the model's scale)"
    )


def split_list(text: str) -> list[str]:
    """The entries of a comma-separated setting, stripped, empty ones left out.

    >>> split_list("a, b,,c"), split_list("")
    (['a', 'b', 'c'], [])
    """
    return [part.strip() for part in str(text).split(",") if part.strip()]


def scale_factors(scales: str) -> tuple[float, ...]:
    """The factors of a `check_scales` text.

    >>> scale_factors("0.5,1,2")
    (0.5, 1.0, 2.0)
    """
    return tuple(float(part) for part in check_scales(scales).split(","))


def _arch_is_not_mobilenet(sections: dict[str, dict[str, Any]]) -> bool:
    """Whether the encoder settings are unused: only mobilenetv2_unet has an encoder."""
    return sections["model"]["arch"] != "mobilenetv2_unet"


def _no_extra_set(sections: dict[str, dict[str, Any]]) -> bool:
    """Whether the source weighting is unused: without an extra set there is one source."""
    return not sections["train"]["extra"]


def _policy_is_not_nucleus(sections: dict[str, dict[str, Any]]) -> bool:
    """Whether the nucleus diameter is unused: only the nucleus policy rescales to it."""
    return sections["train"]["resize_policy"] != "nucleus"


@declared_types
@dataclass
class ModelConfig:
    """Architecture of the network, and what it sees and learns."""

    arch: str = setting(
        "unet",
        "architecture: unet, unetpp (U-Net++: nested dense skips, one output head per "
        "top-level node) or mobilenetv2_unet (a MobileNetV2 encoder, a U-Net decoder)",
        choices=ARCHITECTURES,
    )
    base_filters: int = setting(
        16, "filters of the first level; doubled at each level down", low=1, high=256
    )
    depth: int = setting(
        4,
        "down-sampling steps (mobilenetv2_unet: always 5); at most log2 of the crop size",
        low=1,
    )
    dropout: float = setting(0.1, "dropout rate at the bottom of the U", low=0, high=0.9)
    batch_norm: bool = setting(True, "batch normalisation after each convolution")
    invert_light_background: bool = setting(
        True,
        "invert light-background images (brightfield, histology) before standardising, so "
        "that nuclei are bright on dark in every kind",
        flag="invert-light",
    )
    input_space: str = setting(
        "rgb",
        "what the network sees: rgb (the colours as they are) or grey (one grey level, "
        "light backgrounds inverted, the same for every kind whatever its stain)",
        choices=INPUT_SPACES,
        neutral=True,
    )
    targets: str = setting(
        "foreground",
        "what the network learns (pipeline.core.targets.TARGET_SETS): foreground, or "
        "with a border (border) and a centre (border_centre) channel for the watershed",
        choices=tuple(TARGET_SETS),
    )
    encoder_weights: str = setting(
        "imagenet",
        "mobilenetv2_unet: the encoder's initial weights (imagenet: downloaded once into "
        "~/.keras/models/; none: random)",
        choices=ENCODER_WEIGHTS,
        neutral=_arch_is_not_mobilenet,
    )
    encoder_trainable: bool = setting(
        True,
        "mobilenetv2_unet: keep the encoder's weights fixed (only the decoder learns)",
        flag="freeze-encoder",
        negate=True,
        neutral=_arch_is_not_mobilenet,
    )


@declared_types
@dataclass
class TrainConfig:
    """How the network is trained."""

    resize_policy: str = setting(
        "native",
        "native: random crops at the images' own scale (whole images are predicted, "
        "padded); resize: every image resized to the crop size (the seeds' way); nucleus: "
        "like native, images first rescaled so that their median nucleus is "
        "--nucleus-diameter pixels across (estimated by a first pass in prediction)",
        choices=RESIZE_POLICIES,
    )
    nucleus_diameter: float = setting(
        20.0,
        "resize-policy nucleus: the median nucleus diameter, in pixels, that every image "
        "is rescaled to",
        low=1,
        metavar="D",
        neutral=_policy_is_not_nucleus,
    )
    crop_size: int = setting(128, "side of the training crops, in pixels", low=16, high=2048)
    scale_min: float = setting(
        0.75, "augmentation's random scale: the smallest factor", low=0.05, high=20, neutral=True
    )
    scale_max: float = setting(
        1.5, "augmentation's random scale: the largest factor", low=0.05, high=20, neutral=True
    )
    epochs: int = setting(40, "training epochs", low=1)
    batch_size: int = setting(16, "images per training batch", low=1)
    steps_per_epoch: int = setting(
        0, "batches per epoch (0: one pass over the training images)", low=0
    )
    learning_rate: float = setting(
        1e-3, "initial learning rate (cosine decay to 5% of it)", low=1e-7, high=1
    )
    val_fraction: float = setting(
        0.15, "share of stage1_train held out for validation", low=0.01, high=0.9
    )
    split: str = setting(
        "random",
        "validation split: random (stratified by kind) or conditions (whole acquisition "
        "conditions, size and kind, held out: measures generalisation to unseen ones)",
        choices=SPLITS,
        neutral=True,
    )
    extra: str = setting(
        "",
        "extra annotated sets that join the training side (repeatable): a known set's name "
        "(cpm15, monuseg, lpc: read from input/external/<name>, where ./run.sh download "
        "--from DIR unpacks them), or a folder or zip in Kaggle layout, of images with "
        "name_masks label images beside them, or of images/ + labels/ "
        "(pipeline.data.extra). Validation that chooses stays on --images; each set keeps "
        "a held-out share scored beside it",
        parse=check_extra,
        repeat=True,
        metavar="SET",
        neutral=True,
    )
    source_weighting: str = setting(
        "sqrt",
        "with --extra: how often each source (the --images set and each extra set) is drawn "
        "per epoch: sqrt (in proportion to the square root of its number of training "
        "images, the tiles of one image counted once), size (every image alike) or equal "
        "(every source alike); an epoch stays one pass over the --images set's training "
        "images unless --steps-per-epoch",
        choices=SOURCE_WEIGHTINGS,
        neutral=_no_extra_set,
    )
    with_stage1_test: bool = setting(
        False,
        "also train on the stage-1 test images with their released labels (stage1_test/ and "
        "stage1_solution.csv beside the training folder): the stage-2 recipe. They join the "
        "training side only, never validation; the model's stage1_test score is then on "
        "labels it learned, so the leaderboard flags it and does not rank it",
        neutral=True,
    )
    seed: int = setting(42, "seed of the split, the augmentation and the weights")
    eval_every: int = setting(
        3, "epochs between competition-metric evaluations on validation", low=1
    )
    patience: int = setting(5, "evaluations without improvement before stopping early", low=1)
    augment: bool = setting(True, "augment the training samples")
    augment_strength: str = setting(
        "default",
        "default: mild intensity and colour changes; strong: wide gamma and stain colour "
        "changes, grey, blur",
        choices=AUGMENT_STRENGTHS,
        neutral=True,
    )
    dim_nuclei: float = setting(
        0.0,
        "share of training samples in which about half the nuclei are dimmed against the "
        "background, so that dim nuclei beside bright ones are found (0: never)",
        low=0,
        high=1,
        metavar="P",
        neutral=True,
    )
    paste_nuclei: float = setting(
        0.0,
        "share of training samples into which up to 3 copies of their own nuclei are "
        "pasted against other nuclei, so that touching nuclei are common (0: never)",
        low=0,
        high=1,
        metavar="P",
        neutral=True,
    )
    stain_tissue: float = setting(
        0.0,
        "share of fluorescence training samples re-coloured as H&E-stained tissue "
        "(hematoxylin from the nuclei's brightness, eosin from a random texture), so that "
        "stained nuclei are not new to the network (0: never)",
        low=0,
        high=1,
        metavar="P",
        neutral=True,
    )
    loss: str = setting("bce_dice", "training loss", choices=LOSSES)
    precision: str = setting(
        "auto", "auto: bfloat16 where it pays off; float32; bfloat16", choices=PRECISIONS
    )
    max_minutes: float = setting(
        0.0,
        "wall-clock budget in minutes: no epoch is started that would end past it (0: none)",
        low=0,
        neutral=True,
    )


@declared_types
@dataclass
class PredictConfig:
    """How probabilities become nucleus instances.

    The ``tunable`` settings take the config's values until ``./run.sh tune`` (run at the
    end of training) saves tuned ones in the model's ``thresholds.json``; flags override
    both.
    """

    method: str = setting(
        "components",
        "how instances are split: components, watershed (markers from the border "
        "channel, or from the mask's distance map), or random_walker (the same markers, "
        "grown by a random walker instead of flooding)",
        choices=METHODS,
        group="post-processing",
        postprocess=True,
    )
    threshold: float = setting(
        0.5,
        "foreground threshold: a pixel is nucleus above it",
        low=0,
        high=1,
        group="post-processing",
        postprocess=True,
    )
    marker_threshold: float = setting(
        0.5,
        "watershed seed threshold (on foreground - border_weight * border)",
        low=-10,
        high=1,
        group="post-processing",
        postprocess=True,
    )
    border_weight: float = setting(
        1.0,
        "weight of the border channel in the watershed seeds",
        low=0,
        high=10,
        group="post-processing",
        postprocess=True,
    )
    min_size: int = setting(
        10, "smallest nucleus, in pixels", low=0, group="post-processing", postprocess=True
    )
    fill_holes: bool = setting(
        True,
        "fill background enclosed by one nucleus with it",
        group="post-processing",
        postprocess=True,
    )
    min_marker_size: int = setting(
        3,
        "watershed seeds with fewer pixels are dropped",
        low=0,
        group="post-processing",
        postprocess=True,
    )
    tta: bool = setting(
        False, "average the 8 flips and rotations", group="post-processing", tunable=True
    )
    batch_size: int = setting(4, "images per batch", low=1, group="run")
    engine: str = setting(
        "keras",
        "what runs the network: keras, or onnxruntime (on the CPU, float32; the network "
        "exported once from the same weights: the model folder's model.onnx, written by "
        "./run.sh export --onnx, else a copy exported into the cache on first use)",
        choices=("keras", "onnxruntime"),
        group="run",
    )
    precision: str = setting(
        "float32",
        "the network's arithmetic: float32, or bfloat16 (mixed: bfloat16 compute, float32 "
        "weights; faster on GPUs and on CPUs with bfloat16 units)",
        choices=("float32", "bfloat16"),
        group="run",
    )
    heads: str = setting(
        "all",
        "models with several output heads (unetpp): average them all (accurate), or use "
        "head N alone, the network cut after it (fast); the saved thresholds were tuned "
        "with the config's value",
        parse=check_heads,
        group="network output",
        metavar="all|N",
    )
    scales: str = setting(
        "1",
        "test-time scales: each image is predicted at every factor given (e.g. 0.5,1,2) "
        "and the one whose foreground is most confident is kept, image by image "
        "(pipeline.core.scale.most_confident); 1: its own size only. For models "
        "trained at native scale: the nucleus and resize policies set the scale themselves",
        parse=check_scales,
        group="network output",
        metavar="S[,S...]",
    )
    diameter: float = setting(
        0.0,
        "the typical nucleus diameter of your images, in pixels (Cellpose's --diameter): "
        "each image is rescaled so that it matches the median diameter the model was "
        "trained on (recorded in its folder; stage1_train's 19.9 for a model without the "
        "record), predicted, and brought back to its own size; replaces the model's "
        "test-time scales. Left out (0): the model's own scale",
        low=0,
        high=MAX_DIAMETER,
        parse=check_diameter,
        group="network output",
        metavar="PX",
    )
    tile_size: int = setting(
        1024,
        "images with a side longer than this are predicted in overlapping tiles of this "
        "size, bounding memory (0: always whole; else at least 16)",
        low=0,
        parse=check_tile_size,
        group="network output",
    )
    tile_margin: int = setting(
        96, "pixels of each cut tile edge that are dropped", low=0, group="network output"
    )


#: Config section name -> its dataclass.
SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "train": TrainConfig,
    "predict": PredictConfig,
}


def _range_text(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"in [{low:g}, {high:g}]"
    return f">= {low:g}" if low is not None else f"<= {high:g}"


def _in_range(value: float, low: float | None, high: float | None) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


def value_parser(item: dataclasses.Field) -> Callable[[str], Any]:
    """The argparse ``type`` of a config field's flag: its type, range and own parser (the
    command line's and the page's, `pipeline.serving.segmenter`).

    >>> from pipeline.config import TrainConfig
    >>> epochs = {f.name: f for f in dataclasses.fields(TrainConfig)}["epochs"]
    >>> value_parser(epochs)("12")
    12
    """
    meta = item.metadata
    low, high = meta["low"], meta["high"]

    def parse(text: str) -> Any:
        if meta["parse"] is not None:
            try:
                return meta["parse"](text)
            except PipelineError as error:
                raise argparse.ArgumentTypeError(str(error)) from None
        if item.type is int:
            try:
                value = int(text)
            except ValueError:
                value = None
            if value is None or not _in_range(value, low, high):
                bounds = _range_text(low, high) if (low, high) != (None, None) else ""
                message = f"expected a whole number {bounds}".rstrip()
                raise argparse.ArgumentTypeError(f"{message}, got {text!r}")
            return value
        if item.type is float:
            value = finite_float(text)
            if (low, high) != (None, None) and not _in_range(value, low, high):
                raise argparse.ArgumentTypeError(f"{text} is not {_range_text(low, high)}")
            return value
        return text

    return parse


def finite_float(text: str) -> float:
    """The argparse ``type`` of every number flag: a float, never NaN nor infinite (a
    limit of NaN could never refuse anything).

    >>> finite_float("2.5")
    2.5
    >>> finite_float("nan")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: 'nan' is not a finite number
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def section_fields(section: str, **metadata: Any) -> tuple[dataclasses.Field, ...]:
    """The fields of a section, those whose metadata has the given values.

    >>> [f.name for f in section_fields("predict", tunable=True)][:2]
    ['method', 'threshold']
    """
    return tuple(
        item
        for item in dataclasses.fields(SECTIONS[section])
        if all(item.metadata.get(key) == value for key, value in metadata.items())
    )


#: The prediction settings a model's thresholds.json may hold, and the post-processing
#: parameters with their defaults: both read from PredictConfig's declarations.
TUNABLE = tuple(item.name for item in section_fields("predict", tunable=True))
POSTPROCESS_DEFAULTS: dict[str, Any] = {
    item.name: item.default for item in section_fields("predict", postprocess=True)
}


def setting_problem(item: dataclasses.Field, value: Any) -> str | None:
    """What is wrong with ``value`` for a declared setting, or None when it is allowed.

    >>> threshold = section_fields("predict", postprocess=True)[1]
    >>> setting_problem(threshold, 0.6), setting_problem(threshold, 7.5)
    (None, 'not in [0, 1]')
    >>> setting_problem(threshold, "high")
    "not a number: 'high'"
    """
    meta = item.metadata
    if item.type is bool:
        return None if isinstance(value, bool) else f"not true or false: {value!r}"
    if item.type in (int, float):
        whole = isinstance(value, int) and not isinstance(value, bool)
        if item.type is int and not whole:
            return f"not a whole number: {value!r}"
        if not whole and not isinstance(value, float):
            return f"not a number: {value!r}"
        low, high = meta["low"], meta["high"]
        inside = (low is None or value >= low) and (high is None or value <= high)
        if inside and math.isfinite(value) and meta["parse"] is not None:
            try:
                meta["parse"](value)
            except PipelineError as error:
                return str(error)
        if inside and math.isfinite(value):  # NaN is in no range; no setting is infinite
            return None
        if low is not None and high is not None:
            return f"not in [{low:g}, {high:g}]"
        return f"not >= {low:g}" if low is not None else f"not <= {high:g}"
    if not isinstance(value, str):
        return f"not text: {value!r}"
    if meta["choices"] and value not in meta["choices"]:
        return f"not one of {', '.join(meta['choices'])}"
    if meta["parse"] is not None:
        try:
            meta["parse"](value)
        except PipelineError as error:
            return str(error)
    return None


def check_section(section: str, values: Any, source: str) -> None:
    """Refuse a section whose settings are not all allowed, naming the source and value."""
    for item in dataclasses.fields(SECTIONS[section]):
        value = getattr(values, item.name)
        problem = setting_problem(item, value)
        if problem is not None:
            raise PipelineError(f"{source}: {section}.{item.name} = {value!r} is {problem}")
    if section == "train" and values.scale_min > values.scale_max:
        raise PipelineError(
            f"{source}: train.scale_min {values.scale_min:g} is above train.scale_max "
            f"{values.scale_max:g}"
        )


def check_network_fits(config: Config, source: str) -> None:
    """Refuse a network deeper than its training crop: each level halves the crop, and
    the bottom of the U must keep at least a pixel (a deeper one hung before its first
    epoch). Checked before anything is built."""
    halvings = 5 if config.model.arch == "mobilenetv2_unet" else config.model.depth
    crop = config.train.crop_size
    if crop < 2**halvings:
        deepest = max(0, crop.bit_length() - 1)
        raise PipelineError(
            f"{source}: model.depth {halvings} halves the {crop}-pixel crop {halvings} times, "
            f"to {crop / 2**halvings:g} pixels at the bottom of the U (under 1); at most depth "
            f"{deepest} for this crop, or a --crop-size of at least {2**halvings}"
        )


@dataclass
class Config:
    """A whole run: what is trained and how it is turned into a submission."""

    name: str = "default"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> Config:
        """Build a config from a dict, refusing unknown keys (a typo must not pass silently)."""
        sections = SECTIONS
        if not isinstance(data, dict):
            raise PipelineError(f"{source}: not a config (a JSON object of sections expected)")
        unknown = set(data) - {"name", *sections}
        if unknown:
            raise PipelineError(f"{source}: unknown config keys {sorted(unknown)}")
        kwargs: dict[str, Any] = {"name": str(data.get("name", "default"))}
        for key, section in sections.items():
            values = data.get(key, {})
            if not isinstance(values, dict):
                raise PipelineError(f"{source}: '{key}' must be a JSON object of settings")
            names = {f.name for f in dataclasses.fields(section)}
            bad = set(values) - names
            if bad:
                raise PipelineError(f"{source}: unknown keys in '{key}': {sorted(bad)}")
            kwargs[key] = section(**values)
            check_section(key, kwargs[key], source)
        config = cls(**kwargs)
        check_network_fits(config, source)
        return config

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Config:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as error:
            raise PipelineError(f"{path}: no such config file") from error
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise PipelineError(f"{path}: not valid JSON ({error})") from error
        return cls.from_dict(data, source=str(path))

    def training_fingerprint(self) -> str:
        """A short hash of everything that changes the trained weights.

        Two configs with the same fingerprint train the same model, so the main job can
        skip training when a model with this fingerprint already exists.
        """
        data = self.to_dict()
        sections = {"model": data["model"], "train": data["train"]}
        # Settings added after models were trained are left out while they train as before
        # they existed (their declared ``neutral``), so the models trained then keep theirs.
        left_out = [
            (section, item.name)
            for section in sections
            for item in dataclasses.fields(SECTIONS[section])
            if _trains_as_before(item, sections[section][item.name], sections)
        ]
        for section, name in left_out:
            del sections[section][name]
        payload = json.dumps(sections, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _trains_as_before(
    item: dataclasses.Field, value: Any, sections: dict[str, dict[str, Any]]
) -> bool:
    """Whether a setting's ``value`` in the config whose model and train ``sections`` are
    given trains as before the setting existed (its declared ``neutral``; see `setting`)."""
    neutral = item.metadata["neutral"]
    if callable(neutral):
        return neutral(sections)
    return neutral is True and value == item.default


def _preset_default() -> Config:
    """The shipped models/default's recipe, chosen on held-out acquisition conditions with
    the random split kept within 0.01 (docs/experiments.md): native-scale crops of one grey
    input space (light backgrounds inverted), randomly rescaled 0.6-1.8x, the foreground
    alone split by a watershed on the mask's distance map, at most 50 epochs or 40 minutes
    (patience 10); each image predicted at its own size and at half of it, the more
    confident kept."""
    return Config(
        name="default",
        model=ModelConfig(targets="foreground", invert_light_background=False, input_space="grey"),
        train=TrainConfig(
            epochs=50,
            augment_strength="default",
            scale_min=0.6,
            scale_max=1.8,
            patience=10,
            max_minutes=40.0,
        ),
        predict=PredictConfig(method="watershed", scales="0.5,1"),
    )


def _preset_seeds_baseline() -> Config:
    """The seeds' baseline: 128x128 resized input, 16 base filters, threshold 0.5, CC."""
    return Config(
        name="seeds-baseline",
        model=ModelConfig(
            arch="unet",
            base_filters=16,
            depth=4,
            dropout=0.1,
            batch_norm=False,
            invert_light_background=False,
        ),
        train=TrainConfig(
            resize_policy="resize", crop_size=128, epochs=30, augment=False, loss="bce_dice"
        ),
        predict=PredictConfig(threshold=0.5, min_size=0, fill_holes=False),
    )


def _preset_demo() -> Config:
    """A tiny model for the synthetic demo set: every stage runs in two or three minutes."""
    return Config(
        name="demo",
        # encoder_weights "none": the demo runs offline (--arch mobilenetv2_unet included).
        model=ModelConfig(
            arch="unet",
            base_filters=8,
            depth=3,
            dropout=0.0,
            targets="border",
            encoder_weights="none",
        ),
        train=TrainConfig(
            resize_policy="native",
            crop_size=128,
            epochs=24,
            batch_size=8,
            eval_every=4,
            patience=10,
            precision="float32",
        ),
        predict=PredictConfig(method="watershed", threshold=0.5, min_size=10),
    )


PRESETS = {
    "default": _preset_default,
    "seeds-baseline": _preset_seeds_baseline,
    "demo": _preset_demo,
}


def preset(name: str) -> Config:
    """A fresh copy of a named preset configuration."""
    try:
        config = PRESETS[name]()
    except KeyError:
        raise PipelineError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}") from None
    for section in SECTIONS:
        check_section(section, getattr(config, section), f"preset {name!r}")
    return config
