"""The classification-guided module (CGM) of UNet 3+ and UNet# (paper 004, Sec. 2.3).

A small classifier on a feature map says, per image and per foreground class, whether the class is
present at all; at inference the segmentation of a class judged absent is suppressed, which removes
the false positives shallow branches produce on images without the target (most slices of a scan).

Output convention (``SegmentationOutput.classification``): presence logits ``(B, num_classes - 1)``,
before the sigmoid, one per foreground class. The papers' binary 2-way softmax + argmax is the
``num_classes == 2`` case of this (sigmoid(logit) > 0.5 <=> "organ present"); one logit per class
generalises it to multi-class label maps.

How "zeroing" is done on logits (the papers multiply probabilities by the 0/1 argmax): the logits
of every foreground class judged absent are replaced by :data:`ABSENT_LOGIT`, a large negative
number, so that softmax gives that class ~0 probability and argmax never picks it; if every
foreground class is absent the prediction is background everywhere. ``-1e4`` rather than ``-inf``
keeps softmax/cross-entropy finite and fits float16.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ABSENT_LOGIT = -1.0e4


def _global_pools(dims: int) -> tuple[nn.Module, nn.Module]:
    if dims == 2:
        return nn.AdaptiveAvgPool2d(1), nn.AdaptiveMaxPool2d(1)
    return nn.AdaptiveAvgPool3d(1), nn.AdaptiveMaxPool3d(1)


class PresenceBatchNorm(nn.BatchNorm1d):
    """``BatchNorm1d`` of the CGM that also accepts a training batch of one image (common in 3D):
    one image has no batch statistics, so it is normalised with the running ones, as in eval mode
    (``nn.BatchNorm1d`` raises there)."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


class PooledPresenceHead(nn.Module):
    """UNet#'s CGM (paper 004, Sec. 2.3, Fig. 3): global average and max pooling concatenated and
    flattened, then the paper's "blue" (simplified) module ``BatchNorm1d -> Dropout -> Linear`` or,
    with ``hidden``, its "green" module for wide maps, ``BatchNorm1d -> Dropout -> Linear -> ReLU ->
    BatchNorm1d -> Dropout -> Linear``.

    ``batch_norm=False`` leaves the batch norms out: the single module of the checkpoints made
    before the paper's eight modules were implemented (``UNetSharp(cgm="single")``).

    ``forward(features, window)``: with a ``window`` (in feature voxels) smaller than the map, the
    module judges every window (stride half a window, the last one flush with the edge) and a class
    is present when any window says so (the maximum of the windows' logits). Why: global average
    pooling depends on the field of view. A module trained on 64x64 crops and shown a whole
    128x128 slice sees the lesion's share of the average shrink fourfold; on LGG validation slices
    it then judged 66 of 135 lesion slices "absent" at X(0,1) (41 % of the lesion voxels, which the
    gate erases), against 10 when it judged 64x64 windows, while still rejecting 243 of 328 empty
    slices (docs/model_zoo.md).
    """

    def __init__(
        self,
        dims: int,
        in_channels: int,
        num_foreground: int,
        hidden: int | None = None,
        dropout: float = 0.5,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        self.avg, self.max = _global_pools(dims)
        features = 2 * in_channels

        def normalise(width: int) -> list[nn.Module]:
            return [PresenceBatchNorm(width)] if batch_norm else []

        layers: list[nn.Module] = [*normalise(features), nn.Dropout(dropout)]
        if hidden is not None:
            layers += [nn.Linear(features, hidden), nn.ReLU(inplace=True), *normalise(hidden), nn.Dropout(dropout)]
            features = hidden
        layers.append(nn.Linear(features, num_foreground))
        self.classifier = nn.Sequential(*layers)

    def forward(self, features: Tensor, window: Sequence[int] | None = None) -> Tensor:
        spatial = features.shape[2:]
        if window is None or all(s <= w for s, w in zip(spatial, window)):
            pooled = torch.cat([self.avg(features), self.max(features)], dim=1).flatten(1)
            return self.classifier(pooled)
        sizes = [min(int(w), s) for w, s in zip(window, spatial)]
        axes = tuple(range(2, features.ndim))
        windows: list[Tensor] = []
        for corner in itertools.product(*(_window_starts(s, w) for s, w in zip(spatial, sizes))):
            region = features[(slice(None), slice(None), *(slice(c, c + w) for c, w in zip(corner, sizes)))]
            windows.append(torch.cat([region.mean(dim=axes), region.amax(dim=axes)], dim=1))
        stacked = torch.stack(windows, dim=1)  # (B, windows, 2C)
        logits = self.classifier(stacked.flatten(0, 1)).unflatten(0, stacked.shape[:2])
        return logits.amax(dim=1)


def _window_starts(size: int, window: int) -> list[int]:
    """Start of every window along an axis: stride half a window, the last flush with the edge."""
    starts = list(range(0, size - window + 1, max(window // 2, 1)))
    return starts if starts[-1] == size - window else [*starts, size - window]


class MaxPoolPresenceHead(nn.Module):
    """UNet 3+'s CGM (Huang et al. 2020): ``Dropout -> 1x1 conv -> global max pooling`` on the
    deepest encoder feature: a class is present when some location of the coarse map votes for it."""

    def __init__(self, dims: int, in_channels: int, num_foreground: int, dropout: float = 0.5) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.dropout = nn.Dropout(dropout)
        self.conv = conv(in_channels, num_foreground, kernel_size=1)
        self.pool = _global_pools(dims)[1]

    def forward(self, features: Tensor) -> Tensor:
        return self.pool(self.conv(self.dropout(features))).flatten(1)


def suppress_absent_classes(logits: Tensor, presence_logits: Tensor) -> Tensor:
    """Logits with every foreground class the CGM judged absent (presence logit < 0, i.e. sigmoid
    below 0.5) set to :data:`ABSENT_LOGIT` for that image. ``logits`` ``(B, C, *spatial)`` may be at
    any resolution (full-resolution heads and low-resolution auxiliary outputs alike)."""
    absent = (presence_logits < 0).reshape(presence_logits.shape + (1,) * (logits.ndim - 2))
    foreground = logits[:, 1:].masked_fill(absent, ABSENT_LOGIT)
    return torch.cat([logits[:, :1], foreground], dim=1)


__all__ = ["ABSENT_LOGIT", "PooledPresenceHead", "PresenceBatchNorm", "MaxPoolPresenceHead", "suppress_absent_classes"]
