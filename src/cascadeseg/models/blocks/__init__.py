"""Building blocks shared by the architectures (dimension-generic: 2D and 3D)."""

from .conv import ConvNormAct, DoubleConv, conv_layer, norm_layer
from .sampling import Downsample, Upsample, cumulative_divisor, plan_pooling, resize_to

__all__ = [
    "ConvNormAct",
    "DoubleConv",
    "conv_layer",
    "norm_layer",
    "Downsample",
    "Upsample",
    "plan_pooling",
    "cumulative_divisor",
    "resize_to",
]
