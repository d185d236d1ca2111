"""The additive attention gate of ANU-Net (paper 003, Eq. 1-3), for 2D and 3D.

``F = ReLU(norm(W_f f) + norm(W_g g))``, ``alpha = sigmoid(norm(W_theta F))``, ``out = f * alpha``:
the gating signal ``g`` (the up-sampled deeper decoder feature) selects, per voxel, how much of the
skip feature ``f`` reaches the next nested block.

Choices where the paper leaves room:

* ``W_f``, ``W_g`` and ``W_theta`` are 1x1(x1) convolutions (Fig. 3 draws them as such) and the
  intermediate width is half the skip width, as in Attention U-Net (Oktay et al. 2018), which
  the paper builds on; ANU-Net gives no number.
* ``g`` arrives already up-sampled to ``f``'s grid (Eq. 4 gates with ``Up(X_{i+1,j-1})``), so the
  gate needs no resampling of its own and ``alpha`` has exactly ``f``'s spatial shape.
* The "b" terms of Eq. 1-2 are batch norms in the paper. With ``norm="instance"`` the two input
  branches use instance norm, but ``W_theta`` keeps a plain bias: instance-normalising a one-channel
  map would force every image's coefficients to zero mean, i.e. half of every image "relevant".
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .conv import Norm, conv_layer, norm_layer


class AttentionGate(nn.Module):
    """``forward(f, g) -> (f * alpha, alpha)`` with ``alpha`` of shape ``(B, 1, *f.shape[2:])`` in [0, 1]."""

    def __init__(
        self, dims: int, skip_channels: int, gate_channels: int, norm: Norm = "batch", inter_channels: int | None = None
    ) -> None:
        super().__init__()
        inter = inter_channels if inter_channels is not None else max(1, skip_channels // 2)
        self.w_f = nn.Sequential(
            conv_layer(dims, skip_channels, inter, 1, bias=norm == "none"), norm_layer(norm, dims, inter)
        )
        self.w_g = nn.Sequential(
            conv_layer(dims, gate_channels, inter, 1, bias=norm == "none"), norm_layer(norm, dims, inter)
        )
        theta_norm: Norm = "batch" if norm == "batch" else "none"
        self.w_theta = nn.Sequential(
            conv_layer(dims, inter, 1, 1, bias=theta_norm == "none"), norm_layer(theta_norm, dims, 1)
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, f: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        alpha = torch.sigmoid(self.w_theta(self.relu(self.w_f(f) + self.w_g(g))))
        return f * alpha, alpha


__all__ = ["AttentionGate"]
