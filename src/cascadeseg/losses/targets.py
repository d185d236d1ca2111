"""Turning a label map into what each loss term compares with.

Shared by every loss: validation of the target, one-hot encoding, the whole-tumour (foreground
union) target of 2-channel cascade outputs, down-scaling for low-resolution auxiliary outputs,
per-image class presence for the classification-guided module, and binary morphology by
separable max pooling (used by paper 001's contour band and paper 002's candidate region).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ModelConfigError, VolumeError


def check_target(target: Tensor, logits: Tensor) -> Tensor:
    """``target`` as a ``(B, *spatial)`` long tensor matching ``logits`` ``(B, C, *spatial)``.

    A ``(B, 1, *spatial)`` target is accepted (the channel is dropped). Labels outside
    ``[0, C)`` fail here with the values named, instead of a device-side assert inside CUDA.
    """
    if target.ndim == logits.ndim and target.shape[1] == 1:
        target = target[:, 0]
    if target.shape[0] != logits.shape[0] or target.shape[1:] != logits.shape[2:]:
        raise VolumeError(
            f"loss target: shape {tuple(target.shape)} does not match the logits {tuple(logits.shape)} "
            f"(expected (B, *spatial) = {(logits.shape[0], *logits.shape[2:])})"
        )
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        target = target.long()
    low, high = (int(v) for v in torch.aminmax(target))  # one pass, one device sync
    if low < 0 or high >= logits.shape[1]:
        raise VolumeError(
            f"loss target: label values must be in [0, {logits.shape[1] - 1}] for a {logits.shape[1]}-class "
            f"output, found values in [{low}, {high}]"
        )
    return target.long()


def as_float(logits: Tensor) -> Tensor:
    """Logits in at least float32: losses are summed over millions of voxels, which half precision
    (autocast) cannot do accurately; float64 stays float64 (gradient checks)."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def one_hot(target: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(B, *spatial)`` labels -> ``(B, C, *spatial)`` one-hot, built directly in ``dtype``
    (``F.one_hot`` would first build a channel-last int64 tensor 8x the size)."""
    shape = (target.shape[0], num_classes, *target.shape[1:])
    return torch.zeros(shape, dtype=dtype, device=target.device).scatter_(1, target.unsqueeze(1), 1.0)


def target_for_channels(target: Tensor, channels: int, num_classes: int, name: str) -> Tensor:
    """The target an output with ``channels`` classes is supervised against.

    ``channels == num_classes``: the full label map. ``channels == 2`` while ``num_classes > 2``:
    the foreground union (whole tumour / any organ), what a cascade's first stage segments.
    """
    if channels == num_classes:
        return target
    if channels == 2:
        return (target > 0).long()
    raise ModelConfigError(
        f"loss: output '{name}' has {channels} channels; expected {num_classes} (all classes) or 2 (foreground union)"
    )


def downscale_labels(labels: Tensor, size: Sequence[int], mode: str = "max") -> Tensor:
    """Label map ``(B, *spatial)`` down-scaled to ``size`` for a low-resolution auxiliary output.

    ``mode="max"`` (default) max-pools the label values: a coarse voxel takes the largest label in
    its window. For a binary mask this is the max-pooling of the ground truth UNet# prescribes
    (paper 004, Fig. 2); for multi-class maps foreground always wins over background, so small
    structures survive down-scaling instead of vanishing as with nearest sampling, and with the
    BraTS-style nesting (enhancing inside core inside whole tumour) the innermost, rarest label wins.
    ``mode="nearest"`` takes one voxel per window (nnU-Net's choice) and is offered for comparison.
    """
    size = tuple(int(s) for s in size)
    if tuple(labels.shape[1:]) == size:
        return labels
    dims = labels.ndim - 1
    values = labels.unsqueeze(1).float()
    if mode == "nearest":
        out = F.interpolate(values, size=size, mode="nearest")
    elif mode == "max":
        pool = F.adaptive_max_pool2d if dims == 2 else F.adaptive_max_pool3d
        out = pool(values, size)
    else:
        raise ModelConfigError(f"loss option aux_downscale: '{mode}' is unknown (expected 'max' or 'nearest')")
    return out[:, 0].long()


def downscale_mask(mask: Tensor, size: Sequence[int]) -> Tensor:
    """A boolean region (``roi``) at a coarser size: a coarse voxel is in if any fine voxel is."""
    return downscale_labels(mask.long(), size, "max").bool()


def class_presence(target: Tensor, num_classes: int) -> Tensor:
    """``(B, num_classes - 1)`` float: 1 where foreground class ``c`` occurs in image ``b``."""
    flat = target.flatten(1)
    return torch.stack([(flat == c).any(dim=1) for c in range(1, num_classes)], dim=1).float()


def dilate(mask: Tensor, radius: int) -> Tensor:
    """Binary dilation of a ``(B, *spatial)`` mask by a cube of side ``2 * radius + 1``, as one 1-D
    max pooling per axis (separable: 3 x 11 comparisons per voxel instead of 11^3 for radius 5)."""
    if radius <= 0:
        return mask
    out = mask.unsqueeze(1).float()
    dims = mask.ndim - 1
    pool = F.max_pool2d if dims == 2 else F.max_pool3d
    for axis in range(dims):
        kernel = [1] * dims
        kernel[axis] = 2 * radius + 1
        padding = [0] * dims
        padding[axis] = radius
        out = pool(out, kernel_size=kernel, stride=1, padding=padding)
    return out[:, 0] > 0


def erode(mask: Tensor, radius: int) -> Tensor:
    """Binary erosion by the same cube (the dilation of the complement, complemented)."""
    return ~dilate(~mask, radius)
