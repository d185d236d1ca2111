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


def _resample(
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
    if is_label:
        source = sitk_from_array(volume.array, volume.spacing, volume.origin, volume.direction)
        return sitk.GetArrayFromImage(resampler.Execute(source))
    # float32 first so linear interpolation of integer scans is not truncated back to integers;
    # all channels go through once as one vector image
    source = sitk_from_array(
        volume.array.astype(np.float32, copy=False), volume.spacing, volume.origin, volume.direction
    )
    result = sitk.GetArrayFromImage(resampler.Execute(source))
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
