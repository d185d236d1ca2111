"""The memory a prediction needs, known before it starts: :func:`check_prediction_fits`.

A prediction holds, on the host: the preprocessed float32 scan (and its resampled copy when the
card's ``target_spacing`` differs from the scan's), the outputs asked for (labels, probabilities,
per-depth and per-stage labels, attention maps) on the scan's grid, and per batch the network's
input, logits and (on the CPU) activations; in 3D, MONAI's sliding window also keeps a float32
accumulator per output map over the padded working grid. :func:`prediction_footprint` adds these
up as a lower bound (activations count two full-resolution feature maps of the first level only),
so a refusal is certain to be right: a card asking for a 10^-3 mm grid or a 10^5-voxel patch is
refused in milliseconds, naming the checkpoint and the scan, instead of dying in SimpleITK or the
OOM killer after minutes. Measured against the real peak (growth of the process's peak resident
memory over one prediction): 79 MiB estimated for 187 MiB used by a 58-slice LGG scan in 2D with
probabilities and every depth (shipped ANU-Net), 102 MiB for 370 MiB by a 3D U-Net on a 112 x 101
x 122 CT with probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..io.volume import Volume
from ..memory import available_memory, check_fits, describe_shape, format_bytes

__all__ = ["Footprint", "prediction_footprint", "check_prediction_fits"]

_F32 = 4


@dataclass
class Footprint:
    """Bytes per part of a prediction (``parts``), the working grid and the batch it assumed."""

    parts: dict[str, int] = field(default_factory=dict)
    working_shape: tuple[int, ...] = ()
    batch: int = 1

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        shown = sorted(((v, k) for k, v in self.parts.items() if v), reverse=True)
        return ", ".join(f"{name} {format_bytes(size)}" for size, name in shown)


def _first_width(model: Any) -> int:
    """Channels of the network's first convolution (its widest full-resolution feature map)."""
    import torch

    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d)):
            return int(module.out_channels)
    return 1


def _working_shape(predictor: Any, volume: Volume, mode: str, axis: int) -> tuple[int, ...]:
    """The grid the network runs on (the predictor's resampling rule, without resampling)."""
    spatial = [int(s) for s in volume.spatial_shape]
    card = predictor.card
    if not card.target_spacing:
        return tuple(spatial)
    target = [float(t) for t in card.target_spacing]
    if mode == "2d":
        target[axis] = float(volume.spacing[axis])
    return tuple(max(1, int(round(n * float(s) / t))) for n, s, t in zip(spatial, volume.spacing, target))


