"""The model zoo: cascaded and nested U-Nets in 2D and 3D behind one output contract.

>>> from cascadeseg.models import create_model, list_models
>>> net = create_model("anu_net", in_channels=1, num_classes=2, dims=2, base_width=16)
>>> out = net(x, depth=2)          # SegmentationOutput; out.logits is head 2
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._lazy import lazy_attribute
from .catalogue import ModelInfo, model_info
from .registry import create_model, list_models, model_class, model_names, register

if TYPE_CHECKING:
    from .base import SegmentationModel
    from .output import LogitsOnly, OutputRequest, SegmentationOutput

# What needs torch is imported when first asked for: listing and describing models (the napari
# docks, as they open) must not import torch on the GUI thread.
_NEEDS_TORCH = {
    "SegmentationModel": ".base",
    "LogitsOnly": ".output",
    "OutputRequest": ".output",
    "SegmentationOutput": ".output",
}


def __getattr__(name: str) -> Any:
    return lazy_attribute(globals(), _NEEDS_TORCH, name)


__all__ = [
    "ModelInfo",
    "model_info",
    "SegmentationModel",
    "LogitsOnly",
    "OutputRequest",
    "SegmentationOutput",
    "create_model",
    "list_models",
    "model_class",
    "model_names",
    "register",
]
