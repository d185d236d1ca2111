"""Checks shared by every reader: dimensions, non-finite voxels, label values, grid agreement.

Each failure raises the project's own exception naming the file, what was found and what was
expected.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from cascadeseg.errors import GeometryMismatchError, VolumeError
from cascadeseg.io.orientation import voxel_to_world
from cascadeseg.io.volume import Volume

NanPolicy = Literal["raise", "zero", "min"]
NAN_POLICIES: tuple[str, ...] = ("raise", "zero", "min")


def _name(volume: Volume) -> str:
    return str(volume.source) if volume.source is not None else "volume"


def check_dimensions(volume: Volume) -> None:
    """A file read by a reader must give ``(C, Z, Y, X)``: fewer axes is a 2D image, more is 5D+."""
    array = volume.array
    if array.ndim < 4:
        raise VolumeError(
            f"{_name(volume)}: is a 2D image (array shape {tuple(array.shape)}); expected a 3D volume "
            "(or 4D with channels). Stack the slices into one volume first"
        )
    if array.ndim > 4:
        raise VolumeError(
            f"{_name(volume)}: has {array.ndim} dimensions (shape {tuple(array.shape[::-1])} in file order); "
            "expected a 3D volume or a 4D multi-channel volume"
        )
    if min(array.shape) == 0:
        raise VolumeError(f"{_name(volume)}: has an empty axis (shape {tuple(array.shape)}); expected voxels")


def handle_non_finite(volume: Volume, policy: str = "raise") -> Volume:
    """Report NaN/Inf voxels; replace them only when the caller chose how (``policy``).

    ``"raise"`` (default) refuses with the count, ``"zero"`` sets them to 0, ``"min"`` to the
    smallest finite value of the volume (the background of most scans). Integer arrays cannot hold
    NaN and are returned untouched without a scan.
    """
    if policy not in NAN_POLICIES:
        raise VolumeError(f"nan_policy={policy!r} is not known; expected one of {NAN_POLICIES}")
    array = volume.array
    if not np.issubdtype(array.dtype, np.floating):
        return volume
    finite = np.isfinite(array)
    bad = int(finite.size - np.count_nonzero(finite))
    if bad == 0:
        return volume
    if policy == "raise":
        nans = int(np.count_nonzero(np.isnan(array)))
        raise VolumeError(
            f"{_name(volume)}: has {bad} non-finite voxels ({nans} NaN, {bad - nans} Inf) of {array.size}; "
            "expected finite intensities. To replace them choose nan_policy='zero' or 'min' "
            "(--nan-policy zero|min on the command line)"
        )
    if bad == array.size:
        raise VolumeError(f"{_name(volume)}: every voxel is NaN/Inf; nothing to replace them with")
    fill = 0.0 if policy == "zero" else float(array[finite].min())
    cleaned = np.where(finite, array, np.asarray(fill, dtype=array.dtype))
    return volume.with_array(cleaned, meta={**volume.meta, "non_finite_replaced": {"count": bad, "value": fill}})


def smallest_label_dtype(max_label: int) -> np.dtype:
    """uint8 when it fits (what Slicer/ITK-SNAP write), else uint16, else uint32."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_label <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise VolumeError(f"label value {max_label} is larger than uint32 allows")


def as_label_array(array: np.ndarray, name: str) -> np.ndarray:
    """Validate label values (finite, integer, non-negative) and return the smallest unsigned dtype."""
    if array.size == 0:
        raise VolumeError(f"{name}: label map is empty")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise VolumeError(f"{name}: label map has NaN/Inf values; expected integer labels")
        fractional = np.count_nonzero(array != np.round(array))
        if fractional:
            raise VolumeError(
                f"{name}: {fractional} label voxels are not whole numbers (e.g. {array[array != np.round(array)].flat[0]}); "
                "expected an integer label map, not probabilities or an intensity image"
            )
    elif not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise VolumeError(f"{name}: label map has dtype {array.dtype}; expected integers")
    low, high = array.min(), array.max()
    if low < 0:
        raise VolumeError(
            f"{name}: label map has negative values (min {low}, {int(np.count_nonzero(array < 0))} voxels); "
            "expected labels 0 (background), 1, 2, ..."
        )
    dtype = smallest_label_dtype(int(high))
    return array if array.dtype == dtype else array.astype(dtype)


