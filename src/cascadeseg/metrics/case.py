"""Scoring one case: every metric for every requested class and region."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import VolumeError
from .overlap import check_label_map, counts_for_labels, label_confusion_matrix
from .regions import ClassSpec, RegionSpec, resolve_structures
from .surface import check_spacing, hausdorff_distance

CaseScores = dict[str, dict[str, float]]


def _structure_mask(labels: np.ndarray, members: tuple[int, ...]) -> np.ndarray:
    if len(members) == 1:
        return labels == members[0]
    return np.isin(labels, members)


def evaluate_case(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    classes: ClassSpec = None,
    regions: RegionSpec = None,
    *,
    surface: bool = True,
) -> CaseScores:
    """Scores of one predicted label map against its reference.

    ``pred``, ``ref``: integer label maps of the same shape (2D or 3D, array order).
    ``spacing``: voxel size in mm per array axis (a :class:`~cascadeseg.io.Volume`'s ``spacing``).
    ``classes`` / ``regions``: what to score, see :func:`.regions.resolve_structures`; e.g.
    ``regions=BRATS_REGIONS``.
    ``surface=False`` skips HD95 (the only metric that is not a voxel count), e.g. for fast
    per-epoch validation.

    Returns ``{structure: {"dice", "iou", "precision", "recall", "specificity", "hd95",
    "tp", "fp", "fn", "tn"}}``; HD95 in mm. Empty masks follow the documented conventions of
    :mod:`.overlap` (Dice 1 when both are empty, 0 when one is) and :mod:`.surface` (HD95 0 when
    both are empty, ``inf`` when one is).
    """
    pred = check_label_map(pred, "prediction")
    ref = check_label_map(ref, "reference")
    if pred.shape != ref.shape:
        raise VolumeError(
            f"prediction shape {pred.shape} differs from reference shape {ref.shape} (expected the same grid)"
        )
    if pred.ndim not in (2, 3):
        raise VolumeError(f"label maps must be 2D or 3D, got shape {pred.shape}")
    spacing = check_spacing(spacing, pred.ndim)
    cm = label_confusion_matrix(pred, ref)
    present = np.flatnonzero(cm.sum(axis=0) + cm.sum(axis=1))
    scores: CaseScores = {}
    for name, members in resolve_structures(present, classes, regions).items():
        counts = counts_for_labels(cm, members)
        row = counts.as_dict()
        if surface:
            if counts.pred_voxels == 0 or counts.ref_voxels == 0:
                # Decided by the counts alone: no need to build masks of a whole volume.
                row["hd95"] = 0.0 if counts.pred_voxels == counts.ref_voxels else float("inf")
            else:
                row["hd95"] = hausdorff_distance(
                    _structure_mask(pred, members), _structure_mask(ref, members), spacing, 95.0
                )
        scores[name] = row
    return scores


def informative(row: Mapping[str, float]) -> bool:
    """Whether a structure was present in the reference or the prediction of its case."""
    return (int(row["tp"]) + int(row["fp"]) + int(row["fn"])) > 0


def mean_dice(scores: CaseScores, structures: Sequence[str] | None = None) -> float:
    """One number per case: the mean Dice over the structures present in the reference or the
    prediction. A structure absent from both carries no information (its per-structure Dice of 1
    says "nothing to find, nothing found") and is left out of the mean, as nnU-Net leaves it out;
    counting it as 1 would let a 117-class map with one structure found score near 1. ``NaN``
    when no structure is present at all (the case says nothing about the model).

    ``structures``: the names to average over (default: every structure in ``scores``).
    """
    names = list(scores) if structures is None else [str(s) for s in structures]
    values = [scores[n]["dice"] for n in names if n in scores and informative(scores[n])]
    return float(np.mean(values)) if values else float("nan")


def case_mean_dice(pred: np.ndarray, ref: np.ndarray, classes: Sequence[int]) -> float:
    """:func:`mean_dice` of the foreground ``classes`` of one case (voxel counts only, no HD95)."""
    spacing = (1.0,) * np.asarray(pred).ndim  # Dice does not depend on the spacing
    return mean_dice(evaluate_case(pred, ref, spacing, classes=list(classes), surface=False))
