"""CT or MR: from the header when it says, else from channel names, else from the values.

The value rule is deliberately narrow: CT in Hounsfield units is stored as integers with air at
about -1000 HU (min between -3100, the padding some scanners use, and -900). MR has arbitrary units
and no such signature, so non-CT values give ``None`` (unknown) rather than a guess of MR; the
caller (GUI, model card) then decides.
"""

from __future__ import annotations

import re

import numpy as np

_MR_NAME = re.compile(r"(^|[^a-z])(t1|t1c|t1ce|t1gd|t1post|t2|flair|fla|pd|dwi|adc|swi|mr|mri)([^a-z]|$)", re.I)
_CT_NAME = re.compile(r"(^|[^a-z])(ct|cta|hu)([^a-z]|$)", re.I)


def modality_from_text(text: str | None) -> str | None:
    """``"CT"``/``"MR"`` from a header value or a channel name (``"MET_MOD_CT"``, ``"FLAIR"``, ``"CT Body"``)."""
    if not text:
        return None
    cleaned = text.replace("MET_MOD_", "")
    if _CT_NAME.search(cleaned):
        return "CT"
    if _MR_NAME.search(cleaned):
        return "MR"
    return None


def looks_like_ct(array: np.ndarray) -> bool:
    """Integer-valued data whose minimum is air in HU (-3100 <= min <= -900) and that reaches soft
    tissue (max > 0). Checked on a strided subsample: the min/max of a 3D scan do not need every voxel."""
    sample = array[..., ::2, ::2, ::2] if array.ndim >= 3 and array.size > 2_000_000 else array
    if np.issubdtype(sample.dtype, np.floating):
        finite = sample[np.isfinite(sample)]
        if finite.size == 0 or not np.array_equal(finite[:10_000], np.round(finite[:10_000])):
            return False
        low, high = float(finite.min()), float(finite.max())
    elif np.issubdtype(sample.dtype, np.signedinteger):
        low, high = float(sample.min()), float(sample.max())
    else:
        return False
    return -3100.0 <= low <= -900.0 and high > 0.0


def infer_modality(array: np.ndarray, *hints: str | None) -> str | None:
    """Modality from the first hint that names one (DICOM tag, header, channel names), else from values."""
    for hint in hints:
        found = modality_from_text(hint)
        if found:
            return found
    return "CT" if looks_like_ct(array) else None
