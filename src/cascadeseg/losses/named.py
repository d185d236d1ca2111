"""The named losses of ``build_loss``: each paper's per-output term and combination rule.

Per-output terms live in :mod:`.overlap`, :mod:`.pixelwise`, :mod:`.lovasz` and
:mod:`.sampling`; the deep-supervision / stage / CGM combination in :mod:`.supervision`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import ModelConfigError
from ..models.output import SegmentationOutput
from .lovasz import lovasz_hinge_loss
from .overlap import component_dice_loss, focal_tversky_loss, laplace_dice_loss, soft_dice_loss
from .pixelwise import anu_focal_term, class_frequency_weighted_ce, cross_entropy_loss, focal_loss
from .sampling import sample_matrix
from .supervision import SupervisedLoss

ANU_FOCAL_TERMS = ("retinanet", "eq8")


class SoftDiceLoss(SupervisedLoss):
    """ "dice": soft Dice over the foreground classes (batch Dice, smooth 1e-5); deep-supervision
    branches averaged (UNet++'s accurate mode)."""

    def __init__(
        self, *, smooth: float = 1e-5, batch: bool = True, include_background: bool = False, **common: Any
    ) -> None:
        super().__init__(**common)
        self.smooth, self.batch, self.include_background = smooth, batch, include_background

    def term(self, logits: Tensor, target: Tensor, roi: Tensor | None) -> Tensor:
        return soft_dice_loss(
            logits, target, smooth=self.smooth, batch=self.batch, include_background=self.include_background, roi=roi
        )


class DiceCELoss(SoftDiceLoss):
    """ "dice_ce": cross-entropy + soft Dice, weights 1 and 1 (nnU-Net's default loss);
    ``component_weight`` > 0 adds that much of :func:`.overlap.component_dice_loss` (each lesion
    component's own Dice; 0, the loss's default, leaves it as it was; the planner asks for 1 on fresh
    2D U-Net runs of one lesion class, docs/one_click_training.md)."""

    def __init__(
        self, *, ce_weight: float = 1.0, dice_weight: float = 1.0, component_weight: float = 0.0, **options: Any
    ) -> None:
        super().__init__(**options)
        if component_weight < 0:
            raise ModelConfigError(f"loss 'dice_ce': component_weight must be >= 0, got {component_weight}")
        self.ce_weight, self.dice_weight, self.component_weight = ce_weight, dice_weight, component_weight

    def term(self, logits: Tensor, target: Tensor, roi: Tensor | None) -> Tensor:
        loss = self.ce_weight * cross_entropy_loss(logits, target, roi=roi) + self.dice_weight * super().term(
            logits, target, roi
        )
        if self.component_weight:
            loss = loss + self.component_weight * component_dice_loss(logits, target, roi=roi)
        return loss


class FocalTverskyLoss(SupervisedLoss):
    """ "focal_tversky": paper 000 Eq. 5 (alpha 0.4, beta 0.6, gamma 4/3, eps 1e-6) on every output;
    a cascade's two stages are both supervised and summed (end-to-end training, paper 000 Fig. 1)."""

    def __init__(
        self, *, alpha: float = 0.4, beta: float = 0.6, gamma: float = 4.0 / 3.0, eps: float = 1e-6, **common: Any
    ) -> None:
        super().__init__(**common)
        self.alpha, self.beta, self.gamma, self.eps = alpha, beta, gamma, eps

    def term(self, logits: Tensor, target: Tensor, roi: Tensor | None) -> Tensor:
        return focal_tversky_loss(
            logits, target, alpha=self.alpha, beta=self.beta, gamma=self.gamma, eps=self.eps, roi=roi
        )


class WeightedSamplingLoss(SupervisedLoss):
    """ "weighted_sampling": CU-Net (paper 001) Eq. 1-4.

    ``L = L1 + L2 + omega * sum_i La_i``: the two branch (stage) losses plus the eight auxiliary
    losses with ``aux_weight`` omega. The paper's omega starts at 0.1 and is divided by 10 every ten
    epochs down to 1e-3 (Sec. 3.2): ``aux_decay="step"``, this loss's default (``set_epoch`` applies
    :func:`..models.recipes.cu_net_aux_weight` from ``aux_weight``); ``aux_decay="none"`` keeps
    omega constant. Each term is the sampled cross-entropy of Eq. 1 with the sample matrix of
    :mod:`.sampling` (U-Net 1's rule for whole-tumour outputs, U-Net 2's for substructure outputs).
    ``roi`` is the brain mask: S1, the black background outside it, is never sampled (p1 = 0);
    :func:`.regions.training_region` makes it from the batch. ``seed`` makes the random sampling reproducible.
    """

    region = "body"

    def __init__(
        self,
        *,
        beta: float = 1.5,
        contour_weight: float = 2.0,
        contour_width: int = 10,
        empty_rate: float = 0.01,
        aux_weight: float = 0.1,
        aux_decay: str | bool = "step",
        seed: int | None = None,
        **common: Any,
    ) -> None:
        super().__init__(aux_weight=aux_weight, aux_decay=aux_decay, **common)
        if beta <= 0 or contour_weight < 1 or contour_width < 0 or not 0 <= empty_rate <= 1:
            raise ModelConfigError(
                "loss 'weighted_sampling': expected beta > 0, contour_weight >= 1, contour_width >= 0 and "
                f"0 <= empty_rate <= 1, got {beta}, {contour_weight}, {contour_width}, {empty_rate}"
            )
        self.beta, self.contour_weight, self.contour_width, self.empty_rate = (
            beta,
            contour_weight,
            contour_width,
            empty_rate,
        )
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)

    def term(self, logits: Tensor, target: Tensor, roi: Tensor | None) -> Tensor:
        substructures = logits.shape[1] > 2  # U-Net 2's outputs; 2 channels: whole tumour (U-Net 1)
        # A CPU generator cannot draw on a GPU; there the global RNG (seeded by the trainer) draws.
        generator = self.generator if self.generator is not None and logits.device.type == "cpu" else None
        weights = sample_matrix(
            target > 0,
            roi,
            substructures=substructures,
            beta=self.beta,
            contour_weight=self.contour_weight,
            contour_width=self.contour_width,
            empty_rate=self.empty_rate,
            generator=generator,
        )
        return cross_entropy_loss(logits, target, voxel_weight=weights)


