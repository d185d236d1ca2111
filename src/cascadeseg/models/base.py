"""Base class and metadata shared by every architecture of the zoo."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

from torch import Tensor, nn

from ..errors import ModelConfigError
from .output import OutputRequest, SegmentationOutput


@dataclass(frozen=True)
class ModelInfo:
    """What a model supports, for the registry listing, the GUI and the model card."""

    name: str
    title: str
    paper: str
    family: str
    dims: tuple[int, ...] = (2, 3)
    deep_supervision: bool = False
    pruning_depths: tuple[int, ...] = ()
    stages: tuple[str, ...] = ()
    attention: bool = False
    classification_guided: bool = False
    default_loss: str = "dice_ce"


class SegmentationModel(nn.Module):
    """Common constructor arguments, checks and the forward signature of all models.

    Subclasses set ``info`` and implement :meth:`forward`. ``max_depth`` is the deepest pruning
    head (1 for models without pruning). ``size_divisor`` is what each spatial input size must be
    a multiple of; the predictor pads to it and crops back.
    """

    info: ClassVar[ModelInfo]

    def __init__(self, in_channels: int, num_classes: int, dims: int) -> None:
        super().__init__()
        if dims not in self.info.dims:
            raise ModelConfigError(
                f"model '{self.info.name}': dims={dims} is not supported (expected one of {self.info.dims})"
            )
        if in_channels < 1:
            raise ModelConfigError(f"model '{self.info.name}': in_channels must be >= 1, got {in_channels}")
        if num_classes < 2:
            raise ModelConfigError(
                f"model '{self.info.name}': num_classes counts the background and must be >= 2, got {num_classes}"
            )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.dims = dims

    @property
    def max_depth(self) -> int:
        return max(self.info.pruning_depths) if self.info.pruning_depths else 1

    @property
    def size_divisor(self) -> tuple[int, ...]:
        raise NotImplementedError  # every concrete model defines it from its pooling plan

    def check_depth(self, depth: int | None) -> int:
        """Resolve ``None`` to the full depth and reject depths this model does not have."""
        if depth is None:
            return self.max_depth
        allowed: Sequence[int] = self.info.pruning_depths or (1,)
        if depth not in allowed:
            raise ModelConfigError(
                f"model '{self.info.name}': pruning depth {depth} is not available (expected one of {tuple(allowed)})"
            )
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

    def forward(  # pragma: no cover - signature only
        self, x: Tensor, depth: int | None = None, request: OutputRequest | None = None
    ) -> SegmentationOutput:
        raise NotImplementedError
