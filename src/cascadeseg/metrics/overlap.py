"""Voxel-count (confusion) metrics: Dice, IoU, precision, recall, specificity.

All of them are ratios of the four confusion counts of a binary structure. Counts for every label
of a label map come from ONE pass over the voxels (a chunked ``bincount`` of the label pairs), so
a map with a hundred organs costs the same as a map with one.

Empty masks. Every ratio here has the form ``x / (x + errors)``; when its denominator is 0 the
numerator is 0 too and there was nothing to get wrong, so the ratio is defined as **1**:

* both masks empty: Dice 1, IoU 1, precision 1, recall 1;
* prediction empty, reference not: Dice 0, IoU 0, recall 0, precision 1 (no false positive);
* reference empty, prediction not: Dice 0, IoU 0, precision 0, recall 1 (nothing was missed);
* specificity is 1 when the reference covers every voxel (no negatives to keep).

These values never produce NaN, so means over cases need no special handling. The brain-tumour
literature (BraTS) uses the same convention for an empty reference and an empty prediction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..errors import VolumeError

# Voxels per bincount chunk: bounds the int64 temporary at 32 MB even on 512x512x600 CT maps.
_CHUNK_VOXELS = 1 << 22


@dataclass(frozen=True)
class ConfusionCounts:
    """True/false positive/negative voxel counts of one binary structure."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def pred_voxels(self) -> int:
        return self.tp + self.fp

    @property
    def ref_voxels(self) -> int:
        return self.tp + self.fn

    def dice(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    def iou(self) -> float:
        return _ratio(self.tp, self.tp + self.fp + self.fn)

    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    def recall(self) -> float:
        """Sensitivity."""
        return _ratio(self.tp, self.tp + self.fn)

    def specificity(self) -> float:
        return _ratio(self.tn, self.tn + self.fp)

    def as_dict(self) -> dict[str, float]:
        """The five ratio metrics plus the raw counts (the counts make global Dice possible)."""
        return {
            "dice": self.dice(),
            "iou": self.iou(),
            "precision": self.precision(),
            "recall": self.recall(),
            "specificity": self.specificity(),
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "tn": self.tn,
        }


def _ratio(numerator: int, denominator: int) -> float:
    # 0/0 only happens when there was nothing to get wrong: define it as a perfect score.
    return 1.0 if denominator == 0 else numerator / denominator


def check_label_map(array: np.ndarray, name: str) -> np.ndarray:
    """Return ``array`` as a non-negative integer label map or raise naming ``name``."""
    array = np.asarray(array)
    if array.dtype == bool:
        return array.view(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.issubdtype(array.dtype, np.floating) or not np.all(np.mod(array, 1) == 0):
            raise VolumeError(f"{name}: expected an integer label map, got dtype {array.dtype} with non-integer values")
        array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise VolumeError(f"{name}: label values must be >= 0, found {array.min()}")
    return array


def label_confusion_matrix(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``cm[r, p]`` = number of voxels with reference label ``r`` and predicted label ``p``.

    Both inputs are non-negative integer label maps of the same shape. The matrix is square with
    side ``max label + 1``; it is built chunk by chunk so the int64 temporary stays small.
    """
    if pred.shape != ref.shape:
        raise VolumeError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    n = int(max(pred.max(initial=0), ref.max(initial=0))) + 1
    cm = np.zeros(n * n, dtype=np.int64)
    flat_pred, flat_ref = pred.reshape(-1), ref.reshape(-1)
    for start in range(0, flat_pred.size, _CHUNK_VOXELS):
        stop = start + _CHUNK_VOXELS
        codes = flat_ref[start:stop].astype(np.int64) * n + flat_pred[start:stop]
        cm += np.bincount(codes, minlength=n * n)
    return cm.reshape(n, n)


def counts_for_labels(cm: np.ndarray, labels: Iterable[int]) -> ConfusionCounts:
    """Confusion counts of the structure made of ``labels`` (one label, or a BraTS region)."""
    n = cm.shape[0]
    inside = np.zeros(n, dtype=bool)
    for label in labels:
        if 0 <= int(label) < n:  # a label absent from both maps simply counts nothing
            inside[int(label)] = True
    tp = int(cm[np.ix_(inside, inside)].sum())
    pred_pos = int(cm[:, inside].sum())
    ref_pos = int(cm[inside, :].sum())
    total = int(cm.sum())
    fp, fn = pred_pos - tp, ref_pos - tp
    return ConfusionCounts(tp=tp, fp=fp, fn=fn, tn=total - tp - fp - fn)
