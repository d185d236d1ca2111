"""Drawing training samples: 2D slices along an axis or 3D patches, with foreground oversampling.

Foreground is rare (about 1% of the voxels of the LGG scans, 0.04% in the TCIA ones), so a
uniformly drawn slice or patch mostly teaches "background". As in nnU-Net, a share
(``foreground_probability``) of the samples is centred on a voxel of a randomly chosen foreground
class; the rest are drawn uniformly (every slice / position equally likely across cases).

The dataset is map-style and every item is a pure function of ``(seed, epoch, index)``, so it
gives the same samples with any number of DataLoader workers, and a ``DistributedSampler`` shards
it across ranks without two ranks drawing the same sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..inference.predictor import PAD_VALUE  # one pad value for training crops and inference
from ..labelops import face_structure
from .config import FOREGROUND_SAMPLING
from .datasets import TrainingCase

# Foreground coordinates kept per case and class: enough to sample from, bounded for huge CTs.
_MAX_FG_COORDS = 20_000


def foreground_components(
    labels: np.ndarray, cls: int, slice_axis: int | None, rng: np.random.Generator, limit: int = _MAX_FG_COORDS
) -> tuple[np.ndarray, np.ndarray]:
    """Voxels of class ``cls`` grouped by connected component: ``(coords, offsets)``, component
    ``j`` being ``coords[offsets[j]:offsets[j + 1]]``.

    Components are face-connected within each slice normal to ``slice_axis`` (2D sampling), or in
    3D when ``slice_axis`` is None. Over ``limit`` voxels, each component keeps a share of
    ``limit`` proportional to its size, and at least one voxel, so no component is lost.
    """
    from scipy import ndimage

    components, count = ndimage.label(labels == cls, structure=face_structure(3, slice_axis))
    coords = np.argwhere(components > 0)
    ids = components[tuple(coords.T)]
    order = np.argsort(ids, kind="stable")
    coords, ids = coords[order], ids[order]
    sizes = np.bincount(ids, minlength=count + 1)[1:]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    if len(coords) > limit:
        keep = np.maximum(1, (sizes * limit) // len(coords))
        picked = [offsets[j] + rng.choice(sizes[j], int(keep[j]), replace=False) for j in range(count)]
        coords = coords[np.concatenate(picked)]
        offsets = np.concatenate([[0], np.cumsum(keep)])
    return coords.astype(np.int32), offsets.astype(np.int64)


def round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def resolve_patch_size(
    cases: Sequence[TrainingCase], dims: int, axis: int, requested: Sequence[int] | None, divisor: Sequence[int]
) -> tuple[int, ...]:
    """The network input size for training.

    2D: the requested crop, else the largest in-plane size of the cases; 3D: the requested patch,
    else up to 32 slices by 128 x 128 (what a CPU or a small GPU can hold). Rounded up to the
    model's size divisor; smaller cases are padded when sampled.
    """
    shapes = np.array([c.spatial_shape for c in cases])
    if dims == 2:
        plane = [a for a in range(3) if a != axis]
        size = list(requested) if requested else [int(shapes[:, a].max()) for a in plane]
    else:
        size = (
            list(requested)
            if requested
            else [min(int(np.median(shapes[:, a])), cap) for a, cap in zip(range(3), (32, 128, 128))]
        )
    return tuple(round_up(int(s), int(d)) for s, d in zip(size, divisor))


class PatchDataset(Dataset):
    """Samples ``(image, labels)`` of fixed size from cached cases.

    2D items: image ``(C, H, W)``, labels ``(H, W)`` (slices normal to ``axis``); with
    ``context_slices`` = k > 0 (2.5D) the image is ``(C * (2k + 1), H, W)``: the slice and its k
    neighbours on either side, channel-major, the pad value beyond the volume (as
    :func:`~cascadeseg.inference.predictor.slices_with_context` gives the network at inference);
    3D items: image ``(C, D, H, W)``, labels ``(D, H, W)``. ``length`` items per epoch.
    """

    def __init__(
        self,
        cases: Sequence[TrainingCase],
        dims: int,
        axis: int,
        patch_size: Sequence[int],
        foreground_probability: float,
        length: int,
        seed: int,
        body_code: int | None = None,
        context_slices: int = 0,
        foreground_sampling: str = "voxel",
    ) -> None:
        if foreground_sampling not in FOREGROUND_SAMPLING:
            raise ValueError(f"foreground_sampling: {foreground_sampling!r}; expected one of {FOREGROUND_SAMPLING}")
        self.cases = list(cases)
        self.context_slices = int(context_slices) if dims == 2 else 0
        # A case's body mask rides in the labels as label + body_code (body_code = the number of
        # classes), so it is cropped, padded (outside: no body) and augmented exactly like them.
        self.body_code = body_code
        self.dims = dims
        self.axis = axis
        self.patch_size = tuple(int(p) for p in patch_size)
        self.foreground_probability = foreground_probability
        self.length = int(length)
        self.seed = int(seed)
        self.epoch = 0
        # Uniform draws weight cases by their number of samplable positions (slices in 2D,
        # voxels in 3D) so that every slice is equally likely, not every case.
        sizes = np.array(
            [c.spatial_shape[axis] if dims == 2 else np.prod(c.spatial_shape) for c in self.cases], dtype=float
        )
        self.case_weights = sizes / sizes.sum()
        self.foreground = [self._foreground_coords(c) for c in self.cases]
        # Component mode: per case and class, the voxels grouped by component (coords, offsets).
        self.components = (
            [
                {
                    k: foreground_components(c.labels, k, axis if dims == 2 else None, np.random.default_rng(0))
                    for k in per_class
                }
                for c, per_class in zip(self.cases, self.foreground)
            ]
            if foreground_sampling == "component"
            else []
        )
        self.cases_with_foreground = [i for i, fg in enumerate(self.foreground) if fg]

    @staticmethod
    def _foreground_coords(case: TrainingCase) -> dict[int, np.ndarray]:
        """Per foreground class, up to ``_MAX_FG_COORDS`` voxel coordinates (seeded subsample)."""
        out: dict[int, np.ndarray] = {}
        rng = np.random.default_rng(0)
        for k in np.unique(case.labels):
            if k == 0:
                continue
            coords = np.argwhere(case.labels == k)
            if len(coords) > _MAX_FG_COORDS:
                coords = coords[rng.choice(len(coords), _MAX_FG_COORDS, replace=False)]
            out[int(k)] = coords.astype(np.int32)
        return out

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng((self.seed, self.epoch, int(index)))
        centre = None
        if self.cases_with_foreground and rng.random() < self.foreground_probability:
            case_index = int(rng.choice(self.cases_with_foreground))
            per_class = self.foreground[case_index]
            cls = int(rng.choice(list(per_class)))
            if self.components:
                coords, offsets = self.components[case_index][cls]
                component = int(rng.integers(len(offsets) - 1))
                centre = coords[rng.integers(offsets[component], offsets[component + 1])]
            else:
                coords = per_class[cls]
                centre = coords[rng.integers(len(coords))]
        else:
            case_index = int(rng.choice(len(self.cases), p=self.case_weights))
        case = self.cases[case_index]
        shape = case.spatial_shape
        if centre is None:
            centre = np.array([rng.integers(s) for s in shape])
        if self.dims == 2:
            plane = [a for a in range(3) if a != self.axis]
            k = self.context_slices
            starts = {self.axis: int(centre[self.axis]) - k}
            sizes = {self.axis: 2 * k + 1}
            for a, p in zip(plane, self.patch_size):
                sizes[a] = p
                starts[a] = self._start(int(centre[a]), shape[a], p, rng)
        else:
            sizes = dict(enumerate(self.patch_size))
            starts = {a: self._start(int(centre[a]), shape[a], sizes[a], rng) for a in range(3)}
        image, labels = self._crop(case_index, starts, sizes)
        if self.dims == 2:
            k = self.context_slices
            labels = np.take(labels, k, axis=self.axis)
            # (C, window, H, W) -> (C * window, H, W): channel-major, as the predictor stacks them
            image = np.moveaxis(image, self.axis + 1, 1)
            image = image.reshape(image.shape[0] * image.shape[1], *image.shape[2:])
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(np.ascontiguousarray(labels)).long()

    @staticmethod
    def _start(centre: int, extent: int, size: int, rng: np.random.Generator) -> int:
        """Window start so the window contains ``centre`` at a random offset (may be negative or
        run past the end when the case is smaller than the window: that part is padded)."""
        if size >= extent:
            return int(rng.integers(extent - size, 1)) if size > extent else 0
        low = max(0, centre - size + 1)
        high = min(extent - size, centre)
        return int(rng.integers(low, high + 1))

    def _crop(self, case_index: int, starts: dict[int, int], sizes: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
        case = self.cases[case_index]
        shape = case.spatial_shape
        inside = tuple(slice(max(0, starts[a]), min(shape[a], starts[a] + sizes[a])) for a in range(3))
        image = case.image[(slice(None), *inside)]
        labels = case.labels[inside]
        if self.body_code is not None and case.body is not None:
            labels = labels.astype(np.int16) + np.int16(self.body_code) * case.body[inside]
        pads = [(max(0, -starts[a]), max(0, starts[a] + sizes[a] - shape[a])) for a in range(3)]
        if any(p != (0, 0) for p in pads):
            labels = np.pad(labels, pads)
            image = np.pad(image, [(0, 0), *pads], constant_values=PAD_VALUE)
        return image, labels


def epoch_length(
    cases: Sequence[TrainingCase], dims: int, axis: int, steps_per_epoch: int | None, batch_size: int, world_size: int
) -> int:
    """Samples per epoch (all ranks together): ``steps_per_epoch`` batches per rank, else one
    pass over the training slices (2D) or four patches per case (3D)."""
    if steps_per_epoch is not None:
        return steps_per_epoch * batch_size * world_size
    if dims == 2:
        total = sum(c.spatial_shape[axis] for c in cases)
    else:
        total = 4 * len(cases)
    return max(batch_size * world_size, round_up(total, batch_size * world_size))
