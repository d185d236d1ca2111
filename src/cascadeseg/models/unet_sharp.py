"""UNet# ("UNet-sharp", Qian et al., paper 004): dense plus full-scale skip connections.

Eq. 1, node ``A(I, J)`` (= ``X(I, J)``), ``f`` = conv-norm-ReLU, ``f^2`` = two of them:

* ``J = 0``: encoder, ``f^2(pool(A(I-1, 0)))``;
* ``J = 1``: ``f^2([A(I, 0), u(A(I+1, 0))])`` (as UNet++);
* ``J > 1``: ``f^2([A(I, 0..J-1), u(A(I+1, J-1)), f(u^{J-j}(A(i, j))) for i + j = I + J, i >= I + 2])``:
  UNet++'s dense inputs plus full-scale links from the deeper nodes of the same anti-diagonal.

The width of a full-scale link (``f`` has none in the paper), ``link_width``: ``"base"`` (default)
projects every link to ``base_width`` channels (32 at paper width), UNet 3+'s convention, which
UNet# builds on; against the paper's 0.1 / 0.56 / 2.53 / 9.71 M at L1..L4 it gives 0.102 / 0.564 /
2.502 / 10.155 M (+2.4 / +0.7 / -1.1 / +4.6 %: no single link width fits both L3 and L4, see
docs/model_zoo.md). ``"target"`` projects to the width of the level the link enters (the layout
before this option existed; +2.5 % at L3, 11.06 M at L4, +14 %).

Which nodes take full-scale links, ``link_targets``: ``"all"`` (default) is Eq. 1 as printed, every
node with ``J > 1``. ``"inner_and_output"`` leaves them out of the deep decoder nodes
``X_De(I, L - I)``, ``I >= 1`` (``X(1, 3)`` and ``X(2, 2)`` at paper depth), so the decoder nodes are
UNet++'s there and only the output node ``X_De(0, L)`` and the inner nodes ``X_In`` aggregate the full
scale. The text describes the links of ``X_In(0, 2)`` and ``X_De(0, 4)`` only, and this is the one
layout found that reproduces all four of the paper's parameter counts (0.102 / 0.564 / 2.502 /
9.713 M against 0.1 / 0.56 / 2.53 / 9.71 M; Eq. 1's reading is +4.6 % at L4 whatever the link width,
docs/model_zoo.md). L1..L3 are the same network under both readings.

Order inside a link, ``link_order``: ``"conv_first"`` (default) convolves on the coarse grid and
then interpolates, ``4^n`` (2D) / ``8^n`` (3D) times cheaper for a link spanning ``n`` levels with
the same parameters; ``"upsample_first"`` is the paper's ``f(u^n(A))`` as printed (see
:mod:`.blocks.full_scale` for how the two differ).

Deep supervision on 8 branches (Sec. 2.2): ``heads`` 1..4 are 1x1 convolutions on the
full-resolution nodes ``X(0, 1)``..``X(0, 4)`` (pruning, L_In); ``aux`` holds 3x3 convolutions on
the decoder nodes ``X(1, 3)``, ``X(2, 2)``, ``X(3, 1)``, ``X(4, 0)`` at their own resolution, which
the loss compares with a down-scaled ground truth (L_De). ``aux`` is filled when heads are requested
at full depth (the decoder nodes only exist there); keys are the node names, e.g. ``"X2,2"``.

Classification-guided modules (Sec. 2.3, Fig. 3), ``cgm="paper"`` (default): one module per
deep-supervision branch, eight at paper depth, each on the node its branch reads: "green" modules
(a hidden layer of the node's width, batch norms) on the two deepest decoder branches ``X(4, 0)``
and ``X(3, 1)``, "blue" ones (batch norm, dropout, linear) on the other six, ``X(2, 2)``,
``X(1, 3)`` and ``X(0, 1..4)``. Each branch's output is gated by its own module, so a pruned
model at depth k is gated by the module of ``X(0, k)``, which runs inside the pruned network.
``classification`` is the presence logits of the branch ``logits`` comes from; in training every
branch's own presence logits are in ``branch_classification`` (keyed by node name), each trained
by the loss's BCE. ``cgm="single"`` is the layout before the paper's eight modules were
implemented (one blue module without batch norm on ``X(0, 1)`` gating every branch); it is kept
so checkpoints trained with it still load.

Gating: in eval mode the foreground logits of the classes a branch's module judges absent are
suppressed (:func:`~.blocks.classification_guided.suppress_absent_classes`); in training the
outputs stay ungated so segmentation keeps learning on every image (the paper's argmax gate has no
gradient anyway). ``cgm_gating=False`` turns the gate off.

``cgm_detach`` (default True): the modules read their node's features without passing their BCE's
gradient back into the network, so presence is learnt by the modules alone. The paper says the
modules are "optimized by the BCE loss function" and not whether that loss also shapes the
features. Measured (docs/model_zoo.md, UNet# against UNet++): with the gradient flowing, X(0,1)'s
module pulled the shallow features towards presence and L1 fell to 0.206 on one split (0.433
detached) while L4 lost 0.04-0.06 on both; ``cgm_detach=False`` trains everything jointly.

``cgm_window``: the size of the windows a module judges. The paper trains and judges whole
images; a module trained on crops and shown a whole slice judges a diluted average and erases true
lesions (measured on LGG: 41 % of the lesion voxels at L1, docs/model_zoo.md). So by default
(``"auto"``) the model records the spatial size of its training inputs (the buffer
``cgm_trained_size``, saved with the weights, like batch norm's statistics) and judges a larger
input window by window at that size, a class being present when any window holds it
(:class:`~.blocks.classification_guided.PooledPresenceHead`). Trained on whole images, the window
is the whole image: the paper's module exactly. ``None`` always judges the whole input; explicit
sizes (input voxels per axis) fix the window.

Other choices: heads output logits (the paper's ReLU after the head convolutions would clip
logits, so it is left out); default loss "unet_sharp_mixed" (Eq. 2-6).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ModelConfigError
from .base import model_info
from .blocks.classification_guided import PooledPresenceHead, suppress_absent_classes
from .blocks.conv import DoubleConv, conv_layer
from .blocks.full_scale import FullScaleLink, factor_between
from .blocks.nested import Grid, NestedUNetBase, node_key, node_name
from .output import OutputRequest, SegmentationOutput
from .registry import register

CGM_LAYOUTS = ("paper", "single")
LINK_WIDTHS = ("base", "target")
LINK_ORDERS = ("conv_first", "upsample_first")
LINK_TARGETS = ("all", "inner_and_output")

Node = tuple[int, int]


def link_key(i: int, j: int, to_i: int, to_j: int) -> str:
    return f"l{i}_{j}_to_{to_i}_{to_j}"


def full_scale_sources(i: int, j: int) -> list[Node]:
    """Nodes ``(i', j')`` whose full-scale links enter ``X(i, j)``: same anti-diagonal, two or more
    levels deeper (the one level deeper node comes in through the plain up-sampling)."""
    return [(src, i + j - src) for src in range(i + j, i + 1, -1)]


@register
class UNetSharp(NestedUNetBase):
    """UNet# in 2D or 3D: deep supervision on 8 branches, a CGM per branch, pruning L1..L4."""

    info = model_info("unet_sharp")

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        dims: int,
        cgm_gating: bool = True,
        cgm: str = "paper",
        link_width: str = "base",
        link_order: str = "conv_first",
        link_targets: str = "all",
        cgm_window: int | Sequence[int] | str | None = "auto",
        cgm_detach: bool = True,
        **common: Any,
    ) -> None:
        super().__init__(in_channels, num_classes, dims, **common)
        self.cgm_window = self._check_window(cgm_window)
        if cgm == "paper":
            # The training input size (zeros: not trained yet); read by cgm_window="auto".
            self.register_buffer("cgm_trained_size", torch.zeros(dims, dtype=torch.long))
        self.check_option("cgm", cgm, CGM_LAYOUTS)
        self.check_option("link_width", link_width, LINK_WIDTHS)
        self.check_option("link_order", link_order, LINK_ORDERS)
        self.check_option("link_targets", link_targets, LINK_TARGETS)
        self.link_targets = link_targets
        self.cgm_gating, self.cgm_layout, self.cgm_detach = cgm_gating, cgm, bool(cgm_detach)
        w, norm = self.widths, self.norm
        self.nodes = nn.ModuleDict()
        self.links = nn.ModuleDict()
        for i, j in self.decoder_nodes:
            sources = self._link_sources(i, j)
            width = self.base_width if link_width == "base" else w[i]
            self.nodes[node_key(i, j)] = DoubleConv(dims, j * w[i] + w[i + 1] + len(sources) * width, w[i], norm=norm)
            for si, sj in sources:
                self.links[link_key(si, sj, i, j)] = FullScaleLink(
                    dims, self.plan, si, i, w[si], width, norm=norm, convolve_first=link_order == "conv_first"
                )
        # L_De branches: the decoder nodes of the full network below the first layer.
        self.aux_nodes = [(i, self.max_depth - i) for i in range(1, self.levels)]
        self.aux_heads = nn.ModuleDict(
            {node_key(i, j): conv_layer(dims, w[i], num_classes, 3) for i, j in self.aux_nodes}
        )
        if cgm == "single":
            self.cgm = PooledPresenceHead(dims, w[0], num_classes - 1, batch_norm=False)
        else:
            branches = [(0, k) for k in range(1, self.levels)] + self.aux_nodes
            self.cgms = nn.ModuleDict(
                {
                    node_key(i, j): PooledPresenceHead(
                        dims, w[i], num_classes - 1, hidden=w[i] if self._green(i) else None
                    )
                    for i, j in branches
                }
            )

    def _link_sources(self, i: int, j: int) -> list[Node]:
        """The nodes whose full-scale links enter ``X(i, j)`` under this model's ``link_targets``."""
        if self.link_targets == "inner_and_output" and i >= 1 and i + j == self.max_depth:
            return []  # a deep decoder node X_De(i, L - i): UNet++'s inputs only
        return full_scale_sources(i, j)

    def _check_window(self, window: int | Sequence[int] | str | None) -> tuple[int, ...] | str | None:
        if window is None or window == "auto":
            return window
        if isinstance(window, str):
            raise ModelConfigError(
                f"model '{self.info.name}': cgm_window must be 'auto', None or input sizes, got {window!r}"
            )
        sizes = (int(window),) * self.dims if isinstance(window, (int, float)) else tuple(int(w) for w in window)
        if len(sizes) != self.dims or any(w < 1 for w in sizes):
            raise ModelConfigError(
                f"model '{self.info.name}': cgm_window {window!r} must be {self.dims} positive input sizes (the training crop)"
            )
        return sizes

    def _window(self) -> tuple[int, ...] | None:
        """The judged window in input voxels (None: the whole input)."""
        if self.cgm_window != "auto":
            return self.cgm_window  # type: ignore[return-value]
        trained = getattr(self, "cgm_trained_size", None)
        if trained is None or trained.is_meta or not bool((trained > 0).all()):
            return None
        return tuple(int(s) for s in trained.tolist())

    def _node_window(self, level: int, window: tuple[int, ...] | None) -> tuple[int, ...] | None:
        """``window`` in the voxels of a level's feature map."""
        if window is None:
            return None
        factor = factor_between(self.plan, 0, level, self.dims)
        return tuple(max(1, math.ceil(w / f)) for w, f in zip(window, factor))

    def _green(self, level: int) -> bool:
        """The paper's "green" modules sit on the two deepest decoder branches (X(4,0), X(3,1))."""
        return level >= 1 and level >= self.levels - 2

    def _node(self, i: int, j: int, grid: Grid, attention: dict[str, Tensor] | None) -> Tensor:
        inputs = self._dense_inputs(i, j, grid)
        inputs += [self.links[link_key(si, sj, i, j)](grid[(si, sj)]) for si, sj in self._link_sources(i, j)]
        return self.nodes[node_key(i, j)](torch.cat(inputs, dim=1))

    def _presence(self, grid: Grid, nodes: list[Node]) -> dict[Node, Tensor]:
        """Presence logits judging each branch node's output (the shared module with ``cgm="single"``)."""
        window = self._window()

        def features(node: Node) -> Tensor:
            # cgm_detach: the modules' BCE trains the modules only, not the features they judge.
            return grid[node].detach() if self.cgm_detach else grid[node]

        if self.cgm_layout == "single":
            shared = self.cgm(features((0, 1)), self._node_window(0, window))
            return {node: shared for node in nodes}
        return {node: self.cgms[node_key(*node)](features(node), self._node_window(node[0], window)) for node in nodes}

    def _finish(self, out: SegmentationOutput, grid: Grid, depth: int, request: OutputRequest) -> SegmentationOutput:
        if self.training and self.cgm_layout == "paper" and not grid[(0, 0)].is_meta:
            trained_size = self.cgm_trained_size
            assert isinstance(trained_size, Tensor)  # a registered buffer
            trained_size.copy_(torch.tensor(grid[(0, 0)].shape[2:]))
        if request.heads and depth == self.max_depth:
            out.aux = {node_name(i, j): self.aux_heads[node_key(i, j)](grid[(i, j)]) for i, j in self.aux_nodes}
        gate = self.cgm_gating and not self.training
        if not (gate or request.classification):
            return out
        first_layer = sorted(out.heads) if out.heads else [depth]
        aux_nodes = self.aux_nodes if out.aux else []
        presence = self._presence(grid, [(0, k) for k in first_layer] + aux_nodes)
        if request.classification:
            out.classification = presence[(0, depth)]
            if self.cgm_layout == "paper":
                out.branch_classification = {node_name(*node): logits for node, logits in presence.items()}
        if gate:
            out.logits = suppress_absent_classes(out.logits, presence[(0, depth)])
            out.heads = {k: suppress_absent_classes(v, presence[(0, k)]) for k, v in out.heads.items()}
            out.aux = {
                node_name(i, j): suppress_absent_classes(out.aux[node_name(i, j)], presence[(i, j)])
                for i, j in aux_nodes
            }
        return out


__all__ = ["UNetSharp", "full_scale_sources"]
