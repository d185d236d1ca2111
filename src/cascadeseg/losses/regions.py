"""The region of interest a paper's loss trains in, made for a training batch.

Two papers restrict their loss to the body: CU-Net never samples the black background outside the
brain (S1, p1 = 0, paper 001 Eq. 2-3: "we extract a non-brain mask firstly and prevent the network
from learning the masked areas"), and the coarse-to-fine cascade trains stage 1 inside the body
mask's candidate region C1 (paper 002). Such a loss says so with ``region = "body"``
(:class:`~.supervision.SupervisedLoss.region`).

The mask comes from the whole scan, not from the batch: a training crop that lies inside the head
holds no background, and thresholding it would call the darker half of the brain "outside". So:

1. when a case is read, :func:`case_body_mask` makes its body mask from the *raw* image (before
   intensity normalisation, where the rules of :func:`cascadeseg.preprocessing.body_mask` hold:
   -500 HU for CT, "not zero" for skull-stripped MR, Otsu otherwise), once per case;
2. the sampler crops, pads (with ``False``) and augments it exactly like the label map;
3. before the loss, :func:`training_region` turns the batch's mask into the loss's ``roi`` (or
   ``None`` for a loss that trains on every voxel).
"""

from __future__ import annotations

import numpy as np
from torch import Tensor, nn

from ..errors import ModelConfigError, VolumeError

BODY = "body"


def case_body_mask(image: np.ndarray, modality: str | None = None) -> np.ndarray:
    """Body / head mask ``(Z, Y, X)`` of a raw case image ``(C, Z, Y, X)``: the union over the
    channels of :func:`cascadeseg.preprocessing.body_mask` (a constant channel, e.g. an empty
    modality, adds nothing). A case where no channel has a body raises :class:`VolumeError`."""
    from ..preprocessing import body_mask

    if image.ndim != 4:
        raise VolumeError(f"case_body_mask: expected an image (C, Z, Y, X), got shape {image.shape}")
    masks = []
    for channel in image:
        try:
            masks.append(body_mask(channel, modality=modality))
        except VolumeError:
            continue  # a constant or empty channel: the others decide
    if not masks:
        raise VolumeError("case_body_mask: no channel of the image has a body to separate from its background")
    return np.logical_or.reduce(masks)


def loss_region(loss: nn.Module) -> str | None:
    """The region a loss trains in: ``"body"`` or ``None`` (every voxel)."""
    return getattr(loss, "region", None)


def training_region(loss: nn.Module, labels: Tensor, body: Tensor | None) -> Tensor | None:
    """The ``roi`` to pass as ``loss(output, labels, roi=...)`` for a training batch.

    ``labels``: ``(B, *spatial)``; ``body``: the batch's body mask ``(B, *spatial)`` (bool or
    0/1), cropped and augmented like ``labels``, or ``None`` when the loss needs none. Returns
    ``None`` for a loss that trains on every voxel; otherwise the body mask with every labelled
    voxel added (a lesion at the edge of a thresholded mask is still supervised).
    """
    if loss_region(loss) != BODY:
        return None
    if body is None:
        raise ModelConfigError(
            f"loss {type(loss).__name__} trains inside the body mask (its paper's region of interest) but no "
            "body mask came with the batch: make it per case with case_body_mask and crop it like the labels"
        )
    if body.shape != labels.shape:
        raise VolumeError(
            f"training region: body mask shape {tuple(body.shape)} differs from the labels {tuple(labels.shape)}"
        )
    return body.bool() | (labels > 0)


__all__ = ["BODY", "case_body_mask", "loss_region", "training_region"]
