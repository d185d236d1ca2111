"""The in-memory scan: voxels plus the geometry that must survive every path.

Axis convention (one for the whole project): arrays are channel-first ``(C, Z, Y, X)`` in the
order SimpleITK's ``GetArrayFromImage`` gives, i.e. slowest axis first. ``spacing`` is in that
same array order (mm), so it is directly napari's ``scale``. ``origin`` and ``direction`` are kept
in ITK's physical convention (LPS, x-y-z order, direction columns = array axes X, Y, Z) because
that is what writers need; :meth:`Volume.affine_zyx` gives the 4x4 matrix from array index
``(z, y, x)`` to LPS millimetres, which is napari's ``affine`` for oblique scans.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Volume:
    """A scan or label map with its geometry.

    ``array``: ``(C, Z, Y, X)`` for images (C >= 1) and ``(Z, Y, X)`` for label maps.
    ``spacing``: voxel size in mm in array order ``(z, y, x)``.
    ``origin``: LPS position (mm) of voxel (0, 0, 0), ITK order ``(x, y, z)``.
    ``direction``: 3x3 ITK direction cosines (columns: the X, Y, Z array axes in LPS).
    ``channel_names``: one name per channel (e.g. ``["T1c", "FLAIR"]``).
    ``modality``: ``"CT"``, ``"MR"`` or ``None`` when neither the header nor the values tell.
    ``source``: the file or folder it came from (``None`` for arrays made in memory).
    ``meta``: reader extras (DICOM series UID, original orientation, ...), JSON-serialisable.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    channel_names: list[str] = field(default_factory=list)
    modality: str | None = None
    source: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def is_label(self) -> bool:
        return self.array.ndim == 3

    @property
    def num_channels(self) -> int:
        return 1 if self.is_label else int(self.array.shape[0])

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape[-3:])  # type: ignore[return-value]

    def affine_zyx(self) -> np.ndarray:
        """4x4 matrix mapping array index (z, y, x, 1) to LPS mm (x, y, z, 1)... reordered so
        that rows are also (z, y, x): the form napari's ``affine`` takes for data in array order."""
        d = np.asarray(self.direction, dtype=float).reshape(3, 3)
        sp_xyz = np.array(self.spacing[::-1], dtype=float)
        m_xyz = d * sp_xyz[None, :]  # index (x, y, z) -> LPS (x, y, z)
        perm = [2, 1, 0]
        affine = np.eye(4)
        affine[:3, :3] = m_xyz[np.ix_(perm, perm)]
        affine[:3, 3] = np.asarray(self.origin, dtype=float)[perm]
        return affine

    def with_array(self, array: np.ndarray, **changes: Any) -> Volume:
        """Same geometry, new voxels (e.g. a label map made from this image)."""
        return replace(self, array=array, **changes)
