"""How one loss term is applied to every output a model gives, and the outputs are combined.

A :class:`SupervisedLoss` owns one per-output term (``term(logits, target, roi)``) and applies it:

* to ``heads`` (full-resolution pruning heads) - or to ``logits`` when the output has neither
  heads nor stages;
* to ``aux`` (named low-resolution outputs), against the target down-scaled to their size
  (max-pooled labels by default, see :func:`.targets.downscale_labels`);
* to each cascade ``stage``; a 2-channel stage (or aux) of a multi-class problem is supervised
  against the foreground union (whole tumour), any other against the full label map;
* plus the classification-guided module's BCE on ``classification`` against per-image presence
  of each foreground class, when the model gave one; with one module per branch
  (``branch_classification``, UNet#) the mean of every module's BCE.

Combination, set by each paper's subclass: ``branch_reduction`` "mean" (UNet++/UNet# "accurate
mode": the average over branches) or "sum" (ANU-Net Eq. 8); ``aux_weight=None`` pools the aux
branches into that same mean/sum (UNet#: "the average loss value of all branches"), a number adds
``aux_weight * sum(aux)`` separately (CU-Net Eq. 4, omega = 0.1), and ``aux_decay`` schedules that
number over the run: "none", "step" (CU-Net's omega: /10 every ten epochs down to 1e-3) or
"linear" (straight down to 0 at the last epoch: the aux branches shape the deep nodes early, the
heads alone finish the weights that are kept; UNet#, docs/model_zoo.md). ``head_weights`` weighs
the pruning heads in that mean or sum, shallowest first (default 1 each; an aux branch pooled with
them counts 1). ``aux_branches`` names the aux branches supervised (default all; the others are
computed but get no loss); ``aux_weights`` (name -> weight, default 1 each) weighs them within
either combination (nnU-Net's deep supervision halves the weight per level below full resolution:
the plain U-Net's ``deep_supervision``). Stages are summed with ``stage_weights`` (default 1 each; a weight of 0
skips the stage: stage-by-stage training).

The call is ``loss(output, target, roi=None)``: ``output`` a :class:`SegmentationOutput` (or bare
logits), ``target`` a ``(B, *spatial)`` label map, ``roi`` an optional bool ``(B, *spatial)`` mask
of the voxels the loss may look at (brain / body mask, candidate region); ``roi`` is an additive
keyword - callers that have none just leave it out. A loss whose paper restricts it to the body /
brain says so in ``region`` ("body"); :func:`.regions.training_region` makes that mask from a
training batch. :meth:`SupervisedLoss.set_epoch` is called by the trainer at the start of every
epoch; losses with a per-epoch schedule (CU-Net's omega) follow it there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ModelConfigError, VolumeError
from ..models.output import SegmentationOutput
from ..models.recipes import cu_net_aux_weight
from .targets import as_float, check_target, class_presence, downscale_labels, downscale_mask, target_for_channels

REDUCTIONS = ("mean", "sum")
AUX_DECAYS = ("none", "step", "linear")


class SupervisedLoss(nn.Module):
    """Base class of the named losses; subclasses implement :meth:`term`."""

    # The region of interest the paper trains this loss in: "body" (the body / brain mask of the
    # image) or None (every voxel).
    region: ClassVar[str | None] = None

    def __init__(
        self,
        *,
        branch_reduction: str = "mean",
        aux_weight: float | None = None,
        aux_downscale: str = "max",
        aux_decay: str | bool = "none",
        stage_weights: Mapping[str, float] | None = None,
        classification_weight: float = 1.0,
        head_weights: Sequence[float] | None = None,
        aux_branches: Sequence[str] | None = None,
        aux_weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        if branch_reduction not in REDUCTIONS:
            raise ModelConfigError(
                f"loss option branch_reduction: '{branch_reduction}' is unknown (expected one of {REDUCTIONS})"
            )
        if aux_downscale not in ("max", "nearest"):
            raise ModelConfigError(
                f"loss option aux_downscale: '{aux_downscale}' is unknown (expected 'max' or 'nearest')"
            )
        decay = aux_decay
        if isinstance(decay, bool):  # cards from before the schedule had a name: CU-Net's on / off
            decay = "step" if decay else "none"
        if decay not in AUX_DECAYS:
            raise ModelConfigError(f"loss option aux_decay: '{aux_decay}' is unknown (expected one of {AUX_DECAYS})")
        if decay != "none" and aux_weight is None:
            raise ModelConfigError(
                f"loss option aux_decay: '{decay}' schedules a separate aux weight, but aux_weight is None "
                "(the aux branches pooled with the heads); give aux_weight a number"
            )
        if head_weights is not None and (
            isinstance(head_weights, (str, bytes))
            or not head_weights
            or not all(isinstance(w, (int, float)) and w >= 0 for w in head_weights)
            or not any(head_weights)
        ):
            raise ModelConfigError(
                f"loss option head_weights: expected one weight >= 0 per pruning head, shallowest first "
                f"(e.g. [2, 1, 1, 1]), not all 0; got {head_weights!r}"
            )
        if aux_branches is not None and (
            isinstance(aux_branches, (str, bytes)) or not all(isinstance(name, str) for name in aux_branches)
        ):
            raise ModelConfigError(
                f'loss option aux_branches: expected a list of aux branch names (e.g. ["X1,3", "X2,2"]), '
                f"got {aux_branches!r}"
            )
        if aux_weights is not None and (
            not isinstance(aux_weights, Mapping)
            or not all(isinstance(k, str) and isinstance(w, (int, float)) and w >= 0 for k, w in aux_weights.items())
        ):
            raise ModelConfigError(
                f'loss option aux_weights: expected aux branch names with a weight >= 0 each (e.g. {{"level1": 0.5, '
                f'"level2": 0.25}}), got {aux_weights!r}'
            )
        self.aux_branches = None if aux_branches is None else list(aux_branches)
        self.aux_weights = None if aux_weights is None else {k: float(w) for k, w in aux_weights.items()}
        self.head_weights = None if head_weights is None else [float(w) for w in head_weights]
        self.branch_reduction = branch_reduction
        self.aux_weight = aux_weight
        self.initial_aux_weight = aux_weight
        self.aux_decay = decay
        self.aux_downscale = aux_downscale
        self.stage_weights = dict(stage_weights or {})
        self.classification_weight = float(classification_weight)

    # -- what subclasses define -------------------------------------------------------------
    def term(self, logits: Tensor, target: Tensor, roi: Tensor | None) -> Tensor:
        """The paper's loss of one output against a target of the same size."""
        raise NotImplementedError

    def stage_region(self, name: str, output: SegmentationOutput, target: Tensor, roi: Tensor | None) -> Tensor | None:
        """Voxels a stage's loss covers; the whole ``roi`` unless a paper says otherwise."""
        return roi

    def set_epoch(self, epoch: int, epochs: int | None = None) -> None:
        """Called by the trainer at the start of every epoch (0-based) of ``epochs``; applies
        ``aux_decay`` (a subclass with a paper's own per-epoch schedule extends this)."""
        if self.initial_aux_weight is None or self.aux_decay == "none":
            return
        if self.aux_decay == "step":
            self.aux_weight = cu_net_aux_weight(epoch, self.initial_aux_weight)
        else:  # linear: the full weight at epoch 0, 0 at the last epoch (a single epoch keeps it)
            last = max(int(epochs or 1) - 1, 0)
            self.aux_weight = self.initial_aux_weight * (max(0.0, 1.0 - epoch / last) if last else 1.0)

    # -- the shared machinery ---------------------------------------------------------------
    def supervise(self, name: str, logits: Tensor, target: Tensor, roi: Tensor | None, num_classes: int) -> Tensor:
        """One output's term, with the target (and roi) brought to its size and class count."""
        size = tuple(logits.shape[2:])
        if size != tuple(target.shape[1:]):
            if any(s > t for s, t in zip(size, target.shape[1:])) or len(size) != target.ndim - 1:
                raise ModelConfigError(
                    f"loss: output '{name}' has spatial size {size}, larger than or incompatible with "
                    f"the target {tuple(target.shape[1:])} (expected full or lower resolution)"
                )
            target = downscale_labels(target, size, self.aux_downscale)
            roi = None if roi is None else downscale_mask(roi, size)
        target = target_for_channels(target, logits.shape[1], num_classes, name)
        return self.term(logits, target, roi)

    def _reduce(self, losses: list[Tensor], weights: list[float] | None = None) -> Tensor:
        """The branches' mean or sum; ``weights`` (one per loss) make it a weighted mean / sum."""
        stacked = torch.stack(losses)
        if weights is None:
            return stacked.mean() if self.branch_reduction == "mean" else stacked.sum()
        w = torch.tensor(weights, dtype=stacked.dtype, device=stacked.device)
        total = (w * stacked).sum()
        return total / w.sum() if self.branch_reduction == "mean" else total

    def _head_weights(self, count: int) -> list[float] | None:
        if self.head_weights is None:
            return None
        if count == 0:
            raise ModelConfigError(
                "loss option head_weights: the model gives no pruning heads to weigh (a nested network's "
                "deep supervision: UNet++, ANU-Net, UNet#); leave the option out"
            )
        if len(self.head_weights) != count:
            raise ModelConfigError(
                f"loss option head_weights: {len(self.head_weights)} weights given for a model with "
                f"{count} pruning heads (expected one per head, shallowest first)"
            )
        return self.head_weights

    def _aux_outputs(self, output: SegmentationOutput) -> list[tuple[str, Tensor]]:
        """The aux branches this loss supervises: all of them, or those ``aux_branches`` names."""
        if self.aux_branches is None:
            return list(output.aux.items())
        if not output.aux:
            raise ModelConfigError(
                "loss option aux_branches: the model gives no aux branches to name (UNet#'s and CU-Net's "
                "decoder branches, in training); leave the option out"
            )
        unknown = sorted(set(self.aux_branches) - set(output.aux))
        if unknown:
            raise ModelConfigError(
                f"loss option aux_branches: {unknown} are not aux branches of this model "
                f"(expected some of {sorted(output.aux)})"
            )
        return [(name, logits) for name, logits in output.aux.items() if name in self.aux_branches]

    def _aux_weights(self, names: list[str], output: SegmentationOutput) -> list[float] | None:
        """One weight per supervised aux branch (``aux_weights``; a branch it does not name: 1).
        Called only when the output has aux branches (a cascade's stage-1 phase scores none)."""
        if self.aux_weights is None:
            return None
        unknown = sorted(set(self.aux_weights) - set(output.aux))
        if unknown:
            raise ModelConfigError(
                f"loss option aux_weights: {unknown} are not aux branches of this model "
                f"(expected some of {sorted(output.aux)})"
            )
        return [self.aux_weights.get(name, 1.0) for name in names]

    def forward(self, output: SegmentationOutput | Tensor, target: Tensor, roi: Tensor | None = None) -> Tensor:
        if isinstance(output, Tensor):
            output = SegmentationOutput(logits=output)
        logits = output.logits
        num_classes = logits.shape[1]
        target = check_target(target, logits)
        if roi is not None:
            if roi.shape != target.shape:
                raise VolumeError(f"loss roi: shape {tuple(roi.shape)} does not match the target {tuple(target.shape)}")
            roi = roi.bool()

        heads = [self.supervise(f"heads[{k}]", v, target, roi, num_classes) for k, v in sorted(output.heads.items())]
        aux_outputs = self._aux_outputs(output)
        aux = [self.supervise(f"aux[{k}]", v, target, roi, num_classes) for k, v in aux_outputs]
        main = heads if heads or output.stages else [self.supervise("logits", logits, target, roi, num_classes)]

        weights = self._head_weights(len(heads))
        aux_weights = self._aux_weights([name for name, _ in aux_outputs], output) if aux else None
        parts: list[Tensor] = []
        if self.aux_weight is None:
            if main or aux:
                weighted = weights is not None or aux_weights is not None
                branch_weights = (
                    (weights or [1.0] * len(main)) + (aux_weights or [1.0] * len(aux)) if weighted else None
                )
                parts.append(self._reduce(main + aux, branch_weights))
        else:
            if main:
                parts.append(self._reduce(main, weights))
            if aux:
                stacked = torch.stack(aux)
                if aux_weights is not None:
                    stacked = stacked * torch.tensor(aux_weights, dtype=stacked.dtype, device=stacked.device)
                parts.append(self.aux_weight * stacked.sum())
        for name, stage_logits in output.stages.items():
            weight = float(self.stage_weights.get(name, 1.0))
            if weight == 0.0:
                continue  # stage-by-stage training: this stage is frozen or not trained now
            region = self.stage_region(name, output, target, roi)
            parts.append(weight * self.supervise(f"stages[{name}]", stage_logits, target, region, num_classes))
        presence = list(output.branch_classification.values()) or (
            [output.classification] if output.classification is not None else []
        )
        if presence and self.classification_weight > 0:
            bce = torch.stack([self.classification_loss(p, target, num_classes) for p in presence]).mean()
            parts.append(self.classification_weight * bce)
        if not parts:  # every stage weighted 0: a zero that still belongs to the graph
            return logits.sum() * 0.0
        return torch.stack(parts).sum()

    @staticmethod
    def classification_loss(presence_logits: Tensor, target: Tensor, num_classes: int) -> Tensor:
        """BCE of the classification-guided module against per-image class presence."""
        expected = (target.shape[0], num_classes - 1)
        if tuple(presence_logits.shape) != expected:
            raise ModelConfigError(
                f"loss: classification output has shape {tuple(presence_logits.shape)}, expected {expected} "
                f"(batch, foreground classes)"
            )
        truth = class_presence(target, num_classes)
        return F.binary_cross_entropy_with_logits(as_float(presence_logits), truth.to(as_float(presence_logits).dtype))
