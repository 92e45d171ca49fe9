"""One home per setting: every config field declares its default, help and range once,
and the command-line flags, the tuned settings and the post-processing defaults are
derived from that declaration."""

import argparse
import dataclasses
import json

import pytest

from pipeline import cli
from pipeline.config import (
    POSTPROCESS_DEFAULTS,
    SECTIONS,
    TUNABLE,
    Config,
    ModelConfig,
    PredictConfig,
    TrainConfig,
    preset,
    value_parser,
)

#: stage -> the config sections whose fields it has flags for.
STAGE_SECTIONS = {"train": ("model", "train"), "predict": ("predict",), "evaluate": ("predict",)}
#: Options of those stages that are about the run, not a config setting.
COMMON = {"-h", "--help", "-v", "--verbose", "--device", "--images"}
RUN_OPTIONS = {
    "train": COMMON
    | {"--preset", "--config", "--out", "--demo", "--resume", "--no-tune", "--devices", "--init"},
    "predict": COMMON
    | {
        "--model",
        "--out",
        "--demo",
        "--no-check",
        "--untuned",
        "--labels-out",
        "--rois-out",
        "--geojson-out",
        "--measurements",
        "--resume",
        "--force",
        "--force-edited",
        "--dask",
    },
    "evaluate": COMMON | {"--model", "--untuned", "--json"},
}


def _flags(stage: str) -> dict[str, list[str]]:
    """dest -> option strings of a stage's parser, less its run options."""
    parser = cli.build_parser(stage)
    flags: dict[str, list[str]] = {}
    for action in parser._actions:
        options = [o for o in action.option_strings if o not in RUN_OPTIONS[stage]]
        if options:
            flags.setdefault(action.dest, []).extend(options)
    return flags


@pytest.mark.parametrize("stage", sorted(STAGE_SECTIONS))
def test_every_field_has_exactly_one_flag_and_every_flag_one_field(stage):
    fields = {
        item.name: item
        for section in STAGE_SECTIONS[stage]
        for item in dataclasses.fields(SECTIONS[section])
    }
    flags = _flags(stage)
    assert set(flags) == set(fields)  # no field without a flag, no flag without a field
    for name, options in flags.items():
        flag = cli.flag_of(fields[name])
        if fields[name].type is bool:
            assert options == [flag, "--no-" + flag[2:]]
        else:
            assert options == [flag]


def test_every_section_is_covered_by_a_stage():
    covered = {section for sections in STAGE_SECTIONS.values() for section in sections}
    assert covered == set(SECTIONS)


def _flag_value(item: dataclasses.Field, value) -> list[str]:
    flag = cli.flag_of(item)
    if item.type is bool:
        return [flag if value else "--no-" + flag[2:]]
    return [flag, str(value)]


@pytest.mark.parametrize("section", ["model", "train"])
def test_each_training_flag_sets_its_field(section):
    from pipeline.stages.train import config_from_args

    parser = cli.build_parser("train")
    for item in dataclasses.fields(SECTIONS[section]):
        default = getattr(getattr(preset("default"), section), item.name)
        if item.type is bool:
            wanted = not default
        elif item.metadata["choices"]:
            wanted = next(c for c in item.metadata["choices"] if c != default)
        elif item.type is str:
            wanted = "x"
        else:  # a number in range other than the default
            low, high = item.metadata["low"], item.metadata["high"]
            if item.name == "scale_max":  # the smallest would be below scale_min: refused
                low, high = high, low
            wanted = next(v for v in (low, high, default + 1) if v is not None and v != default)
            wanted = type(default)(wanted)
        given = not wanted if item.metadata["negate"] else wanted
        config = config_from_args(parser.parse_args(_flag_value(item, given)))
        assert getattr(getattr(config, section), item.name) == wanted, item.name
        others = dataclasses.replace(getattr(config, section), **{item.name: default})
        assert others == getattr(preset("default"), section), item.name


