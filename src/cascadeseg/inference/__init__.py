"""Checkpoints and inference: load a model with its card, segment whole volumes, post-process.

>>> from cascadeseg.inference import Predictor
>>> result = Predictor.from_checkpoint("path/to/checkpoint").predict(volume, depth=2)
>>> result.labels  # label Volume on the image grid

The names below are imported on first use (PEP 562): reading model cards
(``cascadeseg.inference.checkpoint``, what ``cascadeseg models --checkpoints`` and the GUI's model
lists need) then costs no torch import, which takes seconds on a cold start.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CheckpointEntry": "checkpoint",
    "ModelCard": "checkpoint",
    "available_checkpoints": "checkpoint",
    "load_checkpoint": "checkpoint",
    "read_card": "checkpoint",
    "resolve_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "user_models_dir": "checkpoint",
    "DeviceError": "device",
    "available_devices": "device",
    "resolve_device": "device",
    "PostProcessing": "postprocess",
    "postprocess": "postprocess",
    "PredictionRequest": "predictor",
    "PredictionResult": "predictor",
    "Predictor": "predictor",
    "label_dtype": "predictor",
    "Progress": "progress",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
