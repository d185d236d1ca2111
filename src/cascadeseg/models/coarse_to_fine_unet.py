"""Coarse-to-fine cascaded 3D U-Net (Roth et al. 2017/2018, reviewed in paper 002).

Stage 1 is a U-Net on the whole input at a coarser grid (the input average-pooled by
``coarse_factor`` along the axes the first pooling level pools): it delineates the organs
roughly. The coarser grid is this project's choice, not paper 002's: the review says only that
stage 1 "roughly delineates" the organs inside the body mask. ``coarse_factor=1`` runs stage 1 at
full resolution, as the review reads; the default 2 makes stage 1 4x (2D) / 8x (3D) cheaper. Stage 2 is a U-Net at full resolution that runs **only inside the candidate region**
stage 1 found: the bounding box of stage 1's foreground (any non-background class) dilated by
``margin_mm``. Its logits are pasted back into the full-size map; outside the box the logits
are stage 1's (up-sampled). So stage 2 costs the box's share of the volume, which the model
records after each forward in :attr:`last_crop_fraction` (and the box in :attr:`last_crop`)
for inference to report the saving. Setting :attr:`restrict_stage2` to ``False`` runs stage 2 on
the whole input instead (the ablation that measures the saving; the logits inside the box are the
same either way up to stage 2's padding context).

Choices where the review is silent:

* Multi-class by default (paper: 7 organs + background, K = 8); the candidate region is the union
  of all foreground classes.
* The bounding box of a mask dilated by ``r`` is the mask's bounding box grown by ``r``, so no
  morphological dilation is run; ``r`` is ``margin_mm`` converted to voxels per axis with the
  spacing (isotropic 1 mm when no spacing is given).
* The box is grown (symmetrically) to a multiple of stage 2's size divisor (shifted inward at the
  volume's edge), and one box, the union over the batch, serves the whole batch so batch norm keeps
  seeing a batch.
* Stage 2 sees the image crop only, as in the paper (its candidate region is its input domain).
* Stage 1 finds nothing: in eval mode stage 2 is skipped (nothing to refine, crop fraction 0);
  in training mode stage 2 runs on the whole volume, so early training, when stage 1 is still
  empty, still trains stage 2.
* 2D is offered as the same construction on slices.
* On PyTorch's ``meta`` device (shape-only runs, e.g. the FLOP table) there are no values to find
  a box in, so stage 2 counts over the whole volume: the worst case.
* The box is data-dependent, so ``torch.compile`` graph-breaks around it, and an export (ONNX,
  ``torch.export``) would freeze one box: exporting raises :class:`ModelConfigError` saying so.

One stage-2 region for model and loss: the box is decided here, once per forward, and the
loss reads it from the output instead of recomputing it with its own rule. By construction the
``stage2`` logits are stage 1's outside the box and stage 2's own inside it, so the region stage 2
ran on is where the two differ (:func:`stage2_region`); the loss supervises stage 2 there only.
Training stage 1 inside the body mask C1 (the review's candidate region of stage 1) is the loss's
``roi`` (:func:`cascadeseg.losses.training_region`); at inference ``info.body_mask_at_inference``
asks the predictor to keep the labels inside the body mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ModelConfigError
from .base import SegmentationModel, model_info
from .blocks.encoder_decoder import double_conv_factory, pooling_plan
from .blocks.sampling import cumulative_divisor, resize_to
from .output import OutputRequest, SegmentationOutput
from .registry import register
from .unet import UNetBody

Box = tuple[slice, ...]


def _axis_profile(mask: Tensor, axis: int) -> Tensor:
    """``mask.any`` over every axis but ``axis``: trailing axes first, then leading ones, so both
    reductions run over contiguous memory (a tuple-of-dims ``any`` is several times slower)."""
    profile = mask.flatten(axis + 1).any(dim=-1) if axis < mask.ndim - 1 else mask
    return profile.flatten(0, axis - 1).any(dim=0) if axis > 0 else profile


def foreground_mask(logits: Tensor) -> Tensor:
    """Voxels whose best class is not the background: ``argmax != 0`` without the channel-strided
    argmax (ties go to the background, as with argmax)."""
    return logits[:, 1:].amax(dim=1) > logits[:, 0]


def candidate_box(foreground: Tensor, margin: Sequence[int], multiple: Sequence[int]) -> Box | None:
    """Bounding box (spatial slices) of ``foreground`` (bool, ``(B, *spatial)``, union over the
    batch) grown by ``margin`` voxels per axis, then to a multiple of ``multiple`` inside the
    volume. ``None`` when there is no foreground."""
    union = foreground.any(dim=0)
    if not bool(union.any()):
        return None
    box: list[slice] = []
    for axis, size in enumerate(union.shape):
        hits = torch.nonzero(_axis_profile(union, axis)).flatten()
        lo = max(int(hits[0]) - margin[axis], 0)
        hi = min(int(hits[-1]) + 1 + margin[axis], size)
        length = min(math.ceil((hi - lo) / multiple[axis]) * multiple[axis], size)
        lo -= (length - (hi - lo)) // 2  # grow symmetrically, then shift inside the volume
        lo = max(min(lo, size - length), 0)
        box.append(slice(lo, lo + length))
    return tuple(box)


def stage2_region(stage1: Tensor, stage2: Tensor) -> Tensor:
    """Voxels where stage 2 ran, ``(B, *spatial)`` bool: where the ``stage2`` logits are not stage
    1's (outside its box the model copies stage 1's logits, see the module docstring). A voxel of
    the box whose logits equal stage 1's in every channel would need two different networks to
    agree to the last bit; it would only leave that voxel out of stage 2's loss."""
    return (stage1.detach() != stage2.detach()).any(dim=1)


