"""``DATA.md`` in a model folder: every set the model was trained on, with its citation
and licence, so that what a shared model may be used for is written beside it.

The sets are read from the folder's ``split.json`` (the ``--images`` folder, the extra
sets of ``train --extra`` with their file counts and checksums, the stage-1 test images
when trained on them) and, for a fine-tuned model (``train --init``), from the starting
model's own ``DATA.md``.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core.model_store import SCORES_FILE, SPLIT_FILE, read_json
from pipeline.data.extra import KNOWN_SETS, UNKNOWN_LICENCE
from pipeline.fileio import atomic_write_text
from pipeline.paths import REPO_ROOT

DATA_FILE = "DATA.md"

#: The competition's training images, as ``./run.sh download`` unpacks them.
STAGE1_TRAIN = {
    "title": "Kaggle 2018 Data Science Bowl, stage 1 training set (BBBC038v1), "
    "community-corrected masks",
    "citation": "J. C. Caicedo et al., Nucleus segmentation across imaging experiments: the "
    "2018 Data Science Bowl, Nature Methods 16:1247-1253 (2019)",
    "licence": "CC0 1.0 (public domain)",
}


def _own_set(images_dir: str) -> dict:
    if (REPO_ROOT / images_dir).parent.joinpath("synthetic_dataset.json").is_file() or (
        REPO_ROOT / images_dir / "synthetic_dataset.json"
    ).is_file():
        return {
            "name": "demo",
            "title": "the synthetic demo set (./run.sh --demo)",
            "citation": "-",
            "licence": "made by this pipeline; no terms",
        }
    if Path(images_dir).name == "stage1_train":
        return {"name": "stage1_train", **STAGE1_TRAIN}
    return {
        "name": Path(images_dir).name,
        "title": images_dir,
        "citation": "-",
        "licence": UNKNOWN_LICENCE,
    }


def _set_rows(split: dict) -> list[str]:
    """One table row per training set recorded in ``split.json``."""
    own = _own_set(split.get("images_dir", "?"))
    extra_train = sum(r["samples"] for r in split.get("extra_sets", [])) - sum(
        len(ids) for ids in split.get("extra_val", {}).values()
    )
    own_train = len(split.get("train", [])) - extra_train
    rows = [
        f"| {own['name']} (`--images`) | {own['title']} | {own_train} training images, "
        f"{len(split.get('val', []))} validation | {own['citation']} | {own['licence']} |"
    ]
    for record in split.get("extra_sets", []):
        known = KNOWN_SETS.get(record["name"])
        title = known.title if known else f"a user's set ({record['layout']})"
        citation = known.citation if known else "-"
        held = len(split.get("extra_val", {}).get(record["name"], []))
        rows.append(
            f"| {record['name']} (`--extra`) | {title} | {record['samples']} images, "
            f"{record['nuclei']} nuclei, {held} held out; {record['files']} files, "
            f"sha256 {record['sha256'][:16]}... | {citation} | {record['licence']} |"
        )
    if split.get("stage1_test"):
        rows.append(
            "| stage1_test (`--with-stage1-test`) | Kaggle DSB 2018 stage 1 test set with its "
            f"released labels | {len(split['stage1_test']['ids'])} images | as stage1_train | "
            "as stage1_train |"
        )
    return rows


def _terms(split: dict) -> list[str]:
    """What the licences of the extra sets mean for the model, in a sentence each."""
    records = split.get("extra_sets", [])
    non_commercial = [r["name"] for r in records if "NC" in r["licence"]]
    unknown = [r["name"] for r in records if r["licence"].startswith(("none", "unknown"))]
    lines = []
    if non_commercial:
        lines += [
            "",
            f"**Non-commercial, share-alike**: trained on {', '.join(non_commercial)}"
            " (CC BY-NC-SA 4.0), so this model may be used and shared only "
            "non-commercially and under the same licence.",
        ]
    if unknown:
        lines += [
            "",
            f"**No licence stated** for {', '.join(unknown)}: ask the authors before "
            "any use beyond research.",
        ]
    return lines


def _parent_rows(init: dict) -> list[str]:
    """For a fine-tuned model: the sets its starting model was trained on."""
    lines = [
        "",
        f"Fine-tuned from `{init['model']}` (weights sha256 "
        f"{init['weights_sha256'][:16]}...), which was trained on:",
        "",
    ]
    parent_card = REPO_ROOT / init["model"] / DATA_FILE  # an absolute path stays as it is
    if parent_card.is_file():
        table = [line for line in parent_card.read_text().splitlines() if line.startswith("|")]
        return lines + (table or ["(its DATA.md lists no set)"])
    return lines + [
        "| set | what | used | cite | licence |",
        "|---|---|---|---|---|",
        f"| stage1_train | as `./run.sh train` without --extra ({DATA_FILE} missing in "
        f"`{init['model']}`) | | {STAGE1_TRAIN['citation']} | {STAGE1_TRAIN['licence']} |",
    ]


def data_card(model_dir: Path) -> str:
    """The text of a model folder's ``DATA.md``."""
    model_dir = Path(model_dir)
    split = read_json(model_dir / SPLIT_FILE)
    scores = read_json(model_dir / SCORES_FILE) if (model_dir / SCORES_FILE).is_file() else {}
    lines = [
        f"# Training data of `{model_dir.name}`",
        "",
        "Every set this model's weights were trained on (written by `./run.sh train`). A "
        "model carries the terms of its training data: a non-commercial or share-alike "
        "licence below applies to uses of the model too.",
        "",
        "| set | what | used | cite | licence |",
        "|---|---|---|---|---|",
        *_set_rows(split),
        *_terms(split),
    ]
    if scores.get("init"):
        lines += _parent_rows(scores["init"])
    return "\n".join(lines) + "\n"


def write_data_card(model_dir: Path) -> Path:
    """Write ``DATA.md`` into a model folder; its path."""
    path = Path(model_dir) / DATA_FILE
    atomic_write_text(path, data_card(model_dir))
    return path
