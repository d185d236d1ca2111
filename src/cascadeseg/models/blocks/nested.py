"""The nested node grid shared by UNet++, ANU-Net and UNet#, with pruning that really prunes.

Nodes are named as in the papers: ``X(i, j)`` is the block at resolution level ``i`` (0 = full
resolution) and column ``j`` (0 = encoder). Widths are ``base_width * 2**i`` for every node of
level ``i``. Node ``X(i, j>0)`` is computed from same-level nodes ``X(i, <j)``, the up-sampled
``X(i+1, j-1)`` and (UNet#) full-scale nodes ``X(i', j')`` with ``i' + j' = i + j``; so every node
only needs nodes on its own or earlier anti-diagonals ``d = i + j``.

Pruning depth ``k`` therefore runs exactly the nodes with ``i + j <= k``: the encoder down to level
``k`` and the sub-network under ``X(0, k)``; deeper nodes are never computed (not computed and
dropped). Deep-supervision head ``k`` is a 1x1(x1) convolution on ``X(0, k)``. Because the same
nodes run in the same order whatever the depth, the pruned output equals the full model's head
``k`` (eval mode).

Up-sampling inside the grid is (bi/tri)linear interpolation with no parameters (the UNet++
reference implementation and UNet#'s "two-scale factor upsampling"): cheaper than transposed
convolutions on the many nested paths.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..base import SegmentationModel
from ..output import OutputRequest, SegmentationOutput
from .conv import DoubleConv
from .encoder_decoder import segmentation_head
from .sampling import Downsample, Upsample

Grid = dict[tuple[int, int], Tensor]


def node_key(i: int, j: int) -> str:
    """Module-dict key of node ``X(i, j)`` (state-dict keys may not contain '.' or ',')."""
    return f"x{i}_{j}"


def node_name(i: int, j: int) -> str:
    """Human-readable name of node ``X(i, j)`` as the papers write it: ``"X0,1"``."""
    return f"X{i},{j}"


class NestedUNetBase(SegmentationModel):
    """Encoder, grid traversal, deep-supervision heads and pruning of the nested family.

    Subclasses build their decoder nodes in ``__init__`` (after calling this one) and implement
    :meth:`_node`; they may extend :meth:`_finish` (auxiliary heads, the CGM). Pruning depths are
    1..``levels - 1`` (paper: L1..L4 at 5 levels).
    """

    def __init__(self, in_channels: int, num_classes: int, dims: int, **common: Any) -> None:
        super().__init__(in_channels, num_classes, dims, **common)
        levels, widths = self.levels, self.widths
        self.pools = nn.ModuleList(Downsample(dims, factor) for factor in self.plan)
        # ups[i]: level i+1 -> level i (interpolation, no parameters).
        self.ups = nn.ModuleList(Upsample(dims, factor) for factor in self.plan)
        self.encoder = nn.ModuleList(
            DoubleConv(dims, in_channels if i == 0 else widths[i - 1], widths[i], norm=self.norm) for i in range(levels)
        )
        self.heads = nn.ModuleDict({str(k): segmentation_head(dims, widths[0], num_classes) for k in range(1, levels)})

    @property
    def decoder_nodes(self) -> list[tuple[int, int]]:
        """``(i, j)`` of every decoder node ``X(i, j>0)`` of the full grid."""
        return [(i, j) for i in range(self.levels - 1) for j in range(1, self.levels - i)]

    # ----------------------------------------------------------------- the grid
    def _node(self, i: int, j: int, grid: Grid, attention: dict[str, Tensor] | None) -> Tensor:
        """Compute decoder node ``X(i, j)``, ``j >= 1``, from nodes already in ``grid``; record gate
        coefficients in ``attention`` when it is a dict."""
        raise NotImplementedError

    def _dense_inputs(self, i: int, j: int, grid: Grid) -> list[Tensor]:
        """UNet++'s inputs of ``X(i, j)``: ``X(i, 0..j-1)`` and the up-sampled ``X(i+1, j-1)``."""
        return [grid[(i, k)] for k in range(j)] + [self.ups[i](grid[(i + 1, j - 1)])]

    def _run_grid(self, x: Tensor, depth: int, attention: dict[str, Tensor] | None) -> Grid:
        grid: Grid = {(0, 0): self.encoder[0](x)}
        for diagonal in range(1, depth + 1):
            grid[(diagonal, 0)] = self.encoder[diagonal](self.pools[diagonal - 1](grid[(diagonal - 1, 0)]))
            # Deepest first: X(i, j) needs X(i+1, j-1), which lies on the same anti-diagonal.
            for i in range(diagonal - 1, -1, -1):
                grid[(i, diagonal - i)] = self._node(i, diagonal - i, grid, attention)
        return grid

    def _finish(self, out: SegmentationOutput, grid: Grid, depth: int, request: OutputRequest) -> SegmentationOutput:
        """Hook for auxiliary heads and the classification-guided module."""
        return out

    def _forward(self, x: Tensor, depth: int, request: OutputRequest) -> SegmentationOutput:
        attention: dict[str, Tensor] | None = {} if request.attention else None
        grid = self._run_grid(x, depth, attention)
        wanted = range(1, depth + 1) if request.heads else (depth,)
        heads = {k: self.heads[str(k)](grid[(0, k)]) for k in wanted}
        out = SegmentationOutput(
            logits=heads[depth],
            heads=heads if request.heads else {},
            attention=attention if attention is not None else {},
        )
        return self._finish(out, grid, depth, request)


__all__ = ["Grid", "NestedUNetBase", "node_key", "node_name"]
