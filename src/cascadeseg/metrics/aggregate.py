"""Summaries over cases: mean, median and global (pooled-voxel) Dice per structure."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

from .case import informative
from .overlap import ConfusionCounts

RATIO_METRICS = ("dice", "iou", "precision", "recall", "specificity")


def aggregate_cases(
    cases: Iterable[Mapping[str, Mapping[str, float]]], *, hd95_penalty: float | None = None
) -> dict[str, dict[str, object]]:
    """Summarise :func:`.evaluate_case` results.

    For each structure and metric: ``{"mean", "median", "std", "n"}`` over the cases where that
    structure is present in the reference or the prediction (a case where it is absent from both
    carries no information about it and is counted in ``"n_absent"``, not as a Dice of 1: the
    convention of :func:`.case.mean_dice`). ``"global_dice"`` pools the voxels of all cases (2 sum TP / (sum |P| + sum |G|)):
    what a large structure-weighted score looks like, and defined even when single cases are not.

    HD95 of ``inf`` (exactly one mask empty) is handled explicitly, never averaged silently:
    by default mean/median/std are over the finite values only and ``"n_inf"`` counts the rest
    (a mean that hides them would look better than the model is, so callers should show
    ``n_inf``); with ``hd95_penalty`` (BraTS uses 373.13 mm, the diagonal of its volume) each
    ``inf`` is replaced by that value first and ``n_inf`` is still reported.
    """
    per_structure: dict[str, list[Mapping[str, float]]] = {}
    for case in cases:
        for name, row in case.items():
            per_structure.setdefault(name, []).append(row)

    summary: dict[str, dict[str, object]] = {}
    for name, rows in per_structure.items():
        entry: dict[str, object] = {}
        present = [row for row in rows if informative(row)]
        for metric in RATIO_METRICS:
            entry[metric] = _stats(np.array([row[metric] for row in present], dtype=float))
        if all("hd95" in row for row in rows):
            values = np.array([row["hd95"] for row in rows], dtype=float)
            infinite = np.isinf(values)
            if hd95_penalty is not None:
                values = np.where(infinite, float(hd95_penalty), values)
            else:
                values = values[~infinite]
            stats = _stats(values)
            stats["n_inf"] = int(infinite.sum())
            entry["hd95"] = stats
        pooled = ConfusionCounts(
            tp=sum(int(r["tp"]) for r in rows),
            fp=sum(int(r["fp"]) for r in rows),
            fn=sum(int(r["fn"]) for r in rows),
            tn=sum(int(r["tn"]) for r in rows),
        )
        entry["global_dice"] = pooled.dice()
        entry["n_cases"] = len(rows)
        entry["n_absent"] = len(rows) - len(present)
        summary[name] = entry
    return summary


def _stats(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        nan = math.nan  # no case gave a finite value: say so rather than invent one
        return {"mean": nan, "median": nan, "std": nan, "n": 0}
    return {
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "std": float(values.std()),
        "n": int(values.size),
    }
