"""Base class and metadata shared by every architecture of the zoo."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from torch import Tensor, nn

from ..errors import ModelConfigError
from .blocks.conv import Norm
from .blocks.encoder_decoder import BlockFactory, LevelLayout, level_widths, pooling_plan
from .blocks.sampling import Factor, cumulative_divisor
from .catalogue import CATALOGUE, ModelInfo, catalogue_modules, model_info

__all__ = ["CATALOGUE", "ModelInfo", "SegmentationModel", "catalogue_modules", "model_info"]
from .output import OutputRequest, SegmentationOutput


class SegmentationModel(nn.Module):
    """What every model of the zoo shares: the constructor arguments and their checks, the
    pooling plan and channel widths derived from them, the input checks, and ``forward``.

    ``forward(x, depth=None, request=None)`` resolves and checks ``depth``, checks ``x`` and calls
    :meth:`_forward` with a resolved depth and a request; subclasses implement only that.

    Constructor arguments (every architecture takes them; some add their own after them):

    * ``in_channels``, ``num_classes`` (the background counts: binary segmentation has 2), ``dims``
      (2 or 3);
    * ``base_width``: channels of the first level, doubled per level (papers: 32, i.e. 32..512);
    * ``levels``: resolution levels (papers: 5), so ``levels - 1`` poolings;
    * ``norm``: "batch" (the papers'), "instance" (small 3D batches) or "none";
    * ``spacing``: voxel size in mm (3D only): an anisotropic scan is pooled in-plane first.

    ``max_depth`` is the deepest pruning head (``levels - 1`` for models with pruning, else 1).
    ``size_divisor`` is what each spatial input size must be a multiple of (the product of the
    pooling factors); the predictor pads to it and crops back.
    """

    info: ClassVar[ModelInfo]

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        dims: int,
        base_width: int = 32,
        levels: int = 5,
        norm: Norm = "batch",
        spacing: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        name = self.info.name
        if dims not in self.info.dims:
            raise ModelConfigError(f"model '{name}': dims={dims} is not supported (expected one of {self.info.dims})")
        if in_channels < 1:
            raise ModelConfigError(f"model '{name}': in_channels must be >= 1, got {in_channels}")
        if num_classes < 2:
            raise ModelConfigError(
                f"model '{name}': num_classes counts the background and must be >= 2, got {num_classes}"
            )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.dims = dims
        self.widths: list[int] = level_widths(base_width, levels, name)
        self.plan: list[Factor] = pooling_plan(name, dims, levels, spacing)
        self.base_width = base_width
        self.levels = levels
        self.norm: Norm = norm
        # As given (in 2D the plan ignores it: slices are pooled isotropically, see pooling_plan).
        self.spacing: tuple[float, ...] | None = None if spacing is None else tuple(float(s) for s in spacing)

    @classmethod
    def check_option(cls, option: str, value: object, choices: Sequence[object]) -> None:
        """Refuse an architecture option outside its choices, naming the model, the option and the
        choices (MONAI's ``look_up_option`` convention)."""
        if value not in choices:
            raise ModelConfigError(f"model '{cls.info.name}': {option} must be one of {tuple(choices)}, got {value!r}")

    def level_layout(self, make_block: BlockFactory, plan: Sequence[Factor] | None = None) -> LevelLayout:
        """This model's dims and widths with ``make_block`` at every level and its pooling plan
        (or ``plan``: the coarse-to-fine cascade's stage 1 pools its own way)."""
        return LevelLayout(self.dims, tuple(self.widths), tuple(self.plan if plan is None else plan), make_block)

    @property
    def max_depth(self) -> int:
        return self.levels - 1 if self.info.pruning_depths else 1

    @property
    def size_divisor(self) -> tuple[int, ...]:
        return cumulative_divisor(self.plan, self.dims)

    def check_depth(self, depth: int | None) -> int:
        """Resolve ``None`` to the full depth and reject depths this model does not have."""
        if depth is None:
            return self.max_depth
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= self.max_depth:
            expected = (
                f"with levels={self.levels} (expected 1..{self.max_depth})"
                if self.info.pruning_depths
                else "(no pruning: expected 1)"
            )
            raise ModelConfigError(f"model '{self.info.name}': pruning depth {depth!r} is not available {expected}")
        return depth

    def check_input(self, x: Tensor) -> None:
        """Fail with a message naming the size constraint instead of a shape error deep inside."""
        if x.ndim != self.dims + 2:
            raise ModelConfigError(
                f"model '{self.info.name}' ({self.dims}D) expects input (B, C, {'D, ' if self.dims == 3 else ''}H, W), "
                f"got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ModelConfigError(
                f"model '{self.info.name}' expects {self.in_channels} input channel(s), got {x.shape[1]}"
            )
        bad = [s for s, d in zip(x.shape[2:], self.size_divisor) if s % d]
        if bad:
            raise ModelConfigError(
                f"model '{self.info.name}': spatial size {tuple(x.shape[2:])} must be a multiple of "
                f"{self.size_divisor} per axis (the predictor pads to it)"
            )

    def forward(self, x: Tensor, depth: int | None = None, request: OutputRequest | None = None) -> SegmentationOutput:
        resolved = self.check_depth(depth)
        self.check_input(x)
        return self._forward(x, resolved, request or OutputRequest())

    def _forward(self, x: Tensor, depth: int, request: OutputRequest) -> SegmentationOutput:
        """The architecture's forward pass on a checked input at a resolved depth."""
        raise NotImplementedError
