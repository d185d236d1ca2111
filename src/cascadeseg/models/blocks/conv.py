"""Convolution, normalisation and the U-Net double convolution, for 2D and 3D.

The papers use batch norm; 3D batches are small (often 1-2 patches), where batch statistics are
noise, so instance norm is offered beside it (as nnU-Net does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn

from ...errors import ModelConfigError

Norm = Literal["batch", "instance", "none"]


def conv_layer(
    dims: int,
    in_ch: int,
    out_ch: int,
    kernel_size: int | Sequence[int] = 3,
    stride: int | Sequence[int] = 1,
    dilation: int = 1,
    bias: bool = True,
) -> nn.Module:
    """A 2D or 3D convolution with 'same' padding for odd kernels."""
    conv = {2: nn.Conv2d, 3: nn.Conv3d}[dims]
    ks = (kernel_size,) * dims if isinstance(kernel_size, int) else tuple(kernel_size)
    padding = tuple(dilation * (k // 2) for k in ks)
    # torch's stubs say int; its convolutions take a tuple per axis (anisotropic 3D kernels need one)
    return conv(in_ch, out_ch, ks, stride=stride, padding=padding, dilation=dilation, bias=bias)  # type: ignore[arg-type]


def norm_layer(norm: Norm, dims: int, channels: int) -> nn.Module:
    if norm == "batch":
        return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims](channels)
    if norm == "instance":
        return {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dims](channels, affine=True)
    if norm == "none":
        return nn.Identity()
    raise ModelConfigError(f"norm must be 'batch', 'instance' or 'none', got {norm!r}")


class ConvNormAct(nn.Sequential):
    """conv -> norm -> ReLU. The conv has no bias when a norm follows (the norm's shift is it)."""

    def __init__(
        self,
        dims: int,
        in_ch: int,
        out_ch: int,
        kernel_size: int | Sequence[int] = 3,
        norm: Norm = "batch",
        dilation: int = 1,
        act: bool = True,
    ) -> None:
        super().__init__(
            conv_layer(dims, in_ch, out_ch, kernel_size, dilation=dilation, bias=norm == "none"),
            norm_layer(norm, dims, out_ch),
            nn.ReLU(inplace=True) if act else nn.Identity(),
        )


class DoubleConv(nn.Sequential):
    """The U-Net unit used by every paper here: two 3x3(x3) conv-norm-ReLU layers."""

    def __init__(self, dims: int, in_ch: int, out_ch: int, norm: Norm = "batch", mid_ch: int | None = None) -> None:
        mid = out_ch if mid_ch is None else mid_ch
        super().__init__(ConvNormAct(dims, in_ch, mid, norm=norm), ConvNormAct(dims, mid, out_ch, norm=norm))

    def forward(self, x: Tensor) -> Tensor:  # explicit for type checkers
        return super().forward(x)
