"""Body / head (non-background) masks by thresholding, used to restrict the search region.

Threshold, keep the largest connected component, fill holes (in 3D and then slice by slice, so a
cavity open at the first or last slice is filled too). CT uses -500 HU (air vs tissue). Data whose
background is exactly zero (skull-stripped / masked MR such as BraTS: at least 30% zeros) use
"not zero": Otsu would split the brain itself into dark and bright tissue there. Other MR and
unknown data use Otsu's threshold, computed on a 256-bin histogram.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cascadeseg.errors import VolumeError
from cascadeseg.io.volume import Volume
from cascadeseg.labelops import face_structure

CT_BODY_THRESHOLD_HU = -500.0
ZERO_BACKGROUND_FRACTION = 0.3


def otsu_threshold(array: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold (maximum between-class variance) from a histogram, vectorised."""
    counts, edges = np.histogram(array, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2.0
    weight_low = np.cumsum(counts, dtype=float)
    weight_high = weight_low[-1] - weight_low
    cumulative = np.cumsum(counts * centres)
    mean_low = cumulative / np.maximum(weight_low, 1)
    mean_high = (cumulative[-1] - cumulative) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a boolean mask (empty stays empty)."""
    labelled, count = ndimage.label(mask)
    if count <= 1:
        return labelled > 0
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return labelled == int(np.argmax(sizes))


def _fill_enclosed(mask: np.ndarray, structure: np.ndarray, border_axes: tuple[int, ...]) -> np.ndarray:
    """Background components that do not touch the border faces of ``border_axes`` are holes.

    One labelling pass instead of ``binary_fill_holes``'s iterated dilation: the same result,
    several times faster on whole scans."""
    background, count = ndimage.label(~mask, structure)
    if count == 0:
        return mask.copy()
    faces = []
    for axis in border_axes:
        faces.append(np.take(background, 0, axis=axis).ravel())
        faces.append(np.take(background, -1, axis=axis).ravel())
    keep = np.ones(count + 1, dtype=bool)  # label 0 = the mask itself
    keep[np.unique(np.concatenate(faces))] = False
    keep[0] = True
    return keep[background]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed holes in 3D, then in every axial slice (a cavity open at the top or bottom
    slice of the scan, like the lungs cut by the field of view, is closed within its slices)."""
    filled = _fill_enclosed(mask, face_structure(3), (0, 1, 2))
    return _fill_enclosed(filled, face_structure(3, unconnected_axis=0), (1, 2))


def body_mask(image: Volume | np.ndarray, *, threshold: float | None = None, modality: str | None = None) -> np.ndarray:
    """Boolean ``(Z, Y, X)`` mask of the body (CT) or head (MR) of channel 0.

    ``threshold`` overrides the automatic one (-500 HU for CT, Otsu otherwise). ``modality`` defaults
    to the Volume's own.
    """
    if isinstance(image, Volume):
        array = image.array if image.is_label else image.array[0]
        modality = modality or image.modality
    else:
        array = np.asarray(image)
    if array.ndim != 3:
        raise VolumeError(f"body_mask: got an array of shape {array.shape}; expected one channel (Z, Y, X)")
    if array.min() == array.max():
        raise VolumeError(f"body_mask: the image is constant ({array.flat[0]}); no body to separate from background")
    if threshold is not None:
        candidate = array > threshold
    elif modality == "CT":
        threshold = CT_BODY_THRESHOLD_HU
        candidate = array > threshold
    else:
        candidate = array != 0
        if np.count_nonzero(candidate) > (1.0 - ZERO_BACKGROUND_FRACTION) * array.size:
            threshold = otsu_threshold(array)
            candidate = array > threshold
    mask = largest_component(candidate)
    if not mask.any():
        raise VolumeError(
            f"body_mask: no voxel is above the threshold {threshold if threshold is not None else 0}; expected a body in the image"
        )
    return fill_holes(mask)
