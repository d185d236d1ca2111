"""Plain cascaded U-Net (paper 000, Sec. 2.1 and Fig. 1): two U-Nets in series, coarse to fine.

``stage1 = UNet_1(x)``; ``stage2 = UNet_2([x, softmax(stage1)])``; the final logits are stage 2's.

Paper 000 draws a single "between connection" (the red arrow of Fig. 1) carrying the former
U-Net's output into the latter and describes the latter as refining "roughly segmented image
masks"; its related work (Jiang et al., ref. 12) feeds "the raw images together" with the coarse
map. Choice: stage 2 sees the image concatenated with stage 1's class probabilities (softmax,
so the input scale does not drift with the logits' scale), which is that reading, and keeps the
image available to the refining stage. Both stages have the same widths and depth and the same
class count; the whole cascade trains end to end (``stages`` lets a loss supervise stage 1 too).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import SegmentationModel, model_info
from .blocks.encoder_decoder import double_conv_factory
from .output import OutputRequest, SegmentationOutput
from .registry import register
from .unet import UNetBody


@register
class CascadedUNet(SegmentationModel):
    """Two U-Nets; the second sees the image and the first one's probabilities (paper 000, Fig. 1)."""

    info = model_info("cascaded_unet")

    def __init__(self, in_channels: int, num_classes: int, dims: int, **common: Any) -> None:
        super().__init__(in_channels, num_classes, dims, **common)
        layout = self.level_layout(double_conv_factory(dims, self.norm))
        self.stage1 = UNetBody(layout, in_channels, num_classes)
        self.stage2 = UNetBody(layout, in_channels + num_classes, num_classes)

    def _forward(self, x: Tensor, depth: int, request: OutputRequest) -> SegmentationOutput:
        coarse = self.stage1(x)
        fine = self.stage2(torch.cat([x, torch.softmax(coarse, dim=1)], dim=1))
        # Stage 1 must be computed anyway; exposing it is a dict entry, not extra work.
        stages = {"stage1": coarse, "stage2": fine} if request.stages else {}
        return SegmentationOutput(logits=fine, stages=stages)


__all__ = ["CascadedUNet"]
