"""UNet++ (Zhou et al. 2018/2019), the nested U-Net that ANU-Net (paper 003) and UNet# (paper 004)
build on and compare with.

``X(i, j) = DoubleConv([X(i, 0), ..., X(i, j-1), Up(X(i+1, j-1))])``: dense skip connections
along each level, deep supervision by 1x1 heads on ``X(0, 1)``..``X(0, 4)`` (``heads`` 1..4) and
pruning at depth k = the sub-network under ``X(0, k)`` (see :mod:`.blocks.nested`).

Choices: up-sampling by interpolation (the reference PyTorch implementation; this gives the 9.16 M
parameters UNet# quotes for UNet2+ at width 32); heads output logits (the papers' sigmoid is in the
loss). Default loss "dice_ce": softmax cross-entropy + soft Dice over the foreground classes,
computed over the whole batch ("batch Dice"), averaged over the heads. UNet++'s own loss is
``1/2 BCE + Dice`` per image; this one differs in three ways, on purpose: the CE weight is 1 not
1/2 (nnU-Net's weighting), the Dice is a batch Dice (on 2D slices with ~1% foreground most images
hold none, and a per-image Dice there is dominated by its smoothing term), and softmax replaces the
sigmoid so multi-class label maps work (for 2 classes softmax over (z0, z1) is the sigmoid of
z1 - z0, the binary case). UNet++'s loss as written is ``loss="dice_ce"`` with the loss options
``ce_weight=0.5, batch=False``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .base import model_info
from .blocks.conv import DoubleConv
from .blocks.nested import Grid, NestedUNetBase, node_key
from .registry import register


@register
class UNetPlusPlus(NestedUNetBase):
    """UNet++ in 2D or 3D with deep supervision and real pruning."""

    info = model_info("unet_plus_plus")

    def __init__(self, in_channels: int, num_classes: int, dims: int, **common: Any) -> None:
        super().__init__(in_channels, num_classes, dims, **common)
        w = self.widths
        self.nodes = nn.ModuleDict(
            {node_key(i, j): DoubleConv(dims, j * w[i] + w[i + 1], w[i], norm=self.norm) for i, j in self.decoder_nodes}
        )

    def _node(self, i: int, j: int, grid: Grid, attention: dict[str, Tensor] | None) -> Tensor:
        return self.nodes[node_key(i, j)](torch.cat(self._dense_inputs(i, j, grid), dim=1))


__all__ = ["UNetPlusPlus"]
