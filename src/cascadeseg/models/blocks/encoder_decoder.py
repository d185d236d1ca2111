"""The U-Net encoder and decoder, generic over the block a level uses.

Every model of the cascade family (U-Net, the cascaded U-Nets, CU-Net, the Inner Cascaded
U-Net / U²-Net) is built from the same contracting and expanding paths; only the per-level block
differs (double convolution, residual basic block, RSU block). A block factory
``make_block(level, in_ch, out_ch) -> nn.Module`` supplies it, so each model states its block once.

Widths double per level (``base_width * 2**level``, the papers' 32-64-128-256-512); down- and
up-sampling factors per level come from :func:`plan_pooling`, so an anisotropic 3D scan is pooled
in-plane only until its voxels are roughly isotropic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...errors import ModelConfigError
from .conv import DoubleConv, Norm
from .sampling import Downsample, Factor, Upsample, plan_pooling

BlockFactory = Callable[[int, int, int], nn.Module]


@dataclass(frozen=True)
class LevelLayout:
    """What the encoders and decoders of one model share: spatial ``dims``, the channel width of
    every level, the pooling factor between consecutive levels (``plan``, one fewer than the
    widths) and the block that convolves at a level. Passed as one value so that the four cannot
    be given in a different order or out of step."""

    dims: int
    widths: tuple[int, ...]
    plan: tuple[Factor, ...]
    make_block: BlockFactory

    def __post_init__(self) -> None:
        if len(self.plan) != len(self.widths) - 1:
            raise ValueError(f"pooling plan has {len(self.plan)} steps, expected {len(self.widths) - 1}")


def level_widths(base_width: int, levels: int, model: str = "") -> list[int]:
    """Channel widths per level: ``base_width`` doubled at each level (paper: 32..512 at 5 levels)."""
    who = f"model '{model}': " if model else ""
    if base_width < 1:
        raise ModelConfigError(f"{who}base_width must be >= 1, got {base_width}")
    if levels < 2:
        raise ModelConfigError(f"{who}levels must be >= 2 (one pooling at least), got {levels}")
    return [base_width * 2**level for level in range(levels)]


def pooling_plan(model: str, dims: int, levels: int, spacing: Sequence[float] | None) -> list[Factor]:
    """The per-level pooling factors of a model, with user errors reported as :class:`ModelConfigError`.

    ``spacing`` (mm, array order) only matters in 3D; 2D models pool both axes every level.
    """
    if spacing is not None:
        if dims == 2:
            spacing = None  # a 2D slice is pooled isotropically (in-plane spacing is near-isotropic)
        elif len(spacing) != dims or any(not s > 0 for s in spacing):
            raise ModelConfigError(
                f"model '{model}': spacing {tuple(spacing)} must be {dims} positive voxel sizes in mm (z, y, x)"
            )
    return plan_pooling(spacing, levels, dims)


def double_conv_factory(dims: int, norm: Norm) -> BlockFactory:
    """The plain U-Net block at every level."""

    def make(level: int, in_ch: int, out_ch: int) -> nn.Module:
        return DoubleConv(dims, in_ch, out_ch, norm=norm)

    return make


class UNetEncoder(nn.Module):
    """Contracting path: ``block -> pool -> block -> ...``; returns the feature map of every level.

    ``extra_channels[level]`` widens a level's block input for feature maps concatenated there from
    outside (CU-Net's between-net connections); ``forward(x, extras)`` then takes those maps.
    """

    def __init__(self, layout: LevelLayout, in_channels: int, extra_channels: Sequence[int] | None = None) -> None:
        super().__init__()
        dims, widths, make_block = layout.dims, layout.widths, layout.make_block
        extra = list(extra_channels) if extra_channels is not None else [0] * len(widths)
        self.widths = list(widths)
        self.blocks = nn.ModuleList()
        self.pools = nn.ModuleList(Downsample(dims, factor) for factor in layout.plan)
        for level, width in enumerate(widths):
            previous = in_channels if level == 0 else widths[level - 1]
            self.blocks.append(make_block(level, previous + extra[level], width))

    def forward(self, x: Tensor, extras: Sequence[Tensor | None] | None = None) -> list[Tensor]:
        features: list[Tensor] = []
        for level, block in enumerate(self.blocks):
            if level > 0:
                x = self.pools[level - 1](x)
            extra = extras[level] if extras is not None else None
            if extra is not None:
                x = torch.cat([x, extra], dim=1)
            x = block(x)
            features.append(x)
        return features


class UNetDecoder(nn.Module):
    """Expanding path: at each level, up-sampling, concatenation with the skip feature(s) of that
    level and a block. ``forward`` returns the decoder feature of every level, index 0 the full
    resolution, index ``levels - 1`` the bottleneck itself.

    ``upsample="transpose"``: the original U-Net's learned 2x2 "up-convolution" halving the width;
    ``"interp"``: parameter-free (bi/tri)linear up-sampling keeping the width (paper 000's U(.)).
    ``skip_widths[level]`` is the total width of what is concatenated at a level (default: the
    encoder's width there); ``forward(features, skips)`` takes those maps when given.
    """

    def __init__(
        self, layout: LevelLayout, skip_widths: Sequence[int] | None = None, upsample: str = "transpose"
    ) -> None:
        super().__init__()
        dims, widths, plan, make_block = layout.dims, layout.widths, layout.plan, layout.make_block
        skips = list(skip_widths) if skip_widths is not None else list(widths)
        transpose = upsample == "transpose"
        self.ups = nn.ModuleList(
            Upsample(dims, plan[level], widths[level + 1], widths[level], mode=upsample)
            for level in range(len(widths) - 1)
        )
        self.blocks = nn.ModuleList(
            make_block(level, (widths[level] if transpose else widths[level + 1]) + skips[level], widths[level])
            for level in range(len(widths) - 1)
        )

    def forward(self, bottom: Tensor, skips: Sequence[Tensor | Sequence[Tensor]]) -> list[Tensor]:
        """``bottom``: the deepest feature; ``skips[level]``: one map or several maps (concatenated)
        joining the decoder at ``level`` (only levels ``0 .. levels - 2`` are read)."""
        x = bottom
        out: list[Tensor] = [x]
        for level in range(len(self.blocks) - 1, -1, -1):
            skip = skips[level]
            parts = [skip] if isinstance(skip, Tensor) else list(skip)
            x = self.blocks[level](torch.cat([*parts, self.ups[level](x)], dim=1))
            out.append(x)
        out.reverse()
        return out


def segmentation_head(dims: int, in_ch: int, num_classes: int) -> nn.Module:
    """The 1x1(x1) convolution from features to class logits."""
    return {2: nn.Conv2d, 3: nn.Conv3d}[dims](in_ch, num_classes, kernel_size=1)


__all__ = [
    "BlockFactory",
    "LevelLayout",
    "level_widths",
    "pooling_plan",
    "double_conv_factory",
    "UNetEncoder",
    "UNetDecoder",
    "segmentation_head",
]
