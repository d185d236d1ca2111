"""Lovász hinge (Berman, Rannen Triki & Blaschko 2018; Yu & Blaschko 2018), UNet#'s third term.

UNet# Eq. 5 prints only the hinge ``(1 - Y.Y^)_+``; the paper names and cites the Lovász hinge,
which is that hinge fed through the Lovász extension of the Jaccard loss: the hinge errors of an
image are sorted in decreasing order and weighted by the discrete gradient of the Jaccard loss
along that order. This is what is implemented (the printed plain hinge would not be "Lovász").

Per image, as UNet# Eq. 6 averages over the batch. Signed scores: for class ``c`` the logit of
"class c vs the rest", ``z_c - logsumexp_{k != c} z_k`` (for a 2-class output simply ``z_1 - z_0``,
the binary logit), labels ``+1`` on class ``c`` and ``-1`` elsewhere; multi-class outputs average
the foreground classes. All images and classes are sorted in one batched ``torch.sort``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .targets import as_float


def _jaccard_gradient(sorted_truth: Tensor) -> Tensor:
    """Discrete gradient of the Jaccard loss along the error order, rows independent."""
    positives = sorted_truth.sum(dim=1, keepdim=True)
    intersection = positives - sorted_truth.cumsum(dim=1)
    union = positives + (1.0 - sorted_truth).cumsum(dim=1)
    jaccard = 1.0 - intersection / union  # union >= 1 from the first element on: no 0/0
    return torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)


def lovasz_hinge_loss(logits: Tensor, target: Tensor, *, per_image: bool = True, roi: Tensor | None = None) -> Tensor:
    """Mean over images and foreground classes of the Lovász hinge (see module docstring);
    ``per_image=False``: one Jaccard over the whole batch (the batch treated as one image).

    Voxels outside ``roi`` are excluded exactly: they get a label of 0 and an error below every
    real one, so they sort last and their (zero) hinge contributes nothing.
    """
    if not per_image:  # the batch as one image: move it into the spatial axes
        logits = logits.movedim(0, 1).reshape(1, logits.shape[1], -1)
        target = target.reshape(1, -1)
        roi = None if roi is None else roi.reshape(1, -1)
    logits = as_float(logits)
    batch, num_classes = logits.shape[:2]
    flat = logits.flatten(2)  # (B, C, V)
    labels = target.flatten(1)
    scores = []
    truths = []
    for c in range(1, num_classes):
        others = torch.cat([flat[:, :c], flat[:, c + 1 :]], dim=1)
        scores.append(flat[:, c] - torch.logsumexp(others, dim=1))
        truths.append((labels == c).to(logits.dtype))
    score = torch.stack(scores, dim=1).flatten(0, 1)  # (B * (C-1), V)
    truth = torch.stack(truths, dim=1).flatten(0, 1)
    errors = 1.0 - score * (2.0 * truth - 1.0)
    if roi is not None:
        outside = ~roi.flatten(1).repeat_interleave(num_classes - 1, dim=0)
        truth = truth.masked_fill(outside, 0.0)
        errors = errors.masked_fill(outside, -1.0)  # hinge of -1 is 0 and sorts after any error >= 0
    errors_sorted, order = torch.sort(errors, dim=1, descending=True)
    truth_sorted = truth.gather(1, order)
    per_row = (torch.relu(errors_sorted) * _jaccard_gradient(truth_sorted)).sum(dim=1)
    return per_row.mean()
