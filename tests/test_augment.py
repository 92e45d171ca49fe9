"""Tests of the joint image + instance-label augmentation (pipeline/augment.py)."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
from scipy import ndimage
from skimage.draw import disk

from pipeline.data.synthetic import make_sample
from pipeline.learning.augment import (
    RandomScaleCrop,
    augment,
    build_augmentation,
    dim_nuclei,
    paste_touching_nuclei,
    stain_like_tissue,
)

CROP = 64


def _sample(height: int, width: int, kind: str = "histology", seed: int = 0):
    return make_sample(np.random.default_rng(seed), height, width, kind)


def _dihedral(array: np.ndarray) -> list[np.ndarray]:
    """The 8 images of an array under flips and 90 degree rotations."""
    versions = []
    for flipped in (array, array[:, ::-1]):
        versions += [np.rot90(flipped, k) for k in range(4)]
    return versions


def _find_window(haystack: np.ndarray, needle: np.ndarray) -> list[tuple[int, int]]:
    """Every (top, left) where ``needle`` lies in ``haystack`` exactly."""
    height, width = needle.shape[:2]
    return [
        (top, left)
        for top in range(haystack.shape[0] - height + 1)
        for left in range(haystack.shape[1] - width + 1)
        if np.array_equal(haystack[top : top + height, left : left + width], needle)
    ]


# --- shapes, types, label values ------------------------------------------------------------


@pytest.mark.parametrize("strength", ["none", "default", "strong"])
@pytest.mark.parametrize("pad_mode", ["reflect", "constant"])
@pytest.mark.parametrize("shape", [(90, 120), (40, 50), (30, 100), (64, 64)])
def test_output_shape_dtype_and_no_new_labels(strength: str, pad_mode: str, shape) -> None:
    image, labels = _sample(*shape)
    transform = build_augmentation(CROP, strength, pad_mode)
    for seed in range(6):
        out_image, out_labels = augment(transform, image, labels, seed)
        assert out_image.shape == (CROP, CROP, 3) and out_image.dtype == np.uint8
        assert out_labels.shape == (CROP, CROP) and out_labels.dtype == np.int32
        assert set(np.unique(out_labels).tolist()) <= set(np.unique(labels).tolist())


@pytest.mark.parametrize("offset", [40_000, 70_000])
def test_large_label_values_survive_exactly(offset: int) -> None:
    """Labels up to 65535 go through cv2 as uint16, larger ones as int32: both exactly."""
    image, labels = _sample(80, 90)
    big = np.where(labels > 0, labels + offset, 0).astype(np.int64)
    transform = build_augmentation(CROP)
    for seed in range(5):
        _, small_out = augment(transform, image, labels, seed)
        _, big_out = augment(transform, image, big, seed)
        np.testing.assert_array_equal(big_out, np.where(small_out > 0, small_out + offset, 0))


def test_constant_padding_is_zero_in_image_and_labels() -> None:
    image = np.full((20, 30, 3), 200, dtype=np.uint8)
    labels = np.ones((20, 30), dtype=np.int32)
    out_image, out_labels = augment(build_augmentation(CROP, "none", "constant"), image, labels, 1)
    assert (out_labels == 1).sum() == 20 * 30 and (out_labels == 0).sum() == CROP * CROP - 600
    np.testing.assert_array_equal(out_image[out_labels == 0], 0)
    np.testing.assert_array_equal(out_image[out_labels == 1], 200)


# --- geometry ------------------------------------------------------------------------------


def test_flips_and_rotations_move_image_and_labels_together_and_keep_areas() -> None:
    size = 48
    labels = np.zeros((size, size), dtype=np.int32)
    labels[disk((14, 17), 9)] = 1
    labels[disk((33, 30), 6)] = 2
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    image[labels == 1] = (250, 10, 10)
    areas = np.bincount(labels.ravel())
    transform = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=1)])
    seen = set()
    for seed in range(64):
        out_image, out_labels = augment(transform, image, labels, seed)
        np.testing.assert_array_equal(np.bincount(out_labels.ravel()), areas)  # exact areas
        matches = [
            k
            for k, (version_image, version_labels) in enumerate(
                zip(_dihedral(image), _dihedral(labels), strict=True)
            )
            if np.array_equal(out_image, version_image)
            and np.array_equal(out_labels, version_labels)
        ]
        assert len(matches) == 1  # one and the same dihedral move for image and labels
        seen.add(matches[0])
    # All 8 moves occur: the transforms draw from one shared stream. (With Compose(seed=s)
    # every transform gets its own generator seeded with s: both flips always fire together
    # and only the 4 rotations would be seen.)
    assert seen == set(range(8))


def test_scaled_crop_keeps_image_and_labels_aligned_and_scales_areas() -> None:
    """Each disc of a flat colour: inside its (eroded) label the image has its exact colour,
    and its area scales with the square of the chosen scale."""
    size = 200
    labels = np.zeros((size, size), dtype=np.int32)
    centres = [(40, 40), (40, 120), (120, 60), (150, 150), (100, 100)]
    for label, centre in enumerate(centres, start=1):
        labels[disk(centre, 14, shape=labels.shape)] = label
    image = np.repeat((labels * 40).astype(np.uint8)[:, :, None], 3, axis=2)
    crop = RandomScaleCrop(96, (0.75, 1.5))
    transform = A.Compose([crop])
    windows = set()
    for seed in range(10):
        out_image, out_labels = augment(transform, image, labels, seed)
        window = crop.params["window"]
        windows.add(window)
        factor = (96 / window) ** 2
        for label in np.unique(out_labels)[1:]:
            inner = out_labels == label
            for _ in range(2):  # away from the edge, where linear interpolation blends
                inner[1:-1, 1:-1] &= (
                    inner[:-2, 1:-1] & inner[2:, 1:-1] & inner[1:-1, :-2] & inner[1:-1, 2:]
                )
                inner[[0, -1], :] = False
                inner[:, [0, -1]] = False
            assert (out_image[inner] == label * 40).all()
            touches_border = (out_labels[[0, -1], :] == label).any() or (
                out_labels[:, [0, -1]] == label
            ).any()
            if not touches_border:
                area = (out_labels == label).sum()
                expected = (labels == label).sum() * factor
                assert abs(area - expected) <= 0.12 * expected + 4
    assert len(windows) > 5  # the scale really varies
    assert min(windows) >= round(96 / 1.5) and max(windows) <= round(96 / 0.75)


def test_strength_none_only_crops_a_larger_image() -> None:
    image, labels = _sample(70, 90, seed=3)
    transform = build_augmentation(CROP, "none")
    positions = set()
    for seed in range(5):
        out_image, out_labels = augment(transform, image, labels, seed)
        found = [
            where
            for where in _find_window(labels, out_labels)
            if np.array_equal(
                image[where[0] : where[0] + CROP, where[1] : where[1] + CROP], out_image
            )
        ]
        assert found  # the output is a window of the input, pixel for pixel
        positions.add(found[0])
        again = augment(transform, image, labels, seed)
        assert np.array_equal(again[0], out_image) and np.array_equal(again[1], out_labels)
    assert len(positions) > 1
    before = image.copy()
    out_image[:] = 0  # a copy, not a view into the input
    np.testing.assert_array_equal(image, before)


@pytest.mark.parametrize("pad_mode", ["reflect", "constant"])
def test_strength_none_only_pads_a_smaller_image(pad_mode: str) -> None:
    image, labels = _sample(40, 50, seed=4)
    transform = build_augmentation(CROP, "none", pad_mode)
    numpy_mode = {"reflect": "reflect", "constant": "constant"}[pad_mode]
    offsets = set()
    for seed in range(6):
        out_image, out_labels = augment(transform, image, labels, seed)
        found = _find_window(out_image, image)
        assert len(found) == 1
        top, left = found[0]
        offsets.add((top, left))
        pads = ((top, CROP - 40 - top), (left, CROP - 50 - left))
        np.testing.assert_array_equal(out_image, np.pad(image, (*pads, (0, 0)), mode=numpy_mode))
        np.testing.assert_array_equal(out_labels, np.pad(labels, pads, mode=numpy_mode))
    assert len(offsets) > 1  # the image sits at a random place


@pytest.mark.parametrize("pad_mode", ["reflect", "constant"])
def test_strength_none_pads_one_axis_and_crops_the_other(pad_mode: str) -> None:
    """32 rows (padded to 64) by 100 columns (cropped to 64)."""
    image, labels = _sample(32, 100, seed=8)
    transform = build_augmentation(CROP, "none", pad_mode)
    out_image, out_labels = augment(transform, image, labels, 2)
    assert out_image.shape == (CROP, CROP, 3) and out_labels.shape == (CROP, CROP)
    matches = []
    for top in range(CROP - 32 + 1):
        rows = ((top, CROP - 32 - top),)
        padded_image = np.pad(image, (*rows, (0, 0), (0, 0)), mode=pad_mode)
        padded_labels = np.pad(labels, (*rows, (0, 0)), mode=pad_mode)
        for left in range(100 - CROP + 1):
            if np.array_equal(padded_image[:, left : left + CROP], out_image) and np.array_equal(
                padded_labels[:, left : left + CROP], out_labels
            ):
                matches.append((top, left))
    assert len(matches) == 1


# --- determinism ---------------------------------------------------------------------------


def test_same_seed_same_output_other_seed_other_output() -> None:
    image, labels = _sample(100, 130, "fluorescence", seed=5)
    transform = build_augmentation(CROP)
    first = augment(transform, image, labels, 123)
    augment(transform, image, labels, 9)  # the state of an earlier call does not matter
    again = augment(build_augmentation(CROP), image, labels, 123)  # nor the object
    assert first[0].tobytes() == again[0].tobytes()
    assert first[1].tobytes() == again[1].tobytes()
    outputs = {augment(transform, image, labels, seed)[0].tobytes() for seed in range(8)}
    assert len(outputs) == 8


def test_the_two_pipelines_hold_the_transforms_in_order() -> None:
    default = build_augmentation(CROP)
    assert [type(t).__name__ for t in default] == [
        "RandomScaleCrop",  # first: everything after works on CROP x CROP pixels
        "HorizontalFlip",
        "VerticalFlip",
        "RandomRotate90",
        "RandomBrightnessContrast",
        "RandomGamma",
        "HueSaturationValue",
        "GaussNoise",
        "CLAHE",
    ]
    assert default.transforms[0].scale_range == (0.75, 1.5)
    assert default.transforms[0].size == CROP
    none = build_augmentation(CROP, "none")
    assert [type(t).__name__ for t in none] == ["RandomScaleCrop"]
    assert none.transforms[0].scale_range == (1.0, 1.0)


def test_default_strength_changes_pixel_values_sometimes() -> None:
    image, labels = _sample(64, 64, seed=6)
    transform = build_augmentation(CROP)
    colours = {
        tuple(augment(transform, image, labels, seed)[0].mean(axis=(0, 1)).round(1))
        for seed in range(8)
    }
    assert len(colours) == 8


def test_strong_strength_keeps_grey_images_grey_and_greys_some_colour_ones() -> None:
    """Fluorescence stays grey (within 1 grey level: CLAHE goes through Lab); about one
    colour image in ten comes out grey (ToGray, p=0.1): 6 of these 60 seeds."""
    transform = build_augmentation(CROP, "strong")
    grey_image, grey_labels = _sample(90, 120, kind="fluorescence")
    assert np.ptp(grey_image.astype(int), axis=2).max() == 0
    for seed in range(40):
        out = augment(transform, grey_image, grey_labels, seed)[0]
        assert np.ptp(out.astype(int), axis=2).max() <= 1
    colour_image, colour_labels = _sample(90, 120, kind="histology")
    greyed = [
        seed
        for seed in range(60)
        if np.ptp(
            augment(transform, colour_image, colour_labels, seed)[0].astype(int), axis=2
        ).max()
        == 0
    ]
    assert len(greyed) == 6


def test_strong_strength_changes_colours_more_than_default() -> None:
    """The spread of mean hues over seeds is wider with the strong pipeline."""
    image, labels = _sample(64, 64, seed=6)

    def hue_spread(strength: str) -> float:
        from skimage.color import rgb2hsv

        transform = build_augmentation(CROP, strength)
        hues = [
            float(rgb2hsv(augment(transform, image, labels, seed)[0])[..., 0].mean())
            for seed in range(30)
        ]
        return float(np.std(hues))

    assert hue_spread("strong") > 1.5 * hue_spread("default")


# --- checks -----------------------------------------------------------------------------------


def test_bad_inputs_are_refused() -> None:
    image, labels = _sample(40, 40)
    transform = build_augmentation(CROP)
    with pytest.raises(ValueError, match="uint8"):
        augment(transform, image.astype(np.float32), labels, 0)
    with pytest.raises(ValueError, match=">= 0"):
        augment(transform, image, -labels, 0)
    with pytest.raises(ValueError, match="integers"):
        augment(transform, image, labels.astype(np.float32), 0)
    with pytest.raises(ValueError, match="labels must be"):
        augment(transform, image, labels[:, :-1], 0)
    with pytest.raises(ValueError, match="strength"):
        build_augmentation(CROP, "extreme")
    with pytest.raises(ValueError, match="pad_mode"):
        build_augmentation(CROP, "none", "wrap")


# --- dimmed nuclei ----------------------------------------------------------------------------


def _two_nuclei(background: int, nucleus: int) -> tuple[np.ndarray, np.ndarray]:
    """A 64x64 image with two 24x24 square nuclei far apart, flat inside."""
    image = np.full((64, 64, 3), background, np.uint8)
    labels = np.zeros((64, 64), np.int32)
    for label, (top, left) in enumerate([(4, 4), (36, 36)], start=1):
        labels[top : top + 24, left : left + 24] = label
        image[top : top + 24, left : left + 24] = nucleus
    return image, labels


@pytest.mark.parametrize(("background", "nucleus", "expected"), [(10, 210, 110), (200, 100, 150)])
def test_dim_nuclei_moves_nuclei_towards_the_background(background, nucleus, expected) -> None:
    """With every nucleus chosen and a contrast of exactly 0.5, a nucleus's inside lies
    half way to the background, dark or light; far from nuclei nothing changes."""
    image, labels = _two_nuclei(background, nucleus)
    out = dim_nuclei(image, labels, np.random.default_rng(0), 1.0, (0.5, 0.5))
    inside = np.zeros_like(labels, bool)
    inside[10:22, 10:22] = inside[42:54, 42:54] = True  # 6 pixels (3 sigma) from the edges
    assert np.all(out[inside] == expected)
    assert np.all(out[30:34, :] == background) and np.all(out[:, 30:34] == background)
    assert out.dtype == np.uint8 and out.shape == image.shape


def test_dim_nuclei_chooses_each_nucleus_with_the_share() -> None:
    image, labels = _two_nuclei(10, 210)
    untouched = dim_nuclei(image, labels, np.random.default_rng(0), 0.0, (0.5, 0.5))
    assert np.array_equal(untouched, image)
    # Over 200 draws of 2 nuclei with share 0.3, the dimmed share is near 0.3.
    dimmed = [
        dim_nuclei(image, labels, np.random.default_rng(seed), 0.3, (0.5, 0.5))[16, 16, 0] < 200
        for seed in range(200)
    ]
    assert 0.2 < np.mean(dimmed) < 0.4
    first = dim_nuclei(image, labels, np.random.default_rng(5), 0.5)
    assert np.array_equal(first, dim_nuclei(image, labels, np.random.default_rng(5), 0.5))


def test_dim_nuclei_leaves_images_without_nuclei_or_background_as_they_are() -> None:
    image, labels = _two_nuclei(10, 210)
    empty = np.zeros_like(labels)
    assert np.array_equal(dim_nuclei(image, empty, np.random.default_rng(0), 1.0), image)
    full = np.ones_like(labels)
    assert np.array_equal(dim_nuclei(image, full, np.random.default_rng(0), 1.0), image)


@pytest.mark.parametrize(
    ("share", "contrast"), [(-0.1, (0.1, 0.6)), (1.5, (0.1, 0.6)), (0.5, (0.7, 0.2)), (0.5, (0, 2))]
)
def test_dim_nuclei_refuses_bad_settings(share, contrast) -> None:
    image, labels = _two_nuclei(10, 210)
    with pytest.raises(ValueError, match="share|contrast_range"):
        dim_nuclei(image, labels, np.random.default_rng(0), share, contrast)


# --- fluorescence re-coloured as stained tissue ----------------------------------------------


def test_stain_like_tissue_turns_bright_nuclei_into_hematoxylin_on_a_light_ground() -> None:
    """With fixed stain levels and no eosin, a nucleus takes skimage's colour of 0.1
    hematoxylin and the ground (no stain at all) is white, up to the noise (sd 2)."""
    from skimage.color import hed2rgb

    image, _ = _two_nuclei(10, 210)
    out = stain_like_tissue(image, np.random.default_rng(0), (0.1, 0.1), (0.0, 0.0), (0.0, 0.0))
    expected = hed2rgb(np.array([[[0.1, 0.0, 0.0]]]))[0, 0] * 255  # about (99, 49, 158)
    assert np.abs(out[10:22, 10:22].astype(float).mean(axis=(0, 1)) - expected).max() < 1.0
    assert np.abs(out[10:22, 10:22].astype(float) - expected).max() <= 10  # 5 sd
    assert out[30:34].min() >= 245 and out.dtype == np.uint8 and out.shape == image.shape


def test_stain_like_tissue_keeps_nuclei_brighter_than_the_ground_in_the_grey_input_space():
    """In the grey input space a light image is inverted, so the re-coloured nuclei are
    again brighter than the tissue around them, for every draw of the stains."""
    from pipeline.core.preprocess import normalise_image

    image, labels = _two_nuclei(10, 210)
    for seed in range(20):
        grey = normalise_image(stain_like_tissue(image, np.random.default_rng(seed)), False, "grey")
        assert grey[..., 0][labels > 0].mean() > grey[..., 0][labels == 0].mean() + 1.0


def test_stain_like_tissue_is_reproducible_and_leaves_light_images_alone() -> None:
    image, _ = _two_nuclei(10, 210)
    first = stain_like_tissue(image, np.random.default_rng(3))
    assert np.array_equal(first, stain_like_tissue(image, np.random.default_rng(3)))
    assert not np.array_equal(first, stain_like_tissue(image, np.random.default_rng(4)))
    light, _ = _two_nuclei(200, 100)
    out = stain_like_tissue(light, np.random.default_rng(0))
    assert np.array_equal(out, light) and out is not light


@pytest.mark.parametrize(
    ("image", "ranges", "match"),
    [
        (np.zeros((8, 8), np.uint8), {}, "uint8 \\(H, W, 3\\)"),
        (np.zeros((8, 8, 3), np.float32), {}, "uint8 \\(H, W, 3\\)"),
        (np.zeros((8, 8, 3), np.uint8), {"eosin": (0.1, 0.0)}, "eosin must be"),
        (np.zeros((8, 8, 3), np.uint8), {"nucleus_hematoxylin": (-1, 0)}, "nucleus_hema"),
    ],
)
def test_stain_like_tissue_refuses_what_it_cannot_colour(image, ranges, match) -> None:
    with pytest.raises(ValueError, match=match):
        stain_like_tissue(image, np.random.default_rng(0), **ranges)


# --- nuclei pasted against each other ---------------------------------------------------------


def _one_disc() -> tuple[np.ndarray, np.ndarray]:
    """A 60x60 image with one disc of radius 6 (109 pixels), shaded so copies show."""

    labels = np.zeros((60, 60), np.int32)
    labels[disk((30, 30), 6)] = 1
    image = np.full((60, 60, 3), 5, np.uint8)
    image[labels == 1] = 180
    image[30, 30] = 250
    return image, labels


def test_paste_touching_nuclei_puts_a_copy_against_the_nucleus() -> None:
    image, labels = _one_disc()
    out_image, out_labels = paste_touching_nuclei(image, labels, np.random.default_rng(1), 1)
    assert out_labels.max() == 2 and np.count_nonzero(out_labels == 2) == 109
    assert np.all(out_image[out_labels == 2] >= 180)  # the nucleus's own pixels
    assert np.count_nonzero(out_image == 250) == 2 * 3  # its bright centre, copied
    covered = np.count_nonzero(out_labels == 1)
    assert 0 < covered <= 109  # the original, partly under the copy
    centres = [np.argwhere(out_labels == k).mean(axis=0) for k in (1, 2)]
    radius = np.sqrt(109 / np.pi)
    gap = np.linalg.norm(centres[1] - np.argwhere(labels == 1).mean(axis=0))
    assert 0.7 * 2 * radius - 1 <= gap <= 2 * radius + 1  # touching or overlapping a little
    grown = ndimage.binary_dilation(out_labels == 1)
    assert np.any(grown & (out_labels == 2))  # the two touch


def test_paste_touching_nuclei_is_reproducible_and_leaves_the_input_alone() -> None:
    image, labels = _one_disc()
    first = paste_touching_nuclei(image, labels, np.random.default_rng(5), 3)
    again = paste_touching_nuclei(image, labels, np.random.default_rng(5), 3)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert np.count_nonzero(labels) == 109 and np.count_nonzero(image == 180) == 3 * 108
    assert set(np.unique(first[1])) <= {0, 1, 2, 3, 4}


def test_paste_touching_nuclei_copes_with_nuclei_covered_whole() -> None:
    """Many copies on a crowded sample cover some nuclei whole; later copies must not
    look for them (the first version did, and a training crashed on a NaN centre)."""
    for seed in range(30):
        image, labels = make_sample(np.random.default_rng(seed), 48, 48, "fluorescence")
        out_image, out_labels = paste_touching_nuclei(
            image, labels, np.random.default_rng(seed), 20
        )
        assert out_image.shape == image.shape and out_labels.shape == labels.shape
        assert out_labels.max() <= labels.max() + 20


@pytest.mark.parametrize("case", ["no nuclei", "count 0"])
def test_paste_touching_nuclei_without_nuclei_or_copies_changes_nothing(case) -> None:
    image, labels = _one_disc()
    if case == "no nuclei":
        labels = np.zeros_like(labels)
    count = 0 if case == "count 0" else 3
    out_image, out_labels = paste_touching_nuclei(image, labels, np.random.default_rng(0), count)
    assert np.array_equal(out_image, image) and np.array_equal(out_labels, labels)
    assert out_image is not image


def test_paste_touching_nuclei_refuses_a_negative_count() -> None:
    image, labels = _one_disc()
    with pytest.raises(ValueError, match="count must be >= 0"):
        paste_touching_nuclei(image, labels, np.random.default_rng(0), -1)
