"""Orientation, handled in this one place.

Every reader hands its raw grid to :func:`reorient` with :data:`CANONICAL_ORIENTATION`, so NIfTI,
DICOM, MHA and NRRD files of the same scan give the same array and the same physical positions.
Every writer calls :func:`reorient` again with the source file's own orientation code (kept in
``Volume.meta["source_orientation"]``), so a saved label map has the same axis order and affine as
the image it was made from.

Orientation codes follow ITK/DICOM (and nibabel's ``aff2axcodes``): one letter per array axis in
``(x, y, z)`` order naming the patient direction that axis increases towards. ``"LPS"`` is the
identity direction matrix. It is the canonical choice because it is DICOM's native axial
orientation: an axial slice shown as rows/columns has anterior at the top and the patient's left on
the right of the screen (radiological convention), and the slice index increases towards the head.

Only axis permutations and flips are applied (exact, no interpolation); an oblique scan keeps its
residual rotation in ``direction``.
"""

from __future__ import annotations

import numpy as np

CANONICAL_ORIENTATION = "LPS"

# letter -> (LPS world axis, sign of the direction along it)
_LETTERS = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}
_POSITIVE = "LPS"
_NEGATIVE = "RAI"


def _axis_assignment(direction: np.ndarray) -> list[tuple[int, int]]:
    """For each array axis (x, y, z): the world axis it is closest to and the sign.

    Greedy on the largest absolute cosine, so that even a 45-degree oblique grid gets a
    permutation (each world axis used once) rather than two axes claiming the same one.
    """
    weights = np.abs(np.asarray(direction, dtype=float).reshape(3, 3))
    assignment: list[tuple[int, int]] = [(-1, 0)] * 3
    used_world: set[int] = set()
    used_axes: set[int] = set()
    for flat in np.argsort(-weights, axis=None, kind="stable"):
        world, axis = divmod(int(flat), 3)
        if world in used_world or axis in used_axes:
            continue
        sign = 1 if direction[world, axis] >= 0 else -1
        assignment[axis] = (world, sign)
        used_world.add(world)
        used_axes.add(axis)
    return assignment


def orientation_code(direction: np.ndarray) -> str:
    """ITK/DICOM orientation code (e.g. ``"LPS"``, ``"RAS"``) of a 3x3 direction matrix."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    return "".join((_POSITIVE if sign > 0 else _NEGATIVE)[world] for world, sign in _axis_assignment(d))


def _parse_code(code: str) -> list[tuple[int, int]]:
    code = code.upper()
    parsed = [_LETTERS.get(letter) for letter in code]
    if len(code) != 3 or None in parsed or len({p[0] for p in parsed}) != 3:  # type: ignore[index]
        raise ValueError(f"orientation code {code!r}: expected 3 letters from L/R, P/A, S/I")
    return parsed  # type: ignore[return-value]


def reorient(
    array: np.ndarray,
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float],
    direction: np.ndarray,
    target: str = CANONICAL_ORIENTATION,
) -> tuple[np.ndarray, tuple[float, float, float], tuple[float, float, float], np.ndarray]:
    """Permute/flip the spatial axes of ``array`` (``(..., Z, Y, X)``) towards orientation ``target``.

    Returns ``(array, spacing_zyx, origin_xyz, direction)`` describing the same voxels at the same
    physical positions. The returned array is a view when possible (no copy); callers that need
    contiguous memory make it contiguous once.
    """
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    current = _axis_assignment(d)
    wanted = _parse_code(target)
    spacing_xyz = np.asarray(spacing, dtype=float)[::-1]
    shape_xyz = np.asarray(array.shape[-3:])[::-1]
    lead = array.ndim - 3  # channel axes in front of (Z, Y, X)

    new_direction = np.empty((3, 3))
    new_spacing_xyz = np.empty(3)
    new_origin = np.asarray(origin, dtype=float).copy()
    source_axis_of = [0, 0, 0]  # new xyz axis -> old xyz axis
    flips: list[int] = []
    for old_axis, (world, sign) in enumerate(current):
        new_axis = next(k for k, (w, _) in enumerate(wanted) if w == world)
        flip = sign != wanted[new_axis][1]
        column = d[:, old_axis]
        if flip:
            # the far end of this axis becomes index 0
            new_origin = new_origin + column * spacing_xyz[old_axis] * (shape_xyz[old_axis] - 1)
            column = -column
            flips.append(lead + 2 - old_axis)
        new_direction[:, new_axis] = column
        new_spacing_xyz[new_axis] = spacing_xyz[old_axis]
        source_axis_of[new_axis] = old_axis

    if flips:
        array = np.flip(array, axis=tuple(flips))
    # array order is (z, y, x): new array axis for xyz axis k is lead + 2 - k
    spatial_order = [lead + 2 - source_axis_of[2 - i] for i in range(3)]
    array = np.transpose(array, list(range(lead)) + spatial_order)
    new_spacing = tuple(float(s) for s in new_spacing_xyz[::-1])
    return array, new_spacing, tuple(float(o) for o in new_origin), new_direction  # type: ignore[return-value]


def voxel_to_world(
    spacing: tuple[float, float, float], origin: tuple[float, float, float], direction: np.ndarray
) -> np.ndarray:
    """4x4 matrix from index ``(x, y, z, 1)`` to LPS millimetres (ITK convention)."""
    matrix = np.eye(4)
    matrix[:3, :3] = np.asarray(direction, dtype=float).reshape(3, 3) * np.asarray(spacing)[::-1]
    matrix[:3, 3] = origin
    return matrix


def geometry_from_matrix(
    matrix: np.ndarray,
) -> tuple[tuple[float, float, float], tuple[float, float, float], np.ndarray]:
    """Inverse of :func:`voxel_to_world`: ``(spacing_zyx, origin_xyz, direction)``."""
    linear = np.asarray(matrix, dtype=float)[:3, :3]
    spacing_xyz = np.linalg.norm(linear, axis=0)
    if np.any(spacing_xyz <= 0) or abs(np.linalg.det(linear)) < 1e-12:
        raise ValueError("singular voxel-to-world matrix")
    direction = linear / spacing_xyz
    origin = tuple(float(v) for v in np.asarray(matrix, dtype=float)[:3, 3])
    return tuple(float(s) for s in spacing_xyz[::-1]), origin, direction  # type: ignore[return-value]
