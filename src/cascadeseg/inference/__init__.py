"""Checkpoints and inference: load a model with its card, segment whole volumes, post-process.

>>> from cascadeseg.inference import Predictor
>>> result = Predictor.from_checkpoint("path/to/checkpoint").predict(volume, depth=2)
>>> result.labels  # label Volume on the image grid
"""

from .checkpoint import (
    CheckpointEntry,
    ModelCard,
    available_checkpoints,
    load_checkpoint,
    read_card,
    resolve_checkpoint,
    save_checkpoint,
    user_models_dir,
)
from .device import DeviceError, available_devices, resolve_device
from .postprocess import PostProcessing, postprocess
from .predictor import PredictionRequest, PredictionResult, Predictor, PreparedScan, label_dtype, prepare_scan
from .progress import Progress

__all__ = [
    "CheckpointEntry",
    "ModelCard",
    "available_checkpoints",
    "load_checkpoint",
    "read_card",
    "resolve_checkpoint",
    "save_checkpoint",
    "user_models_dir",
    "DeviceError",
    "available_devices",
    "resolve_device",
    "PostProcessing",
    "postprocess",
    "PredictionRequest",
    "PredictionResult",
    "Predictor",
    "PreparedScan",
    "label_dtype",
    "prepare_scan",
    "Progress",
]
