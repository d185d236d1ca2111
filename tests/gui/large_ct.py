"""A 512x512x600 abdomen CT (and its organ label map) built from the real TotalSegmentator CT.

The shared data holds no CT of clinical size (``totalseg/example_ct`` is 112 x 101 x 122 voxels
at 3 mm); the freeze tests and ``benchmarks/gui_freeze.py`` need one, because what freezes a GUI
is whole-volume work on 157 M voxels. The real scan is resampled onto a 600 x 512 x 512 grid
covering the same body (linear interpolation of the HU values, nearest neighbour for the labels),
so intensities, anatomy and geometry stay those of a real patient, at the voxel count of a
thin-slice clinical CT (0.56 mm slices, 0.59 x 0.72 mm pixels).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from cascadeseg.io import Volume, load_labels, load_volume

LARGE_CT_SHAPE = (600, 512, 512)
CT_FILE = "totalseg/example_ct.nii.gz"
SEG_FILE = "totalseg/example_seg_fast_force_split.nii.gz"


def _resample(array: np.ndarray, shape: tuple[int, int, int], order: int, dtype: np.dtype) -> np.ndarray:
    """``array`` (Z, Y, X) zoomed onto ``shape``, one output slab at a time (bounded memory)."""
    zoom_yx = (shape[1] / array.shape[1], shape[2] / array.shape[2])
    # In-plane first, on the few source slices; then along z between neighbouring slices.
    planes = np.stack([ndimage.zoom(plane.astype(np.float32), zoom_yx, order=order) for plane in array])
    out = np.empty(shape, dtype=dtype)
    positions = (np.arange(shape[0]) + 0.5) * array.shape[0] / shape[0] - 0.5
    positions = np.clip(positions, 0, array.shape[0] - 1)
    below = np.floor(positions).astype(int)
    above = np.minimum(below + 1, array.shape[0] - 1)
    weight = (positions - below).astype(np.float32)
    for z in range(shape[0]):
        if order == 0:
            out[z] = planes[below[z] if weight[z] < 0.5 else above[z]]
        else:
            out[z] = np.rint((1 - weight[z]) * planes[below[z]] + weight[z] * planes[above[z]])
    return out


def large_ct(shared_data: Path, shape: tuple[int, int, int] = LARGE_CT_SHAPE) -> tuple[Volume, Volume]:
    """The real CT and its organ labels resampled to ``shape`` (same physical extent)."""
    scan = load_volume(shared_data / CT_FILE)
    labels = load_labels(shared_data / SEG_FILE, reference=scan)
    source_shape = scan.spatial_shape
    spacing = tuple(float(s) * n / m for s, n, m in zip(scan.spacing, source_shape, shape))
    # The grid keeps the body in place: voxel centres move by half a (new minus old) voxel.
    shift_zyx = np.array([(new - old) / 2 for new, old in zip(spacing, scan.spacing)])
    direction = np.asarray(scan.direction, dtype=float).reshape(3, 3)
    origin = np.asarray(scan.origin, dtype=float) + direction @ shift_zyx[::-1]
    image = _resample(np.asarray(scan.array[0]), shape, 1, np.int16)
    label_map = _resample(np.asarray(labels.array), shape, 0, np.uint8)
    geometry = {"spacing": spacing, "origin": tuple(float(v) for v in origin)}
    return (
        scan.with_array(image[None], **geometry),
        labels.with_array(label_map, **geometry),
    )
