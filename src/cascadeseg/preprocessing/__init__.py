"""Preprocessing used by the papers: CT windows, MRI normalisation, channel stacking, N4 bias
correction, resampling, body/head masks. See ``docs/architecture.md``.

The names are imported on first use (PEP 562, :mod:`cascadeseg._lazy`): reading a model card
checks its preprocessing against :mod:`.presets` on the GUI thread as a dock opens, and this
package's imports of SimpleITK and scipy.ndimage (bias correction, resampling, masks) froze the
window there for about 0.1 s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._lazy import lazy_attribute

if TYPE_CHECKING:
    from cascadeseg.io.stacking import stack_channels
    from cascadeseg.preprocessing.bias import n4_bias_correction
    from cascadeseg.preprocessing.intensity import (
        CT_WINDOWS,
        apply_channel_preprocessing,
        ct_window,
        minmax,
        mri_zscore,
        preprocess_volume,
        resolve_window,
    )
    from cascadeseg.preprocessing.masks import body_mask, fill_holes, largest_component, otsu_threshold
    from cascadeseg.preprocessing.presets import PreprocessingPreset, preprocessing_presets
    from cascadeseg.preprocessing.resample import resample_to_grid, resample_to_spacing

_EXPORTS = {
    "stack_channels": "cascadeseg.io.stacking",
    "n4_bias_correction": ".bias",
    **{
        name: ".intensity"
        for name in (
            "CT_WINDOWS",
            "apply_channel_preprocessing",
            "ct_window",
            "minmax",
            "mri_zscore",
            "preprocess_volume",
            "resolve_window",
        )
    },
    **{name: ".masks" for name in ("body_mask", "fill_holes", "largest_component", "otsu_threshold")},
    "PreprocessingPreset": ".presets",
    "preprocessing_presets": ".presets",
    "resample_to_grid": ".resample",
    "resample_to_spacing": ".resample",
}

__all__ = [
    "CT_WINDOWS",
    "PreprocessingPreset",
    "apply_channel_preprocessing",
    "body_mask",
    "ct_window",
    "fill_holes",
    "largest_component",
    "minmax",
    "mri_zscore",
    "n4_bias_correction",
    "otsu_threshold",
    "preprocess_volume",
    "preprocessing_presets",
    "resample_to_grid",
    "resample_to_spacing",
    "resolve_window",
    "stack_channels",
]


def __getattr__(name: str) -> Any:
    return lazy_attribute(globals(), _EXPORTS, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
