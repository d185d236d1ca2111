"""Loss weighted sampling of CU-Net (paper 001, Eq. 1-3).

A training image is split into four regions: S1 the black background outside the brain (the
non-brain mask), S2 the normal brain, S3 the tumour, S4 a band around the tumour contour. The
sample matrix is ``W = sum_{i<=3} Sample(S_i, p_i) + alpha * Sample(S_4, p_4)`` (Eq. 2), where
``Sample(S, p)`` keeps each voxel of ``S`` with probability ``p``, and the loss is the
cross-entropy averaged with weights ``W`` (Eq. 1).

* U-Net 1 (whole tumour; branch loss L1 and its auxiliary losses): ``p1 = 0``, ``p3 = p4 = 1``,
  contour weight ``alpha1 = 2`` and ``p2 = beta * N_S3 / N_S2`` (Eq. 3) with ``beta = 1.5``.
* U-Net 2 (substructures; L2 and its auxiliaries): ``p1 = p2 = 0``, ``p3 = p4 = 1``,
  ``alpha2 = 1``: it only learns inside the tumour and its contour.

Choices where the paper is silent or a loss cannot see what it needs:

* S1 needs the image (black background); the loss sees only labels, so the caller passes the
  brain / body mask as ``roi`` (S1 = outside it). Without ``roi`` S1 is empty and every non-tumour
  voxel is "normal brain".
* S4, "about 10 pixels wide" from "a contour detection algorithm": the voxels within
  ``contour_width // 2`` voxels (chessboard distance) of the tumour boundary on either side, i.e.
  dilation minus erosion by a cube; S3 is the tumour minus that band, S2 the rest of the brain.
* ``N_S3`` and ``N_S2`` are counted over the batch ("the proportion of positive and negative
  samples in a training batch") and ``p2`` is capped at 1. ``N_S3`` counts every tumour voxel,
  the inner half of the band included: a small tumour is all band, and would otherwise never
  let the normal brain be sampled.
* A batch without tumour (N_S3 = 0) would give W = 0 and teach nothing; the paper discards
  tumour-free scans, but slice training cannot, so such a batch samples the normal region with
  ``p2 = empty_rate`` (default 0.01) and the network still learns that normal brain is normal.
* With 2 classes there are no substructures: every output follows U-Net 1's rule.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .targets import dilate, erode


def brain_regions(tumour: Tensor, brain: Tensor | None, contour_width: int = 10) -> tuple[Tensor, Tensor, Tensor]:
    """(S2 normal brain, S3 tumour interior, S4 contour band) as bool tensors ``(B, *spatial)``."""
    radius = contour_width // 2
    band = dilate(tumour, radius) & ~erode(tumour, radius)
    if brain is not None:
        band &= brain | tumour
    interior = tumour & ~band
    normal = ~(tumour | band)
    if brain is not None:
        normal &= brain
    return normal, interior, band


def _bernoulli(region: Tensor, rate: float, generator: torch.Generator | None) -> Tensor:
    if rate >= 1.0:
        return region.float()
    if rate <= 0.0:
        return torch.zeros_like(region, dtype=torch.float32)
    draws = torch.rand(region.shape, generator=generator, device=region.device)
    return (region & (draws < rate)).float()


def sample_matrix(
    tumour: Tensor,
    brain: Tensor | None,
    *,
    substructures: bool,
    beta: float = 1.5,
    contour_weight: float = 2.0,
    contour_width: int = 10,
    empty_rate: float = 0.01,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Eq. 2's ``W`` (float, ``(B, *spatial)``) for U-Net 1 (``substructures=False``) or U-Net 2."""
    normal, interior, band = brain_regions(tumour, brain, contour_width)
    if substructures:  # U-Net 2: p2 = 0, alpha2 = 1
        return interior.float() + band.float()
    n_tumour, n_normal = int(tumour.sum()), int(normal.sum())
    rate = empty_rate if n_tumour == 0 else beta * n_tumour / max(n_normal, 1)  # Eq. 3, p3 = 1
    return interior.float() + _bernoulli(normal, rate, generator) + contour_weight * band.float()
