"""Post-processing: probabilities to instances, without a model."""

import numpy as np
import pytest
from scipy import ndimage
from skimage.draw import disk

from pipeline.core.targets import TARGET_SETS, labels_to_targets
from pipeline.data.synthetic import make_sample
from pipeline.evaluation.metric import iou_matrix, score_image
from pipeline.evaluation.tuning import tune_postprocess
from pipeline.inference.postprocess import (
    DEFAULT_PARAMS,
    PARAM_NAMES,
    fill_instance_holes,
    instances_from_channels,
    probabilities_to_labels,
    remove_small_instances,
)


def test_two_separate_blobs_become_two_instances():
    prob = np.zeros((5, 7))
    prob[1:4, 1:3] = 0.9
    prob[1:4, 4:6] = 0.8
    labels = probabilities_to_labels(prob, threshold=0.5, min_size=0)
    assert labels.dtype == np.int32
    assert labels.max() == 2
    assert np.count_nonzero(labels == 1) == 6
    assert np.count_nonzero(labels == 2) == 6
    assert labels[0].sum() == 0 and labels[:, 3].sum() == 0


def test_threshold_is_strict():
    prob = np.array([[0.5, 0.51], [0.0, 0.0]])
    labels = probabilities_to_labels(prob, threshold=0.5, min_size=0, fill_holes=False)
    assert labels.tolist() == [[0, 1], [0, 0]]


def test_diagonal_neighbours_join_with_8_connectivity():
    prob = np.array([[1, 0], [0, 1]], dtype=float)
    assert probabilities_to_labels(prob, min_size=0).max() == 1


def test_small_instances_are_dropped_and_rest_renumbered():
    labels = np.zeros((6, 6), np.int32)
    labels[0, 0] = 1  # 1 pixel
    labels[2:5, 2:5] = 5  # 9 pixels
    result = remove_small_instances(labels, min_size=2)
    assert result.max() == 1
    assert np.count_nonzero(result == 1) == 9
    assert result[0, 0] == 0


def test_holes_are_filled_with_the_enclosing_instance():
    labels = np.zeros((5, 5), np.int32)
    labels[0:5, 0:5] = 3
    labels[2, 2] = 0
    assert fill_instance_holes(labels)[2, 2] == 3


def test_background_between_instances_is_not_a_hole():
    labels = np.zeros((3, 7), np.int32)
    labels[:, :3] = 1
    labels[:, 4:] = 2
    assert (fill_instance_holes(labels) == labels).all()


def test_round_trip_of_separate_discs_through_targets():
    labels = np.zeros((40, 40), np.int32)
    labels[disk((10, 10), 5)] = 1
    labels[disk((28, 25), 7)] = 2
    foreground = labels_to_targets(labels)[..., 0]
    assert (probabilities_to_labels(foreground, min_size=0) == labels).all()


def test_rejects_non_2d_input():
    with pytest.raises(ValueError, match="2-D"):
        probabilities_to_labels(np.zeros((2, 2, 1)))


# ---------------------------------------------------------------------------------------
# Marker-controlled watershed
# ---------------------------------------------------------------------------------------


def touching_discs(radius_a: int, radius_b: int) -> np.ndarray:
    """Two discs in a row whose outlines are 4-adjacent (they touch, share no pixel)."""
    labels = np.zeros((40, 70), np.int32)
    labels[disk((20, 20), radius_a)] = 1
    labels[disk((20, 20 + radius_a - 1 + radius_b), radius_b)] = 2
    assert labels[20, 20 + radius_a - 1] == 1 and labels[20, 20 + radius_a] == 2
    return labels


def _maps(labels: np.ndarray, channels: tuple[str, ...]) -> dict[str, np.ndarray]:
    targets = labels_to_targets(labels, channels)
    names = {"foreground": "foreground_prob", "border": "border_prob", "centre": "centre_prob"}
    return {names[name]: targets[..., index] for index, name in enumerate(channels)}


