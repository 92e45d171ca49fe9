"""Training targets: foreground, border (rim + contact zone) and centre channels."""

import numpy as np
import pytest
from scipy import ndimage
from skimage.draw import disk

from pipeline.core.targets import (
    KNOWN_CHANNELS,
    TARGET_CHANNELS,
    TARGET_SETS,
    contact_zone,
    instance_distance,
    labels_to_targets,
    rim_width,
)
from pipeline.errors import PipelineError


def _ball(radius: int) -> np.ndarray:
    """Offsets within Euclidean distance ``radius``, as a footprint."""
    offsets = np.arange(-radius, radius + 1)
    return offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2


def _border(labels: np.ndarray) -> np.ndarray:
    return labels_to_targets(labels, ("border",))[..., 0].astype(int)


def disc_lattice(height: int = 1040, width: int = 1388, cell: int = 64) -> np.ndarray:
    """Discs of radius 6..20 on a lattice; every third cell holds a touching pair instead.

    A touching pair is two discs of radius 8 whose outlines are 4-adjacent along a row.
    """
    labels = np.zeros((height, width), np.int32)
    label = 0
    for row in range(height // cell):
        for col in range(width // cell):
            cy, cx = row * cell + cell // 2, col * cell + cell // 2
            if (row + col) % 3 == 0:
                for centre_x in (cx - 8, cx + 7):  # disk(r=8) spans centre +- 7
                    label += 1
                    labels[disk((cy, centre_x), 8)] = label
            else:
                label += 1
                labels[disk((cy, cx), 6 + (7 * row + 3 * col) % 15)] = label
    return labels


def test_default_channels_are_foreground_only():
    assert TARGET_CHANNELS == ("foreground",)
    assert labels_to_targets(np.array([[0, 2], [1, 0]])).tolist() == [
        [[0.0], [1.0]],
        [[1.0], [0.0]],
    ]


def test_every_target_set_starts_with_foreground():
    assert TARGET_SETS == {
        "foreground": ("foreground",),
        "border": ("foreground", "border"),
        "border_centre": ("foreground", "border", "centre"),
    }
    for channels in TARGET_SETS.values():
        assert channels[0] == "foreground"
        assert set(channels) <= set(KNOWN_CHANNELS)


def test_targets_are_float32_with_one_plane_per_channel():
    labels = np.zeros((9, 11), np.int32)
    labels[2:7, 2:7] = 4
    targets = labels_to_targets(labels, TARGET_SETS["border_centre"])
    assert targets.shape == (9, 11, 3) and targets.dtype == np.float32
    assert (targets[..., 0] == (labels > 0)).all()
    assert set(np.unique(targets[..., 1])) <= {0.0, 1.0}
    assert 0.0 <= targets[..., 2].min() and targets[..., 2].max() == 1.0


@pytest.mark.parametrize(
    ("area", "width"),
    [(1, 1), (201, 1), (202, 2), (804, 2), (805, 3), (5000, 3)],  # radius 8 and 16 cut
)
def test_rim_width_grows_with_equivalent_radius(area, width):
    assert rim_width(area) == width


def test_two_squares_touching_along_an_edge():
    labels = np.zeros((7, 12), np.int32)
    labels[1:6, 1:6] = 1
    labels[1:6, 6:11] = 2
    # 1-pixel outlines, plus every pixel with both squares within 2 pixels (columns 4..7,
    # also the background just above and below the contact).
    expected = [
        [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0],
        [0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0],
        [0, 1, 0, 0, 1, 1, 1, 1, 0, 0, 1, 0],
        [0, 1, 0, 0, 1, 1, 1, 1, 0, 0, 1, 0],
        [0, 1, 0, 0, 1, 1, 1, 1, 0, 0, 1, 0],
        [0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0],
        [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0],
    ]
    assert _border(labels).tolist() == expected


@pytest.mark.parametrize(("radius", "width"), [(4, 1), (7, 1), (10, 2), (15, 2), (20, 3)])
def test_isolated_disc_has_a_rim_as_wide_as_its_size_asks(radius, width):
    labels = np.zeros((50, 50), np.int32)
    labels[disk((25, 25), radius)] = 1
    inside = labels > 0
    assert rim_width(int(inside.sum())) == width
    core = ndimage.binary_erosion(inside, structure=_ball(width), border_value=1)
    assert (_border(labels) == (inside & ~core)).all()


def test_small_disc_rim_is_its_4_connected_outline():
    labels = np.zeros((11, 11), np.int32)
    labels[disk((5, 5), 4)] = 1
    expected_row_5 = [0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0]
    assert _border(labels)[5].tolist() == expected_row_5
    assert (labels > 0).sum() == 45
    assert _border(labels).sum() == 20  # rows of 5, 7, 7, 7, 7, 7, 5: 5 + 5 * 2 + 5


def test_image_edge_is_not_a_boundary():
    labels = np.zeros((6, 10), np.int32)
    labels[:, :5] = 3  # 30 pixels, cut by the top, bottom and left edges
    expected = np.zeros((6, 10), int)
    expected[:, 4] = 1
    assert (_border(labels) == expected).all()


@pytest.mark.parametrize(
    ("gap", "in_border"), [(1, [1]), (2, [1, 1]), (3, [0, 1, 0]), (4, [0, 0, 0, 0])]
)
def test_narrow_background_gap_is_border(gap, in_border):
    labels = np.zeros((3, 10 + gap), np.int32)
    labels[:, :5] = 1
    labels[:, 5 + gap :] = 2
    assert _border(labels)[1, 5 : 5 + gap].tolist() == in_border


def test_contact_zone_is_exact_on_a_row():
    labels = np.array([[1, 1, 2, 2, 0, 0, 3, 0, 0, 0, 4]])
    assert contact_zone(labels, 1).astype(int).tolist() == [[0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]]
    assert contact_zone(labels, 2).astype(int).tolist() == [[1, 1, 1, 1, 1, 1, 0, 0, 1, 0, 0]]
    assert not contact_zone(labels, 0).any()


def test_instance_distance_counts_other_nuclei_as_outside():
    labels = np.array([[1, 1, 1, 1, 2, 2, 2]])
    distance, largest = instance_distance(labels)
    # The image edge is not a boundary: only the other nucleus is outside.
    assert distance.tolist() == [[4.0, 3.0, 2.0, 1.0, 1.0, 2.0, 3.0]]
    assert largest.tolist() == [0.0, 4.0, 3.0]


def test_centre_is_one_at_each_nucleus_centre_only():
    labels = np.zeros((40, 40), np.int32)
    labels[disk((10, 10), 5)] = 1
    labels[disk((25, 25), 9)] = 2
    centre = labels_to_targets(labels, ("centre",))[..., 0]
    assert centre[10, 10] == 1.0 and centre[25, 25] == 1.0
    assert np.argwhere(centre == 1.0).tolist() == [[10, 10], [25, 25]]
    assert centre[10, 6] == pytest.approx(1 / 5)  # outline of the radius-5 disc
    assert (centre[labels == 0] == 0).all() and (centre[labels > 0] > 0).all()


def test_centre_of_touching_nuclei_falls_at_their_contact():
    labels = np.zeros((1, 10), np.int32)
    labels[0, :5] = 1
    labels[0, 5:] = 2
    centre = labels_to_targets(labels, ("centre",))[0, :, 0]
    # The image edge is not a boundary: the nearest outside pixel is the other nucleus.
    assert (5 * centre).round().astype(int).tolist() == [5, 4, 3, 2, 1, 1, 2, 3, 4, 5]


def test_label_values_and_dtype_do_not_matter():
    labels = np.zeros((30, 30), np.int32)
    labels[disk((10, 10), 6)] = 1
    labels[disk((10, 21), 6)] = 2
    labels[disk((24, 15), 4)] = 3
    renumbered = np.choose(labels, [0, 900, 7, 65000]).astype(np.uint16)
    channels = TARGET_SETS["border_centre"]
    assert (labels_to_targets(renumbered, channels) == labels_to_targets(labels, channels)).all()


def test_boolean_mask_is_one_nucleus():
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    channels = TARGET_SETS["border"]
    assert (
        labels_to_targets(mask, channels) == labels_to_targets(mask.astype(int), channels)
    ).all()


def test_empty_image_gives_zero_targets():
    targets = labels_to_targets(np.zeros((4, 5), np.int32), TARGET_SETS["border_centre"])
    assert targets.shape == (4, 5, 3) and not targets.any()


def test_unknown_channel_is_refused():
    with pytest.raises(PipelineError, match="unknown target channel 'contour'"):
        labels_to_targets(np.zeros((2, 2), np.int32), ("foreground", "contour"))


@pytest.mark.parametrize(
    "labels", [np.zeros((2, 2, 1), np.int32), np.zeros((2, 2)), -np.ones((2, 2), np.int32)]
)
def test_bad_labels_are_refused(labels):
    with pytest.raises(ValueError, match="labels"):
        labels_to_targets(labels, ("border",))


def test_full_size_image_completes():
    """Speed sanity on a 1040 x 1388 image with ~350 nuclei (not timed: it must finish)."""
    labels = disc_lattice()
    assert labels.max() == 16 * 21 + 112  # 112 of the 336 cells hold a touching pair
    targets = labels_to_targets(labels, TARGET_SETS["border_centre"])
    assert targets.shape == (1040, 1388, 3)
    # The first pair touches at row 32 between columns 31 and 32.
    assert labels[32, 31] == 1 and labels[32, 32] == 2
    assert targets[32, 30:34, 1].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert targets[32, 24, 2] == 1.0 and targets[32, 39, 2] == 1.0  # the two centres
