"""Score a trained checkpoint on held-out cases through the real inference path.

The trainer's per-epoch validation is fast and close to inference; this is the final word: each
held-out scan is read from disk, segmented by :class:`~cascadeseg.inference.Predictor` exactly
as ``cascadeseg predict`` and the GUI do (the card's preprocessing, its target spacing, padding,
resampling back to the scan's grid) at every pruning depth, and scored with
:mod:`cascadeseg.metrics` (Dice and HD95 in mm, per case). The default models' cards and the
results table quote these numbers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DatasetError

if TYPE_CHECKING:
    from ..inference.predictor import Predictor


@dataclass
class HoldoutScores:
    """Per-case and mean scores at every depth (depth 1 only for models without pruning)."""

    dice: dict[int, dict[str, float]] = field(default_factory=dict)  # depth -> case -> Dice
    hd95: dict[int, dict[str, float]] = field(default_factory=dict)  # depth -> case -> HD95 (mm)
    # depth -> class value -> the Dice of each case where the class is in the truth or the prediction
    class_dice: dict[int, dict[str, list[float]]] = field(default_factory=dict)
    seconds_per_case: float = 0.0

    def mean_dice(self, depth: int) -> float:
        return float(np.mean(list(self.dice[depth].values())))

    def hd95_summary(self, depth: int) -> tuple[float, float, int]:
        """(mean, median) over the cases with a finite HD95, and how many were infinite (a mask
        empty on one side only)."""
        values = np.array(list(self.hd95[depth].values()), dtype=float)
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            return float("inf"), float("inf"), int(values.size)
        return float(finite.mean()), float(np.median(finite)), int((~np.isfinite(values)).sum())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dice_per_depth": {}, "hd95_per_depth": {}, "dice_per_case": {}, "hd95_per_case": {}}
        for depth in self.dice:
            mean, median, n_inf = self.hd95_summary(depth)
            out["dice_per_depth"][str(depth)] = round(self.mean_dice(depth), 4)
            out["hd95_per_depth"][str(depth)] = {
                "mean_mm": round(mean, 2),
                "median_mm": round(median, 2),
                "n_inf": n_inf,
            }
            out["dice_per_case"][str(depth)] = {c: round(v, 4) for c, v in self.dice[depth].items()}
            if len(self.class_dice.get(depth, {})) > 1:  # multi-class: each class's mean over its cases
                out.setdefault("dice_per_class", {})[str(depth)] = {
                    value: round(float(np.mean(values)), 4)
                    for value, values in self.class_dice[depth].items()
                    if values
                }
            out["hd95_per_case"][str(depth)] = {
                c: (round(v, 2) if np.isfinite(v) else "inf") for c, v in self.hd95[depth].items()
            }
        return out


def score_checkpoint(
    checkpoint: Path, dataset: Path, case_ids: Sequence[str], device: str = "cpu", mirror: bool = False
) -> HoldoutScores:
    """Segment ``case_ids`` of the MSD folder ``dataset`` with ``checkpoint`` at every depth
    (``mirror``: with test-time mirroring, :class:`~cascadeseg.inference.PredictionRequest`)."""
    from ..inference.predictor import Predictor

    return score_predictor(Predictor.from_checkpoint(checkpoint, device=device), dataset, case_ids, mirror)


def score_predictor(
    predictor: Predictor, dataset: Path, case_ids: Sequence[str], mirror: bool = False
) -> HoldoutScores:
    """:func:`score_checkpoint` with a predictor the caller built (or changed: a benchmark that
    turns a model option off scores through the same path)."""
    from ..inference.predictor import PredictionRequest
    from ..io import load_dataset
    from ..metrics import evaluate_case, mean_dice

    foreground = [c["value"] for c in predictor.card.classes if c["value"] != 0]
    refs = {ref.case_id: ref for ref in load_dataset(dataset)}
    scores = HoldoutScores()
    t0 = time.perf_counter()
    for case in case_ids:
        image, labels = refs[case].load()
        if mirror:
            # Mirroring applies to the chosen depth's logits: one call per depth.
            depths = list(predictor.model.info.pruning_depths) or [None]
            maps = {
                d or 1: predictor.predict(image, depth=d, want=PredictionRequest(mirror=True)).labels for d in depths
            }
        else:
            result = predictor.predict(image, want=PredictionRequest(depths=True, mirror=False))
            maps = result.depth_labels or {1: result.labels}
        if labels is None:
            raise DatasetError(f"{dataset}: held-out case '{case}' has no label map in labelsTr/ to score against")
        for depth, volume in maps.items():
            row = evaluate_case(volume.array, labels.array, labels.spacing, classes=foreground)
            # The project's one case Dice: mean over the foreground classes present in either map.
            scores.dice.setdefault(int(depth), {})[case] = mean_dice(row, [str(k) for k in foreground])
            scores.hd95.setdefault(int(depth), {})[case] = float(np.mean([row[str(k)]["hd95"] for k in foreground]))
            for k in foreground:
                present = row[str(k)]["tp"] + row[str(k)]["fp"] + row[str(k)]["fn"] > 0
                per_class = scores.class_dice.setdefault(int(depth), {}).setdefault(str(k), [])
                if present:
                    per_class.append(float(row[str(k)]["dice"]))
    scores.seconds_per_case = (time.perf_counter() - t0) / max(1, len(case_ids))
    return scores
