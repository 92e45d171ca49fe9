"""Where things live: every default data and model path, resolved when it is asked for.

The pipeline works from any directory: paths a user types are taken relative to the
current directory, and the defaults below relative to the pipeline's home (`home`):

- ``$DSB2018_HOME`` when it is set;
- else the repository root, when the package runs from its source tree (``./run.sh``);
- else the current directory (the package installed with pip: ``dsb2018 predict ...``).

The defaults are read as module attributes, ``paths.INPUT_DIR`` and the others in
`DEFAULTS`; each is worked out anew on every access (`__getattr__`), so a change of
``DSB2018_HOME`` is seen by the next call, not fixed when this module was imported:

>>> import os
>>> from pipeline import paths
>>> saved = os.environ.pop("DSB2018_HOME", None)
>>> os.environ["DSB2018_HOME"] = "/data/dsb"
>>> str(paths.INPUT_DIR), str(paths.LEADERBOARD_CSV)
('/data/dsb/input', '/data/dsb/submissions/leaderboard.csv')
>>> del os.environ["DSB2018_HOME"]
>>> paths.INPUT_DIR == paths.SOURCE_ROOT / "input"  # from the source tree
True
>>> os.environ.update({} if saved is None else {"DSB2018_HOME": saved})
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

HOME_VARIABLE = "DSB2018_HOME"
# Where this package's source is (not a data path): the git commit of results is read here.
SOURCE_ROOT = Path(__file__).resolve().parents[1]


def running_from_source() -> bool:
    """Whether the package runs from its source tree (``run.sh`` beside it), not installed."""
    return (SOURCE_ROOT / "run.sh").is_file() and (SOURCE_ROOT / "pyproject.toml").is_file()


def home() -> Path:
    """The folder that holds ``input/``, ``models/`` and ``submissions/``: ``$DSB2018_HOME``,
    else the repository root from the source tree, else the current directory."""
    override = os.environ.get(HOME_VARIABLE, "").strip()
    if override:
        return Path(override).expanduser().resolve()
    return SOURCE_ROOT if running_from_source() else Path.cwd()


# Default name -> how it is worked out from the home; read as ``paths.NAME``.
DEFAULTS: dict[str, Callable[[Path], Path]] = {
    "REPO_ROOT": lambda root: root,
    "INPUT_DIR": lambda root: root / "input",
    "MODELS_DIR": lambda root: root / "models",
    "SUBMISSIONS_DIR": lambda root: root / "submissions",
    # The offline copy of the competition files that sits beside the checkout.
    "SHARED_DATA_DIR": lambda root: root.parent / "shared" / "dsb2018",
    "TRAIN_DIR": lambda root: root / "input" / "stage1_train",
    "TEST_DIR": lambda root: root / "input" / "stage1_test",
    "SOLUTION_CSV": lambda root: root / "input" / "stage1_solution.csv",
    "TRAIN_LABELS_CSV": lambda root: root / "input" / "stage1_train_labels.csv",
    "LEADERBOARD_CSV": lambda root: root / "submissions" / "leaderboard.csv",
    "DEFAULT_MODEL_DIR": lambda root: root / "models" / "default",
}


def __getattr__(name: str) -> Path:
    """``paths.INPUT_DIR`` and the other `DEFAULTS`, resolved from `home` at each access."""
    if name in DEFAULTS:
        return DEFAULTS[name](home())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *DEFAULTS])
