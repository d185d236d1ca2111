"""Resampling a Volume to a target spacing or onto another Volume's grid (SimpleITK).

Images use linear interpolation and come back as float32; label maps use nearest neighbour and
keep their integer type. Geometry is updated; the direction (and so the source orientation a writer
restores) is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from cascadeseg.errors import VolumeError
from cascadeseg.io.itk_files import sitk_from_array
from cascadeseg.io.volume import Volume

# Voxels per slab when the output keeps the input's grid along one axis (a 2D model's working
# grid keeps the slices): SimpleITK allocates and zero-fills its copy of the input while holding the
# interpreter lock, which stopped every other thread (the GUI's included) for 0.13-0.16 s on a
# 600x512x512 float32 CT on 2 cores; a slab of this many voxels holds it for a few milliseconds.
_SLAB_VOXELS = 1 << 23


def _resample(
    volume: Volume,
    shape_zyx: Sequence[int],
    spacing: Sequence[float],
    origin: Sequence[float],
    direction: np.ndarray,
    is_label: bool,
) -> np.ndarray:
    """``volume`` resampled onto the grid described (labels: ``(Z, Y, X)``; images: ``(C, Z, Y, X)``
    float32). When the grid along some axis is the input's own, slabs along it are resampled one at
    a time (:data:`_SLAB_VOXELS`): the same voxels, computed with bounded copies (SimpleITK's and
    the float32 one of an integer scan)."""
    axis = _kept_axis(volume, shape_zyx, spacing, origin, direction)
    voxels = int(np.prod(volume.spatial_shape))
    if axis is None or voxels <= _SLAB_VOXELS:
        return _resample_once(volume, shape_zyx, spacing, origin, direction, is_label)
    array = volume.array
    lead = array.ndim - 3  # the channel axis of an image
    slab = max(1, _SLAB_VOXELS * volume.spatial_shape[axis] // voxels)
    step = np.asarray(volume.direction, dtype=float)[:, 2 - axis] * float(volume.spacing[axis])  # one slice, xyz
    out: np.ndarray | None = None
    for start in range(0, volume.spatial_shape[axis], slab):
        stop = min(start + slab, volume.spatial_shape[axis])
        index = [slice(None)] * array.ndim
        index[lead + axis] = slice(start, stop)
        offset = step * start
        part = volume.with_array(
            array[tuple(index)], origin=tuple(float(o) for o in np.asarray(volume.origin) + offset)
        )
        shape = [int(s) for s in shape_zyx]
        shape[axis] = stop - start
        shifted = tuple(float(o) for o in np.asarray(origin, dtype=float) + offset)
        result = _resample_once(part, shape, spacing, shifted, direction, is_label)
        if out is None:
            full = list(result.shape)
            full[lead + axis] = int(shape_zyx[axis])
            out = np.empty(full, dtype=result.dtype)
        out[tuple(index)] = result
    assert out is not None
    return out


def _kept_axis(
    volume: Volume, shape_zyx: Sequence[int], spacing: Sequence[float], origin: Sequence[float], direction: np.ndarray
) -> int | None:
    """An axis (z, y, x = 0, 1, 2) along which the output grid is the input's: same direction,
    size and spacing, and no offset between the origins along it. ``None`` when there is none."""
    direction_in = np.asarray(volume.direction, dtype=float).reshape(3, 3)
    if not np.allclose(direction_in, np.asarray(direction, dtype=float).reshape(3, 3), atol=1e-9):
        return None
    # The origin shift in the input's voxel units, per axis (xyz -> zyx).
    shift = np.linalg.solve(
        direction_in * np.asarray(volume.spacing, dtype=float)[::-1],
        np.asarray(origin, dtype=float) - np.asarray(volume.origin, dtype=float),
    )[::-1]
    for axis in range(3):
        if (
            int(shape_zyx[axis]) == volume.spatial_shape[axis]
            and np.isclose(float(spacing[axis]), float(volume.spacing[axis]), rtol=1e-9, atol=0.0)
            and abs(shift[axis]) < 1e-6
        ):
            return axis
    return None


def _resample_once(
    volume: Volume,
    shape_zyx: Sequence[int],
    spacing: Sequence[float],
    origin: Sequence[float],
    direction: np.ndarray,
    is_label: bool,
) -> np.ndarray:
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(s) for s in shape_zyx[::-1]])
    resampler.SetOutputSpacing([float(s) for s in spacing[::-1]])
    resampler.SetOutputOrigin([float(o) for o in origin])
    resampler.SetOutputDirection([float(v) for v in np.asarray(direction, dtype=float).reshape(-1)])
    resampler.SetInterpolator(sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear)
    resampler.SetDefaultPixelValue(0)
    array = volume.array
    if not is_label:
        # float32 first so linear interpolation of integer scans is not truncated back to
        # integers; all channels go through once as one vector image
        array = array.astype(np.float32, copy=False)
    source = sitk_from_array(array, volume.spacing, volume.origin, volume.direction)
    result = sitk.GetArrayFromImage(resampler.Execute(source))
    if is_label:
        return result
    return result[None] if result.ndim == 3 else np.moveaxis(result, -1, 0)


def _resampled_meta(volume: Volume) -> dict:
    meta = {key: value for key, value in volume.meta.items() if key != "nifti"}  # header no longer describes the grid
    meta["resampled_from"] = {"spacing": list(volume.spacing), "shape": list(volume.spatial_shape)}
    return meta


def resample_to_spacing(volume: Volume, spacing: Sequence[float], *, is_label: bool | None = None) -> Volume:
    """Resample to ``spacing`` (mm, ``(z, y, x)``). ``is_label`` defaults to ``volume.is_label``.

    The new grid covers the same physical extent: its outer voxel edges coincide with the old ones
    (so the origin, a voxel *centre*, moves by half the difference of the spacings), and each size is
    ``round(old_size * old_spacing / new_spacing)``, at least 1.
    """
    target = np.asarray([float(s) for s in spacing])
    if target.shape != (3,) or np.any(target <= 0) or not np.all(np.isfinite(target)):
        raise VolumeError(f"spacing={list(spacing)}: expected three positive numbers (z, y, x) in mm")
    label = volume.is_label if is_label is None else is_label
    old = np.asarray(volume.spacing, dtype=float)
    shape = np.maximum(1, np.round(np.asarray(volume.spatial_shape) * old / target)).astype(int)
    shift_xyz = ((target - old) / 2.0)[::-1]
    origin = np.asarray(volume.origin) + np.asarray(volume.direction, dtype=float) @ shift_xyz
    array = _resample(volume, shape, target.tolist(), origin, volume.direction, label)
    return volume.with_array(
        array,
        spacing=tuple(float(s) for s in target),
        origin=tuple(float(o) for o in origin),
        meta=_resampled_meta(volume),
    )


def resample_to_grid(volume: Volume, reference: Volume, *, is_label: bool | None = None) -> Volume:
    """Resample onto ``reference``'s grid (shape, spacing, origin, direction); e.g. a prediction made
    at a working spacing back onto the original scan. Keeps ``reference``'s meta so writers restore
    the reference file's orientation and header."""
    label = volume.is_label if is_label is None else is_label
    array = _resample(volume, reference.spatial_shape, reference.spacing, reference.origin, reference.direction, label)
    return reference.with_array(
        array, channel_names=[] if label else list(volume.channel_names), modality=None if label else volume.modality
    )