class ClassWeightedCELoss(SupervisedLoss):
    """ "class_weighted_ce": Roth et al.'s class-frequency-weighted cross-entropy (paper 002).

    Stage 1 is trained on its candidate region C1 = ``roi``, the body mask
    (:func:`.regions.training_region` makes it from the batch; everything without one). Stage 2 on
    C2, the region the model ran stage 2 on (the box it grew around stage 1's foreground), read from
    the output by :func:`cascadeseg.models.coarse_to_fine_unet.stage2_region`, so the model's rule is
    the only rule: outside C2 the ``stage2`` logits are stage 1's and get no stage-2 loss.
    """

    region = "body"

    def term(self, logits: Tensor, target: Tensor, roi: Tensor | None) -> Tensor:
        return class_frequency_weighted_ce(logits, target, roi=roi)

    def stage_region(self, name: str, output: SegmentationOutput, target: Tensor, roi: Tensor | None) -> Tensor | None:
        names = list(output.stages)
        position = names.index(name)
        if position == 0:
            return roi
        # Imported here so a problem in that model file cannot break every other loss.
        from ..models.coarse_to_fine_unet import stage2_region

        previous, current = output.stages[names[position - 1]], output.stages[name]
        if previous.shape != current.shape:
            return roi  # stage 2 is not pasted into stage 1's map (another cascade): it covers every voxel
        ran = stage2_region(previous, current)
        return ran if roi is None else ran & roi


class ANUHybridLoss(SupervisedLoss):
    """ "anu_hybrid": ANU-Net (paper 003) Eq. 8, summed over the deep-supervision heads X0,1..X0,4.

    Per head: ``focal term + (1 - squared soft Dice)`` with Dice ``(2 Y Ybar + s)/(Y^2 + Ybar^2 + s)``,
    ``s = 1``. Two focal terms, ``focal``:

    * ``"retinanet"`` (default): RetinaNet's ``-alpha_t (1 - p_t)^gamma log p_t``, the focal loss of
      the paper's reference [6] that its text describes (alpha = 0.25 on the foreground, "the
      weight of the positive sample loss is reduced", 0.75 on the background; gamma = 2 from [6]).
    * ``"eq8"``: the term Eq. 8 prints, ``-alpha_t log p_t / |p_t - 0.5|^gamma``, with
      ``|p_t - 0.5|`` clamped from below at ``eq8_clamp`` (0.1) because it is infinite at 0.5, where
      every untrained network starts (:func:`.pixelwise.anu_focal_term`). As printed its weight is
      largest for uncertain voxels, as the text wants, but for a true-class probability below
      ``0.5 - clamp`` it also rewards moving further from 0.5, i.e. towards the wrong class (the
      term has a minimum near ``p_t = 0.1`` at gamma 2); the Dice term beside it pulls the other
      way. The default stays RetinaNet's (see docs/model_zoo.md for the measured comparison).
    """

    def __init__(
        self,
        *,
        alpha: float = 0.25,
        gamma: float = 2.0,
        smooth: float = 1.0,
        focal: str = "retinanet",
        eq8_clamp: float = 0.1,
        branch_reduction: str = "sum",
        **common: Any,
    ) -> None:
        super().__init__(branch_reduction=branch_reduction, **common)
        if focal not in ANU_FOCAL_TERMS:
            raise ModelConfigError(f"loss 'anu_hybrid': focal must be one of {ANU_FOCAL_TERMS}, got {focal!r}")
        if not 0.0 < eq8_clamp < 0.5:
            raise ModelConfigError(f"loss 'anu_hybrid': eq8_clamp must be in (0, 0.5), got {eq8_clamp}")
        self.alpha, self.gamma, self.smooth, self.focal, self.eq8_clamp = alpha, gamma, smooth, focal, eq8_clamp

    def term(self, logits: Tensor, target: Tensor, roi: Tensor | None) -> Tensor:
        if self.focal == "eq8":
            focal = anu_focal_term(logits, target, alpha=self.alpha, gamma=self.gamma, clamp=self.eq8_clamp, roi=roi)
        else:
            focal = focal_loss(logits, target, alpha=self.alpha, gamma=self.gamma, roi=roi)
        return focal + soft_dice_loss(logits, target, smooth=self.smooth, squared=True, roi=roi)


