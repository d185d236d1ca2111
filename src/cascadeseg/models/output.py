"""The one output contract every model honours.

Inference, training and the GUI only ever read a :class:`SegmentationOutput`; none of them has
model-specific code. A model fills the optional fields only when the caller asked for them through
an :class:`OutputRequest`, so maps that were not asked for cost nothing (they are never computed,
not merely dropped).

Conventions, shared by every architecture:

* ``logits`` are raw multi-class scores, shape ``(B, num_classes, *spatial)`` with the input's
  spatial size; ``num_classes`` counts the background (binary segmentation has 2 classes) and the
  prediction is ``argmax`` over channel 1.
* ``heads`` maps a pruning depth ``k`` (1..max_depth) to that depth's full-resolution logits; for a
  model without pruning it is empty. ``logits`` is ``heads[depth]`` when a depth was requested.
* ``aux`` holds named lower-resolution auxiliary outputs that deep supervision compares with a
  down-scaled ground truth (UNet# decoder heads, CU-Net auxiliary supervisions).
* ``stages`` maps a cascade stage name to its logits at the input size, in cascade order
  (``"stage1"``, ``"stage2"``); a stage may have its own class count (CU-Net stage 1 segments the
  whole target, stage 2 the substructures).
* ``attention`` maps a gate name (e.g. ``"X0,1"``) to coefficients in [0, 1] of shape
  ``(B, 1, *gated_spatial)``, the spatial size of the skip feature map the gate multiplies.
* ``classification`` holds presence logits ``(B, num_classes - 1)`` of the classification-guided
  module (UNet 3+, UNet#), before the sigmoid: the module that judges the branch ``logits`` comes
  from.
* ``branch_classification`` (optional, added for UNet#'s one module per deep-supervision branch)
  maps a branch's node name (e.g. ``"X2,2"``) to its own module's presence logits
  ``(B, num_classes - 1)``, for the branches returned in ``heads`` / ``aux`` (or only the output
  branch); empty for models with a single module. Consumers that only read ``classification`` are
  unaffected; the loss trains every module listed here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn


@dataclass(frozen=True)
class OutputRequest:
    """Which optional outputs the caller wants beside the final logits."""

    heads: bool = False
    stages: bool = False
    attention: bool = False
    classification: bool = False

    @classmethod
    def everything(cls) -> OutputRequest:
        return cls(heads=True, stages=True, attention=True, classification=True)

    @classmethod
    def for_training(cls) -> OutputRequest:
        """What deep supervision and the papers' losses read: heads, stages and the CGM."""
        return cls(heads=True, stages=True, attention=False, classification=True)


@dataclass
class SegmentationOutput:
    """Final logits plus the optional maps (see the module docstring for shapes)."""

    logits: Tensor
    heads: dict[int, Tensor] = field(default_factory=dict)
    aux: dict[str, Tensor] = field(default_factory=dict)
    stages: dict[str, Tensor] = field(default_factory=dict)
    attention: dict[str, Tensor] = field(default_factory=dict)
    classification: Tensor | None = None
    branch_classification: dict[str, Tensor] = field(default_factory=dict)


class LogitsOnly(nn.Module):
    """Wraps a model so it returns a plain tensor: what ``torch.compile`` graphs, ONNX export and
    MONAI's sliding-window inference want. ``depth`` selects the pruning depth (``None``: full)."""

    def __init__(self, model: nn.Module, depth: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.depth = depth
        # A new Module starts in training mode; exporters restore the wrapper's mode onto the
        # wrapped model when they finish, which would silently put an eval model back in training.
        self.train(model.training)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x, depth=self.depth).logits


__all__ = ["OutputRequest", "SegmentationOutput", "LogitsOnly"]