@pytest.mark.parametrize(("radius_a", "radius_b"), [(10, 10), (6, 12), (5, 5)])
@pytest.mark.parametrize("channels", [TARGET_SETS["border"], TARGET_SETS["border_centre"]])
def test_watershed_splits_touching_discs_that_components_merge(radius_a, radius_b, channels):
    labels = touching_discs(radius_a, radius_b)
    maps = _maps(labels, channels)
    merged = probabilities_to_labels(**maps, min_size=0)  # method="components"
    assert merged.max() == 1
    split = probabilities_to_labels(**maps, method="watershed", min_size=0)
    assert split.max() == 2
    iou = iou_matrix(labels, split)
    assert (iou.max(axis=1) > 0.9).all() and (iou.max(axis=0) > 0.9).all()


@pytest.mark.parametrize(("radius_a", "radius_b"), [(10, 10), (6, 12), (5, 5)])
def test_random_walker_splits_touching_discs_from_the_same_markers(radius_a, radius_b):
    labels = touching_discs(radius_a, radius_b)
    maps = _maps(labels, TARGET_SETS["border"])
    rng = np.random.default_rng(radius_a)
    maps["foreground_prob"] = np.clip(
        maps["foreground_prob"] - rng.uniform(0, 0.1, labels.shape), 0, 1
    )
    split = probabilities_to_labels(**maps, method="random_walker", min_size=0)
    assert split.max() == 2
    iou = iou_matrix(labels, split)
    assert (iou.max(axis=1) > 0.9).all() and (iou.max(axis=0) > 0.9).all()


def test_random_walker_keeps_every_instance_number_of_the_image():
    """skimage numbers its output 1..n per call; the pieces' own marker numbers stay."""
    labels = np.zeros((40, 130), np.int32)
    labels[disk((20, 10), 7)] = 1  # alone
    labels[disk((20, 45), 8)] = 2  # two touching (columns 52 and 53): markers 2 and 3
    labels[disk((20, 60), 8)] = 3
    labels[disk((20, 100), 9)] = 4  # alone again
    maps = _maps(labels, TARGET_SETS["border"])
    rng = np.random.default_rng(0)
    maps["foreground_prob"] = np.clip(
        maps["foreground_prob"] - rng.uniform(0, 0.1, labels.shape), 0, 1
    )
    walked = probabilities_to_labels(**maps, method="random_walker", min_size=0)
    flooded = probabilities_to_labels(**maps, method="watershed", min_size=0)
    assert walked.max() == 4 and flooded.max() == 4
    assert iou_matrix(labels, walked).max(axis=1).min() > 0.9
    assert iou_matrix(flooded, walked).diagonal().min() > 0.9  # the same numbers


def test_random_walker_keeps_the_numbers_of_a_piece_made_only_of_markers():
    """Two squares that meet at a corner are one piece of the mask (8-connected) but two
    markers (4-connected); with no pixel left to solve, skimage hands the seeds back as
    given instead of renumbering them, and the instance numbers must survive that too."""
    foreground = np.zeros((12, 30))
    foreground[2:5, 2:5] = 0.9  # instance 1, alone
    foreground[2:5, 10:13] = 0.9  # a piece of two squares meeting at a corner
    foreground[5:8, 13:16] = 0.9
    labels = probabilities_to_labels(
        foreground, border_prob=np.zeros_like(foreground), method="random_walker",
        min_size=0, fill_holes=False, min_marker_size=1,
    )  # fmt: skip
    assert labels.max() == 3
    assert (labels[2:5, 2:5] == 1).all()
    assert (labels[2:5, 10:13] == 2).all() and (labels[5:8, 13:16] == 3).all()


def test_random_walker_on_a_flat_probability_shares_the_piece_between_its_markers():
    foreground = np.ones((12, 20))  # nothing for the walk to follow
    border = np.zeros_like(foreground)
    border[:, 9:11] = 1.0  # markers: the two halves
    labels = probabilities_to_labels(
        foreground, border_prob=border, method="random_walker", min_size=0
    )
    assert labels.max() == 2 and np.count_nonzero(labels) == labels.size
    assert (labels[:, :9] == labels[0, 0]).all() and (labels[:, 11:] == labels[0, -1]).all()


