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

How the gated same-level features are merged, ``merge``:

* ``"concat"`` (default; the shipped checkpoints): the text's reading, "concatenate the output
  results of the Attention Gates", with one gate per skip arrow as Fig. 5 draws them: node
  ``X(i, j)`` reads ``j * w_i + w_{i+1}`` channels, exactly UNet++'s widths plus the gates.
* ``"sum"``: Eq. 4's ``sum_{k=0}^{j-1} Ag(X(i, k))`` read literally: the gated features are
  added, so every node reads one ``w_i``-channel same-level tensor beside ``Up(X(i+1, j-1))``;
  one gate per node, shared by its ``j`` same-level inputs (gating signal and weights are the
  same for all of them, each input still gets its own coefficient map). This is the reading that
  fits the parameter counts of Table 6 (0.1038 / 0.5134 / 2.1918 / 8.9506 M at L1..L4) within
  1 % at every depth (``cascadeseg models --table``); no concatenating design can, because
  concatenation alone already makes every node at least as wide as UNet++'s, whose L4 is 9.16 M.

Other choices where the paper leaves room: Up = interpolation, as in the UNet++ it builds on
(Fig. 4 does not say); intermediate gate width = half the skip width (Attention U-Net's). Default
loss: the hybrid of Eq. 8 ("anu_hybrid"), summed over the four heads; see
:class:`cascadeseg.losses.ANUHybridLoss` for its focal term.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .base import model_info
from .blocks.attention import AttentionGate
from .blocks.conv import DoubleConv
from .blocks.nested import Grid, NestedUNetBase, node_key, node_name
from .registry import register

MERGES = ("concat", "sum")


def gate_key(i: int, k: int, j: int) -> str:
    return f"g{i}_{k}_to_{j}"


def gate_name(i: int, k: int, j: int) -> str:
    """Name of the gate filtering ``X(i, k)`` into ``X(i, j)``, e.g. ``"X0,0->X0,1"``."""
    return f"{node_name(i, k)}->{node_name(i, j)}"


@register
class ANUNet(NestedUNetBase):
    """Attention-based nested U-Net in 2D or 3D with deep supervision, pruning and attention maps."""

    info = model_info("anu_net")

    def __init__(self, in_channels: int, num_classes: int, dims: int, merge: str = "concat", **common: Any) -> None:
        super().__init__(in_channels, num_classes, dims, **common)
        self.check_option("merge", merge, MERGES)
        self.merge = merge
        w, norm, concat = self.widths, self.norm, merge == "concat"
        self.nodes = nn.ModuleDict(
            {
                node_key(i, j): DoubleConv(dims, (j if concat else 1) * w[i] + w[i + 1], w[i], norm=norm)
                for i, j in self.decoder_nodes
            }
        )
        # "concat": a gate per skip arrow; "sum": one gate per node, keyed by its first input.
        self.gates = nn.ModuleDict(
            {
                gate_key(i, k, j): AttentionGate(dims, w[i], w[i + 1], norm=norm)
                for i, j in self.decoder_nodes
                for k in (range(j) if concat else (0,))
            }
        )

    def _node(self, i: int, j: int, grid: Grid, attention: dict[str, Tensor] | None) -> Tensor:
        g = self.ups[i](grid[(i + 1, j - 1)])
        gated: list[Tensor] = []
        for k in range(j):
            gate = self.gates[gate_key(i, k if self.merge == "concat" else 0, j)]  # "sum": the node's gate
            features, alpha = gate(grid[(i, k)], g)
            gated.append(features)
            if attention is not None:
                attention[gate_name(i, k, j)] = alpha
        same_level = gated if self.merge == "concat" else [torch.stack(gated).sum(dim=0)]
        return self.nodes[node_key(i, j)](torch.cat([*same_level, g], dim=1))


__all__ = ["ANUNet", "gate_name"]
