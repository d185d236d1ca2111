"""Region-overlap losses on logits: soft Dice (plain, squared, Laplace-smoothed) and focal Tversky.

All take raw logits ``(B, C, *spatial)`` and a label map ``(B, *spatial)``, apply softmax, and
score the foreground classes (channel 1..C-1; for a binary 2-class output that is exactly the
papers' sigmoid foreground map). ``roi`` (bool ``(B, *spatial)``) restricts the sums to the voxels
the loss may look at. ``batch=True`` sums over the whole batch before the ratio (nnU-Net's
"batch Dice"): with ~1% foreground most 2D slices hold none, and a per-image ratio on an empty
slice is dominated by the smoothing constant; ``batch=False`` scores each image and averages.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .targets import as_float, one_hot


def _probabilities_and_onehot(logits: Tensor, target: Tensor, roi: Tensor | None) -> tuple[Tensor, Tensor]:
    probs = torch.softmax(as_float(logits), dim=1)
    truth = one_hot(target, logits.shape[1], probs.dtype)
    if roi is not None:
        inside = roi.unsqueeze(1).to(probs.dtype)
        probs, truth = probs * inside, truth * inside
    return probs, truth


def _sum_dims(logits: Tensor, batch: bool) -> tuple[int, ...]:
    spatial = tuple(range(2, logits.ndim))
    return (0, *spatial) if batch else spatial


def _foreground(per_class: Tensor, include_background: bool) -> Tensor:
    # per_class: (..., C); the mean over the kept classes (and images) is the loss.
    return per_class if include_background else per_class[..., 1:]


def soft_dice_loss(
    logits: Tensor,
    target: Tensor,
    *,
    smooth: float = 1e-5,
    squared: bool = False,
    batch: bool = True,
    include_background: bool = False,
    roi: Tensor | None = None,
) -> Tensor:
    """``1 - mean_c (2 sum(p g) + s) / (sum(p) + sum(g) + s)``.

    ``squared=True`` puts squares in the denominator, ``sum(p^2) + sum(g^2)`` (V-Net; ANU-Net Eq. 5
    and 8). ``smooth=1`` with ``batch=False`` is UNet#'s Laplace-smoothed Dice (Eq. 4).
    Empty target and empty prediction give a loss of 0, never NaN.
    """
    probs, truth = _probabilities_and_onehot(logits, target, roi)
    dims = _sum_dims(logits, batch)
    intersection = (probs * truth).sum(dims)
    if squared:
        denominator = (probs * probs).sum(dims) + truth.sum(dims)  # g^2 = g for a one-hot g
    else:
        denominator = probs.sum(dims) + truth.sum(dims)
    dice = (2.0 * intersection + smooth) / (denominator + smooth)
    return 1.0 - _foreground(dice, include_background).mean()


def laplace_dice_loss(logits: Tensor, target: Tensor, *, per_image: bool = True, roi: Tensor | None = None) -> Tensor:
    """UNet# Eq. 4: ``1 - (2 Y.Y^ + 1) / (Y + Y^ + 1)`` per image (Eq. 6 averages over the batch);
    ``per_image=False``: one ratio over the whole batch."""
    return soft_dice_loss(logits, target, smooth=1.0, batch=not per_image, roi=roi)


def focal_tversky_loss(
    logits: Tensor,
    target: Tensor,
    *,
    alpha: float = 0.4,
    beta: float = 0.6,
    gamma: float = 4.0 / 3.0,
    eps: float = 1e-6,
    batch: bool = True,
    roi: Tensor | None = None,
) -> Tensor:
    """Paper 000 Eq. 5: ``(1 - TI)^(1/gamma)`` with the Tversky index
    ``TI = (sum p g + eps) / (sum p g + alpha sum p (1-g) + beta sum (1-p) g + eps)``.

    Defaults are the paper's: alpha 0.4 (false positives), beta 0.6 (false negatives),
    gamma 4/3, eps 1e-6. Multi-class: the mean over foreground classes (the paper is binary).
    """
    probs, truth = _probabilities_and_onehot(logits, target, roi)
    dims = _sum_dims(logits, batch)
    true_pos = (probs * truth).sum(dims)
    false_pos = probs.sum(dims) - true_pos  # sum p (1 - g)
    false_neg = truth.sum(dims) - true_pos
    tversky = (true_pos + eps) / (true_pos + alpha * false_pos + beta * false_neg + eps)
    # x^(1/gamma) has an infinite slope at 0 (a perfect prediction): clamp keeps gradients finite.
    per_class = (1.0 - tversky).clamp_min(1e-7) ** (1.0 / gamma)
    return _foreground(per_class, include_background=False).mean()


def component_dice_loss(logits: Tensor, target: Tensor, *, smooth: float = 1e-5, roi: Tensor | None = None) -> Tensor:
    """The mean over the target's connected components of ``1 - Dice``, each component scored
    alone (Kofler et al. 2023, "blob loss"): component ``k`` of class ``c`` is compared with the
    class-``c`` probabilities over its own voxels and its image's background, the class's other
    components (and the other classes) left out, so a missed small island costs as much as a
    missed large one. Each image's components are averaged, then the images with any: a slice
    with twenty specks weighs what a slice with one lesion does.

    Components are face-connected within each image (2D slices: in-plane; 3D patches: in 3D),
    per foreground class, labelled for the whole batch in one ``ndimage.label`` call; their sums
    come from one ``scatter_add`` per class. A batch without foreground gives 0.
    """
    import numpy as np
    from scipy import ndimage

    from ..labelops import face_structure

    probs, _ = _probabilities_and_onehot(logits, target, roi)
    batch, spatial = target.shape[0], target.ndim - 1
    labels = target.detach().cpu().numpy()
    structure = face_structure(spatial + 1, unconnected_axis=0)  # within an image, not across the batch
    image_of_voxel = np.broadcast_to(np.arange(batch).reshape((batch,) + (1,) * spatial), labels.shape)
    losses: list[Tensor] = []
    for c in range(1, logits.shape[1]):
        found, count = ndimage.label(labels == c, structure=structure)
        if count == 0:
            continue
        # Indices: 1..count the components, count + 1 + b image b's background, -1 left out.
        ids = np.where(labels == 0, count + 1 + image_of_voxel, found)
        ids[(labels != 0) & (labels != c)] = -1
        owner = np.zeros(count + 1, dtype=np.int64)
        owner[found.ravel()] = image_of_voxel.ravel()
        image_of_component = torch.from_numpy(owner[1:]).to(probs.device)
        flat = torch.from_numpy(ids.reshape(-1)).to(probs.device)
        kept = flat >= 0
        index = flat[kept]
        p = probs[:, c].reshape(-1)[kept]
        sums = torch.zeros(count + 1 + batch, dtype=p.dtype, device=p.device).scatter_add(0, index, p)
        sizes = torch.bincount(index, minlength=count + 1 + batch)[1 : count + 1].to(p.dtype)
        overlap = sums[1 : count + 1]  # the sum of p over a component: its soft intersection
        background = sums[count + 1 + image_of_component]
        dice = (2.0 * overlap + smooth) / (background + overlap + sizes + smooth)
        per_image = torch.zeros(batch, dtype=p.dtype, device=p.device).index_add(0, image_of_component, 1.0 - dice)
        components = torch.bincount(image_of_component, minlength=batch).to(p.dtype)
        losses.append((per_image[components > 0] / components[components > 0]).mean())
    if not losses:
        return probs.sum() * 0.0  # no component anywhere in the batch: 0, with a graph
    return torch.stack(losses).mean()
