"""The model zoo: cascaded and nested U-Nets in 2D and 3D behind one output contract.

>>> from cascadeseg.models import create_model, list_models
>>> net = create_model("anu_net", in_channels=1, num_classes=2, dims=2, base_width=16)
>>> out = net(x, depth=2)          # SegmentationOutput; out.logits is head 2
"""

from .base import ModelInfo, SegmentationModel
from .output import LogitsOnly, OutputRequest, SegmentationOutput
from .registry import create_model, list_models, model_class, model_names, register

__all__ = [
    "ModelInfo",
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
