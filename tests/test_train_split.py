"""The training command: the seeded, stratified train/validation split and its flags."""

import pytest

from pipeline.errors import PipelineError
from pipeline.train import split_ids


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
    from pipeline.train import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert config_from_args(parser.parse_args(["--dim-nuclei", "0.5"])).train.dim_nuclei == 0.5
    assert config_from_args(parser.parse_args([])).train.dim_nuclei == 0.0
    for value, why in [("1.5", "1.5 is not in [0, 1]"), ("x", "'x' is not a number")]:
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["train", "--dim-nuclei", value])
        assert exit_info.value.code == 2
        assert f"--dim-nuclei: {why}" in capsys.readouterr().err
