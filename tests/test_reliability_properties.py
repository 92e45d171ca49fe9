"""Issue 15, beyond the listed cases: random settings (in and out of range) and random
bytes as weights, config and thresholds, given to ``predict``. Every run ends either in a
valid submission (exit status 0, and the checker finds nothing wrong) or in exactly one
``error:`` line with exit status 2; never a traceback, never status 0 with garbage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import one_error_line, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("keras")

#: prediction flags and values from well inside to far outside their ranges
NUMBERS = st.one_of(
    st.floats(-5, 5, allow_nan=False).map(lambda v: f"{v:.3g}"),
    st.integers(-100, 10**6).map(str),
    st.sampled_from(["nan", "inf", "", "0.5x", "1e999"]),
)
FLAGS = st.lists(
    st.tuples(
        st.sampled_from(
            ["--threshold", "--min-size", "--marker-threshold", "--border-weight", "--batch-size"]
        ),
        NUMBERS,
    ),
    max_size=3,
)
#: what replaces one file of the model folder: nothing, random bytes, or JSON of odd shape
FILES = st.sampled_from(["model.weights.h5", "config.json", "thresholds.json"])
CONTENTS = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(["{}", "[]", "null", '{"params": 3}', '{"model": {"depth": "x"}}']),
    st.dictionaries(st.sampled_from(["params", "model", "predict"]), st.integers()).map(json.dumps),
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(flags=FLAGS, damaged=st.one_of(st.none(), st.tuples(FILES, CONTENTS)))
def test_predict_ends_in_a_valid_submission_or_one_error_line(
    flags, damaged, tiny_model, tiny_demo, tmp_path_factory, capsys
):
    work = tmp_path_factory.mktemp("property")
    model = Path(shutil.copytree(tiny_model, work / "model"))
    if damaged is not None:
        name, content = damaged
        data = content if isinstance(content, bytes) else content.encode()
        (model / name).write_bytes(data)
    out = work / "sub.csv"
    argv = ["predict", "--model", str(model), "--images", str(tiny_demo.test_dir)]
    argv += ["--out", str(out), *[part for pair in flags for part in pair]]
    status, _, err = run_cli(argv, capsys)
    if status == 0:
        assert out.is_file() and "valid submission" in err  # predict's own check passed
        assert "error:" not in err
    else:
        assert status == 2
        one_error_line(err)
        assert not out.exists()
