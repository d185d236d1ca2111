"""Building blocks shared by the architectures (dimension-generic: 2D and 3D)."""

from .attention import AttentionGate
from .classification_guided import MaxPoolPresenceHead, PooledPresenceHead, suppress_absent_classes
from .conv import ConvNormAct, DoubleConv, conv_layer, norm_layer
from .encoder_decoder import UNetDecoder, UNetEncoder, level_widths, pooling_plan, segmentation_head
from .full_scale import FullScaleLink, factor_between
from .residual import ResidualBlock
from .rsu import RSU, RSU4F
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
    "UNetEncoder",
    "UNetDecoder",
    "level_widths",
    "pooling_plan",
    "segmentation_head",
    "ResidualBlock",
    "RSU",
    "RSU4F",
    "AttentionGate",
    "PooledPresenceHead",
    "MaxPoolPresenceHead",
    "suppress_absent_classes",
    "FullScaleLink",
    "factor_between",
]