def test_watershed_from_perfect_border_targets_is_exact_on_equal_discs():
    labels = touching_discs(10, 10)
    split = probabilities_to_labels(**_maps(labels, TARGET_SETS["border"]), method="watershed")
    assert (split == labels).all()
    assert score_image(labels, split).score == 1.0


def test_watershed_without_border_or_centre_uses_the_mask_distance():
    labels = touching_discs(10, 10)  # a narrow waist between two equal discs
    foreground = (labels > 0).astype(float)
    assert probabilities_to_labels(foreground, method="watershed", min_size=0).max() == 2
    assert probabilities_to_labels(foreground, min_size=0).max() == 1


def test_watershed_keeps_a_blob_without_marker():
    foreground = np.zeros((8, 14))
    foreground[1:7, 1:7] = 1.0  # a square with a core
    foreground[2:5, 10:13] = 1.0  # a small square, all border: no marker
    border = np.zeros_like(foreground)
    border[1:7, 1:7] = 1.0
    border[2:6, 2:6] = 0.0
    border[2:5, 10:13] = 1.0
    labels = probabilities_to_labels(
        foreground, border_prob=border, method="watershed", min_size=0, min_marker_size=1
    )
    assert labels.max() == 2
    assert (labels[1:7, 1:7] == 1).all() and (labels[2:5, 10:13] == 2).all()
    assert np.count_nonzero(labels) == 36 + 9


@pytest.mark.parametrize(("min_marker_size", "count"), [(1, 2), (2, 1)])
def test_markers_smaller_than_min_marker_size_are_dropped(min_marker_size, count):
    foreground = np.ones((5, 10))
    border = np.ones((5, 10))
    border[1:4, 1:4] = 0.0  # a 9-pixel core
    border[2, 7] = 0.0  # a 1-pixel core
    labels = probabilities_to_labels(
        foreground,
        border_prob=border,
        method="watershed",
        min_size=0,
        min_marker_size=min_marker_size,
    )
    assert labels.max() == count
    assert np.count_nonzero(labels) == 50


def test_marker_score_uses_border_weight_and_marker_threshold():
    foreground = np.full((3, 9), 0.9)
    border = np.zeros((3, 9))
    border[:, 4] = 0.5  # a faint border line
    kwargs = {"border_prob": border, "method": "watershed", "min_size": 0}
    # 0.9 - 0.5 * w > 0.5 splits only when the weight is above 0.8.
    assert probabilities_to_labels(foreground, border_weight=1.0, **kwargs).max() == 2
    assert probabilities_to_labels(foreground, border_weight=0.5, **kwargs).max() == 1
    assert probabilities_to_labels(foreground, marker_threshold=0.3, **kwargs).max() == 1


def test_watershed_stays_inside_the_mask():
    labels = touching_discs(10, 10)
    maps = _maps(labels, TARGET_SETS["border"])
    maps["foreground_prob"] = maps["foreground_prob"] * 0.8
    result = probabilities_to_labels(**maps, method="watershed", threshold=0.7, min_size=0)
    assert ((result > 0) == (labels > 0)).all()
    assert not probabilities_to_labels(**maps, method="watershed", threshold=0.85).any()


def test_components_ignore_border_and_centre():
    labels = touching_discs(6, 12)
    maps = _maps(labels, TARGET_SETS["border_centre"])
    expected = probabilities_to_labels(maps["foreground_prob"])
    assert (probabilities_to_labels(**maps) == expected).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "stardist"}, "method"),
        ({"border_prob": np.zeros((3, 3))}, "border_prob"),
        ({"centre_prob": np.zeros((4, 3))}, "centre_prob"),
    ],
)
def test_bad_watershed_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        probabilities_to_labels(np.zeros((4, 4)), **kwargs)


