"""U-Net (Ronneberger et al. 2015; 3D: Çiçek et al. 2016), the baseline every paper here compares to.

Structure: ``levels`` resolution levels with widths ``base_width * 2**level`` (paper:
32-64-128-256-512), a double 3x3(x3) convolution per level, max pooling down, transposed
convolution up (halving the width), concatenation with the encoder's skip, a double convolution,
and a 1x1 convolution to class logits.

Choices where the papers leave room:

* "same" padding instead of the 2015 paper's valid convolutions, so the output has the input's
  size and tiles need no overlap bookkeeping (every paper of this project does the same).
* Batch norm after each convolution (as UNet++ / ANU-Net / UNet# train their U-Net baseline);
  instance norm is offered for small 3D batches.
* Inputs must be a multiple of :attr:`size_divisor` per axis: the model raises
  :class:`ModelConfigError` naming the constraint rather than padding silently, because the
  predictor pads once per volume (cheaper than padding every batch) and crops back.
* ``upsample="transpose"`` (default, the 2015 paper's learned 2x2 up-convolution) or
  ``"interp"``: parameter-free bilinear (trilinear) up-sampling keeping the deeper level's width,
  so each decoder block reads ``w[l+1] + w[l]`` channels. The second is the U-Net that paper 004
  compares with: at width 32 it has 7.85 M parameters, the figure of its Table 1 (the transposed
  version has 7.76 M).
* ``deep_supervision=True`` adds nnU-Net's deep supervision: a 1x1 head on each decoder level below
  full resolution except the coarsest (the bottleneck, whose map nnU-Net does not supervise either),
  returned as ``aux`` (``"level1"`` at half resolution, ``"level2"`` ...) when heads are requested
  (a training step does); the loss compares each with the down-scaled labels (``aux_weights`` weighs them, as
  nnU-Net halves its weights per level). Prediction reads ``logits`` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from .base import SegmentationModel, model_info
from .blocks.encoder_decoder import LevelLayout, UNetDecoder, UNetEncoder, double_conv_factory, segmentation_head
from .output import OutputRequest, SegmentationOutput
from .registry import register

UPSAMPLING = ("transpose", "interp")


class UNetBody(nn.Module):
    """Encoder, decoder and 1x1 head as a tensor-to-tensor module: the U-Net proper, reused as a
    stage by the cascaded models. ``forward`` returns the logits; :meth:`features` also returns the
    decoder features of every level (CU-Net feeds them to its second U-Net)."""

    def __init__(
        self,
        layout: LevelLayout,
        in_channels: int,
        num_classes: int,
        extra_channels: Sequence[int] | None = None,
        upsample: str = "transpose",
    ) -> None:
        super().__init__()
        self.encoder = UNetEncoder(layout, in_channels, extra_channels)
        self.decoder = UNetDecoder(layout, upsample=upsample)
        self.head = segmentation_head(layout.dims, layout.widths[0], num_classes)

    def features(self, x: Tensor, extras: Sequence[Tensor | None] | None = None) -> list[Tensor]:
        """Decoder features per level (index 0: full resolution, last: the bottleneck)."""
        encoded = self.encoder(x, extras)
        return self.decoder(encoded[-1], encoded)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x)[0])


@register
class UNet(SegmentationModel):
    """The plain U-Net, 2D or 3D (see the module docstring for the choices made)."""

    info = model_info("unet")

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        dims: int,
        upsample: str = "transpose",
        deep_supervision: bool = False,
        **common: Any,
    ) -> None:
        super().__init__(in_channels, num_classes, dims, **common)
        self.check_option("upsample", upsample, UPSAMPLING)
        self.check_option("deep_supervision", deep_supervision, (False, True))
        self.upsample = upsample
        self.deep_supervision = bool(deep_supervision)
        layout = self.level_layout(double_conv_factory(dims, self.norm))
        self.body = UNetBody(layout, in_channels, num_classes, upsample=upsample)
        # decoder levels with a deep-supervision head: all but full resolution and the bottleneck
        self.supervised_levels = tuple(range(1, len(layout.widths) - 1)) if self.deep_supervision else ()
        self.aux_heads = nn.ModuleDict(
            {
                aux_name(level): segmentation_head(dims, layout.widths[level], num_classes)
                for level in self.supervised_levels
            }
        )

    def _forward(self, x: Tensor, depth: int, request: OutputRequest) -> SegmentationOutput:
        # No pruning heads, stages, attention or classification; the deep-supervision outputs only
        # when asked for (as UNet#'s and CU-Net's: with the heads).
        if not (self.supervised_levels and request.heads):
            return SegmentationOutput(logits=self.body(x))
        features = self.body.features(x)
        aux = {aux_name(level): self.aux_heads[aux_name(level)](features[level]) for level in self.supervised_levels}
        return SegmentationOutput(logits=self.body.head(features[0]), aux=aux)


def aux_name(level: int) -> str:
    """The ``aux`` key of the deep-supervision output at decoder ``level`` (1: half resolution)."""
    return f"level{level}"


def deep_supervision_weights(levels: int) -> dict[str, float]:
    """nnU-Net's loss weights of the deep-supervision outputs of a ``levels``-level U-Net, relative
    to the full-resolution output's 1: halved per level (the loss's weighted mean normalises them)."""
    return {aux_name(level): 0.5**level for level in range(1, levels - 1)}


__all__ = ["UNet", "UNetBody", "aux_name", "deep_supervision_weights"]
