"""Post-processing: probabilities to instances, without a model."""

import numpy as np
import pytest
from skimage.draw import disk

from pipeline.postprocess import (
    fill_instance_holes,
    probabilities_to_labels,
    remove_small_instances,
)
from pipeline.targets import labels_to_targets


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
