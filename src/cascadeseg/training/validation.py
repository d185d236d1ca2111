"""Validation during training, through the predictor: one path, one Dice.

Every validation case is segmented by :class:`~cascadeseg.inference.Predictor` exactly as
``cascadeseg predict`` and the GUI segment a scan: the card's preprocessing and working grid
(the cached :class:`~cascadeseg.inference.PreparedScan` was made by the predictor's own
:func:`~cascadeseg.inference.prepare_scan`), the same padding, the same 3D sliding window and
overlap, logits zoomed back to the scan's grid before the argmax. The labels are scored on the
scan's own grid by :func:`cascadeseg.metrics.mean_dice`: per case, the mean Dice over the
foreground classes present in the reference or the prediction (a class absent from both is not
counted as 1). So the Dice that chooses ``best/``, the recommended depth and the card's figures
is the Dice a user gets from ``cascadeseg predict`` + ``cascadeseg evaluate`` (tested).

One forward pass with all deep-supervision heads requested gives every pruning depth at once.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..inference.checkpoint import ModelCard
from ..inference.postprocess import CANDIDATES, from_card, postprocess, to_card
from ..inference.predictor import PredictionRequest, Predictor, labels_at_threshold
from ..metrics import case_mean_dice
from .datasets import TrainingCase

# Recommended depth: the shallowest whose Dice is within this of the best depth's (1 Dice point).
RECOMMENDATION_TOLERANCE = 0.01
# ... and not measurably below it: a mean paired loss over the validation cases larger than this
# many standard errors is a real loss, however small.
PAIRED_STANDARD_ERRORS = 2.0
# A post-processing is kept when it beats the raw argmax by more than this (half a Dice point).
POSTPROCESSING_MARGIN = 0.005
# ... and when it costs no validation case more than this. Removing islands should remove false
# positives; a case that loses more has lost a real lesion. nnU-Net's rule looks at the mean only,
# and on LGG (race seed 3) "largest component" passed it while deleting the one component that
# found a patient's lesion (Dice 0.18 -> 0.00): a rare, total loss that a mean over 13 validation
# patients does not show, and a Dice point or less of gain is not worth that risk.
POSTPROCESSING_MAX_CASE_LOSS = 0.1
# Foreground thresholds a two-class model's validation compares when asked (0.5 is the argmax).
# Not the trainer's default: chosen this way on each 20-minute LGG run's own validation patients, a
# threshold gained +0.016 +- 0.009 on the held-out patients of three splits and -0.002 +- 0.003 on
# four fresh ones (docs/one_click_training.md, benchmarks/threshold_choice.py).
THRESHOLD_CANDIDATES = (0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1)


@dataclass
class ValidationResult:
    """Mean per-case Dice per depth, the per-case values, the recommended depth, and the cost."""

    dice_per_depth: dict[int, float]
    dice_per_case: dict[str, dict[int, float]]
    recommended_depth: int
    seconds: float = 0.0
    cases: list[str] = field(default_factory=list)
    # The post-processing the figures above include (a card's ``postprocessing``; None: raw argmax)
    # and what each candidate scored: {name or "none": {depth: mean Dice}}.
    postprocessing: dict[str, Any] | None = None
    candidates: dict[str, dict[int, float]] = field(default_factory=dict)
    # Two-class models: the foreground threshold the figures above use (None: the argmax) and the
    # mean Dice of every candidate at the recommended depth, after the chosen post-processing.
    foreground_threshold: float | None = None
    threshold_candidates: dict[float, float] = field(default_factory=dict)
    # A fine-tuning: the starting model's recommended depth, which the choice above started from,
    # and whether it was held fixed (a validation of slice blocks cannot overturn it).
    prior_depth: int | None = None
    prior_fixed: bool = False

    @property
    def dice_at_recommended_depth(self) -> float:
        """The Dice of the model as it runs by default, at its recommended depth: what ``best/`` is
        chosen on and every "best Dice" quotes (the highest depth's when that one is missing).

        Not the highest of the depths: with a fine-tuning's prior depth the recommended depth can
        score below a depth it is not measurably worse than, and a checkpoint chosen on a depth it
        will not run at is chosen on the wrong figure (a TCIA fold kept epoch 8 for its L1 0.117 while
        running at L4, where that epoch scored 0 and the starting weights 0.44 on the held-out study)."""
        value = self.dice_per_depth.get(self.recommended_depth, float("nan"))
        if math.isfinite(value):
            return value
        finite = [v for v in self.dice_per_depth.values() if math.isfinite(v)]
        return max(finite) if finite else float("nan")


def recommended_depth(
    dice_per_depth: Mapping[int, float],
    tolerance: float = RECOMMENDATION_TOLERANCE,
    dice_per_case: Mapping[str, Mapping[Any, float]] | None = None,
    prior_depth: int | None = None,
    prior_fixed: bool = False,
) -> int:
    """The shallowest depth whose Dice is within ``tolerance`` of the best depth's and, given the
    per-case values (``{case: {depth: Dice}}``), not measurably below it: its mean paired
    difference to the best depth is within :data:`PAIRED_STANDARD_ERRORS` standard errors.

    The paired check is why the 3D hippocampus model defaults to its full depth: on its 32
    validation patients L2 was 0.004 below L4, within the point of tolerance, but every patient
    agreed (standard error 0.001), and a pruned depth on a 0.3 s crop saves nothing worth a
    consistent loss.

    A validation that found nothing at any depth (every Dice 0) says nothing about depths: the
    full depth, as without validation. Taking the shallowest of equal zeros had run the shipped
    FLAIR ANU-Net at L1 on TCIA studies whose validation slices held 1-12 % of the lesion
    (0.108 on the held-out study, where the same weights give 0.439 at L4).

    ``prior_depth`` (a fine-tuning: the starting model's recommended depth, chosen on its own
    validation patients) is kept when this validation found nothing, and unless it measurably
    prefers another depth: the depth the rule above picks replaces it only when it scores more
    than ``tolerance`` above it and the per-case paired gain exceeds
    :data:`PAIRED_STANDARD_ERRORS` standard errors over two or more cases. A few-shot validation
    (a few slice blocks of two or three lesions) cannot rank depths, and the rule alone then
    prunes on noise: on the three TCIA folds it ran the fine-tuned ANU-Net at L2, L1 and L3, where
    its starting model's L4 did 0.01, 0.07 and 0.02 better on the held-out studies
    (docs/one_click_training.md).

    ``prior_fixed``: the validation cannot overturn the prior at all, whatever its figures (the
    trainer sets it when validation is slice blocks of the training volumes: blocks of a few slices
    whose neighbours the network trains on are not evidence of the kind the prior was chosen on,
    whole unseen patients; on shifted LGG patients two such blocks agreed that L1 beat L4 by 0.37
    while the other ten patients scored L1 0.39 and L4 0.56, benchmarks/fewshot_rules.py)."""
    depths = [int(d) for d in dice_per_depth]
    prior = int(prior_depth) if prior_depth is not None and int(prior_depth) in depths else None
    if prior is not None and prior_fixed:
        return prior
    finite = {int(d): v for d, v in dice_per_depth.items() if math.isfinite(v)}
    if not finite or max(finite.values()) <= 0.0:
        return prior if prior is not None else max(depths)
    chosen = _depth_by_validation(finite, tolerance, dice_per_case)
    if prior is None or prior not in finite or chosen == prior:
        return chosen
    if finite[chosen] - finite[prior] <= tolerance or dice_per_case is None:
        return prior
    gains = _paired_differences(dice_per_case, chosen, prior)
    if len(gains) < 2:
        return prior
    mean, error = _mean_and_standard_error(gains)
    return chosen if mean > PAIRED_STANDARD_ERRORS * error else prior


def _mean_and_standard_error(values: list[float]) -> tuple[float, float]:
    """The mean of two or more paired differences and its standard error."""
    return float(np.mean(values)), float(np.std(values, ddof=1)) / math.sqrt(len(values))


def _paired_differences(dice_per_case: Mapping[str, Mapping[Any, float]], depth: int, reference: int) -> list[float]:
    """Per case, Dice at ``depth`` minus Dice at ``reference`` (cases that have both)."""
    return [
        float(by_depth[_depth_key(by_depth, depth)]) - float(by_depth[_depth_key(by_depth, reference)])
        for by_depth in dice_per_case.values()
        if _depth_key(by_depth, depth) is not None and _depth_key(by_depth, reference) is not None
    ]


def _depth_by_validation(
    finite: dict[int, float], tolerance: float, dice_per_case: Mapping[str, Mapping[Any, float]] | None
) -> int:
    """:func:`recommended_depth` without a prior, on the finite depths of a validation that found something."""
    best_depth = max(finite, key=lambda d: (finite[d], -d))
    best = finite[best_depth]
    for depth in sorted(d for d, v in finite.items() if v >= best - tolerance):
        if depth == best_depth or dice_per_case is None:
            return depth
        diffs = _paired_differences(dice_per_case, depth, best_depth)
        if len(diffs) < 2:
            return depth
        mean, error = _mean_and_standard_error(diffs)
        if mean >= -PAIRED_STANDARD_ERRORS * error:
            return depth
    return best_depth


def _depth_key(by_depth: Mapping[Any, float], depth: int) -> Any:
    """``depth`` as ``by_depth`` spells it (int keys in memory, strings in a card), or None."""
    return next((k for k in (depth, str(depth)) if k in by_depth), None)


def validate(
    model: Any,
    card: ModelCard,
    cases: Sequence[TrainingCase],
    *,
    depths: bool,
    device: Any = "cpu",
    batch_size: int | None = None,
    cancel: Any = None,
    choose_postprocessing: bool = False,
    choose_threshold: bool = False,
    prior_depth: int | None = None,
    prior_fixed: bool = False,
) -> ValidationResult:
    """Segment each case with the predictor (every pruning depth when ``depths``) and score it.

    ``model`` is not changed (the predictor runs a copy with folded batch norms in eval mode).
    A set ``cancel`` raises :class:`~cascadeseg.errors.CancelledError` between batches.
    ``choose_postprocessing``: also score each candidate post-processing
    (:data:`cascadeseg.inference.postprocess.CANDIDATES`) and report the figures of the best one
    when it beats the raw argmax by more than :data:`POSTPROCESSING_MARGIN` at its best depth
    (nnU-Net decides its post-processing on validation folds the same way) and costs no case more
    than :data:`POSTPROCESSING_MAX_CASE_LOSS` there; otherwise the card's own post-processing, as
    the predictor applies it.
    ``choose_threshold`` (two-class models): then, at the recommended depth and with that
    post-processing, score each foreground threshold of :data:`THRESHOLD_CANDIDATES` and keep the
    one with the best mean Dice (ties: the higher threshold; 0.5 is the argmax); every figure of
    the result is then that threshold's. The depth and the post-processing are chosen at the
    argmax, so each choice is made once, in this order.
    """
    t0 = time.perf_counter()
    thresholds = THRESHOLD_CANDIDATES if choose_threshold and card.num_classes == 2 else ()
    if thresholds:  # the candidates are compared from the argmax, whatever the card had
        card = dataclasses.replace(card, foreground_threshold=None)
    predictor = Predictor(model, card, device=device, batch_size=batch_size)
    mode = f"{card.dims}d"
    axis = int(card.slice_axis)
    full_depth = predictor.resolve_depth(predictor.model.max_depth)
    want = PredictionRequest(depths=depths, threshold_candidates=thresholds)
    foreground = [v for v in card.class_values if v != 0]
    variants: dict[str, Any] = {"none": None}
    if choose_postprocessing:
        variants.update(CANDIDATES)
    elif card.postprocessing:
        variants = {"card": from_card(card.postprocessing)}
    per_variant: dict[str, dict[str, dict[int, float]]] = {name: {} for name in variants}
    levels: dict[str, dict[int, _SparseLevels]] = {}
    for case in cases:
        maps, case_levels = _predict(predictor, case, mode, axis, full_depth, want, cancel)
        levels[case.case_id] = {d: _SparseLevels.of(a) for d, a in case_levels.items()}
        for name, options in variants.items():
            per_variant[name][case.case_id] = {
                d: case_mean_dice(
                    labels if options is None else postprocess(labels, options, spacing=case.native_spacing),
                    case.labels_full,
                    foreground,
                )
                for d, labels in maps.items()
            }
    means = {name: _means(per_case) for name, per_case in per_variant.items()}
    chosen = next(iter(variants))
    if choose_postprocessing:
        chosen = pick_postprocessing(per_variant)
    options = variants[chosen]
    dice_per_case, dice_per_depth = per_variant[chosen], means[chosen]
    depth = recommended_depth(
        dice_per_depth, dice_per_case=dice_per_case, prior_depth=prior_depth, prior_fixed=prior_fixed
    )
    threshold, threshold_means = None, {}
    if thresholds:
        value = card.class_values[1]

        def score(t: float, d: int, c: TrainingCase) -> float:
            labels = labels_at_threshold(levels[c.case_id][d].dense(), thresholds, t, value)
            if options is not None:
                labels = postprocess(labels, options, spacing=c.native_spacing)
            return case_mean_dice(labels, c.labels_full, foreground)

        # 0.5 is the argmax: its figure is the one just computed, not scored again.
        threshold_means = {
            t: dice_per_depth[depth] if t == 0.5 else _nanmean([score(t, depth, c) for c in cases]) for t in thresholds
        }
        best = max(thresholds, key=lambda t: (_finite_or_low(threshold_means[t]), t))
        if best != 0.5:
            threshold = best
            dice_per_case = {c.case_id: {d: score(best, d, c) for d in levels[c.case_id]} for c in cases}
            dice_per_depth = _means(dice_per_case)
    return ValidationResult(
        dice_per_depth=dice_per_depth,
        dice_per_case=dice_per_case,
        recommended_depth=depth,
        seconds=time.perf_counter() - t0,
        cases=[c.case_id for c in cases],
        postprocessing=to_card(options) if options is not None else None,
        candidates=means,
        foreground_threshold=threshold,
        threshold_candidates=threshold_means,
        prior_depth=prior_depth,
        prior_fixed=prior_fixed and prior_depth is not None,
    )


@dataclass
class _SparseLevels:
    """A levels map kept between cases as its non-zero voxels only (a lesion's neighbourhood, not
    the whole scan: a validation set of large scans would otherwise hold one map per depth each)."""

    shape: tuple[int, ...]
    index: np.ndarray
    values: np.ndarray

    @classmethod
    def of(cls, levels: np.ndarray) -> _SparseLevels:
        index = np.flatnonzero(levels)
        return cls(levels.shape, index, levels.ravel()[index])

    def dense(self) -> np.ndarray:
        out = np.zeros(self.shape, dtype=np.uint8)
        out.ravel()[self.index] = self.values
        return out


def pick_postprocessing(per_variant: dict[str, dict[str, dict[int, float]]]) -> str:
    """The post-processing to keep from per-case Dice per depth of ``"none"`` (the raw argmax) and
    each candidate: the candidate with the best depth's mean Dice, when that beats the raw argmax's
    by more than :data:`POSTPROCESSING_MARGIN` and costs no case more than
    :data:`POSTPROCESSING_MAX_CASE_LOSS` at that depth (else the next best such candidate); "none"
    when no candidate qualifies."""
    means = {name: _means(per_case) for name, per_case in per_variant.items()}
    best_of = {name: _best(m) for name, m in means.items()}
    for candidate in sorted((n for n in per_variant if n != "none"), key=lambda n: -best_of[n]):
        if best_of[candidate] <= best_of["none"] + POSTPROCESSING_MARGIN:
            break
        depth = max(means[candidate], key=lambda d: _finite_or_low(means[candidate][d]))
        if worst_case_loss(per_variant["none"], per_variant[candidate], depth) <= POSTPROCESSING_MAX_CASE_LOSS:
            return candidate
    return "none"


def worst_case_loss(
    reference: dict[str, dict[int, float]], candidate: dict[str, dict[int, float]], depth: int
) -> float:
    """The most Dice any case loses from ``reference`` to ``candidate`` at ``depth`` (0 if none
    loses; cases whose Dice is undefined in either are left out)."""
    losses = [
        reference[case][depth] - candidate[case][depth]
        for case in reference
        if math.isfinite(reference[case][depth]) and math.isfinite(candidate[case][depth])
    ]
    return max([0.0, *losses])


def _finite_or_low(value: float) -> float:
    return value if math.isfinite(value) else float("-inf")


def _means(per_case: dict[str, dict[int, float]]) -> dict[int, float]:
    keys = sorted({d for scores in per_case.values() for d in scores})
    return {d: _nanmean([per_case[c][d] for c in per_case]) for d in keys}


def _best(dice_per_depth: dict[int, float]) -> float:
    finite = [v for v in dice_per_depth.values() if math.isfinite(v)]
    return max(finite) if finite else float("-inf")


def _predict(
    predictor: Predictor, case: TrainingCase, mode: str, axis: int, depth: int, want: PredictionRequest, cancel: Any
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Label maps (class values) on the case's own grid, ``{depth: labels}``, and the threshold
    levels the request asked for, ``{depth: levels}`` (empty when none)."""
    maps, _, _, _ = predictor.predict_maps(case.scan, mode, axis, depth, want, cancel=cancel, postprocess=False)
    out = dict(maps.get("depths", {})) or {depth: maps["labels"]}
    return {int(d): labels for d, labels in out.items()}, {int(d): a for d, a in maps.get("levels", {}).items()}


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")
