"""UNet++ (Zhou et al. 2018/2019), the nested U-Net that ANU-Net (paper 003) and UNet# (paper 004)
build on and compare with.

``X(i, j) = DoubleConv([X(i, 0), ..., X(i, j-1), Up(X(i+1, j-1))])``: dense skip connections
along each level, deep supervision by 1x1 heads on ``X(0, 1)``..``X(0, 4)`` (``heads`` 1..4) and
pruning at depth k = the sub-network under ``X(0, k)`` (see :mod:`.blocks.nested`).

Choices: up-sampling by interpolation (the reference PyTorch implementation; this gives the 9.16 M
parameters UNet# quotes for UNet2+ at width 32); heads output logits (the papers' sigmoid is in the
loss); default loss "dice_ce", UNet++'s per-head BCE + Dice averaged over the heads.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .base import ModelInfo
from .blocks.conv import DoubleConv, Norm
from .blocks.nested import Grid, NestedUNetBase, node_key
from .registry import register


@register
class UNetPlusPlus(NestedUNetBase):
    """UNet++ in 2D or 3D with deep supervision and real pruning."""

    info = ModelInfo(
        name="unet_plus_plus",
        title="UNet++ (nested U-Net)",
        paper="Zhou et al. 2018/2019, UNet++; compared in papers 003 (ANU-Net) and 004 (UNet#)",
        family="nested",
        dims=(2, 3),
        deep_supervision=True,
        pruning_depths=(1, 2, 3, 4),
        default_loss="dice_ce",
    )

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        dims: int,
        base_width: int = 32,
        levels: int = 5,
        norm: Norm = "batch",
        spacing: Sequence[float] | None = None,
    ) -> None:
        super().__init__(in_channels, num_classes, dims, base_width, levels, norm, spacing)
        w = self.widths
        self.nodes = nn.ModuleDict(
            {
                node_key(i, j): DoubleConv(dims, j * w[i] + w[i + 1], w[i], norm=norm)
                for i in range(levels - 1)
                for j in range(1, levels - i)
            }
        )

    def _node(self, i: int, j: int, grid: Grid, attention: dict[str, Tensor] | None) -> Tensor:
        return self.nodes[node_key(i, j)](torch.cat(self._dense_inputs(i, j, grid), dim=1))


__all__ = ["UNetPlusPlus"]