def prediction_footprint(
    predictor: Any,
    volume: Volume,
    mode: str,
    axis: int,
    want: Any,
    patch_size: Sequence[int] | None = None,
    overlap: float = 0.5,
) -> Footprint:
    """A lower bound of the host memory ``predictor.predict(volume, ...)`` needs (see the module
    docstring); nothing is allocated."""
    from .predictor import default_2d_batch

    card, model = predictor.card, predictor.model
    channels, classes = int(volume.array.shape[0]), card.num_classes
    native = math.prod(int(s) for s in volume.spatial_shape)
    working_shape = _working_shape(predictor, volume, mode, axis)
    working = math.prod(working_shape)
    label_bytes = int(np.dtype(predictor.label_dtype).itemsize)
    on_cpu = predictor.device.type == "cpu"
    width = _first_width(model)
    heads = len(getattr(model.info, "pruning_depths", ()) or ()) if want.depths else 0
    stages = len(getattr(model.info, "stages", ()) or ()) if want.stages else 0
    gates = (
        4 if want.attention and getattr(model.info, "attention", False) else 0
    )  # at least one per level below the top
    parts = {
        "preprocessed scan": channels * native * _F32,
        "resampled scan": channels * working * _F32 if working_shape != tuple(volume.spatial_shape) else 0,
        "label map": native * label_bytes,
        "probabilities": classes * native * _F32 if want.probabilities else 0,
        "per-depth labels": heads * native * label_bytes,
        "per-stage labels": stages * native,
        "attention maps": gates * native * _F32,
    }
    if mode == "2d":
        plane = [s for a, s in enumerate(working_shape) if a != axis]
        native_plane = [s for a, s in enumerate(volume.spatial_shape) if a != axis]
        divisor = [int(d) for d in model.size_divisor]
        padded = math.prod(-(-s // d) * d for s, d in zip(plane, divisor))
        batch = predictor.batch_size or default_2d_batch(predictor.device, plane[0], plane[1])
        batch = min(batch, int(working_shape[axis]))
        parts["network batch"] = batch * (
            padded * (channels + classes) * _F32
            + math.prod(native_plane) * classes * _F32
            + (2 * width * padded * _F32 if on_cpu else 0)
        )
    else:
        patch = predictor._patch_size(patch_size)
        padded = math.prod(max(s, p) for s, p in zip(working_shape, patch))
        batch = predictor.batch_size or (2 if not on_cpu else 1)
        maps = 1 + (heads + stages + gates) if (want.depths or want.stages or want.attention) else 1
        parts["sliding-window accumulators"] = padded * (channels + classes * maps + 1) * _F32
        parts["native-grid logits"] = native * classes * _F32 * (2 if want.probabilities else 1)
        parts["network batch"] = (
            batch * math.prod(patch) * ((channels + classes) * _F32 + (2 * width * _F32 if on_cpu else 0))
        )
    return Footprint(parts=parts, working_shape=working_shape, batch=batch)


def check_prediction_fits(
    predictor: Any,
    volume: Volume,
    mode: str,
    axis: int,
    want: Any,
    patch_size: Sequence[int] | None = None,
    overlap: float = 0.5,
) -> Footprint:
    """Raise :class:`~cascadeseg.errors.InsufficientMemoryError` when the prediction cannot fit,
    naming the scan, the checkpoint, the sizes involved and what would fit."""
    footprint = prediction_footprint(predictor, volume, mode, axis, want, patch_size, overlap)
    if footprint.total <= available_memory():
        return footprint
    card = predictor.card
    scan = str(volume.source) if volume.source is not None else "the scan"
    grid = f"{describe_shape(volume.spatial_shape)} voxels"
    if footprint.working_shape != tuple(volume.spatial_shape):
        grid += (
            f", resampled to {describe_shape(footprint.working_shape)} at the checkpoint's target spacing "
            f"{tuple(card.target_spacing or ())} mm"
        )
    if mode == "3d":
        grid += f", {describe_shape(predictor._patch_size(patch_size))} windows"
    lighter = _lighter(predictor, volume, mode, axis, want, patch_size, overlap)
    remedy = (
        f"with {lighter[0]} it would need {format_bytes(lighter[1])}, which fits"
        if lighter
        else "a smaller scan (crop it), a checkpoint with a coarser target spacing, or a machine with more memory"
    )
    check_fits(
        footprint.total,
        f"{scan}: segmenting it in {mode.upper()} with '{card.name or card.architecture}' ({grid}; "
        f"{footprint.describe()})",
        remedy=f"expected a prediction that fits: {remedy}",
    )
    return footprint


def _lighter(
    predictor: Any, volume: Volume, mode: str, axis: int, want: Any, patch_size: Sequence[int] | None, overlap: float
) -> tuple[str, int] | None:
    """The cheapest variant the user can choose (only the label map, batch size 1), when it fits."""
    from dataclasses import replace

    from .predictor import PredictionRequest

    changes = []
    if any((want.probabilities, want.depths, want.stages, want.attention)):
        changes.append("only the label map asked for")
    saved = predictor.batch_size
    if saved != 1:
        changes.append("batch size 1")
    if not changes:
        return None
    predictor.batch_size = 1
    try:
        plain = (
            replace(want, probabilities=False, depths=False, stages=False, attention=False)
            if isinstance(want, PredictionRequest)
            else want
        )
        need = prediction_footprint(predictor, volume, mode, axis, plain, patch_size, overlap).total
    finally:
        predictor.batch_size = saved
    return (" and ".join(changes), need) if need <= available_memory() else None
