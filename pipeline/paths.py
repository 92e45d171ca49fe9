"""Where things live: every default path is resolved from the repository root.

The pipeline works from any directory: paths a user types are taken relative to the
current directory, and the defaults below relative to the repository.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
INPUT_DIR = REPO_ROOT / "input"
MODELS_DIR = REPO_ROOT / "models"
SUBMISSIONS_DIR = REPO_ROOT / "submissions"
# The offline copy of the competition files that sits beside the checkout.
SHARED_DATA_DIR = REPO_ROOT.parent / "shared" / "dsb2018"

TRAIN_DIR = INPUT_DIR / "stage1_train"
TEST_DIR = INPUT_DIR / "stage1_test"
SOLUTION_CSV = INPUT_DIR / "stage1_solution.csv"
TRAIN_LABELS_CSV = INPUT_DIR / "stage1_train_labels.csv"
LEADERBOARD_CSV = SUBMISSIONS_DIR / "leaderboard.csv"
DEFAULT_MODEL_DIR = MODELS_DIR / "default"
