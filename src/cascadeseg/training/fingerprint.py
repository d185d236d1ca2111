"""The dataset fingerprint: what the planner needs to know about the data, read once.

nnU-Net's fingerprint (spacings, shapes, foreground intensities per channel) and MONAI
Auto3DSeg's data analyser are the references; this one adds what a small budget on a CPU needs:
the physical extent of each case (a stack of thick slices whose header says 1 mm is flat in
millimetres, and must be sliced in 2D), the share of each class (rare foreground needs
oversampling and a Dice term), and the patients behind the cases (the split and the validation
subset are by patient).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..io.volume import Volume

# Voxels sampled per case for intensity statistics: enough for percentiles, bounded for big CTs.
_INTENSITY_SAMPLES = 50_000


@dataclass
class ChannelStats:
    """Intensities of one channel, over all cases, inside the labelled structures and overall."""

    name: str
    foreground_percentiles: list[float]  # 0.5, 50, 99.5 inside the labels
    overall_percentiles: list[float]  # 0.5, 50, 99.5 over the whole image
    integer_valued: bool


@dataclass
class DatasetFingerprint:
    """Per-dataset summary (JSON-able, written to ``plan.json``)."""

    num_cases: int
    num_patients: int
    channels: list[ChannelStats]
    modality: str | None  # "CT", "MR" or None (unknown)
    spacings: list[list[float]]  # per case (z, y, x) mm
    shapes: list[list[int]]  # per case (z, y, x) voxels
    class_values: list[int]  # label values present (0 included)
    class_fraction: dict[int, float]  # mean share of voxels per class over cases
    class_cases: dict[int, int]  # number of cases each class appears in
    case_ids: list[str] = field(default_factory=list)
    class_names: dict[int, str] = field(default_factory=dict)  # dataset.json's labels, by value

    @property
    def median_spacing(self) -> np.ndarray:
        return np.median(np.asarray(self.spacings, dtype=float), axis=0)

    @property
    def median_shape(self) -> np.ndarray:
        return np.median(np.asarray(self.shapes, dtype=float), axis=0)

    @property
    def median_extent_mm(self) -> np.ndarray:
        """Physical size of the median case per axis (mm)."""
        return np.median(np.asarray(self.shapes, dtype=float) * np.asarray(self.spacings, dtype=float), axis=0)

    @property
    def anisotropy(self) -> float:
        """Largest over smallest median spacing."""
        spacing = self.median_spacing
        return float(spacing.max() / spacing.min())

    @property
    def num_classes(self) -> int:
        return max(2, max(self.class_values) + 1)

    @property
    def rarest_foreground_fraction(self) -> float:
        shares = [v for k, v in self.class_fraction.items() if k != 0]
        return float(min(shares)) if shares else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["class_fraction"] = {str(k): round(float(v), 6) for k, v in self.class_fraction.items()}
        out["class_cases"] = {str(k): int(v) for k, v in self.class_cases.items()}
        out["class_names"] = {str(k): v for k, v in self.class_names.items()}
        out["summary"] = {
            "median_spacing": [round(float(v), 4) for v in self.median_spacing],
            "median_shape": [int(v) for v in self.median_shape],
            "median_extent_mm": [round(float(v), 1) for v in self.median_extent_mm],
            "anisotropy": round(self.anisotropy, 2),
        }
        return out


def fingerprint(
    cases: Sequence[tuple[str, Volume, np.ndarray]],
    channel_names: Sequence[str],
    patient_of: Any,
) -> DatasetFingerprint:
    """Fingerprint ``(case_id, image Volume, label array)`` triples; ``patient_of(case_id)`` names
    the patient (the split's grouping)."""
    rng = np.random.default_rng(0)
    n_channels = len(channel_names)
    fg_samples: list[list[np.ndarray]] = [[] for _ in range(n_channels)]
    all_samples: list[list[np.ndarray]] = [[] for _ in range(n_channels)]
    integer = [True] * n_channels
    fractions: dict[int, list[float]] = {}
    present: dict[int, int] = {}
    modalities = set()
    for _case_id, image, labels in cases:
        array = image.array if image.array.ndim == 4 else image.array[None]
        values, counts = np.unique(labels, return_counts=True)
        total = float(labels.size)
        for v in values.tolist():
            present[int(v)] = present.get(int(v), 0) + 1
        for v in set(fractions) | set(values.tolist()):
            share = float(counts[values == v].sum()) / total if v in values else 0.0
            fractions.setdefault(int(v), []).append(share)
        fg = np.flatnonzero(labels.reshape(-1) > 0)
        everything = rng.integers(0, labels.size, min(labels.size, _INTENSITY_SAMPLES))
        picked_fg = fg if fg.size <= _INTENSITY_SAMPLES else rng.choice(fg, _INTENSITY_SAMPLES, replace=False)
        for c in range(n_channels):
            flat = array[c].reshape(-1)
            if picked_fg.size:
                fg_samples[c].append(np.asarray(flat[picked_fg], dtype=np.float64))
            all_samples[c].append(np.asarray(flat[everything], dtype=np.float64))
            if integer[c] and not np.issubdtype(flat.dtype, np.integer):
                sample = all_samples[c][-1][:1000]
                integer[c] = bool(np.array_equal(sample, np.round(sample)))
        if image.modality:
            modalities.add(image.modality)
    # A class seen only in later cases gets zeros for the cases before it.
    n = len(cases)
    class_fraction = {k: float(np.sum(v)) / max(n, 1) for k, v in fractions.items()}
    channels = []
    for c, name in enumerate(channel_names):
        fg_values = np.concatenate(fg_samples[c]) if fg_samples[c] else np.zeros(1)
        all_values = np.concatenate(all_samples[c]) if all_samples[c] else np.zeros(1)
        channels.append(
            ChannelStats(
                name=str(name),
                foreground_percentiles=[round(float(v), 4) for v in np.percentile(fg_values, [0.5, 50, 99.5])],
                overall_percentiles=[round(float(v), 4) for v in np.percentile(all_values, [0.5, 50, 99.5])],
                integer_valued=integer[c],
            )
        )
    modality = modalities.pop() if len(modalities) == 1 else None
    return DatasetFingerprint(
        num_cases=n,
        num_patients=len({patient_of(c[0]) for c in cases}),
        channels=channels,
        modality=modality,
        spacings=[[round(float(s), 6) for s in image.spacing] for _, image, _ in cases],
        shapes=[[int(s) for s in image.spatial_shape] for _, image, _ in cases],
        class_values=sorted(present),
        class_fraction=class_fraction,
        class_cases=present,
        case_ids=[c[0] for c in cases],
    )
