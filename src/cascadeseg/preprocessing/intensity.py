"""Intensity preprocessing used by the papers, one channel at a time.

A channel's preprocessing is a JSON-able dict stored in the model card and applied by
:func:`apply_channel_preprocessing`:

- ``{"type": "ct_window", "window": [-200, 250]}`` or ``{"type": "ct_window", "preset": "liver"}``:
  clip HU to the window and scale to [0, 1]. The liver ([-200, 250]) and abdomen ([-200, 200])
  windows are those of the cascaded liver/tumour papers (Christ et al.; the LiTS cascades).
- ``{"type": "mri_zscore", "percentiles": [0.5, 99.5], "foreground": "nonzero"}``: clip to the
  percentiles of the foreground, then z-score with the foreground mean/std (BraTS/nnU-Net practice).
- ``{"type": "minmax", "percentiles": [0, 100]}``: scale to [0, 1] (optionally between percentiles).
- ``{"type": "none"}``: only cast to float32.

All return float32 and never modify their input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cascadeseg.errors import ModelConfigError, VolumeError
from cascadeseg.io.volume import Volume

CT_WINDOWS: dict[str, tuple[float, float]] = {
    "liver": (-200.0, 250.0),
    "abdomen": (-200.0, 200.0),
    "brain": (0.0, 80.0),
    "bone": (-450.0, 1050.0),
}
"""HU windows ``(low, high)``. Liver and abdomen as in the cascaded CT papers; brain and bone are
the usual radiology presets written as ranges (brain W80/L40, bone W1500/L300)."""

FOREGROUND_CHOICES = ("nonzero", "all", "auto")
# "auto": background is darker than this share of the 0.5-99.5 percentile range (MR air is a few %).
AUTO_BACKGROUND_SHARE = 0.05


def resolve_window(window: str | Sequence[float]) -> tuple[float, float]:
    """A preset name from :data:`CT_WINDOWS` or an explicit ``(low, high)`` in HU."""
    if isinstance(window, str):
        try:
            return CT_WINDOWS[window.lower()]
        except KeyError:
            raise ModelConfigError(
                f"CT window preset {window!r} is not known; expected one of {sorted(CT_WINDOWS)}"
            ) from None
    values = tuple(float(v) for v in window)
    if len(values) != 2 or not values[0] < values[1]:
        raise ModelConfigError(f"CT window {list(window)}: expected [low, high] in HU with low < high")
    return values  # type: ignore[return-value]


def ct_window(array: np.ndarray, window: str | Sequence[float]) -> np.ndarray:
    """Clip HU to ``window`` and scale linearly to [0, 1] (float32)."""
    low, high = resolve_window(window)
    # Cast first, then clip in place: clipping an int16 CT with float bounds would make a float64
    # temporary (NumPy's promotion), twice the size of the float32 result.
    scaled = np.array(array, dtype=np.float32, copy=True)
    np.clip(scaled, np.float32(low), np.float32(high), out=scaled)
    scaled -= np.float32(low)
    scaled /= np.float32(high - low)  # division, not a reciprocal product: the top maps to exactly 1.0
    return scaled


def _foreground(array: np.ndarray, foreground: str | np.ndarray) -> np.ndarray | None:
    """Boolean mask of the voxels the statistics use; ``None`` means every voxel."""
    if isinstance(foreground, np.ndarray):
        if foreground.shape != array.shape:
            raise VolumeError(f"foreground mask shape {foreground.shape} differs from the image {array.shape}")
        return foreground.astype(bool, copy=False)
    if foreground == "all":
        return None
    if foreground == "nonzero":
        return array != 0
    if foreground == "auto":
        # The head (or body): voxels brighter than 5 % of the robust intensity range, largest
        # component, holes filled. The threshold moves with the intensities, so the mask is the
        # same for a x + b of a scan (a > 0): a background of 0, of -1.2 (a file already z-scored)
        # or of b is left out alike, a noisy background (LGG's 0-6 around a head of 40-200) does
        # not weigh in the statistics, and a crop inside the brain (no background) keeps almost
        # all of its voxels. (Otsu's threshold would split the tissue of a crop in two.)
        from .masks import body_mask

        low, high = np.percentile(array, [0.5, 99.5])
        if high <= low:
            return None
        return body_mask(array, threshold=float(low + AUTO_BACKGROUND_SHARE * (high - low)))
    raise ModelConfigError(f"foreground={foreground!r} is not known; expected one of {FOREGROUND_CHOICES} or a mask")


def _check_not_constant(values: np.ndarray, what: str) -> None:
    if values.size == 0:
        raise VolumeError(f"{what}: the foreground is empty (all voxels are background); nothing to normalise")
    if values.min() == values.max():
        raise VolumeError(
            f"{what}: all foreground voxels have the same value {values.flat[0]}; cannot normalise a constant "
            "volume (expected an image with contrast; is it blank or a mask?)"
        )


def mri_zscore(
    array: np.ndarray,
    percentiles: Sequence[float] = (0.5, 99.5),
    foreground: str | np.ndarray = "nonzero",
) -> np.ndarray:
    """Clip to the foreground's percentiles, then z-score with the foreground mean and std.

    ``foreground``: ``"nonzero"`` (default; skull-stripped BraTS-style data, zero background),
    ``"auto"`` (the head / body, whatever the background's value: the result
    is the same for ``a * x + b`` of a scan, ``a > 0``, so a file already z-scored or rescaled gives
    the network the same input), ``"all"``, or a boolean mask (e.g.
    :func:`cascadeseg.preprocessing.body_mask`). Voxels outside
    the foreground are set to 0, the normalised mean, as nnU-Net does, so padding carries no signal.
    """
    low_p, high_p = (float(p) for p in percentiles)
    if not 0.0 <= low_p < high_p <= 100.0:
        raise ModelConfigError(f"percentiles {list(percentiles)}: expected 0 <= low < high <= 100")
    mask = _foreground(array, foreground)
    values = array[mask] if mask is not None else array.ravel()
    _check_not_constant(values, "mri_zscore")
    low, high = np.percentile(values, [low_p, high_p])
    clipped_values = np.clip(values, low, high).astype(np.float64, copy=False)
    mean, std = float(clipped_values.mean()), float(clipped_values.std())
    if std == 0.0:
        raise VolumeError(
            f"mri_zscore: the foreground is constant between the {low_p} and {high_p} percentiles ({low}); "
            "cannot normalise (widen the percentiles or check the image)"
        )
    result = np.clip(array, low, high).astype(np.float32)
    result -= np.float32(mean)
    result *= np.float32(1.0 / std)
    if mask is not None:
        result[~mask] = 0.0
    return result


def minmax(array: np.ndarray, percentiles: Sequence[float] = (0.0, 100.0)) -> np.ndarray:
    """Scale to [0, 1] between the given percentiles (default: the minimum and maximum)."""
    low_p, high_p = (float(p) for p in percentiles)
    if (low_p, high_p) == (0.0, 100.0):
        low, high = float(array.min()), float(array.max())
    else:
        low, high = (float(v) for v in np.percentile(array, [low_p, high_p]))
    if low == high:
        raise VolumeError(
            f"minmax: the image is constant ({low}) between the {low_p} and {high_p} percentiles; "
            "cannot scale a constant volume to [0, 1]"
        )
    result = np.clip(array, low, high).astype(np.float32)
    result -= np.float32(low)
    result /= np.float32(high - low)
    return result


def apply_channel_preprocessing(array3d: np.ndarray, spec: Mapping[str, Any]) -> np.ndarray:
    """Apply one channel's preprocessing ``spec`` (see module docstring) to a ``(Z, Y, X)`` array."""
    if array3d.ndim != 3:
        raise VolumeError(
            f"apply_channel_preprocessing: got an array of shape {array3d.shape}; expected one channel (Z, Y, X)"
        )
    kind = spec.get("type")
    if kind == "ct_window":
        window = spec.get("window", spec.get("preset"))
        if window is None:
            raise ModelConfigError(f"preprocessing {dict(spec)}: ct_window needs 'window': [low, high] or 'preset'")
        return ct_window(array3d, window)
    if kind == "mri_zscore":
        return mri_zscore(array3d, spec.get("percentiles", (0.5, 99.5)), spec.get("foreground", "nonzero"))
    if kind == "minmax":
        return minmax(array3d, spec.get("percentiles", (0.0, 100.0)))
    if kind == "none":
        return array3d.astype(np.float32)
    raise ModelConfigError(
        f"preprocessing type {kind!r} is not known; expected one of 'ct_window', 'mri_zscore', 'minmax', 'none'"
    )


def preprocess_volume(volume: Volume, specs: Sequence[Mapping[str, Any]]) -> Volume:
    """Apply one spec per channel; returns a float32 Volume with the same geometry."""
    if len(specs) != volume.num_channels:
        raise ModelConfigError(
            f"{volume.source or 'volume'}: has {volume.num_channels} channels {volume.channel_names} but "
            f"{len(specs)} preprocessing specs were given; expected one per channel"
        )
    array = np.empty(volume.array.shape, dtype=np.float32)
    for index, spec in enumerate(specs):
        array[index] = apply_channel_preprocessing(volume.array[index], spec)
    return volume.with_array(array)
