"""Surface distances and HD95 in millimetres.

Definition (the one of MONAI's ``compute_hausdorff_distance(percentile=95)``; the tests check
agreement on the real scans): the boundary of a mask is its voxels that have a 6-neighbour (4 in 2D) outside the mask,
image borders counting as outside. For every boundary voxel of the prediction we take the
Euclidean distance, in mm using the voxel spacing, to the nearest boundary voxel of the reference,
and vice versa; HD95 is the larger of the two directed 95th percentiles (linear interpolation, as
``numpy.percentile`` and ``torch.quantile``).

Empty masks: both empty -> 0 (nothing to disagree about); exactly one empty -> ``inf`` (no surface
to measure to; a finite stand-in would silently depend on the image size). Aggregation
(:mod:`.aggregate`) counts infinite values separately or replaces them by a chosen penalty.
Differences from MONAI: it answers ``inf`` for an empty prediction but NaN for an empty
reference, which a nan-mean would then silently drop (here both are ``inf``), and it returns
float32 distances (here float64; values agree to ~1e-6 relative).

Speed: both masks are cropped to the bounding box of their union (plus one voxel, so the erosion
sees the true neighbours) before anything else - exact, because every boundary voxel lies inside
that box. Nearest-boundary distances then come from a k-d tree over the boundary voxels'
millimetre coordinates (exact Euclidean nearest neighbour). Measured on the 240x240x155 BraTS-like
scan, worst case of a whole-brain mask against a shifted erosion of it (bounding box = most of the
volume, 60 000 boundary voxels), 2-core CPU, one thread: k-d tree 0.20 s, SimpleITK
``SignedMaurerDistanceMap`` 0.29 s, SciPy ``distance_transform_edt(sampling=spacing)`` 0.92 s; for
tumour-sized masks all take 0.01-0.02 s. Hence the k-d tree (it is also what MONAI uses on CPU).
The tree is built unbalanced and uncompacted (SciPy's faster build, whose nodes split at the
middle of their extent: boundary voxels lie on a lattice, where that costs nothing in the
queries) and queried by one worker per core this process may run on. On the masks of the Compare
benchmark (a 512x512x200 CT's organ map against a model's mask: 1,794,127 and 728,555 boundary
voxels), the two directed queries take 22.5 s with SciPy's defaults, 9.4 s unbalanced, 5.4 s
unbalanced with two workers on the 2-core machine: the same distances.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from .._cores import affinity_cores
from ..errors import VolumeError


def check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    """Spacing as floats, one positive value per array axis, or a :class:`VolumeError`."""
    values = tuple(float(s) for s in np.atleast_1d(np.asarray(spacing, dtype=float)))
    if len(values) != ndim or not all(np.isfinite(v) and v > 0 for v in values):
        raise VolumeError(
            f"spacing: expected {ndim} positive voxel sizes in mm (array axis order), got {tuple(spacing)}"
        )
    return values


def _union_box(pred: np.ndarray, ref: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of ``pred | ref`` grown by one voxel, without building the union volume."""
    box = []
    for axis in range(pred.ndim):
        others = tuple(a for a in range(pred.ndim) if a != axis)
        hits = np.flatnonzero(pred.any(axis=others) | ref.any(axis=others))
        box.append(slice(max(int(hits[0]) - 1, 0), int(hits[-1]) + 2))
    return tuple(box)


def _boundary(mask: np.ndarray) -> np.ndarray:
    # Cross-shaped structuring element (face neighbours); border_value=0 makes voxels on the
    # image border boundary voxels, as in MONAI.
    return mask & ~ndimage.binary_erosion(mask)


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Directed boundary distances in mm: (prediction -> reference, reference -> prediction).

    Both masks must be non-empty boolean arrays of the same shape.
    """
    spacing = check_spacing(spacing, pred.ndim)
    box = _union_box(pred, ref)
    scale = np.asarray(spacing)
    pred_points = np.argwhere(_boundary(pred[box])) * scale
    ref_points = np.argwhere(_boundary(ref[box])) * scale
    return _nearest(ref_points, pred_points), _nearest(pred_points, ref_points)


def _nearest(points: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Distance from each of ``queries`` to the nearest of ``points`` (exact; module docstring)."""
    tree = cKDTree(points, balanced_tree=False, compact_nodes=False)
    # One worker per core this process may run on: a training pinned to one core keeps its one.
    return np.asarray(tree.query(queries, workers=affinity_cores())[0])


def hausdorff_distance(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], percentile: float = 95.0) -> float:
    """Symmetric percentile Hausdorff distance (mm) between two binary masks; see module doc.

    ``percentile=95`` gives HD95, ``100`` the classical Hausdorff distance.
    """
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise VolumeError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if not 0 <= percentile <= 100:
        raise VolumeError(f"percentile: expected a value in [0, 100], got {percentile}")
    pred_any, ref_any = bool(pred.any()), bool(ref.any())
    if not pred_any and not ref_any:
        return 0.0
    if not pred_any or not ref_any:
        return float("inf")
    to_ref, to_pred = surface_distances(pred, ref, spacing)
    return float(max(np.percentile(to_ref, percentile), np.percentile(to_pred, percentile)))


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile Hausdorff distance in mm (see module docstring for the definition)."""
    return hausdorff_distance(pred, ref, spacing, 95.0)
