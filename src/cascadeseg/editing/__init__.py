"""Mask editing without napari: correction operations, undo history, autosave, training set.

The GUI's correction and train widgets are thin layers over these modules; everything here works
on plain NumPy label arrays and :class:`~cascadeseg.io.Volume` objects.
"""

from ..labelops import (
    annotated_slices,
    fill_holes,
    interpolate_between_slices,
    keep_largest_component,
    remove_islands,
)
from .autosave import AutosaveSession, RecoveryInfo, RecoveryStore, recovery_dir
from .history import EditHistory, LabelEdit
from .training_set import (
    AddedCase,
    TrainingSet,
    TrainingSetSummary,
    case_id_from_source,
    default_training_set_dir,
)

__all__ = [
    "AutosaveSession",
    "RecoveryInfo",
    "RecoveryStore",
    "recovery_dir",
    "EditHistory",
    "LabelEdit",
    "annotated_slices",
    "fill_holes",
    "interpolate_between_slices",
    "keep_largest_component",
    "remove_islands",
    "AddedCase",
    "TrainingSet",
    "TrainingSetSummary",
    "case_id_from_source",
    "default_training_set_dir",
]
