"""Patient-level validation during training: per-case 3D Dice at every pruning depth.

Slice-averaged Dice flatters a model (empty slices score 1); the papers and nnU-Net report Dice
per case over the whole volume, which is what is computed here. The prediction is made at the
training resolution and its logits are resampled to the original grid before the argmax, exactly
as the predictor does at inference, and compared with the original labels.

One forward pass with all deep-supervision heads requested gives every depth at once, so
validating four depths costs one full-depth pass (plus the argmaxes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.output import OutputRequest
from .datasets import TrainingCase

# Recommended depth: the shallowest whose Dice is within this of the best depth's (1 Dice point).
RECOMMENDATION_TOLERANCE = 0.01


@dataclass
class ValidationResult:
    dice_per_depth: dict[int, float]
    dice_per_case: dict[str, dict[int, float]]
    recommended_depth: int

    @property
    def best_dice(self) -> float:
        return max(self.dice_per_depth.values())


def recommended_depth(dice_per_depth: dict[int, float], tolerance: float = RECOMMENDATION_TOLERANCE) -> int:
    """The shallowest depth whose Dice is within ``tolerance`` of the best depth's."""
    best = max(dice_per_depth.values())
    return min(d for d, v in dice_per_depth.items() if v >= best - tolerance)


def case_dice(confusion: Tensor) -> float:
    """Mean Dice over foreground classes from a (K, K) confusion matrix (rows: truth, cols:
    prediction). A class absent from both truth and prediction scores 1 (nothing to find, nothing
    found), the usual convention for empty masks."""
    tp = confusion.diagonal()[1:].double()
    truth = confusion.sum(1)[1:].double()
    pred = confusion.sum(0)[1:].double()
    denom = truth + pred
    dice = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.ones_like(denom))
    return float(dice.mean())


def class_argmax(logits: Tensor) -> Tensor:
    """``logits.argmax(1)`` as K elementwise passes: the same result (first maximum wins), but
    several times faster on the CPU, where a reduction over the strided channel axis is slow."""
    best = logits[:, 0]
    pred = torch.zeros(best.shape, dtype=torch.long, device=logits.device)
    for k in range(1, logits.shape[1]):
        better = logits[:, k] > best
        pred = torch.where(better, k, pred)
        best = torch.maximum(best, logits[:, k])
    return pred


def _confusion(pred: Tensor, truth: Tensor, k: int) -> Tensor:
    return torch.bincount((truth.reshape(-1).long() * k + pred.reshape(-1).long()), minlength=k * k).reshape(k, k)


def _depth_logits(model: nn.Module, x: Tensor, depths: list[int]) -> list[Tensor]:
    """Logits for each depth from one forward pass (heads when the model has pruning)."""
    if depths == [None]:
        return [model(x).logits]
    out = model(x, request=OutputRequest(heads=True))
    return [out.heads[d] if d in out.heads else out.logits for d in depths]


@torch.no_grad()
def validate(
    model: nn.Module,
    cases: list[TrainingCase],
    *,
    dims: int,
    axis: int,
    num_classes: int,
    depths: list[int | None],
    divisor: tuple[int, ...],
    patch_size: tuple[int, ...],
    device: torch.device,
    batch_size: int = 16,
    autocast_dtype: torch.dtype | None = None,
) -> ValidationResult:
    """Per-case Dice at each depth (``[None]``: a model without pruning, reported as depth 1)."""
    was_training = model.training
    model.eval()
    keys = [1 if d is None else int(d) for d in depths]
    per_case: dict[str, dict[int, float]] = {}
    try:
        for case in cases:
            if dims == 2:
                confusions = _validate_case_2d(model, case, axis, num_classes, depths, divisor, device, batch_size, autocast_dtype)
            else:
                confusions = _validate_case_3d(model, case, num_classes, depths, patch_size, device, batch_size, autocast_dtype)
            per_case[case.case_id] = {k: case_dice(c) for k, c in zip(keys, confusions)}
    finally:
        model.train(was_training)
    mean = {k: float(np.mean([per_case[c][k] for c in per_case])) for k in keys}
    return ValidationResult(dice_per_depth=mean, dice_per_case=per_case, recommended_depth=recommended_depth(mean))


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=dtype)


def _validate_case_2d(model, case, axis, k, depths, divisor, device, batch_size, amp):
    image = torch.from_numpy(np.ascontiguousarray(np.moveaxis(case.image, axis + 1, 0)))  # (S, C, A, B)
    truth = torch.from_numpy(np.ascontiguousarray(np.moveaxis(case.labels_full, axis, 0)))  # (S, A0, B0)
    size = image.shape[2:]
    full = tuple(truth.shape[1:])
    pad = [(-s) % d for s, d in zip(size, divisor)]
    fill = float(image.min())
    confusions = [torch.zeros((k, k), dtype=torch.long) for _ in depths]
    for start in range(0, image.shape[0], batch_size):
        x = image[start : start + batch_size].to(device)
        if any(pad):
            x = F.pad(x, (0, pad[1], 0, pad[0]), value=fill)
        with _autocast(device, amp):
            outputs = _depth_logits(model, x, depths)
        gt = truth[start : start + batch_size].to(device)
        for i, logits in enumerate(outputs):
            logits = logits[..., : size[0], : size[1]].float()
            if tuple(size) != full:
                logits = F.interpolate(logits, size=full, mode="bilinear", align_corners=False)
            confusions[i] += _confusion(class_argmax(logits), gt, k).cpu()
    return confusions


def _validate_case_3d(model, case, k, depths, patch_size, device, batch_size, amp):
    from monai.inferers import sliding_window_inference

    image = torch.from_numpy(case.image)[None].to(device)  # (1, C, Z, Y, X)
    truth = torch.from_numpy(case.labels_full).to(device)

    def predictor(x: Tensor) -> tuple[Tensor, ...]:
        with _autocast(device, amp):
            return tuple(t.float() for t in _depth_logits(model, x, depths))

    outputs = sliding_window_inference(
        image, roi_size=patch_size, sw_batch_size=max(1, batch_size // 4), predictor=predictor,
        overlap=0.25, mode="gaussian",
    )
    if isinstance(outputs, Tensor):
        outputs = (outputs,)
    confusions = []
    for logits in outputs:
        if tuple(logits.shape[2:]) != tuple(truth.shape):
            logits = F.interpolate(logits, size=tuple(truth.shape), mode="trilinear", align_corners=False)
        confusions.append(_confusion(class_argmax(logits)[0], truth, k).cpu())
    return confusions
