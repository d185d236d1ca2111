"""Preprocessing used by the papers: CT windows, MRI normalisation, channel stacking, N4 bias
correction, resampling, body/head masks. See ``docs/architecture.md``."""

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
