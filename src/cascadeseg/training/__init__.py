"""Training: data, splits, sampling, augmentation, the trainer, DDP, and exporting models.

>>> from cascadeseg.training import TrainConfig, train
>>> result = train(TrainConfig(data="../shared/data/lgg-flair", model="anu_net", minutes=30, run_dir="runs/anu"))
>>> result.best_checkpoint, result.dice_per_depth, result.recommended_depth

The GUI passes in-memory ``(Volume, Volume)`` pairs as ``data``, a callback object
(:class:`TrainingCallback`: ``on_step``, ``on_epoch`` ...) and a ``threading.Event`` as ``cancel``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._lazy import lazy_attribute
from .callbacks import EpochInfo, FunctionCallback, StepInfo, TrainingCallback
from .config import AugmentationConfig, TrainConfig

if TYPE_CHECKING:
    from .export import build_ensemble, export_checkpoint, export_run
    from .trainer import TrainingError, TrainResult, train

# The trainer and the export need torch; they are imported when first asked for, so that the
# Train dock can import this package's light parts (config, splits) without torch on the GUI thread.
_NEEDS_TORCH = {
    "build_ensemble": ".export",
    "export_checkpoint": ".export",
    "export_run": ".export",
    "TrainingError": ".trainer",
    "TrainResult": ".trainer",
    "train": ".trainer",
}


def __getattr__(name: str) -> Any:
    return lazy_attribute(globals(), _NEEDS_TORCH, name)


__all__ = [
    "AugmentationConfig",
    "EpochInfo",
    "FunctionCallback",
    "StepInfo",
    "TrainConfig",
    "TrainResult",
    "TrainingCallback",
    "TrainingError",
    "build_ensemble",
    "export_checkpoint",
    "export_run",
    "train",
]
