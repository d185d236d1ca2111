"""Voxel-wise losses on logits: cross-entropy with class and voxel weights, focal loss, and the
class-frequency-weighted cross-entropy of Roth et al. (paper 002).

Each returns a weighted mean over voxels, ``sum(w * l) / sum(w)``. A batch where every weight is
zero (an empty ``roi``, or a sampling matrix that picked nothing) gives 0 with a zero gradient,
never NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .targets import as_float


def weighted_mean(values: Tensor, weights: Tensor | None) -> Tensor:
    """``sum(w v) / sum(w)``; 0 (keeping the graph) when all weights are 0."""
    if weights is None:
        return values.mean()
    # When sum(w) == 0 every term of the numerator is 0 too, so the clamp only avoids 0/0.
    return (values * weights).sum() / weights.sum().clamp_min(1e-12)


def _roi_weights(roi: Tensor | None, voxel_weight: Tensor | None) -> Tensor | None:
    if roi is None:
        return voxel_weight
    roi = roi.float()
    return roi if voxel_weight is None else roi * voxel_weight


def cross_entropy_loss(
    logits: Tensor,
    target: Tensor,
    *,
    class_weight: Tensor | None = None,
    voxel_weight: Tensor | None = None,
    roi: Tensor | None = None,
) -> Tensor:
    """Softmax cross-entropy, mean over voxels weighted by ``class_weight[target] * voxel_weight``
    (restricted to ``roi``). With ``class_weight`` only it equals ``F.cross_entropy(weight=...)``."""
    per_voxel = F.cross_entropy(as_float(logits), target, reduction="none")
    weights = _roi_weights(roi, voxel_weight)
    if class_weight is not None:
        by_class = class_weight.to(per_voxel)[target]
        weights = by_class if weights is None else weights * by_class
    return weighted_mean(per_voxel, weights)


def focal_loss(
    logits: Tensor,
    target: Tensor,
    *,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    balanced: bool = True,
    roi: Tensor | None = None,
) -> Tensor:
    """Focal loss (Lin et al. 2017): ``-alpha_t (1 - p_t)^gamma log p_t``, mean over voxels.

    ``p_t`` is the softmax probability of the true class (for a 2-class output: the sigmoid of the
    logit difference, i.e. the papers' binary form). ``balanced=True``: ``alpha_t = alpha`` on
    foreground voxels and ``1 - alpha`` on background, as in RetinaNet; ``balanced=False``: one
    weight ``alpha`` on every voxel, as UNet#'s Eq. 3 prints it. ``alpha=None`` weighs every voxel 1.
    """
    log_p_true = _log_p_true(logits, target)
    per_voxel = -((1.0 - log_p_true.exp()) ** gamma) * log_p_true
    return weighted_mean(per_voxel * _alpha_weights(target, alpha, balanced), _roi_weights(roi, None))


def anu_focal_term(
    logits: Tensor,
    target: Tensor,
    *,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    clamp: float = 0.1,
    roi: Tensor | None = None,
) -> Tensor:
    """ANU-Net's Eq. 8 focal term as printed: ``-alpha_t log p_t / |p_t - 0.5|^gamma``, mean over voxels.

    Eq. 8 writes ``alpha * Ybar * log(Y_i) / |Y_i - 0.5|^gamma`` inside ``1 - [...]``; with Eq. 6's
    convention (``Ybar log Y`` summed over the classes of a one-hot ``Ybar``) that is ``log p_t``
    of the true class, and ``|Y_i - 0.5| = |p_t - 0.5|`` for a binary output. The weight is 4 (at
    gamma 2) for confident voxels and infinite at ``p_t = 0.5`` - where every untrained network
    starts - so ``|p_t - 0.5|`` is clamped from below at ``clamp`` (0.1: the weight is at most
    ``0.1^-gamma`` = 100, 25 times the confident voxels' 4). ``alpha_t`` as in the paper's text:
    ``alpha`` on the foreground ("the weight of the positive sample loss is reduced"), ``1 - alpha``
    on the background. A mean over voxels, not Eq. 8's sum: a sum would grow with the image and
    drown the Dice term beside it.
    """
    log_p_true = _log_p_true(logits, target)
    distance = (log_p_true.exp() - 0.5).abs().clamp_min(clamp)
    per_voxel = -log_p_true / distance**gamma
    return weighted_mean(per_voxel * _alpha_weights(target, alpha, True), _roi_weights(roi, None))


def _log_p_true(logits: Tensor, target: Tensor) -> Tensor:
    """``log p_t``: the log-softmax of the true class per voxel, ``(B, *spatial)``."""
    return torch.log_softmax(as_float(logits), dim=1).gather(1, target.unsqueeze(1))[:, 0]


def _alpha_weights(target: Tensor, alpha: float | None, balanced: bool) -> Tensor | float:
    if alpha is None:
        return 1.0
    return torch.where(target > 0, alpha, 1.0 - alpha) if balanced else alpha


def class_frequency_weights(target: Tensor, num_classes: int, roi: Tensor | None = None) -> Tensor:
    """Roth et al.'s ``lambda_i = (1 - N_i / N_C) / (K - 1)``: a class's weight falls with its share
    of the candidate region ``C`` (``roi``; the whole batch when ``None``), and the K weights sum
    to 1 (the review: "summing all lambda_i equals to 1"; ``1 - N_i/N_C`` summed over the classes
    is ``K - 1``, hence the division)."""
    labels = target if roi is None else target[roi]
    counts = torch.bincount(labels.reshape(-1), minlength=num_classes).double()
    total = counts.sum().clamp_min(1.0)
    return (1.0 - counts / total) / (num_classes - 1)


def class_frequency_weighted_ce(logits: Tensor, target: Tensor, *, roi: Tensor | None = None) -> Tensor:
    """Paper 002: ``L = -(1/N_C) sum_i lambda_i sum_{x in C, y(x)=i} log p_i(x)``, the voxel-wise
    cross-entropy over the candidate region ``C`` with the frequency weights above, normalised by
    ``N_C`` (not by ``sum lambda``, so the weights really scale each class's share)."""
    per_voxel = F.cross_entropy(as_float(logits), target, reduction="none")
    weights = class_frequency_weights(target, logits.shape[1], roi).to(per_voxel.dtype)
    per_voxel = per_voxel * weights[target]
    if roi is None:
        return per_voxel.mean()
    inside = roi.float()
    return (per_voxel * inside).sum() / inside.sum().clamp_min(1.0)
