"""ANU-Net (Li et al. 2020, paper 003): attention gates on the nested skip connections of UNet++.

Eq. 4: ``X(i, j) = Phi[ Ag(X(i, 0)), ..., Ag(X(i, j-1)), Up(X(i+1, j-1)) ]`` where every same-level
skip feature passes its own attention gate (Eq. 1-3, :class:`~.blocks.attention.AttentionGate`)
gated by ``g = Up(X(i+1, j-1))``, the up-sampled deeper feature entering the same block. Deep
supervision by 1x1 heads on ``X(0, 1)``..``X(0, 4)`` and pruning L1..L4 as in UNet++ (Fig. 7):
depth k runs only the nodes and gates under ``X(0, k)``.

Attention maps (``OutputRequest(attention=True)``) are keyed ``"X{i},{k}->X{i},{j}"``: the gate
that filters skip feature ``X(i, k)`` on its way into node ``X(i, j)``; the map has ``X(i, k)``'s
spatial shape, ``(B, 1, *spatial)``, values in [0, 1]. The paper's Fig. 12 shows the first-layer
gates, e.g. ``"X0,0->X0,1"`` (full resolution).

Choices where the paper leaves room: Up = interpolation, as in the UNet++ it builds on (Fig. 4 does
not say; it keeps the nested blocks' widths equal to UNet++'s); each gate has its own weights
(Fig. 5 draws one gate per skip arrow); intermediate gate width = half the skip width. Default loss:
the paper's hybrid of Eq. 8 ("anu_hybrid"), summed over the four heads.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .base import ModelInfo
from .blocks.attention import AttentionGate
from .blocks.conv import DoubleConv, Norm
from .blocks.nested import Grid, NestedUNetBase, node_key, node_name
from .registry import register


def gate_key(i: int, k: int, j: int) -> str:
    return f"g{i}_{k}_to_{j}"


def gate_name(i: int, k: int, j: int) -> str:
    """Name of the gate filtering ``X(i, k)`` into ``X(i, j)``, e.g. ``"X0,0->X0,1"``."""
    return f"{node_name(i, k)}->{node_name(i, j)}"


@register
class ANUNet(NestedUNetBase):
    """Attention-based nested U-Net in 2D or 3D with deep supervision, pruning and attention maps."""

    info = ModelInfo(
        name="anu_net",
        title="ANU-Net (attention-based nested U-Net)",
        paper="Li et al. 2020, ANU-Net, Computers & Graphics (paper 003)",
        family="nested",
        dims=(2, 3),
        deep_supervision=True,
        pruning_depths=(1, 2, 3, 4),
        attention=True,
        default_loss="anu_hybrid",
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
        decoder = [(i, j) for i in range(levels - 1) for j in range(1, levels - i)]
        self.nodes = nn.ModuleDict(
            {node_key(i, j): DoubleConv(dims, j * w[i] + w[i + 1], w[i], norm=norm) for i, j in decoder}
        )
        self.gates = nn.ModuleDict(
            {
                gate_key(i, k, j): AttentionGate(dims, w[i], w[i + 1], norm=norm)
                for i, j in decoder
                for k in range(j)
            }
        )

    def _node(self, i: int, j: int, grid: Grid, attention: dict[str, Tensor] | None) -> Tensor:
        g = self.ups[i](grid[(i + 1, j - 1)])
        inputs: list[Tensor] = []
        for k in range(j):
            gated, alpha = self.gates[gate_key(i, k, j)](grid[(i, k)], g)
            inputs.append(gated)
            if attention is not None:
                attention[gate_name(i, k, j)] = alpha
        inputs.append(g)
        return self.nodes[node_key(i, j)](torch.cat(inputs, dim=1))


__all__ = ["ANUNet", "gate_name"]
