"""The residual basic block (He et al. 2016) used as every unit of CU-Net (paper 001).

Paper 001, Sec. 2.1: "each basic unit in our network is constructed by a residual block stacked by
two 3x3 convolution blocks". The paper does not say how the shortcut changes width; a 1x1(x1)
projection with norm (ResNet's option B) is used when input and output widths differ, the
identity otherwise.
"""

from __future__ import annotations

from torch import Tensor, nn

from .conv import ConvNormAct, Norm, conv_layer, norm_layer


class ResidualBlock(nn.Module):
    """``relu(norm(conv(relu(norm(conv(x))))) + shortcut(x))`` with 3x3(x3) convolutions."""

    def __init__(self, dims: int, in_ch: int, out_ch: int, norm: Norm = "batch") -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvNormAct(dims, in_ch, out_ch, norm=norm),
            ConvNormAct(dims, out_ch, out_ch, norm=norm, act=False),
        )
        self.shortcut: nn.Module = (
            nn.Identity()
            if in_ch == out_ch
            else nn.Sequential(conv_layer(dims, in_ch, out_ch, 1, bias=norm == "none"), norm_layer(norm, dims, out_ch))
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + self.shortcut(x))


__all__ = ["ResidualBlock"]
