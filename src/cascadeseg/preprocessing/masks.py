"""Body / head (non-background) masks by thresholding, used to restrict the search region.

Threshold, keep the largest connected component, fill holes (in 3D and then slice by slice, so a
cavity open at the first or last slice is filled too). CT uses -500 HU (air vs tissue); MR and
unknown data use Otsu's threshold, computed on a 256-bin histogram.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cascadeseg.errors import VolumeError
from cascadeseg.io.volume import Volume

CT_BODY_THRESHOLD_HU = -500.0


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


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed holes in 3D, then in every axial slice."""
    filled = ndimage.binary_fill_holes(mask)
    in_slice = np.zeros((3, 3, 3), dtype=bool)
    in_slice[1] = ndimage.generate_binary_structure(2, 1)
    return ndimage.binary_fill_holes(filled, structure=in_slice)


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
    if threshold is None:
        threshold = CT_BODY_THRESHOLD_HU if modality == "CT" else otsu_threshold(array)
    mask = largest_component(array > threshold)
    if not mask.any():
        raise VolumeError(f"body_mask: no voxel is above the threshold {threshold}; expected a body in the image")
    return fill_holes(mask)