@register
class CoarseToFineUNet(SegmentationModel):
    """Two-stage coarse-to-fine U-Net; stage 2 works only in stage 1's candidate box (paper 002)."""

    info = model_info("coarse_to_fine_unet")

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        dims: int,
        coarse_factor: int = 2,
        margin_mm: float = 10.0,
        **common: Any,
    ) -> None:
        super().__init__(in_channels, num_classes, dims, **common)
        if coarse_factor < 1 or coarse_factor & (coarse_factor - 1):
            raise ModelConfigError(
                f"model '{self.info.name}': coarse_factor must be a power of two >= 1, got {coarse_factor}"
            )
        if margin_mm < 0:
            raise ModelConfigError(f"model '{self.info.name}': margin_mm must be >= 0, got {margin_mm}")
        spacing = self.spacing if self.spacing is not None and len(self.spacing) == dims else None
        voxel = list(spacing) if spacing is not None else [1.0] * dims
        # Coarsen the axes the first pooling level pools (in-plane only for thick-slice scans).
        self.coarse = tuple(coarse_factor if f > 1 else 1 for f in self.plan[0])
        coarse_spacing = [s * c for s, c in zip(voxel, self.coarse)] if spacing is not None else None
        self.coarse_plan = pooling_plan(self.info.name, dims, self.levels, coarse_spacing)
        self.margin = tuple(math.ceil(margin_mm / s) for s in voxel)
        block = double_conv_factory(dims, self.norm)
        self.stage1 = UNetBody(self.level_layout(block, self.coarse_plan), in_channels, num_classes)
        self.stage2 = UNetBody(self.level_layout(block), in_channels, num_classes)
        self.last_crop: Box | None = None
        self.last_crop_fraction: float = 0.0
        # Not a constructor option: a run-time switch for measuring the crop's saving, never saved.
        self.restrict_stage2 = True

    @property
    def fine_divisor(self) -> tuple[int, ...]:
        return cumulative_divisor(self.plan, self.dims)

    @property
    def size_divisor(self) -> tuple[int, ...]:
        coarse = cumulative_divisor(self.coarse_plan, self.dims)
        # Powers of two: the least common multiple is the larger one.
        return tuple(max(c * f, d) for c, f, d in zip(coarse, self.coarse, self.fine_divisor))

    def stage2_box(self, stage1: Tensor) -> Box | None:
        """The candidate region C2 stage 2 runs on, from stage 1's logits at the input size (the
        rule of the module docstring); ``None`` when stage 1 found nothing."""
        whole_volume = tuple(slice(0, s) for s in stage1.shape[2:])
        if stage1.is_meta or not self.restrict_stage2:
            # Shape-only run (FLOP counting): the worst case; or the ablation: stage 2 everywhere.
            return whole_volume
        with torch.no_grad():
            box = candidate_box(foreground_mask(stage1), self.margin, self.fine_divisor)
        if box is None and self.training:
            return whole_volume  # early training: stage 1 is still empty, stage 2 must learn anyway
        return box

    def _forward(self, x: Tensor, depth: int, request: OutputRequest) -> SegmentationOutput:
        if torch.compiler.is_exporting():
            raise ModelConfigError(
                f"model '{self.info.name}' cannot be exported (ONNX / torch.export): its stage-2 crop "
                "depends on stage 1's values; export 'cascaded_unet' or the two stages' U-Nets instead"
            )
        pool = F.avg_pool2d if self.dims == 2 else F.avg_pool3d
        small = pool(x, kernel_size=self.coarse, stride=self.coarse) if any(c > 1 for c in self.coarse) else x
        coarse = resize_to(self.stage1(small), x.shape[2:])
        box = self.stage2_box(coarse)
        if box is None:
            logits = coarse
            fraction = 0.0
        else:
            region = (slice(None), slice(None), *box)
            logits = coarse.clone()
            logits[region] = self.stage2(x[region])
            fraction = math.prod(s.stop - s.start for s in box) / math.prod(x.shape[2:])
        self.last_crop, self.last_crop_fraction = box, fraction
        stages = {"stage1": coarse, "stage2": logits} if request.stages else {}
        return SegmentationOutput(logits=logits, stages=stages)


__all__ = ["CoarseToFineUNet", "candidate_box", "foreground_mask", "stage2_region"]
