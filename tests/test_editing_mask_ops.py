"""Mask-correction operations on real label maps (LGG, BraTS-like) and on hand-checkable arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from cascadeseg.editing import (
    annotated_slices,
    fill_holes,
    interpolate_between_slices,
    keep_largest_component,
    remove_islands,
)
from cascadeseg.errors import VolumeError
from cascadeseg.io import load_labels

FULL = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity, the operations' default


def _lgg_labels(shared_data: Path, case: str) -> np.ndarray:
    return np.asarray(load_labels(shared_data / "lgg-flair" / "labelsTr" / f"{case}.nii.gz").array)


@pytest.fixture(scope="module")
def two_islands(shared_data: Path) -> np.ndarray:
    # This LGG patient's radiologist mask has a 78-voxel island beside the 29056-voxel tumour.
    return _lgg_labels(shared_data, "TCGA_DU_5855_19951217")


@pytest.fixture(scope="module")
def one_tumour(shared_data: Path) -> np.ndarray:
    return _lgg_labels(shared_data, "TCGA_CS_4941_19960909")


@pytest.fixture(scope="module")
def brats_labels(shared_data: Path) -> np.ndarray:
    return np.asarray(load_labels(shared_data / "brats-like" / "TCGA-DU-7294" / "simple.nii.gz").array)


def _sizes(mask: np.ndarray) -> list[int]:
    components, _ = ndimage.label(mask, structure=FULL)
    return sorted(np.bincount(components.ravel())[1:].tolist())


# -- keep largest component ---------------------------------------------------------------------
def test_keep_largest_drops_the_real_small_island(two_islands: np.ndarray) -> None:
    assert _sizes(two_islands == 1) == [78, 29056]
    out = keep_largest_component(two_islands)
    assert _sizes(out == 1) == [29056]
    assert np.all(out <= two_islands)  # only removes
    assert out.dtype == two_islands.dtype and out.shape == two_islands.shape
    assert int((two_islands != out).sum()) == 78
    assert _sizes(two_islands == 1) == [78, 29056]  # input untouched


def test_keep_largest_hand_checked() -> None:
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[1:4, 1:4, 1:4] = 1  # 27 voxels
    labels[6:8, 6:8, 6:8] = 1  # 8 voxels
    labels[8, 0, 0] = 2
    out = keep_largest_component(labels, label=1)
    assert int((out == 1).sum()) == 27 and out[6, 6, 6] == 0
    assert out[8, 0, 0] == 2  # another label is left alone


def test_keep_largest_per_label_on_brats(brats_labels: np.ndarray) -> None:
    out = keep_largest_component(brats_labels)
    for value in (1, 2, 4):
        sizes_before = _sizes(brats_labels == value)
        assert _sizes(out == value) == sizes_before[-1:]


def test_work_inside_the_label_box_matches_whole_volume(brats_labels: np.ndarray) -> None:
    """The operations crop to each label's bounding box for speed; the result must be exactly
    that of the plain whole-volume computation (3 BraTS labels, nested inside each other)."""
    expected_fill = brats_labels.copy()
    expected_slices = brats_labels.copy()
    per_slice = np.zeros((3, 3, 3), bool)
    per_slice[1] = ndimage.generate_binary_structure(2, 1)
    for value in (1, 2, 4):
        filled = ndimage.binary_fill_holes(brats_labels == value)
        expected_fill[filled & (brats_labels == 0)] = value
        filled = ndimage.binary_fill_holes(brats_labels == value, structure=per_slice)
        expected_slices[filled & (brats_labels == 0)] = value
    assert np.array_equal(fill_holes(brats_labels), expected_fill)
    assert np.array_equal(fill_holes(brats_labels, slice_axis=0), expected_slices)
    expected_islands = brats_labels.copy()
    for value in (1, 2, 4):
        components, _ = ndimage.label(brats_labels == value, structure=FULL)
        sizes = np.bincount(components.ravel())
        expected_islands[(sizes < 30)[components] & (components > 0)] = 0
    assert np.array_equal(remove_islands(brats_labels, 30), expected_islands)


# -- remove islands -----------------------------------------------------------------------------
def test_remove_islands_threshold_on_real_mask(two_islands: np.ndarray) -> None:
    assert np.array_equal(remove_islands(two_islands, 78), two_islands)  # 78 is not < 78
    out = remove_islands(two_islands, 79)
    assert _sizes(out == 1) == [29056]


def test_remove_islands_keeps_everything_big_enough(brats_labels: np.ndarray) -> None:
    out = remove_islands(brats_labels, 50)
    for value in (1, 2, 4):
        before = _sizes(brats_labels == value)
        assert _sizes(out == value) == [s for s in before if s >= 50]
    with pytest.raises(VolumeError, match="min_size"):
        remove_islands(brats_labels, 0)


# -- fill holes ---------------------------------------------------------------------------------
def test_fill_holes_3d_fills_the_real_cavity(shared_data: Path) -> None:
    labels = _lgg_labels(shared_data, "TCGA_DU_7008_19830723")
    out = fill_holes(labels)
    added = (out == 1) & (labels == 0)
    assert int(added.sum()) == 85  # the enclosed cavity of this radiologist mask
    # Every added voxel was enclosed: no path of background voxels to the volume's border.
    outside, _ = ndimage.label(labels == 0)
    border = np.ones(labels.shape, bool)
    border[1:-1, 1:-1, 1:-1] = False
    assert not np.isin(outside[added], np.unique(outside[border])).any()


def test_fill_holes_per_slice_restores_punched_hole(one_tumour: np.ndarray) -> None:
    labels = one_tumour.copy()
    z = int(np.argmax((labels == 1).sum(axis=(1, 2))))
    interior = ndimage.binary_erosion(labels[z] == 1, iterations=4)
    assert interior.sum() > 50
    labels[z][interior] = 0  # a hole open above and below: 3D fill must not close it
    assert np.array_equal(fill_holes(labels), labels)
    per_slice = fill_holes(labels, slice_axis=0)
    assert np.array_equal(per_slice, one_tumour)


def test_fill_holes_never_overwrites_another_label() -> None:
    labels = np.zeros((3, 9, 9), np.uint8)
    labels[1, 2:7, 2:7] = 1
    labels[1, 3:6, 3:6] = 0
    labels[1, 4, 4] = 2  # a different structure inside the ring
    out = fill_holes(labels, label=1, slice_axis=0)
    assert out[1, 4, 4] == 2
    assert int((out == 1).sum()) == 25 - 1
    with pytest.raises(VolumeError, match="slice_axis"):
        fill_holes(labels, slice_axis=3)


# -- interpolation between slices ---------------------------------------------------------------
def test_interpolate_discs_hand_checked() -> None:
    yy, xx = np.mgrid[0:64, 0:64]
    labels = np.zeros((11, 64, 64), np.uint8)
    labels[0][(yy - 32) ** 2 + (xx - 32) ** 2 <= 10**2] = 1
    labels[10][(yy - 32) ** 2 + (xx - 32) ** 2 <= 20**2] = 1
    out = interpolate_between_slices(labels, 1)
    # Halfway the radius is 15: area pi * 15^2 = 707 voxels (within discretisation).
    assert abs(int(out[5].sum()) - np.pi * 15**2) < 25
    areas = out.sum(axis=(1, 2))
    assert np.all(np.diff(areas) > 0)  # grows monotonically from r=10 to r=20
    assert np.array_equal(out[0], labels[0]) and np.array_equal(out[10], labels[10])


def test_interpolate_recovers_real_tumour_slices(shared_data: Path) -> None:
    truth = _lgg_labels(shared_data, "TCGA_DU_6401_19831001")
    keys = annotated_slices(truth)

    def dice(a: np.ndarray, b: np.ndarray) -> float:
        return float(2 * (a & b).sum() / (a.sum() + b.sum()))

    interpolated, copied = [], []
    for lo in keys[:-2].tolist():
        hi = lo + 2
        sparse = truth.copy()
        sparse[lo + 1] = 0  # the user drew slices lo and hi only
        out = interpolate_between_slices(sparse, 1, between=(lo, hi))
        assert np.array_equal(np.delete(out, lo + 1, axis=0), np.delete(sparse, lo + 1, axis=0))
        target = truth[lo + 1] == 1
        interpolated.append(dice(out[lo + 1] == 1, target))
        # The naive alternative: copy the better of the two drawn neighbours.
        copied.append(max(dice(truth[lo] == 1, target), dice(truth[hi] == 1, target)))
    assert np.mean(interpolated) > np.mean(copied), (np.mean(interpolated), np.mean(copied))
    assert np.median(interpolated) > 0.9


def test_interpolate_along_another_axis_and_errors(one_tumour: np.ndarray) -> None:
    labels = np.zeros_like(one_tumour)
    x_keys = annotated_slices(one_tumour, axis=2)
    a, b = int(x_keys[5]), int(x_keys[5]) + 6
    labels[:, :, a] = one_tumour[:, :, a]
    labels[:, :, b] = one_tumour[:, :, b]
    out = interpolate_between_slices(labels, 1, axis=2, spacing=(1.0, 1.0, 1.0))
    assert all(out[:, :, x].any() for x in range(a, b + 1))
    with pytest.raises(VolumeError, match="at least"):
        interpolate_between_slices(labels[:, :, : a + 1], 1, axis=2)
    with pytest.raises(VolumeError, match="contain no voxel"):
        interpolate_between_slices(labels, 1, axis=2, between=(a, b + 1))
    with pytest.raises(VolumeError, match="label"):
        interpolate_between_slices(labels, 0)
    with pytest.raises(VolumeError, match="3D"):
        keep_largest_component(labels[0])


def _distant_islands_whole_volume(labels: np.ndarray, spacing: tuple[float, ...], max_mm: float) -> np.ndarray:
    """The rule of remove_distant_islands computed the plain way: islands labelled and the distance
    to the main island transformed over the whole volume, island by island."""
    islands, count = ndimage.label(labels == 1, structure=FULL)
    sizes = np.bincount(islands.ravel())
    sizes[0] = 0
    main = int(np.argmax(sizes))
    distance = ndimage.distance_transform_edt(islands != main, sampling=spacing)
    out = labels.copy()
    for index in range(1, count + 1):
        if index != main and sizes[index] < 0.5 * sizes[main] and distance[islands == index].min() > max_mm:
            out[islands == index] = 0
    return out


def test_distant_islands_are_those_of_the_whole_volume_distance(two_islands: np.ndarray) -> None:
    """The distance to the main island is transformed only near it (its box grown by the reach);
    on a real tumour with strays scattered over the scan, every reach and an anisotropic spacing
    drop exactly the islands the whole-volume distance drops."""
    from cascadeseg.labelops import remove_distant_islands

    labels = two_islands.copy()
    rng = np.random.default_rng(0)
    strays = 0
    while strays < 40:  # single-voxel islands, none touching the tumour or each other
        z, y, x = (int(rng.integers(1, n - 1)) for n in labels.shape)
        if not labels[z - 1 : z + 2, y - 1 : y + 2, x - 1 : x + 2].any():
            labels[z, y, x] = 1
            strays += 1
    for spacing in ((1.0, 1.0, 1.0), (3.0, 0.7, 0.7)):
        for max_mm in (1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0):
            expected = _distant_islands_whole_volume(labels, spacing, max_mm)
            got = remove_distant_islands(labels, spacing, max_mm)
            assert np.array_equal(got, expected), (spacing, max_mm)
            kept = ndimage.label(got == 1, structure=FULL)[1]
            assert 1 <= kept <= 42  # the tumour stays; its own island and the strays go by distance
    # Something is decided at both ends: at 1 mm only the tumour's neighbours stay, at 80 mm most strays do.
    assert ndimage.label(remove_distant_islands(labels, (1.0, 1.0, 1.0), 1.0) == 1, structure=FULL)[1] < 10
    assert ndimage.label(remove_distant_islands(labels, (1.0, 1.0, 1.0), 80.0) == 1, structure=FULL)[1] > 20


def test_distant_small_islands_go_near_or_large_ones_stay() -> None:
    from cascadeseg.labelops import remove_distant_islands

    labels = np.zeros((1, 40, 40), np.uint8)
    labels[0, 10:20, 10:20] = 1  # main lesion, 100 voxels
    labels[0, 10:12, 22:24] = 1  # satellite 2 voxels away: kept
    labels[0, 35:37, 35:37] = 1  # small stray 15+ voxels away: dropped at 10 mm
    labels[0, 30:38, 0:8] = 1  # a second lesion of 64 voxels (>= half the main): kept however far
    out = remove_distant_islands(labels, (1.0, 1.0, 1.0), 10.0)
    assert out[0, 35:37, 35:37].sum() == 0
    assert out[0, 10:12, 22:24].all() and out[0, 30:38, 0:8].all() and out[0, 10:20, 10:20].all()
    # Distances are in millimetres: with 0.2 mm pixels the stray is only ~3 mm away and stays.
    assert remove_distant_islands(labels, (1.0, 0.2, 0.2), 10.0)[0, 35:37, 35:37].all()
    assert labels[0, 35:37, 35:37].all()  # the input is untouched
