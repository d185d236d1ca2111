"""Down- and up-sampling with per-axis factors, and the pooling plan derived from voxel spacing.

Anisotropic scans (6.5 mm slices beside 0.7 mm pixels) must not be pooled along the thick axis as
often as in-plane, or the slice axis collapses to one voxel after two levels. Following nnU-Net,
an axis is pooled at a level only while its current spacing is at most twice the finest current
spacing (and it still has room); the spacings then evolve with each pooling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .conv import conv_layer

Factor = tuple[int, ...]


def plan_pooling(
    spacing: Sequence[float] | None,
    levels: int,
    dims: int,
    patch_size: Sequence[int] | None = None,
    min_size: int = 4,
) -> list[Factor]:
    """Pooling factors per level (``levels - 1`` entries), each a tuple of 1 or 2 per axis.

    ``spacing`` is in the network's axis order; ``None`` means isotropic (pool every axis by 2).
    ``patch_size`` (optional) stops pooling an axis below ``min_size`` voxels.
    """
    if spacing is None:
        spacing = (1.0,) * dims
    if len(spacing) != dims:
        raise ValueError(f"spacing {tuple(spacing)} has {len(spacing)} axes, the network has {dims}")
    current = [float(s) for s in spacing]
    size = list(patch_size) if patch_size is not None else None
    plan: list[Factor] = []
    for _ in range(levels - 1):
        finest = min(current)
        factor = []
        for axis in range(dims):
            ok = current[axis] <= 2 * finest
            if size is not None and size[axis] // 2 < min_size:
                ok = False
            factor.append(2 if ok else 1)
        if all(f == 1 for f in factor):
            # Nothing can be pooled on spacing grounds: pool the finest axes so depth still adds context.
            factor = [2 if c == finest else 1 for c in current]
        for axis in range(dims):
            current[axis] *= factor[axis]
            if size is not None:
                size[axis] //= factor[axis]
        plan.append(tuple(factor))
    return plan


def cumulative_divisor(plan: Sequence[Factor], dims: int) -> tuple[int, ...]:
    """The product of the pooling factors per axis: what an input size must be a multiple of."""
    out = [1] * dims
    for factor in plan:
        out = [o * f for o, f in zip(out, factor)]
    return tuple(out)


class Downsample(nn.Module):
    """Max pooling by a per-axis factor (the papers' choice)."""

    def __init__(self, dims: int, factor: Factor) -> None:
        super().__init__()
        self.pool = {2: nn.MaxPool2d, 3: nn.MaxPool3d}[dims](kernel_size=factor, stride=factor)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(x)


class Upsample(nn.Module):
    """Up-sampling by a per-axis factor: transposed convolution (learned, the U-Net default) or
    (bi/tri)linear interpolation followed by nothing (cheap, used for the many nested/full-scale
    paths of UNet++ / UNet 3+ / UNet#)."""

    def __init__(
        self, dims: int, factor: Factor, in_ch: int | None = None, out_ch: int | None = None, mode: str = "interp"
    ) -> None:
        super().__init__()
        self.factor = tuple(factor)
        self.dims = dims
        if mode == "transpose":
            if in_ch is None or out_ch is None:
                raise ValueError("transpose upsampling needs in_ch and out_ch")
            tconv = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[dims]
            self.op: nn.Module | None = tconv(in_ch, out_ch, kernel_size=self.factor, stride=self.factor)  # type: ignore[arg-type]
        elif mode == "interp":
            self.op = None
        else:
            raise ValueError(f"upsampling mode must be 'transpose' or 'interp', got {mode!r}")

    def forward(self, x: Tensor) -> Tensor:
        if self.op is not None:
            return self.op(x)
        return F.interpolate(
            x, scale_factor=self.factor, mode="bilinear" if self.dims == 2 else "trilinear", align_corners=False
        )


def resize_to(x: Tensor, size: Sequence[int], mode: str = "linear") -> Tensor:
    """Resize a feature or logit map to ``size`` (used for heads at other resolutions)."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    if mode == "linear":
        mode = "bilinear" if x.ndim == 4 else "trilinear"
        return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)
    return F.interpolate(x, size=tuple(size), mode=mode)


__all__ = ["plan_pooling", "cumulative_divisor", "Downsample", "Upsample", "resize_to", "conv_layer"]
