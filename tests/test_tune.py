"""Tests of the tune stage's candidate settings (pipeline/tune.py)."""

from __future__ import annotations

import doctest

from pipeline.evaluation import tuning as tune
from pipeline.evaluation.tuning import covers, default_grid


def test_every_channel_set_gets_components_and_a_watershed():
    for channels in [("foreground",), ("foreground", "border"), ("foreground", "border", "centre")]:
        methods = [grid["method"] for grid in default_grid(channels)]
        assert methods == [["components"], ["watershed"]]
    fg_only = default_grid(("foreground",))[1]
    assert fg_only == {
        "method": ["watershed"],
        "threshold": [0.4, 0.5, 0.6],
        "marker_threshold": [0.3, 0.5, 0.7],
        "min_size": [10, 20],
    }
    assert "border_weight" in default_grid(("foreground", "border"))[1]


def test_covers():
    grid = {"method": ["watershed"], "threshold": [0.4, 0.5]}
    assert covers(grid, {"method": "watershed", "threshold": 0.5, "min_size": 10})
    assert not covers(grid, {"method": "components", "threshold": 0.5})
    assert not covers(grid, {"method": "watershed", "threshold": 0.3})
    assert covers({}, {"threshold": 0.3})


def test_the_default_settings_of_each_preset_are_in_its_grid_or_added():
    """The presets' untuned settings are tried by the default grids themselves."""
    from pipeline.config import preset
    from pipeline.core.model_store import target_channels
    from pipeline.inference.model import NucleusModel

    for name in ("default", "seeds-baseline", "demo"):
        config = preset(name)
        grids = default_grid(tuple(target_channels(config)))
        params = NucleusModel.of_network(None, config).postprocess_params()
        assert any(covers(grid, params) for grid in grids), name


def test_documented_example_holds():
    result = doctest.testmod(tune, raise_on_error=False)
    assert result.failed == 0 and result.attempted >= 1
