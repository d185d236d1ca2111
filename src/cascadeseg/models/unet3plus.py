"""UNet 3+ (Huang et al. 2020), the full-scale connected U-Net that UNet# (paper 004) improves on.

Encoder: the U-Net's, widths ``base_width * 2**i``. Decoder level ``i`` (from ``levels - 2`` up to
0) concatenates ``levels`` maps of ``base_width`` channels each: every shallower encoder level
max-pooled down to level ``i``, the same-level encoder feature, and every deeper decoder level (the
deepest being the encoder bottleneck) brought up to level ``i``; one conv-norm-ReLU fuses them into
``levels * base_width`` channels (the paper's 5 x 64 = 320 at width 64; 160 at width 32).

Deep supervision: a 3x3 convolution on every decoder level and on the bottleneck. The final output
is the full-resolution one (``logits``); the other four are in ``aux`` at their own resolution,
keyed ``"De1"``, ``"De2"``, ``"De3"``, ``"En4"`` (with 5 levels), filled when heads are requested.
Choice: the paper up-samples these side outputs to full size before its loss; keeping them coarse
and letting the loss down-scale the ground truth (as UNet# does) gives the loss the same
information at a fraction of the cost, and it is what the output contract's ``aux`` means.

Classification-guided module (UNet 3+'s own): dropout, 1x1 convolution and global max pooling on
the bottleneck (:class:`~.blocks.classification_guided.MaxPoolPresenceHead`) -> ``classification``.
In eval mode it suppresses the foreground of classes judged absent in ``logits`` and ``aux``
(``cgm_gating=False`` turns that off); in training the outputs stay ungated.

No pruning: every decoder level depends on the whole encoder, so no output has a smaller
sub-network (``max_depth`` is 1). Up-going full-scale links convolve on the coarse grid before
interpolating (:mod:`.blocks.full_scale`). Default loss: "unet_sharp_mixed" (focal + Laplace-smoothed
Dice + Lovász hinge, paper 004 Eq. 2): the project's papers do not define UNet 3+'s MS-SSIM term,
and UNet#'s mixed loss is the hybrid written for exactly this family and comparison.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .base import SegmentationModel, model_info
from .blocks.classification_guided import MaxPoolPresenceHead, suppress_absent_classes
from .blocks.conv import ConvNormAct, conv_layer
from .blocks.encoder_decoder import UNetEncoder, double_conv_factory
from .blocks.full_scale import FullScaleLink
from .output import OutputRequest, SegmentationOutput
from .registry import register


@register
class UNet3Plus(SegmentationModel):
    """UNet 3+ in 2D or 3D with full-scale skips, deep supervision and the CGM."""

    info = model_info("unet3plus")

    def __init__(self, in_channels: int, num_classes: int, dims: int, cgm_gating: bool = True, **common: Any) -> None:
        super().__init__(in_channels, num_classes, dims, **common)
        widths, levels, norm, base_width = self.widths, self.levels, self.norm, self.base_width
        self.cgm_gating = cgm_gating
        fused = levels * base_width
        self.encoder = UNetEncoder(self.level_layout(double_conv_factory(dims, norm)), in_channels)
        bottom = levels - 1

        def source_width(level: int, target: int) -> int:
            # Shallower or same level: encoder feature; deeper: fused decoder (bottleneck: encoder).
            return widths[level] if level <= target or level == bottom else fused

        self.links = nn.ModuleDict(
            {
                f"{src}_to_{dst}": FullScaleLink(dims, self.plan, src, dst, source_width(src, dst), base_width, norm)
                for dst in range(bottom)
                for src in range(levels)
            }
        )
        self.fuse = nn.ModuleList(ConvNormAct(dims, fused, fused, norm=norm) for _ in range(bottom))
        self.head = conv_layer(dims, fused, num_classes, 3)
        self.aux_heads = nn.ModuleDict(
            {
                self._aux_name(i): conv_layer(dims, fused if i < bottom else widths[bottom], num_classes, 3)
                for i in range(1, levels)
            }
        )
        self.cgm = MaxPoolPresenceHead(dims, widths[bottom], num_classes - 1)

    def _aux_name(self, level: int) -> str:
        return f"En{level}" if level == self.levels - 1 else f"De{level}"

    def _forward(self, x: Tensor, depth: int, request: OutputRequest) -> SegmentationOutput:
        encoded = self.encoder(x)
        bottom = self.levels - 1
        decoded: dict[int, Tensor] = {bottom: encoded[bottom]}
        for dst in range(bottom - 1, -1, -1):
            parts = [
                self.links[f"{src}_to_{dst}"](encoded[src] if src <= dst else decoded[src])
                for src in range(self.levels)
            ]
            decoded[dst] = self.fuse[dst](torch.cat(parts, dim=1))
        out = SegmentationOutput(logits=self.head(decoded[0]))
        if request.heads:
            out.aux = {self._aux_name(i): self.aux_heads[self._aux_name(i)](decoded[i]) for i in range(1, self.levels)}
        gate = self.cgm_gating and not self.training
        if gate or request.classification:
            presence = self.cgm(encoded[bottom])
            if request.classification:
                out.classification = presence
            if gate:
                out.logits = suppress_absent_classes(out.logits, presence)
                out.aux = {k: suppress_absent_classes(v, presence) for k, v in out.aux.items()}
        return out


__all__ = ["UNet3Plus"]
