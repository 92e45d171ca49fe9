"""The one typed configuration of a run: model, training and prediction settings.

A ``Config`` is written as ``config.json`` beside every model, and beside every
submission with its score, so a result can always be traced to what produced it.
Presets name the configurations people ask for: ``default`` (the best CPU-trainable
model), ``seeds-baseline`` (the 128x128 resize U-Net the project grew from) and ``demo``
(a tiny model for the synthetic demo set).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

#: TrainConfig.resize_policy values.
RESIZE_POLICIES = ("native", "resize", "nucleus")
#: TrainConfig.split values.
SPLITS = ("random", "conditions")


@dataclass
class ModelConfig:
    """Architecture of the network."""

    # "unet", "unetpp" (U-Net++: nested dense skips, one output head per top-level node)
    # or "mobilenetv2_unet" (a MobileNetV2 encoder, a U-Net decoder); see pipeline.learning.models.
    arch: str = "unet"
    base_filters: int = 16  # filters of the first level; doubled at each level down
    depth: int = 4  # number of down-sampling steps (mobilenetv2_unet: always 5)
    dropout: float = 0.1
    batch_norm: bool = True
    # Invert light-background images (brightfield, histology) before standardising, so
    # nuclei are bright on dark in every image kind.
    invert_light_background: bool = True
    # What the network sees (pipeline.learning.preprocess.INPUT_SPACES): "rgb", the colours as
    # they are, or "grey", one grey level with light backgrounds inverted, the same for
    # every kind of image whatever its stain.
    input_space: str = "rgb"
    # What the network learns (pipeline.learning.targets.TARGET_SETS): "foreground" alone, or with
    # a "border" channel (and a "centre" one) for splitting touching nuclei by watershed.
    targets: str = "foreground"
    # mobilenetv2_unet only: the encoder's initial weights, "imagenet" or "none" (random),
    # and whether training updates them (False: a frozen encoder, only the decoder learns).
    encoder_weights: str = "imagenet"
    encoder_trainable: bool = True


@dataclass
class TrainConfig:
    """How the network is trained."""

    # "native": random crops of crop_size at the images' own scale (whole images are
    # predicted, padded); "resize": every image resized to crop_size (the seeds' way);
    # "nucleus": like native, with every image first rescaled so that its median nucleus
    # is nucleus_diameter pixels across (pipeline.inference.scale; in prediction the diameter is
    # estimated from a first pass).
    resize_policy: str = "native"
    nucleus_diameter: float = 20.0
    crop_size: int = 128
    # Augmentation's random scale range: each crop is taken from the image scaled by a
    # factor drawn from [scale_min, scale_max] (pipeline.learning.augment.RandomScaleCrop).
    scale_min: float = 0.75
    scale_max: float = 1.5
    epochs: int = 40
    batch_size: int = 16
    steps_per_epoch: int = 0  # 0: one pass over the training images per epoch
    learning_rate: float = 1e-3
    val_fraction: float = 0.15
    # "random": validation images drawn from every kind (pipeline.learning.training.split_ids);
    # "conditions": whole acquisition conditions (size and kind) held out, so that the
    # validation score measures generalisation to unseen ones (split_by_condition).
    split: str = "random"
    seed: int = 42
    eval_every: int = 3  # epochs between competition-metric evaluations on validation
    patience: int = 5  # evaluations without improvement before stopping early
    augment: bool = True
    # How hard the augmentation changes pixel values (pipeline.learning.augment.STRENGTHS):
    # "default" (mild) or "strong" (wide gamma and stain colour, grey, blur).
    augment_strength: str = "default"
    # Share of training samples in which about half the nuclei are dimmed against the
    # background (pipeline.learning.augment.dim_nuclei), so that dim nuclei beside bright ones
    # are still found; 0: never.
    dim_nuclei: float = 0.0
    loss: str = "bce_dice"
    precision: str = "auto"  # "auto": bfloat16 where it pays off, "float32", "bfloat16"
    # Wall-clock budget of the training, in minutes (0: none): no epoch is started that
    # would end past it (by the mean epoch time so far), and the last one is evaluated.
    max_minutes: float = 0.0


@dataclass
class PredictConfig:
    """How probabilities become nucleus instances."""

    # Defaults until ./run.sh tune (run at the end of training) saves tuned values in the
    # model's thresholds.json; command-line flags override both.
    method: str = "components"  # "components" or "watershed" (needs a border channel)
    threshold: float = 0.5  # foreground probability above which a pixel is nucleus
    marker_threshold: float = 0.5  # watershed seeds: foreground - border_weight * border
    border_weight: float = 1.0
    min_size: int = 10  # instances smaller than this (pixels) are dropped
    fill_holes: bool = True
    batch_size: int = 4
    tta: bool = False
    # Models with several output heads (unetpp): "all" averages them (accurate), "N" uses
    # head N alone (fast: the network is cut after it). Thresholds are tuned for this value.
    heads: str = "all"
    # Images with a side longer than tile_size pixels are predicted in overlapping tiles
    # (pipeline.inference.tiling), so memory stays bounded; tile_margin pixels of each cut edge are
    # dropped. 0: always the whole image.
    tile_size: int = 1024
    tile_margin: int = 96


def check_heads(heads: str) -> str:
    """``heads`` as ``PredictConfig.heads`` holds it: "all" or a head number from 1.

    >>> check_heads("2"), check_heads("all")
    ('2', 'all')
    """
    heads = str(heads).strip().lower()
    if heads == "all" or (heads.isdigit() and int(heads) >= 1):
        return heads
    raise PipelineError(f"heads must be 'all' or a head number from 1, got {heads!r}")


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
        sections = {"model": ModelConfig, "train": TrainConfig, "predict": PredictConfig}
        unknown = set(data) - {"name", *sections}
        if unknown:
            raise PipelineError(f"{source}: unknown config keys {sorted(unknown)}")
        kwargs: dict[str, Any] = {"name": str(data.get("name", "default"))}
        for key, section in sections.items():
            values = data.get(key, {})
            names = {f.name for f in dataclasses.fields(section)}
            bad = set(values) - names
            if bad:
                raise PipelineError(f"{source}: unknown keys in '{key}': {sorted(bad)}")
            kwargs[key] = section(**values)
        return cls(**kwargs)

    def save(self, path: str | Path) -> None:
        from pipeline.fileio import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Config:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as error:
            raise PipelineError(f"{path}: no such config file") from error
        except json.JSONDecodeError as error:
            raise PipelineError(f"{path}: not valid JSON ({error})") from error
        return cls.from_dict(data, source=str(path))

    def training_fingerprint(self) -> str:
        """A short hash of everything that changes the trained weights.

        Two configs with the same fingerprint train the same model, so the main job can
        skip training when a model with this fingerprint already exists.
        """
        data = self.to_dict()
        sections = {"model": data["model"], "train": data["train"]}
        # Settings added after models were trained leave the fingerprint as it was before
        # they existed while they hold the value that reproduces those models, so the
        # models trained then keep theirs (and are not retrained).
        for (section, key), unchanged in _FINGERPRINT_NEUTRAL.items():
            if unchanged(sections[section][key], sections):
                del sections[section][key]
        payload = json.dumps(sections, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _not_mobilenet(_value: Any, sections: dict[str, dict[str, Any]]) -> bool:
    return sections["model"]["arch"] != "mobilenetv2_unet"


#: (section, key) -> whether its value leaves a training as it was before the key existed.
_FINGERPRINT_NEUTRAL = {
    ("model", "encoder_weights"): _not_mobilenet,  # used by mobilenetv2_unet only
    ("model", "encoder_trainable"): _not_mobilenet,
    ("train", "max_minutes"): lambda value, _sections: not value,  # no time budget
    ("train", "augment_strength"): lambda value, _sections: value == "default",
    ("train", "dim_nuclei"): lambda value, _sections: not value,  # never dimmed
    ("train", "split"): lambda value, _sections: value == "random",
    ("model", "input_space"): lambda value, _sections: value == "rgb",
    ("train", "scale_min"): lambda value, _sections: value == 0.75,
    ("train", "scale_max"): lambda value, _sections: value == 1.5,
    # used by resize_policy "nucleus" only
    ("train", "nucleus_diameter"): lambda _value, sections: (
        sections["train"]["resize_policy"] != "nucleus"
    ),
}


def _preset_default() -> Config:
    """The best CPU-trainable model by the validation score: native-scale crops, the
    foreground alone, split by a watershed on the mask's distance map (a border channel,
    inverted light backgrounds and strong augmentation all scored lower on validation)."""
    return Config(
        name="default",
        model=ModelConfig(targets="foreground", invert_light_background=False),
        train=TrainConfig(epochs=40, augment_strength="default"),
        predict=PredictConfig(method="watershed"),
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
        return PRESETS[name]()
    except KeyError:
        raise PipelineError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}") from None
