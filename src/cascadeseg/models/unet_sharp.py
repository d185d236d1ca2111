"""UNet# ("UNet-sharp", Qian et al., paper 004): dense plus full-scale skip connections.

Eq. 1, node ``A(I, J)`` (= ``X(I, J)``), ``f`` = conv-norm-ReLU, ``f^2`` = two of them:

* ``J = 0``: encoder, ``f^2(pool(A(I-1, 0)))``;
* ``J = 1``: ``f^2([A(I, 0), u(A(I+1, 0))])`` (as UNet++);
* ``J > 1``: ``f^2([A(I, 0..J-1), u(A(I+1, J-1)), f(u^{J-j}(A(i, j))) for i + j = I + J, i >= I + 2])``:
  UNet++'s dense inputs plus full-scale links from the deeper nodes of the same anti-diagonal,
  each projected to level ``I``'s width (this reproduces the paper's 0.56 M parameters at L2).

Deep supervision on 8 branches (Sec. 2.2): ``heads`` 1..4 are 1x1 convolutions on the
full-resolution nodes ``X(0, 1)``..``X(0, 4)`` (pruning, L_In); ``aux`` holds 3x3 convolutions on
the decoder nodes ``X(1, 3)``, ``X(2, 2)``, ``X(3, 1)``, ``X(4, 0)`` at their own resolution, which
the loss compares with a down-scaled ground truth (L_De). ``aux`` is filled when heads are requested
at full depth (the decoder nodes only exist there); keys are the node names, e.g. ``"X2,2"``.

Classification-guided module: one :class:`~.blocks.classification_guided.PooledPresenceHead`
(the paper's simplified "blue" CGM, which it applies to the first-layer branches) on ``X(0, 1)``,
the first-layer node that every pruning depth computes. Why there and only once: the output
contract has one ``classification`` tensor, so only one classifier is trained; placing it on the
node all depths share means the classifier that was trained is the one used at L1..L4 alike, and
pruning stays exact (the deepest encoder node the paper's "green" CGM reads is not computed at
L1..L3). ``X(0, 1)`` is itself deep-supervised to segment the target, so max- and average-pooling
it is a direct "is there any target" signal. At inference (eval mode) the foreground logits of
classes judged absent are suppressed in ``logits``, ``heads`` and ``aux`` (see
:func:`~.blocks.classification_guided.suppress_absent_classes`); in training the outputs stay
ungated so segmentation keeps learning on every image (the paper's argmax gate has no gradient
anyway). ``cgm_gating=False`` turns the gate off.

Other choices: full-scale convolutions run on the coarse grid before interpolation
(:mod:`.blocks.full_scale`); heads output logits (the paper's ReLU after the head convolutions
would clip logits, so it is left out); default loss "unet_sharp_mixed" (Eq. 2-6).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .base import ModelInfo
from .blocks.classification_guided import PooledPresenceHead, suppress_absent_classes
from .blocks.conv import DoubleConv, Norm, conv_layer
from .blocks.full_scale import FullScaleLink
from .blocks.nested import Grid, NestedUNetBase, node_key, node_name
from .output import OutputRequest, SegmentationOutput
from .registry import register


def link_key(i: int, j: int, to_i: int, to_j: int) -> str:
    return f"l{i}_{j}_to_{to_i}_{to_j}"


def full_scale_sources(i: int, j: int) -> list[tuple[int, int]]:
    """Nodes ``(i', j')`` whose full-scale links enter ``X(i, j)``: same anti-diagonal, two or more
    levels deeper (the one level deeper node comes in through the plain up-sampling)."""
    return [(src, i + j - src) for src in range(i + j, i + 1, -1)]


@register
class UNetSharp(NestedUNetBase):
    """UNet# in 2D or 3D: deep supervision on 8 branches, CGM, pruning L1..L4."""

    info = ModelInfo(
        name="unet_sharp",
        title="UNet# (UNet-sharp)",
        paper="Qian et al., UNet#: a UNet-like redesigning skip connections (paper 004)",
        family="nested",
        dims=(2, 3),
        deep_supervision=True,
        pruning_depths=(1, 2, 3, 4),
        classification_guided=True,
        default_loss="unet_sharp_mixed",
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
        cgm_gating: bool = True,
    ) -> None:
        super().__init__(in_channels, num_classes, dims, base_width, levels, norm, spacing)
        self.cgm_gating = cgm_gating
        w = self.widths
        decoder = [(i, j) for i in range(levels - 1) for j in range(1, levels - i)]
        self.nodes = nn.ModuleDict()
        self.links = nn.ModuleDict()
        for i, j in decoder:
            sources = full_scale_sources(i, j)
            self.nodes[node_key(i, j)] = DoubleConv(dims, j * w[i] + w[i + 1] + len(sources) * w[i], w[i], norm=norm)
            for si, sj in sources:
                self.links[link_key(si, sj, i, j)] = FullScaleLink(dims, self.plan, si, i, w[si], w[i], norm=norm)
        # L_De branches: the decoder nodes of the full network below the first layer.
        self.aux_nodes = [(i, self.max_depth - i) for i in range(1, levels)]
        self.aux_heads = nn.ModuleDict(
            {node_key(i, j): conv_layer(dims, w[i], num_classes, 3) for i, j in self.aux_nodes}
        )
        self.cgm = PooledPresenceHead(dims, w[0], num_classes - 1)

    def _node(self, i: int, j: int, grid: Grid, attention: dict[str, Tensor] | None) -> Tensor:
        inputs = self._dense_inputs(i, j, grid)
        inputs += [self.links[link_key(si, sj, i, j)](grid[(si, sj)]) for si, sj in full_scale_sources(i, j)]
        return self.nodes[node_key(i, j)](torch.cat(inputs, dim=1))

    def _finish(self, out: SegmentationOutput, grid: Grid, depth: int, request: OutputRequest) -> SegmentationOutput:
        if request.heads and depth == self.max_depth:
            out.aux = {node_name(i, j): self.aux_heads[node_key(i, j)](grid[(i, j)]) for i, j in self.aux_nodes}
        gate = self.cgm_gating and not self.training
        if not (gate or request.classification):
            return out
        presence = self.cgm(grid[(0, 1)])
        if request.classification:
            out.classification = presence
        if gate:
            out.logits = suppress_absent_classes(out.logits, presence)
            out.heads = {k: suppress_absent_classes(v, presence) for k, v in out.heads.items()}
            out.aux = {k: suppress_absent_classes(v, presence) for k, v in out.aux.items()}
        return out


__all__ = ["UNetSharp", "full_scale_sources"]
