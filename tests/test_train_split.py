"""The training command: the seeded, stratified train/validation split and its flags."""

import pytest

from pipeline.errors import PipelineError
from pipeline.learning.splits import split_ids


def _kinds():
    kinds = {f"f{i:02d}": "fluorescence" for i in range(20)}
    kinds |= {f"h{i}": "histology" for i in range(5)}
    kinds |= {"b0": "brightfield", "b1": "brightfield"}
    return kinds


def test_split_is_stratified_and_complete():
    split = split_ids(_kinds(), 0.2, seed=1)
    assert sorted(split["train"] + split["val"]) == sorted(_kinds())
    assert not set(split["train"]) & set(split["val"])
    val_kinds = [_kinds()[i] for i in split["val"]]
    assert val_kinds.count("fluorescence") == 4
    assert val_kinds.count("histology") == 1
    assert val_kinds.count("brightfield") == 1  # at least one of each kind with 2+ images


def test_same_seed_same_split_other_seed_other_split():
    assert split_ids(_kinds(), 0.2, seed=1) == split_ids(_kinds(), 0.2, seed=1)
    assert split_ids(_kinds(), 0.2, seed=1) != split_ids(_kinds(), 0.2, seed=2)


def test_bad_fraction_is_refused():
    with pytest.raises(PipelineError, match="val_fraction"):
        split_ids(_kinds(), 1.5, seed=0)


def test_dim_nuclei_flag_sets_the_share_and_refuses_what_is_not_one(capsys):
    import argparse

    from pipeline.cli import main as cli_main
    from pipeline.stages.train import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert config_from_args(parser.parse_args(["--dim-nuclei", "0.5"])).train.dim_nuclei == 0.5
    assert config_from_args(parser.parse_args([])).train.dim_nuclei == 0.0
    for value, why in [("1.5", "1.5 is not in [0, 1]"), ("x", "'x' is not a number")]:
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["train", "--dim-nuclei", value])
        assert exit_info.value.code == 2
        assert f"--dim-nuclei: {why}" in capsys.readouterr().err


def _conditions():
    conditions = {f"a{i:02d}": "256x256 fluorescence" for i in range(30)}
    conditions |= {f"h{i}": "256x320 histology" for i in range(6)}
    conditions |= {f"b{i}": "1024x1024 brightfield" for i in range(3)}
    conditions |= {f"s{i}": "520x696 fluorescence" for i in range(4)}
    return conditions


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 42])
def test_condition_split_holds_out_whole_conditions(seed):
    from pipeline.learning.splits import split_by_condition

    conditions = _conditions()
    split = split_by_condition(conditions, 0.15, seed=seed)
    assert sorted(split["train"] + split["val"]) == sorted(conditions)
    held = {conditions[i] for i in split["val"]}
    trained = {conditions[i] for i in split["train"]}
    assert held == set(split["held_out_conditions"]) and not held & trained
    assert "256x256 fluorescence" in trained  # the largest condition always trains
    # 43 images, a target of 6.45: held out until reached, never past 12.9
    assert 6.45 <= len(split["val"]) <= 12.9


def test_condition_split_is_seeded():
    from pipeline.learning.splits import split_by_condition

    splits = {seed: split_by_condition(_conditions(), 0.15, seed) for seed in range(6)}
    assert split_by_condition(_conditions(), 0.15, 0) == splits[0]
    assert len({tuple(s["held_out_conditions"]) for s in splits.values()}) > 1


def test_condition_of_names_size_and_kind():
    import numpy as np

    from pipeline.data.dataset import Sample
    from pipeline.learning.splits import condition_of

    sample = Sample("x", np.zeros((5, 7, 3), np.uint8), None, "histology")
    assert condition_of(sample) == "5x7 histology"


def test_split_flag_reaches_the_config_and_keeps_the_default_fingerprint():
    import argparse

    from pipeline.config import preset
    from pipeline.stages.train import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = config_from_args(parser.parse_args(["--split", "conditions"]))
    assert config.train.split == "conditions"
    assert config.training_fingerprint() != preset("default").training_fingerprint()
    assert config_from_args(parser.parse_args([])).training_fingerprint() == (
        preset("default").training_fingerprint()
    )


def test_input_space_and_scale_flags_reach_the_config():
    import argparse

    from pipeline.stages.train import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--input-space", "rgb", "--scale-min", "0.5", "--scale-max", "2"])
    config = config_from_args(args)
    assert config.model.input_space == "rgb"
    assert (config.train.scale_min, config.train.scale_max) == (0.5, 2.0)
    default = config_from_args(parser.parse_args([]))  # the default preset's
    assert (default.model.input_space, default.train.scale_min, default.train.scale_max) == (
        "grey",
        0.6,
        1.8,
    )


@pytest.mark.parametrize(("share", "coloured"), [(0.0, 0), (1.0, 4)])
def test_stain_tissue_recolours_that_share_of_the_fluorescence_samples(share, coloured):
    """A grey fluorescence sample keeps three equal channels; re-coloured as stained tissue
    (``--stain-tissue``) its channels differ. With share 1 every sample of a batch is."""
    import numpy as np

    from pipeline.config import preset
    from pipeline.data.dataset import Sample
    from pipeline.learning.training import BatchSource

    image = np.full((64, 64, 3), 12, np.uint8)
    labels = np.zeros((64, 64), np.int32)
    labels[20:36, 20:36] = 1
    image[labels > 0] = 220
    config = preset("default")
    config.model.input_space = "rgb"  # in grey every stain is one grey level
    config.train.crop_size, config.train.batch_size = 32, 4
    config.train.stain_tissue = share
    sample = Sample(image_id="disc", image=image, labels=labels, kind="fluorescence")
    images, _ = BatchSource([sample], config, steps=1, seed=0).batch(0, 0)
    assert images.shape == (4, 32, 32, 3)
    differ = [not np.allclose(one[..., 0], one[..., 2]) for one in images]
    assert sum(differ) == coloured