class UNetSharpMixedLoss(SupervisedLoss):
    """ "unet_sharp_mixed": UNet# (paper 004) Eq. 2-6 plus the classification-guided BCE.

    Per branch ``0.5 * focal (alpha 0.25, gamma 2) + Laplace-smoothed Dice (+1) + 0.5 * Lovasz
    hinge``; the loss is the average over all eight branches (the four full-resolution heads and
    the four decoder outputs against the max-pooled ground truth, Sec. 2.2 / Fig. 2 / Fig. 4), plus
    the BCE of the classification-guided modules against per-image presence (averaged over the
    modules when each branch has its own). That average is this loss's own layout
    (``aux_weight=None``); UNet# trains with the decoder branches at 0.1 each beside the averaged
    heads (``aux_weight=0.1``, its ``default_loss_options`` in ``models/catalogue.toml``): with the
    equal average its L1 head trails UNet++'s (docs/model_zoo.md, "Five splits").

    * The focal alpha weighs every voxel as Eq. 3 prints it (``alpha_balanced=False``);
      ``alpha_balanced=True`` is RetinaNet's balance (alpha on the foreground, 1 - alpha on the
      background), what this loss did before.
    * The Dice and Lovasz ratios are taken over the whole batch (``per_image=False``, default);
      Eq. 6 takes them per image and averages (``per_image=True``). Why: training batches of
      crops hold many images without lesion (half the crops here are drawn anywhere, and ~1 % of
      the voxels are lesion), where a per-image Dice is decided by its +1 smoothing and keeps
      pushing every probability to zero, and the Lovasz hinge of an image without positives only
      sees its worst voxel. Measured on LGG (UNet#, width 8, 1500 steps, docs/model_zoo.md): Dice
      0.27 / 0.32 at L1 / L4 per image, 0.38 / 0.55 over the batch. The paper trains on whole
      images at batch 128, where most hold the organ.
    """

    def __init__(
        self,
        *,
        alpha: float = 0.25,
        gamma: float = 2.0,
        focal_weight: float = 0.5,
        lovasz_weight: float = 0.5,
        alpha_balanced: bool = False,
        per_image: bool = False,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self.alpha, self.gamma, self.focal_weight, self.lovasz_weight = alpha, gamma, focal_weight, lovasz_weight
        self.alpha_balanced, self.per_image = alpha_balanced, per_image

    def term(self, logits: Tensor, target: Tensor, roi: Tensor | None) -> Tensor:
        focal = focal_loss(logits, target, alpha=self.alpha, gamma=self.gamma, balanced=self.alpha_balanced, roi=roi)
        return (
            self.focal_weight * focal
            + laplace_dice_loss(logits, target, per_image=self.per_image, roi=roi)
            + self.lovasz_weight * lovasz_hinge_loss(logits, target, per_image=self.per_image, roi=roi)
        )


LOSSES: dict[str, type[SupervisedLoss]] = {
    "dice": SoftDiceLoss,
    "dice_ce": DiceCELoss,
    "focal_tversky": FocalTverskyLoss,
    "weighted_sampling": WeightedSamplingLoss,
    "class_weighted_ce": ClassWeightedCELoss,
    "anu_hybrid": ANUHybridLoss,
    "unet_sharp_mixed": UNetSharpMixedLoss,
}