def test_each_prediction_flag_gives_its_override():
    parser = cli.build_parser("predict")
    assert set(cli.config_overrides(parser.parse_args([]), "predict").values()) == {None}
    args = parser.parse_args(["--threshold", "0.25", "--no-fill-holes", "--heads", "ALL"])
    overrides = cli.config_overrides(args, "predict")
    assert {k: v for k, v in overrides.items() if v is not None} == {
        "threshold": 0.25,
        "fill_holes": False,
        "heads": "all",
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["predict", "--threshold", "7.5"], "--threshold: 7.5 is not in [0, 1]"),
        (["predict", "--threshold", "-1"], "--threshold: -1 is not in [0, 1]"),
        (["predict", "--threshold", "nan"], "--threshold: 'nan' is not a finite number"),
        (["predict", "--min-size", "-3"], "--min-size: expected a whole number >= 0, got '-3'"),
        (["predict", "--batch-size", "0"], "--batch-size: expected a whole number >= 1, got '0'"),
        (["predict", "--heads", "0"], "--heads: heads must be 'all' or a head number from 1"),
        (["train", "--epochs", "0"], "--epochs: expected a whole number >= 1, got '0'"),
        (["train", "--learning-rate", "-1"], "--learning-rate: -1 is not in [1e-07, 1]"),
        (
            ["train", "--crop-size", "7"],
            "--crop-size: expected a whole number in [16, 2048], got '7'",
        ),
        (["train", "--seed", "x"], "--seed: expected a whole number, got 'x'"),
        (["train", "--split", "kfold"], "--split: invalid choice: 'kfold'"),
    ],
)
def test_out_of_range_flags_are_refused_with_the_flag_and_the_value(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_postprocess_defaults_and_tunable_settings_come_from_predict_config():
    from pipeline.core.model_store import TUNABLE as STORED
    from pipeline.inference.postprocess import DEFAULT_PARAMS, PARAM_NAMES

    declared = PredictConfig()
    assert DEFAULT_PARAMS == POSTPROCESS_DEFAULTS
    assert DEFAULT_PARAMS == {name: getattr(declared, name) for name in PARAM_NAMES}
    assert set(PARAM_NAMES) == {
        "method", "threshold", "marker_threshold", "border_weight", "min_size", "fill_holes",
        "min_marker_size",
    }  # fmt: skip
    assert STORED == TUNABLE == (*PARAM_NAMES, "tta")


def test_a_model_config_without_the_newer_fields_loads_with_their_defaults():
    data = first_default().to_dict()
    del data["predict"]["min_marker_size"], data["model"]["input_space"]
    config = Config.from_dict(data)
    assert config.predict.min_marker_size == 3 and config.model.input_space == "rgb"
    assert config.training_fingerprint() == first_default().training_fingerprint()


def test_config_choices_match_the_implementations():
    from pipeline.config import LOSSES
    from pipeline.learning import losses

    assert tuple(losses.LOSSES) == LOSSES


def test_the_device_takes_the_declared_precisions():
    from pipeline.config import PRECISIONS
    from pipeline.core import device
    from pipeline.errors import PipelineError

    assert PRECISIONS == ("auto", "float32", "bfloat16")
    with pytest.raises(PipelineError, match=r"unknown precision 'float16'; choose from \('auto'"):
        device.check_device("auto", "float16")


def test_value_parser_passes_strings_through():
    item = {f.name: f for f in dataclasses.fields(SECTIONS["model"])}["targets"]
    assert value_parser(item)("border") == "border"
    with pytest.raises(argparse.ArgumentTypeError):
        value_parser({f.name: f for f in dataclasses.fields(PredictConfig)}["tile_size"])("x")


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("predict", "threshold", 7.5, "predict.threshold = 7.5 is not in [0, 1]"),
        ("predict", "threshold", -1, "predict.threshold = -1 is not in [0, 1]"),
        ("predict", "min_size", "10", "predict.min_size = '10' is not a whole number: '10'"),
        ("train", "learning_rate", -1.0, "train.learning_rate = -1.0 is not in [1e-07, 1]"),
        ("train", "epochs", 0, "train.epochs = 0 is not >= 1"),
        ("train", "augment", "yes", "train.augment = 'yes' is not true or false: 'yes'"),
        ("model", "arch", "resnet", "model.arch = 'resnet' is not one of unet, unetpp"),
        (
            "model",
            "targets",
            "nonsense",
            "model.targets = 'nonsense' is not one of foreground, border, border_centre",
        ),
        ("predict", "heads", "0", "predict.heads = '0' is heads must be 'all' or a head"),
    ],
)
def test_a_config_file_with_a_value_out_of_range_is_refused_naming_it(
    section, key, value, message, tmp_path
):
    from pipeline.errors import PipelineError

    data = preset("default").to_dict()
    data[section][key] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PipelineError) as error:
        Config.load(path)
    assert str(error.value).startswith(f"{path}: {message}")


def test_tuned_thresholds_out_of_range_are_refused_naming_the_file(tmp_path):
    from pipeline.core.model_store import load_config
    from pipeline.errors import PipelineError

    preset("default").save(tmp_path / "config.json")
    (tmp_path / "thresholds.json").write_text(json.dumps({"params": {"threshold": 7.5}}))
    with pytest.raises(PipelineError, match=r"thresholds.json: predict.threshold = 7.5 is not in"):
        load_config(tmp_path)
    assert load_config(tmp_path, tuned=False).predict.threshold == 0.5


def test_a_preset_with_a_value_out_of_range_is_refused_naming_it(monkeypatch):
    from pipeline import config as config_module

    def broken():
        made = config_module.Config()
        made.predict.threshold = 7.5
        return made

    monkeypatch.setitem(config_module.PRESETS, "broken", broken)
    from pipeline.errors import PipelineError

    with pytest.raises(PipelineError, match=r"preset .broken.: predict.threshold = 7.5 is"):
        config_module.preset("broken")
    for name in config_module.PRESETS:
        if name != "broken":
            config_module.preset(name)  # the shipped presets are all within range


