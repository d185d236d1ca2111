"""Segmentation metrics on numpy label maps with voxel spacing (napari-free, torch-free).

* :func:`evaluate_case` - Dice, IoU, precision, recall (sensitivity), specificity and HD95 (mm)
  per class and per region (e.g. :data:`BRATS_REGIONS`) of one case;
* :func:`aggregate_cases` - mean, median and global (pooled-voxel) Dice over cases;
* the building blocks: :class:`ConfusionCounts`, :func:`hd95`, :func:`hausdorff_distance`,
  :func:`surface_distances`.

One number per case is :func:`mean_dice`: structures absent from both maps are left out of the
mean (never counted as 1); :func:`aggregate_cases` leaves them out of its means likewise.

Empty masks are defined, never NaN: Dice/IoU 1 when both masks are empty and 0 when exactly one
is; HD95 0 when both are empty and ``inf`` when exactly one is (see :mod:`.overlap`,
:mod:`.surface` and :func:`aggregate_cases` for how ``inf`` is summarised).
"""

from .aggregate import aggregate_cases
from .case import CaseScores, case_mean_dice, evaluate_case, mean_dice
from .overlap import ConfusionCounts, label_confusion_matrix
from .regions import BRATS_REGIONS
from .surface import hausdorff_distance, hd95, surface_distances

__all__ = [
    "BRATS_REGIONS",
    "CaseScores",
    "ConfusionCounts",
    "aggregate_cases",
    "case_mean_dice",
    "mean_dice",
    "evaluate_case",
    "hausdorff_distance",
    "hd95",
    "label_confusion_matrix",
    "surface_distances",
]