# An image with more distinct values than this may still be a label map (TotalSegmentator writes
# 117 structures); the agreement of neighbouring voxels decides.
MANY_LABELS = 64
# Share of in-slice neighbouring voxel pairs (one of them non-zero) with equal values, measured on
# the shared data: the 305 real label maps 0.65-0.97 (those with many structures, TotalSegmentator's,
# 0.81-0.94), the 312 scan channels 0.02-0.63 (8-bit LGG FLAIR the highest, CT and MR far lower).
MIN_LABEL_AGREEMENT = 0.75
_SAMPLE_SLICES = 16


def neighbour_agreement(array: np.ndarray) -> float:
    """The share of neighbouring voxel pairs (within slices, on up to 16 slices spread along the
    first axis; at least one voxel of the pair non-zero) whose values are equal."""
    step = max(1, array.shape[0] // _SAMPLE_SLICES)
    sample = np.asarray(array[::step])
    equal = total = 0
    for axis in (1, 2):
        a = np.moveaxis(sample, axis, 0)
        low, high = a[:-1], a[1:]
        counted = (low != 0) | (high != 0)
        total += int(np.count_nonzero(counted))
        equal += int(np.count_nonzero(counted & (low == high)))
    return equal / total if total else 1.0


def check_label_map(array: np.ndarray, name: str) -> None:
    """Refuse an intensity image given where a label map is expected: many distinct values that
    change from voxel to voxel (scored as labels, a scan becomes hundreds of "structures")."""
    flat = array.reshape(-1)
    if array.dtype.kind == "u" and int(array.max(initial=0)) < 1 << 20:
        count = int(np.count_nonzero(np.bincount(flat)))
    else:
        count = int(np.unique(flat[:: max(1, flat.size // 4_000_000)]).size)
    if count <= MANY_LABELS:
        return
    agreement = neighbour_agreement(array)
    if agreement < MIN_LABEL_AGREEMENT:
        raise VolumeError(
            f"{name}: holds {count} distinct values that change from voxel to voxel like an intensity image "
            f"(neighbouring voxels agree {agreement:.0%} of the time, label maps far more); expected a label map "
            "(0 background, 1, 2, ...): is this a scan rather than its labels?"
        )


def world_corners(volume: Volume) -> np.ndarray:
    """LPS positions (mm) of the 8 corner voxel centres: equal corners mean the same grid."""
    shape_xyz = np.asarray(volume.spatial_shape[::-1]) - 1
    corners = np.array(np.meshgrid(*[[0, n] for n in shape_xyz], indexing="ij")).reshape(3, -1)
    matrix = voxel_to_world(volume.spacing, volume.origin, volume.direction)
    return matrix[:3, :3] @ corners + matrix[:3, 3:4]


def grid_tolerance_mm(volume: Volume) -> float:
    """Positions may differ by 1% of the smallest voxel: NIfTI stores geometry as float32 and DICOM
    converters round, but a real misregistration is far larger than that."""
    return 0.01 * float(min(volume.spacing))


def check_same_grid(volume: Volume, reference: Volume, what: str = "label map") -> None:
    """Raise :class:`GeometryMismatchError` unless ``volume`` lies on ``reference``'s voxel grid."""
    if volume.spatial_shape != reference.spatial_shape:
        raise GeometryMismatchError(
            f"{_name(volume)}: {what} has shape {volume.spatial_shape} (z, y, x) but its image "
            f"{_name(reference)} has {reference.spatial_shape}; expected the same voxel grid"
        )
    offset = float(np.abs(world_corners(volume) - world_corners(reference)).max())
    if offset > grid_tolerance_mm(reference):
        raise GeometryMismatchError(
            f"{_name(volume)}: {what} has the same shape as {_name(reference)} but lies {offset:.3g} mm away "
            f"from it (spacing {tuple(round(s, 4) for s in volume.spacing)} vs "
            f"{tuple(round(s, 4) for s in reference.spacing)}, origin {tuple(round(o, 2) for o in volume.origin)} vs "
            f"{tuple(round(o, 2) for o in reference.origin)}); expected the same geometry (resample it first)"
        )