#: The presets' training fingerprints: a model folder named by one must keep it (else the
#: main job trains it again); the default's is that of the shipped models/default.
PINNED_FINGERPRINTS = {
    "default": "50d91d718203",
    "demo": "8b8fcde4fa38",
    "seeds-baseline": "36aa5e14d6c7",
}


def first_default() -> Config:
    """The default preset as it was until 2026-12-05 (RGB input, 40 epochs, patience 5),
    the recipe of the models trained from it: they keep their fingerprint, a64205032922."""
    return Config(
        name="default",
        model=ModelConfig(targets="foreground", invert_light_background=False),
        train=TrainConfig(epochs=40, augment_strength="default"),
        predict=PredictConfig(method="watershed", scales="0.5,1"),
    )


#: The first default preset with some settings changed -> its fingerprint. Each setting that
#: leaves the fingerprint as it was while it holds its default, or while another setting
#: makes it unused, appears changed (alone and with what makes it used).
PINNED_VARIANTS = [
    ({"train": {"max_minutes": 30.0}}, "24d1bb5dc63f"),
    ({"train": {"augment_strength": "strong"}}, "72872307a820"),
    ({"train": {"dim_nuclei": 0.5}}, "a26db62b2131"),
    ({"train": {"stain_tissue": 0.3}}, "6960766ecda7"),
    ({"train": {"paste_nuclei": 0.5}}, "8f409c250cc9"),
    ({"train": {"split": "conditions"}}, "d55141fa8c9d"),
    ({"model": {"input_space": "grey"}}, "8501dc5d2495"),
    ({"train": {"scale_min": 0.5}}, "62a61f06c683"),
    ({"train": {"scale_max": 2.0}}, "3ae5e2f45140"),
    ({"train": {"with_stage1_test": True}}, "a41e4d62da81"),
    ({"train": {"extra": "lpc"}}, "eb9fcfec3442"),
    ({"train": {"extra": "lpc", "source_weighting": "equal"}}, "faa24db32dbd"),
    ({"train": {"source_weighting": "equal"}}, "a64205032922"),  # no extra set: unused
    ({"train": {"nucleus_diameter": 30.0}}, "a64205032922"),  # native policy: unused
    ({"train": {"resize_policy": "nucleus"}}, "02c1238034ad"),
    ({"train": {"resize_policy": "nucleus", "nucleus_diameter": 30.0}}, "86a67dd215eb"),
    ({"model": {"arch": "mobilenetv2_unet"}}, "a79e15afb09e"),
    ({"model": {"arch": "mobilenetv2_unet", "encoder_weights": "none"}}, "e09ca911a08a"),
    ({"model": {"arch": "mobilenetv2_unet", "encoder_trainable": False}}, "37c51b313c68"),
    ({"model": {"encoder_weights": "none", "encoder_trainable": False}}, "a64205032922"),
    ({"model": {"targets": "border"}}, "1724058633fe"),
    ({"train": {"epochs": 10}}, "76d6b260d03b"),
    ({"train": {"precision": "float32"}}, "52192849b374"),
]


@pytest.mark.parametrize(("name", "fingerprint"), sorted(PINNED_FINGERPRINTS.items()))
def test_the_presets_keep_their_training_fingerprints(name, fingerprint):
    assert preset(name).training_fingerprint() == fingerprint


def test_the_shipped_model_keeps_its_training_fingerprint():
    from pipeline.paths import SOURCE_ROOT

    config = Config.load(SOURCE_ROOT / "models" / "default" / "config.json")
    assert config.training_fingerprint() == PINNED_FINGERPRINTS["default"]


def test_the_first_default_recipe_keeps_its_training_fingerprint():
    assert first_default().training_fingerprint() == "a64205032922"


@pytest.mark.parametrize(("changes", "fingerprint"), PINNED_VARIANTS)
def test_changed_settings_keep_their_training_fingerprints(changes, fingerprint):
    data = first_default().to_dict()
    for section, values in changes.items():
        data[section].update(values)
    assert Config.from_dict(data).training_fingerprint() == fingerprint


def test_every_setting_has_its_declared_type_and_an_allowed_default():
    """The checks compare ``Field.type`` with ``bool``, ``int``, ``float`` and ``str``: it
    must hold the type itself, not the annotation's text."""
    from pipeline.config import setting_problem

    for section in SECTIONS.values():
        for item in dataclasses.fields(section):
            assert item.type in (bool, int, float, str), item.name
            assert isinstance(item.default, item.type), item.name
            assert setting_problem(item, item.default) is None, item.name
