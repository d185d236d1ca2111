"""Training: data, splits, sampling, augmentation, the trainer, DDP, and exporting models.

>>> from cascadeseg.training import TrainConfig, train
>>> result = train(TrainConfig(data="../shared/data/lgg-flair", model="anu_net", minutes=30, run_dir="runs/anu"))
>>> result.best_checkpoint, result.dice_per_depth, result.recommended_depth

The GUI passes in-memory ``(Volume, Volume)`` pairs as ``data``, a callback object
(:class:`TrainingCallback`: ``on_step``, ``on_epoch`` ...) and a ``threading.Event`` as ``cancel``.
"""

from .callbacks import EpochInfo, FunctionCallback, StepInfo, TrainingCallback
from .config import AugmentationConfig, TrainConfig
from .export import export_run
from .trainer import TrainingError, TrainResult, train

__all__ = [
    "AugmentationConfig",
    "EpochInfo",
    "FunctionCallback",
    "StepInfo",
    "TrainConfig",
    "TrainResult",
    "TrainingCallback",
    "TrainingError",
    "export_run",
    "train",
]
