"""Checkpoints and inference: load a model with its card, segment whole volumes, post-process.

>>> from cascadeseg.inference import Predictor
>>> result = Predictor.from_checkpoint("path/to/checkpoint").predict(volume, depth=2)
>>> result.labels  # label Volume on the image grid

The names of the modules that need torch (device, predictor) are imported on first use
(PEP 562): reading model cards (``cascadeseg.inference.checkpoint``, what ``cascadeseg models
--checkpoints`` and the GUI's model lists need) then costs no torch import, which takes seconds on
a cold start. The torch-free modules are imported here; ``postprocess`` must be, since the name
is both a submodule and the function this package exports.
"""

from __future__ import annotations

from typing import Any

from .._lazy import lazy_attribute
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
from .postprocess import PostProcessing, postprocess
from .progress import Progress

_EXPORTS = {
    "DeviceError": ".device",
    "available_devices": ".device",
    "resolve_device": ".device",
    "PredictionRequest": ".predictor",
    "PredictionResult": ".predictor",
    "Predictor": ".predictor",
    "PreparedScan": ".predictor",
    "label_dtype": ".predictor",
    "prepare_scan": ".predictor",
}

__all__ = [
    "CheckpointEntry",
    "ModelCard",
    "available_checkpoints",
    "load_checkpoint",
    "read_card",
    "resolve_checkpoint",
    "save_checkpoint",
    "user_models_dir",
    "PostProcessing",
    "postprocess",
    "Progress",
    *_EXPORTS,
]


def __getattr__(name: str) -> Any:
    return lazy_attribute(globals(), _EXPORTS, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
