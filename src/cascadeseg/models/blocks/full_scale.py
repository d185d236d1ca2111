"""Full-scale skip connections (UNet 3+, UNet#): a feature map of one level, resampled to another
level's grid and projected by one conv-norm-ReLU.

Resampling factors between two levels are the products of the per-level pooling factors in
between (per axis, so anisotropic 3D plans work).

Order of convolution and up-sampling (both papers write ``f(u^n(A))``, convolution after
up-sampling): by default (``convolve_first=True``) the convolution runs on the coarse grid *before*
the (bi/tri)linear interpolation. The parameters are the same; the cost is ``4^n`` (2D) or ``8^n``
(3D) times lower, which is what makes the full-scale paths affordable on a CPU. Both orders see
the same coarse content, the coarse-grid convolution with a wider footprint on the fine grid; what
differs is where the norm and ReLU act (before the interpolation here, after it in the papers), so
the two are not numerically equal. ``convolve_first=False`` is the papers' order. Going *down*
(UNet 3+ encoder paths) the papers already max-pool first and convolve on the coarse grid.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .conv import ConvNormAct, Norm
from .sampling import Downsample, Factor, Upsample


def factor_between(plan: Sequence[Factor], fine_level: int, coarse_level: int, dims: int) -> Factor:
    """Per-axis resampling factor between ``fine_level`` and the deeper ``coarse_level``."""
    factor = [1] * dims
    for step in plan[fine_level:coarse_level]:
        factor = [a * b for a, b in zip(factor, step)]
    return tuple(factor)


class FullScaleLink(nn.Module):
    """Feature of level ``source`` -> ``out_channels`` on the grid of level ``target`` (either way)."""

    def __init__(
        self,
        dims: int,
        plan: Sequence[Factor],
        source: int,
        target: int,
        in_channels: int,
        out_channels: int,
        norm: Norm = "batch",
        convolve_first: bool = True,
    ) -> None:
        super().__init__()
        self.convolve_first = convolve_first
        self.project = ConvNormAct(dims, in_channels, out_channels, norm=norm)
        self.pool: nn.Module | None = None
        self.up: nn.Module | None = None
        if source < target:
            self.pool = Downsample(dims, factor_between(plan, source, target, dims))
        elif source > target:
            self.up = Upsample(dims, factor_between(plan, target, source, dims))

    def forward(self, x: Tensor) -> Tensor:
        if self.pool is not None:
            x = self.pool(x)
        if self.up is None:
            return self.project(x)
        return self.up(self.project(x)) if self.convolve_first else self.project(self.up(x))


__all__ = ["FullScaleLink", "factor_between"]
