"""Residual U-blocks (RSU, Qin et al. 2020, "U²-Net"), used by the Inner Cascaded U²-Net (paper 000).

An RSU-L block (paper 000, Fig. 3b) is ``conv_in(x) + U(conv_in(x))``: an input convolution to the
output width, then a small U-Net of height L on ``mid`` channels whose deepest layer is a dilated
(rate 2) convolution instead of a further pooling, and whose output is added to the input
convolution's. RSU-4F replaces all pooling by growing dilation (1, 2, 4, 8) for maps that are
already small.

Choices:

* Pooling inside the block uses ``ceil_mode`` and the decoder resizes to the skip's size (as the
  U²-Net reference does), so an RSU adds no size constraint of its own: only the outer network's
  pooling decides :attr:`size_divisor`.
* 3D: the inner pooling factors per axis follow the spacing at the block's level
  (:func:`plan_pooling`), so a block on a 6.5 mm x 0.7 mm x 0.7 mm grid pools in-plane first,
  exactly like the outer network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ModelConfigError
from .conv import ConvNormAct, Norm
from .sampling import Factor, plan_pooling, resize_to


def _pool(x: Tensor, factor: Factor) -> Tensor:
    if all(f == 1 for f in factor):
        return x
    pool = F.max_pool2d if x.ndim == 4 else F.max_pool3d
    return pool(x, kernel_size=factor, stride=factor, ceil_mode=True)


class RSU(nn.Module):
    """RSU-``height`` (height >= 3): ``height - 2`` poolings, a dilated bottom, residual output."""

    def __init__(
        self,
        dims: int,
        in_ch: int,
        mid_ch: int,
        out_ch: int,
        height: int,
        norm: Norm = "batch",
        spacing: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if height < 3:
            raise ModelConfigError(f"RSU height must be >= 3, got {height}")
        self.factors: list[Factor] = plan_pooling(spacing, height - 1, dims)  # height - 2 poolings
        self.conv_in = ConvNormAct(dims, in_ch, out_ch, norm=norm)
        self.encoder = nn.ModuleList(
            ConvNormAct(dims, out_ch if i == 0 else mid_ch, mid_ch, norm=norm) for i in range(height - 1)
        )
        self.bottom = ConvNormAct(dims, mid_ch, mid_ch, norm=norm, dilation=2)
        self.decoder = nn.ModuleList(
            ConvNormAct(dims, 2 * mid_ch, out_ch if i == 0 else mid_ch, norm=norm) for i in range(height - 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        x_in = self.conv_in(x)
        skips: list[Tensor] = []
        h = x_in
        for i, conv in enumerate(self.encoder):
            if i > 0:
                h = _pool(h, self.factors[i - 1])
            h = conv(h)
            skips.append(h)
        h = self.bottom(h)
        for i in range(len(self.decoder) - 1, -1, -1):
            if i < len(self.decoder) - 1:
                h = resize_to(h, skips[i].shape[2:])
            h = self.decoder[i](torch.cat([h, skips[i]], dim=1))
        return h + x_in


class RSU4F(nn.Module):
    """RSU-4F: the RSU-4 layout with dilations 1, 2, 4 and 8 instead of pooling (full resolution)."""

    def __init__(self, dims: int, in_ch: int, mid_ch: int, out_ch: int, norm: Norm = "batch") -> None:
        super().__init__()
        self.conv_in = ConvNormAct(dims, in_ch, out_ch, norm=norm)
        self.encoder = nn.ModuleList(
            ConvNormAct(dims, out_ch if i == 0 else mid_ch, mid_ch, norm=norm, dilation=2**i) for i in range(3)
        )
        self.bottom = ConvNormAct(dims, mid_ch, mid_ch, norm=norm, dilation=8)
        self.decoder = nn.ModuleList(
            ConvNormAct(dims, 2 * mid_ch, out_ch if i == 0 else mid_ch, norm=norm, dilation=2**i) for i in range(3)
        )

    def forward(self, x: Tensor) -> Tensor:
        x_in = self.conv_in(x)
        skips: list[Tensor] = []
        h = x_in
        for conv in self.encoder:
            h = conv(h)
            skips.append(h)
        h = self.bottom(h)
        for i in range(2, -1, -1):
            h = self.decoder[i](torch.cat([h, skips[i]], dim=1))
        return h + x_in


__all__ = ["RSU", "RSU4F"]