def test_full_size_watershed_completes():
    """Speed sanity on 1040 x 1388 with ~900 nuclei in touching pairs (not timed)."""
    labels = np.zeros((1040, 1388), np.int32)
    for row in range(1040 // 40):
        for col in range(1388 // 40):
            cy, cx = 40 * row + 20, 40 * col + 20
            first = labels.max() + 1
            labels[disk((cy, cx - 8), 8)] = first
            labels[disk((cy, cx + 7), 8)] = first + 1
    assert labels.max() == 2 * 26 * 34
    prob = labels_to_targets(labels, TARGET_SETS["border"])
    result = instances_from_channels(prob, TARGET_SETS["border"], {"min_size": 0})
    assert result.max() == labels.max()
    assert score_image(labels, result).score == 1.0


# ---------------------------------------------------------------------------------------
# Channels by name, and tuning
# ---------------------------------------------------------------------------------------


def test_instances_from_channels_picks_the_method_from_the_channels():
    labels = touching_discs(10, 10)
    prob = labels_to_targets(labels, TARGET_SETS["border"])
    assert instances_from_channels(prob, TARGET_SETS["border"]).max() == 2
    assert instances_from_channels(prob[..., :1], ("foreground",)).max() == 1
    forced = {"method": "components"}
    assert instances_from_channels(prob, TARGET_SETS["border"], forced).max() == 1


def test_instances_from_channels_matches_probabilities_to_labels():
    labels = touching_discs(6, 12)
    prob = labels_to_targets(labels, TARGET_SETS["border_centre"])
    noise = np.random.default_rng(0).uniform(-0.3, 0.3, prob.shape)
    prob = np.clip(prob + noise, 0, 1)
    params = {"threshold": 0.4, "marker_threshold": 0.6, "min_size": 3, "min_marker_size": 2}
    expected = probabilities_to_labels(
        prob[..., 0], border_prob=prob[..., 1], method="watershed", **params
    )
    channels = ("foreground", "border", "centre")
    assert (instances_from_channels(prob[..., :2], channels[:2], params) == expected).all()
    expected = probabilities_to_labels(
        prob[..., 0], border_prob=prob[..., 1], centre_prob=prob[..., 2], method="watershed"
    )
    assert (instances_from_channels(prob, channels) == expected).all()


@pytest.mark.parametrize(
    ("shape", "channels", "params", "message"),
    [
        ((4, 4, 2), ("foreground", "border"), {"treshold": 0.5}, "treshold"),
        ((4, 4, 2), ("foreground", "border"), {"method": "magic"}, "method"),
        ((4, 4, 2), ("border", "foreground"), {}, "first channel"),
        ((4, 4, 2), ("foreground", "contour"), {}, "foreground/border/centre"),
        ((4, 4, 3), ("foreground", "border"), {}, "expected"),
        ((4, 4), ("foreground",), {}, "expected"),
    ],
)
def test_instances_from_channels_refuses_bad_input(shape, channels, params, message):
    with pytest.raises(ValueError, match=message):
        instances_from_channels(np.zeros(shape), channels, params)


def _halo_case() -> tuple[np.ndarray, np.ndarray]:
    """A 16-pixel square predicted at 0.9 with a 4-pixel halo row at 0.6."""
    prob = np.zeros((8, 8, 1))
    prob[2:6, 2:6, 0] = 0.9
    prob[1, 2:6, 0] = 0.6
    truth = np.zeros((8, 8), np.int32)
    truth[2:6, 2:6] = 1
    return prob, truth


def test_tune_picks_the_threshold_that_drops_the_halo():
    prob, truth = _halo_case()
    grid = {"threshold": [0.3, 0.5, 0.7], "min_size": [0]}
    best, score, table = tune_postprocess([prob], [truth], ("foreground",), grid)
    # Below 0.6 the instance is 20 pixels: IoU 16/20 = 0.8 matches at 0.50 ... 0.75 only.
    assert [row["score"] for row in table] == [0.6, 0.6, 1.0]
    assert best["threshold"] == 0.7 and score == 1.0
    assert best == {**DEFAULT_PARAMS, "threshold": 0.7, "min_size": 0}
    assert [row["threshold"] for row in table] == [0.3, 0.5, 0.7]


def test_tune_picks_min_size_that_drops_a_speck():
    prob, truth = _halo_case()
    prob[1, 2:6, 0] = 0.0
    prob[7, 7, 0] = 0.9  # a 1-pixel false positive
    best, score, table = tune_postprocess(
        [prob, prob], [truth, truth], ("foreground",), {"min_size": [0, 2, 17]}
    )
    # 1 TP + 1 FP: 1/2 at every threshold; with min_size 17 the square goes too: 0.
    assert [row["score"] for row in table] == [0.5, 1.0, 0.0]
    assert best["min_size"] == 2 and score == 1.0


def test_tune_picks_watershed_for_touching_nuclei():
    labels = touching_discs(10, 10)
    prob = labels_to_targets(labels, TARGET_SETS["border"])
    grid = {"method": ["components", "watershed"], "min_size": 0}
    best, score, table = tune_postprocess([prob], [labels], TARGET_SETS["border"], grid)
    assert [(row["method"], row["score"]) for row in table] == [
        ("components", 0.0),  # one instance, IoU exactly 1/2 with each disc
        ("watershed", 1.0),
    ]
    assert best["method"] == "watershed" and score == 1.0


def test_tune_breaks_ties_by_grid_order():
    prob, truth = _halo_case()
    best, score, _ = tune_postprocess([prob], [truth], ("foreground",), {"threshold": [0.8, 0.7]})
    assert best["threshold"] == 0.8 and score == 1.0


@pytest.mark.parametrize("channels", [TARGET_SETS["border"], TARGET_SETS["border_centre"]])
def test_tune_table_equals_scoring_every_setting_directly(channels):
    rng = np.random.default_rng(3)
    probs, truths = [], []
    for kind in ("fluorescence", "histology"):
        _, labels = make_sample(rng, 48, 64, kind)
        targets = labels_to_targets(labels, channels)
        noisy = ndimage.gaussian_filter(targets, (1.0, 1.0, 0)) + rng.normal(0, 0.1, targets.shape)
        probs.append(np.clip(noisy, 0, 1))
        truths.append(labels)
    grid = {
        "method": ["components", "watershed", "random_walker"],
        "threshold": [0.4, 0.6],
        "marker_threshold": [0.3, 0.6],
        "border_weight": [0.5, 1.0],
        "min_marker_size": [1, 4],
        "fill_holes": [True, False],
        "min_size": [0, 10],
    }
    best, score, table = tune_postprocess(probs, truths, channels, grid)
    assert len(table) == 3 * 2**6
    for row in table:
        params = {name: row[name] for name in PARAM_NAMES}
        direct = np.mean(
            [
                score_image(truth, instances_from_channels(prob, channels, params)).score
                for prob, truth in zip(probs, truths, strict=True)
            ]
        )
        assert row["score"] == pytest.approx(direct, abs=1e-12)
    assert score == max(row["score"] for row in table)
    assert {**best, "score": score} in table


@pytest.mark.parametrize(
    ("prob_maps", "true_labels", "grid", "message"),
    [
        ([np.zeros((4, 4, 1))], [], {}, "1 probability maps but 0"),
        ([], [], {}, "no image"),
        ([np.zeros((4, 4, 1))], [np.zeros((4, 4), np.int32)], {"size": [1]}, "size"),
        ([np.zeros((4, 4, 1))], [np.zeros((4, 4), np.int32)], {"min_size": []}, "empty"),
        ([np.zeros((4, 4, 1))], [np.zeros((4, 5), np.int32)], {}, "image 0"),
    ],
)
def test_tune_refuses_bad_input(prob_maps, true_labels, grid, message):
    with pytest.raises(ValueError, match=message):
        tune_postprocess(prob_maps, true_labels, ("foreground",), grid)
