"""Train/validation splits of the labelled images, seeded and saved with each model.

Two kinds (``TrainConfig.split``): ``random`` draws validation images from every image
kind (`split_ids`), so its score measures fit to known acquisition conditions;
``conditions`` holds out whole conditions, one size and kind each (`split_by_condition`),
so its score measures generalisation to conditions the network never saw.
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import PipelineError


def split_ids(kinds: dict[str, str], val_fraction: float, seed: int) -> dict[str, list[str]]:
    """A seeded train/validation split of image ids, stratified by image kind.

    Every kind with at least two images puts at least one in validation.

    >>> split = split_ids({"a": "x", "b": "x", "c": "y", "d": "y"}, 0.5, seed=0)
    >>> sorted(map(len, split.values()))
    [2, 2]
    """
    if not 0 < val_fraction < 1:
        raise PipelineError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    rng = np.random.default_rng(seed)
    train: list[str] = []
    val: list[str] = []
    for kind in sorted(set(kinds.values())):
        ids = sorted(image_id for image_id, k in kinds.items() if k == kind)
        ids = [ids[i] for i in rng.permutation(len(ids))]
        n_val = int(round(len(ids) * val_fraction))
        if len(ids) >= 2:
            n_val = min(max(n_val, 1), len(ids) - 1)
        else:
            n_val = 0
        val += ids[:n_val]
        train += ids[n_val:]
    return {"train": sorted(train), "val": sorted(val)}


def condition_of(sample) -> str:
    """A sample's acquisition condition: its size and kind, e.g. ``"256x256 fluorescence"``."""
    height, width = sample.image.shape[:2]
    return f"{height}x{width} {sample.kind}"


def split_by_condition(
    conditions: dict[str, str], val_fraction: float, seed: int
) -> dict[str, list[str]]:
    """A seeded split that holds out whole acquisition conditions (size and kind).

    The validation images come from conditions the training never sees, so their score
    measures generalisation to unseen conditions, as stage 2 and a user's own images ask.
    The largest condition always trains; the others, in a seeded order, are held out
    while the validation share stays below ``val_fraction``, skipping one that would
    take it past twice that.

    >>> conditions = {"a": "big", "b": "big", "c": "big", "d": "x", "e": "y"}
    >>> split = split_by_condition(conditions, 0.2, seed=0)
    >>> len(split["val"]), all(conditions[i] != "big" for i in split["val"])
    (1, True)
    """
    if not 0 < val_fraction < 1:
        raise PipelineError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    members: dict[str, list[str]] = {}
    for image_id, condition in sorted(conditions.items()):
        members.setdefault(condition, []).append(image_id)
    names = sorted(members, key=lambda name: (-len(members[name]), name))
    target = val_fraction * len(conditions)
    rng = np.random.default_rng(seed)
    held_out: list[str] = []
    held = 0
    for index in rng.permutation(len(names) - 1) + 1:  # the largest (names[0]) trains
        size = len(members[names[index]])
        if held >= target:
            break
        if held + size <= 2 * target:
            held_out.append(names[index])
            held += size
    val = sorted(i for name in held_out for i in members[name])
    train = sorted(i for i in conditions if i not in set(val))
    return {"train": train, "val": val, "held_out_conditions": sorted(held_out)}


def make_split(samples, val_fraction: float, seed: int, kind: str = "random") -> dict:
    """The split of ``samples`` that ``TrainConfig.split`` names (``kind``)."""
    if kind == "conditions":
        conditions = {s.image_id: condition_of(s) for s in samples}
        return split_by_condition(conditions, val_fraction, seed)
    return split_ids({s.image_id: s.kind for s in samples}, val_fraction, seed)


def split_groups(groups: dict[str, str], val_fraction: float, seed: int) -> dict[str, list[str]]:
    """A seeded split of image ids that keeps each group (the tiles of one image) on one
    side; about ``val_fraction`` of the groups, at least one when there are two or more.

    >>> groups = {"a_tile1": "a", "a_tile2": "a", "b": "b", "c": "c", "d": "d"}
    >>> split = split_groups(groups, 0.25, seed=0)
    >>> held = {groups[i] for i in split["val"]}
    >>> len(held), held & {groups[i] for i in split["train"]}
    (1, set())
    """
    names = sorted(set(groups.values()))
    rng = np.random.default_rng(seed)
    order = [names[i] for i in rng.permutation(len(names))]
    n_val = int(round(len(names) * val_fraction))
    n_val = min(max(n_val, 1), len(names) - 1) if len(names) >= 2 else 0
    held = set(order[:n_val])
    return {
        "train": sorted(i for i, g in groups.items() if g not in held),
        "val": sorted(i for i, g in groups.items() if g in held),
    }


def split_extra(
    sources: dict[str, dict[str, str]],
    kinds: dict[str, str],
    val_fraction: float,
    seed: int,
    kind: str = "random",
) -> dict:
    """The split of extra annotated sets (`pipeline.data.extra`): each source keeps a
    held-out share of its own (whole groups, `split_groups`), scored beside the validation
    but never used to choose.

    With the ``conditions`` split, whole sources are conditions too: of the sources of one
    image kind (their majority), when there are two or more, one (in a seeded order) is held
    out entirely, so that "a stain it has never seen" stays measurable.

    Parameters
    ----------
    sources
        Source name -> {image id: group} (`pipeline.data.extra.group_of`).
    kinds
        Source name -> its image kind.

    Returns
    -------
    dict
        ``{"train": [ids], "val": {source: [ids]}, "held_out_sources": [names]}``.
    """
    held_out: list[str] = []
    if kind == "conditions":
        rng = np.random.default_rng(seed)
        for image_kind in sorted(set(kinds.values())):
            names = sorted(name for name in sources if kinds[name] == image_kind)
            if len(names) >= 2:
                held_out.append(names[int(rng.integers(len(names)))])
    train: list[str] = []
    val: dict[str, list[str]] = {}
    for index, (name, groups) in enumerate(sorted(sources.items())):
        if name in held_out:
            val[name] = sorted(groups)
            continue
        part = split_groups(groups, val_fraction, seed + 1 + index)
        train += part["train"]
        val[name] = part["val"]
    return {"train": sorted(train), "val": val, "held_out_sources": sorted(held_out)}
