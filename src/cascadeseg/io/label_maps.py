"""Is a single-channel file a label map or an image? (What a reader decides before showing it.)

A file is a label map when its folder or name says so (``labelsTr/``, ``*seg*``, ``*label*``,
``*mask*``, ``*gt*``) and it holds whole non-negative numbers, or, whatever its name, when it
holds whole numbers with few distinct values: the BraTS fusion files (``simple.nii.gz``) and
algorithm outputs (``hnfnetv1-20.nii.gz``) say nothing in their name. An 8-bit MRI has about 256
distinct values and a CT thousands, so neither passes for a label map.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from cascadeseg.io.msd_layout import split_suffix
from cascadeseg.io.volume import Volume

_LABEL_NAME = re.compile(r"(^|[^a-z])(seg|segmentation|label|labels|mask|gt)([^a-z]|$)", re.IGNORECASE)
#: More distinct values than this and an unnamed integer file is an image (uint8 MRI has ~256,
#: CT thousands); TotalSegmentator's 117 organ classes are recognised by their file name instead.
MAX_LABEL_VALUES = 64
# Whole-volume checks look at about this many voxels first: a 512x512x600 CT is refused from a
# sample without a pass over all its 157 M voxels.
_SAMPLE_VOXELS = 1_000_000


def named_like_label_map(path: Path | str) -> bool:
    """The file's folder (``labels*``) or name (``seg``, ``label``, ``mask``, ``gt``) says label map."""
    path = Path(path)
    return path.parent.name.lower().startswith("label") or bool(_LABEL_NAME.search(split_suffix(path)[0]))


def looks_like_label_map(volume: Volume, path: Path | str | None = None) -> bool:
    """Whether a volume read from ``path`` (default: its source) is a label map (module docstring)."""
    if volume.num_channels != 1:
        return False
    array = volume.array if volume.is_label else volume.array[0]
    if not _whole_non_negative(array):
        return False
    source = path if path is not None else volume.source
    if source is not None and named_like_label_map(source):
        return True
    return _few_values(array)


def _sample(array: np.ndarray) -> np.ndarray:
    step = max(1, array.size // _SAMPLE_VOXELS)
    return array.reshape(-1)[::step]


def _whole_non_negative(array: np.ndarray) -> bool:
    if array.dtype == bool:
        return True
    if np.issubdtype(array.dtype, np.integer):
        return bool(_sample(array).min() >= 0)
    if not np.issubdtype(array.dtype, np.floating):
        return False
    # Label maps are sometimes stored as float: integral, non-negative values are still labels.
    sample = _sample(array)
    return bool(np.all(sample >= 0) and np.all(np.mod(sample, 1) == 0))


def _few_values(array: np.ndarray) -> bool:
    sample = _sample(array)
    if sample.min() < 0 or np.unique(sample).size > MAX_LABEL_VALUES:
        return False
    return np.unique(array).size <= MAX_LABEL_VALUES
