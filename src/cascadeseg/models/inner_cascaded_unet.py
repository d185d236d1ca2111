"""Inner Cascaded U-Net (paper 000, Sec. 2.2, Eq. 1-2).

Two U-Nets fused into one network: the encoder of the latter U-Net sits between the encoder and
the decoder of the former one, and every block of the latter U-Net also reads the former one's
features of the same (and the next lower) level. With levels numbered ``i = 1..L`` as in the
paper (index ``i - 1`` in the code), ``C`` a block, ``U`` up-sampling, ``[.]`` concatenation and
a down-sampling of ``e_2^{i-1}`` implied where resolutions differ:

* former U-Net: a plain U-Net, encoder ``e_1^i``, decoder ``d_1^i = C([e_1^i, U(d_1^{i+1})])``,
  ``d_1^L = e_1^L``;
* Eq. 1, latter encoder: ``e_2^1 = C([e_1^1, U(e_1^2)])``;
  ``e_2^i = C([e_2^{i-1}, e_1^i, U(e_1^{i+1})])`` for ``1 < i < L``; ``e_2^L = C([e_2^{L-1}, e_1^L])``;
* Eq. 2, latter decoder: ``d_2^i = C([d_1^i, e_2^i, d_2^{i+1}])`` for ``1 <= i < L`` (``d_2^{i+1}``
  up-sampled, ``d_2^L = e_2^L``); the 1x1 head reads ``d_2^1``.

Choices where the paper is silent:

* ``C`` is the two-convolution U-Net block (paper: "convolution ... followed by batch
  normalization and ReLU"; Fig. 3a shows the two-layer block the U²-Net variant replaces).
* ``U`` is parameter-free (bi/tri)linear up-sampling keeping the width, everywhere including the
  two decoders: the equations give ``U`` no weights and concatenate the up-sampled map at its own
  width (``U(e_1^{i+1})`` has twice the channels of ``e_1^i``). Down-sampling is max pooling.
* The model is single-stage, as the paper says ("a single-stage method"): the former U-Net's
  decoder has no head of its own, so there are no ``stages`` to supervise.
* 3D is an extension (the paper is 2D and leaves 3D to future work) with nnU-Net-style per-axis
  pooling from the spacing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .base import SegmentationModel, model_info
from .blocks.encoder_decoder import (
    BlockFactory,
    LevelLayout,
    UNetDecoder,
    UNetEncoder,
    double_conv_factory,
    segmentation_head,
)
from .blocks.sampling import Downsample, Upsample
from .output import OutputRequest, SegmentationOutput
from .registry import register


class InnerCascadedEncoder(nn.Module):
    """The latter U-Net's encoder, Eq. 1."""

    def __init__(self, layout: LevelLayout) -> None:
        super().__init__()
        dims, widths = layout.dims, layout.widths
        last = len(widths) - 1
        self.pools = nn.ModuleList(Downsample(dims, factor) for factor in layout.plan)
        self.ups = nn.ModuleList(Upsample(dims, factor, mode="interp") for factor in layout.plan)
        blocks = []
        for i, width in enumerate(widths):
            in_ch = width + (widths[i - 1] if i > 0 else 0) + (widths[i + 1] if i < last else 0)
            blocks.append(layout.make_block(i, in_ch, width))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, former: Sequence[Tensor]) -> list[Tensor]:
        last = len(former) - 1
        out: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            parts = [former[i]]
            if i > 0:
                parts.insert(0, self.pools[i - 1](out[i - 1]))
            if i < last:
                parts.append(self.ups[i](former[i + 1]))
            out.append(block(torch.cat(parts, dim=1)))
        return out


class InnerCascadedBody(nn.Module):
    """Former U-Net, latter encoder (Eq. 1), latter decoder (Eq. 2) and head; tensor to logits."""

    def __init__(self, layout: LevelLayout, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.former_encoder = UNetEncoder(layout, in_channels)
        self.former_decoder = UNetDecoder(layout, upsample="interp")
        self.latter_encoder = InnerCascadedEncoder(layout)
        self.latter_decoder = UNetDecoder(layout, skip_widths=[2 * w for w in layout.widths], upsample="interp")
        self.head = segmentation_head(layout.dims, layout.widths[0], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        e1 = self.former_encoder(x)
        d1 = self.former_decoder(e1[-1], e1)
        e2 = self.latter_encoder(e1)
        d2 = self.latter_decoder(e2[-1], [(d1[i], e2[i]) for i in range(len(e2) - 1)])
        return self.head(d2[0])


@register
class InnerCascadedUNet(SegmentationModel):
    """Inner Cascaded U-Net (paper 000, Eq. 1-2); see the module docstring for the equations."""

    info = model_info("inner_cascaded_unet")

    def __init__(self, in_channels: int, num_classes: int, dims: int, **common: Any) -> None:
        super().__init__(in_channels, num_classes, dims, **common)
        self.body = InnerCascadedBody(self.level_layout(self.block_factory()), in_channels, num_classes)

    def block_factory(self) -> BlockFactory:
        """The block ``C`` of Eq. 1-2: the plain double convolution (the U²-Net variant overrides)."""
        return double_conv_factory(self.dims, self.norm)

    def _forward(self, x: Tensor, depth: int, request: OutputRequest) -> SegmentationOutput:
        # Single-stage network: nothing optional to compute whatever was requested.
        return SegmentationOutput(logits=self.body(x))


__all__ = ["InnerCascadedUNet", "InnerCascadedBody", "InnerCascadedEncoder"]
