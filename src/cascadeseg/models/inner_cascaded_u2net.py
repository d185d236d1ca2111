"""Inner Cascaded U²-Net (paper 000, Sec. 2.3): the Inner Cascaded U-Net with every two-convolution
block replaced by a residual U-block (RSU, Fig. 3b).

The wiring is exactly Eq. 1-2 (see :mod:`cascadeseg.models.inner_cascaded_unet`); only the block
``C`` changes.

Choices where the paper is silent or loose:

* Block height per level, ``rsu_heights``: ``"u2net"`` (default) follows U²-Net: RSU-7 at the
  first level, one less per level down to RSU-4, and RSU-4F (dilations instead of pooling) at the
  deepest level, where maps are too small to pool again. ``"paper"`` reads paper 000 literally
  ("L is set to 7 as recommended in [7]"): RSU-7 at every level, the deepest included (its inner
  poolings use ``ceil_mode``, so a 16x16 map pools down to 1x1 and back); 7 is U²-Net's top-level
  value, and U²-Net itself shrinks L with depth, hence the default. The same height is used at a
  level in both encoders and both decoders.
* Middle width ``M`` (Fig. 3b) is half the block's output width at every level; the paper leaves
  ``M`` adjustable "to control the augmented parameters" without a value.
* RSUs pool with ``ceil_mode`` and resize back, so they add no input-size constraint; in 3D their
  inner pooling follows the spacing at their level (anisotropic scans pool in-plane first).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from .base import model_info
from .blocks.conv import Norm
from .blocks.encoder_decoder import BlockFactory
from .blocks.rsu import RSU, RSU4F
from .blocks.sampling import Factor
from .inner_cascaded_unet import InnerCascadedUNet
from .registry import register

TOP_RSU_HEIGHT = 7  # paper 000: "L is set to 7 as recommended in [7]"
MIN_RSU_HEIGHT = 4
RSU_HEIGHTS = ("u2net", "paper")


def rsu_factory(
    dims: int,
    norm: Norm,
    levels: int,
    spacing: Sequence[float] | None,
    plan: Sequence[Factor],
    heights: str = "u2net",
) -> BlockFactory:
    """``heights="u2net"``: RSU-(7 - level) down to RSU-4, RSU-4F at the deepest level;
    ``"paper"``: RSU-7 at every level. Mid width = out width // 2."""
    base = [1.0] * dims if spacing is None or dims == 2 else [float(s) for s in spacing]
    level_spacing: list[list[float]] = [base]
    for factor in plan:
        level_spacing.append([s * f for s, f in zip(level_spacing[-1], factor)])

    def make(level: int, in_ch: int, out_ch: int) -> nn.Module:
        mid = max(out_ch // 2, 1)
        if heights == "paper":
            return RSU(dims, in_ch, mid, out_ch, TOP_RSU_HEIGHT, norm=norm, spacing=level_spacing[level])
        if level == levels - 1:
            return RSU4F(dims, in_ch, mid, out_ch, norm=norm)
        height = max(TOP_RSU_HEIGHT - level, MIN_RSU_HEIGHT)
        return RSU(dims, in_ch, mid, out_ch, height, norm=norm, spacing=level_spacing[level])

    return make


@register
class InnerCascadedU2Net(InnerCascadedUNet):
    """Inner Cascaded U²-Net (paper 000, Sec. 2.3): Eq. 1-2 with RSU blocks."""

    info = model_info("inner_cascaded_u2net")

    def __init__(
        self, in_channels: int, num_classes: int, dims: int, rsu_heights: str = "u2net", **common: Any
    ) -> None:
        self.check_option("rsu_heights", rsu_heights, RSU_HEIGHTS)
        # A plain attribute, set first because the parent's constructor builds the blocks with it.
        self.rsu_heights = rsu_heights
        super().__init__(in_channels, num_classes, dims, **common)

    def block_factory(self) -> BlockFactory:
        return rsu_factory(self.dims, self.norm, self.levels, self.spacing, self.plan, self.rsu_heights)


__all__ = ["InnerCascadedU2Net", "rsu_factory"]
