"""Turn a run's checkpoint into a model others use: the shipped defaults, or a user model.

The exported folder is an ordinary checkpoint (``model.safetensors`` + ``model_card.json``,
without the run's training state). Optionally the card's validation is replaced by the held-out
scores measured through the real predictor (:mod:`.holdout`), so what the card promises is what
``cascadeseg predict`` and the GUI deliver.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..inference.checkpoint import load_checkpoint, save_checkpoint, user_models_dir


def export_run(run_dir: Path, destination: Path, *, which: str = "best", **options: Any) -> Path:
    """:func:`export_checkpoint` of the run's ``which`` checkpoint (``"best"`` or ``"last"``);
    ``options`` are :func:`export_checkpoint`'s."""
    from .run_folder import find_checkpoint  # torch: not for the Train dock's import of this module

    source = find_checkpoint(Path(run_dir), which)
    if source is None:
        raise CheckpointError(f"run folder '{run_dir}' has no complete '{which}' checkpoint to export")
    return export_checkpoint(source, destination, **options)


def export_checkpoint(
    source: Path,
    destination: Path,
    *,
    name: str | None = None,
    description: str | None = None,
    holdout_data: Path | None = None,
    holdout_cases: Sequence[str] | None = None,
    card_updates: dict[str, Any] | None = None,
    holdout_mirror: bool = False,
    choose_mirroring: bool = False,
    overwrite: bool = False,
    fixed_choices: dict[str, Any] | None = None,
) -> Path:
    """Copy the checkpoint folder ``source`` (a run's ``best/`` or ``last/``, or an ensemble written
    by :func:`build_ensemble`) to ``destination`` (refused if it exists unless ``overwrite``).

    With ``holdout_data`` (the MSD folder the run trained on), the held-out cases (``holdout_cases``,
    default: the card's validation cases) are segmented by the predictor at every depth; the card
    then records those Dice/HD95 values, and the recommended depth is re-derived from the run's own
    validation patients (per case: :func:`~.validation.recommended_depth`), not from the cases
    quoted. The figures are those of the card's default inference (``test_time_mirroring``);
    ``holdout_mirror``: also score the other way (under ``validation.mirrored`` or
    ``validation.plain``). ``choose_mirroring``: decide the card's ``test_time_mirroring`` on
    the run's validation patients (in ``holdout_data``): on when mirrored inference beats plain
    inference there at the recommended depth (recorded under ``validation.mirroring_choice``).
    ``fixed_choices`` (``recommended_depth``, ``test_time_mirroring``): decided elsewhere, neither
    re-derived nor chosen here; for a run whose own validation is too small to decide them (a
    continuation on nearly all patients keeps what its parent's validation patients chose), and
    recorded with their ``reason`` and ``evidence`` (the figures they were chosen on) under
    ``validation.choices``.
    """
    from .validation import recommended_depth

    model, card = load_checkpoint(source, device="cpu")
    fixed = dict(fixed_choices or {})
    reason = str(fixed.pop("reason", "given"))
    evidence = fixed.pop("evidence", None)
    unknown = sorted(set(fixed) - {"recommended_depth", "test_time_mirroring"})
    if unknown:
        raise CheckpointError(
            f"fixed_choices: unknown key(s) {unknown} (expected recommended_depth, test_time_mirroring, reason, "
            "evidence)"
        )
    if "recommended_depth" in fixed:
        depths = model.info.pruning_depths or []
        if int(fixed["recommended_depth"]) not in depths:
            raise CheckpointError(
                f"fixed_choices: recommended_depth {fixed['recommended_depth']} is not one of the model's depths "
                f"{list(depths)}"
            )
        card.recommended_depth = int(fixed["recommended_depth"])
    if "test_time_mirroring" in fixed:
        card.test_time_mirroring = bool(fixed["test_time_mirroring"])
    if name is not None:
        card.name = name
    if description is not None:
        card.description = description
    if holdout_data is not None:
        from .holdout import score_checkpoint

        cases = list(holdout_cases or card.validation.get("cases", []))
        if not cases:
            raise CheckpointError(f"{source}: the card lists no validation cases to score; pass holdout_cases")
        # The depth, then mirroring at that depth, are chosen on the run's validation patients,
        # never on the held-out ones quoted.
        choose_mirroring = choose_mirroring and "test_time_mirroring" not in fixed
        if "recommended_depth" not in fixed and model.info.pruning_depths and card.validation.get("dice_per_depth"):
            card.recommended_depth = recommended_depth(
                {int(d): float(v) for d, v in card.validation["dice_per_depth"].items()},
                dice_per_case=card.validation.get("dice_per_case"),
                prior_depth=card.validation.get("prior_depth"),
                prior_fixed=bool(card.validation.get("prior_fixed")),
            )
        if choose_mirroring:
            card.test_time_mirroring, choice = _choose_mirroring(source, card, Path(holdout_data))
        # The card's figures are those of its default inference (mirrored or not), as predict gives them.
        by_default = card.test_time_mirroring
        scores = score_checkpoint(source, Path(holdout_data), cases, mirror=by_default)
        trainer_view = {k: card.validation.get(k) for k in ("dice_per_depth", "dice_per_case", "metric")}
        card.validation = {
            **scores.to_dict(),
            "metric": "mean over held-out patients of the per-patient 3D Dice / HD95 (in the millimetres of the "
            "files' spacing; voxels where a source writes 1 mm for an unknown spacing), each scan segmented by "
            "cascadeseg's Predictor on its original grid"
            + (" with test-time mirroring (the card's default)" if by_default else ""),
            "cases": cases,
            "trainer_validation": trainer_view,
        }
        if holdout_mirror:
            other = score_checkpoint(source, Path(holdout_data), cases, mirror=not by_default).to_dict()
            card.validation["plain" if by_default else "mirrored"] = {
                k: other[k]
                for k in ("dice_per_depth", "hd95_per_depth", "dice_per_case", "dice_per_class")
                if k in other
            }
        if choose_mirroring:
            card.validation["mirroring_choice"] = choice
    if fixed:
        card.validation["choices"] = {**fixed, "reason": reason}
        if evidence is not None:
            card.validation["choices"]["evidence"] = evidence
    for key, value in (card_updates or {}).items():
        if isinstance(value, dict) and isinstance(getattr(card, key, None), dict):
            getattr(card, key).update(value)
        else:
            setattr(card, key, value)
    return save_checkpoint(model, card, destination, overwrite=overwrite)


# What members must share to be averaged (colours, names and descriptions may differ).
ENSEMBLE_MUST_AGREE = (
    "architecture",
    "model_options",
    "dims",
    "class_values",
    "regions",
    "target_spacing",
    "patch_size",
    "slice_size",
    "slice_axis",
    "context_slices",
    "test_time_mirror_axes",
)


def build_ensemble(
    checkpoints: Sequence[str | Path],
    destination: Path,
    *,
    name: str | None = None,
    description: str | None = None,
    overwrite: bool = False,
) -> Path:
    """One checkpoint that averages the networks of ``checkpoints`` (:mod:`cascadeseg.models.ensemble`).

    The networks must be the same architecture with the same options, classes, grid and input
    preprocessing per channel (the card keeps the first checkpoint's channel names); anything else
    is refused naming the field. The card is the first checkpoint's, with ``ensemble_members`` set,
    each member's name, checksum and training under ``training.members``, no validation figures
    and no foreground threshold: the members' figures are not the ensemble's, and a threshold
    chosen on one member's probabilities does not fit their (smoother) average; the argmax does.
    Score it with :func:`export_checkpoint` (``holdout_data``) or ``cascadeseg evaluate``.
    A member that is itself an ensemble is refused (list its members instead).
    """
    import dataclasses

    from ..models.ensemble import ModelEnsemble

    if len(checkpoints) < 2:
        raise CheckpointError(f"an ensemble needs at least 2 checkpoints, got {len(checkpoints)}")
    loaded = [load_checkpoint(path, device="cpu") for path in checkpoints]
    first = loaded[0][1]
    for path, (_, card) in zip(checkpoints, loaded):
        if card.ensemble_members != 1:
            raise CheckpointError(
                f"{path}: is already an ensemble of {card.ensemble_members} networks; list the checkpoints of its members"
            )
        differing = [key for key in ENSEMBLE_MUST_AGREE if getattr(card, key) != getattr(first, key)]
        preprocessing = [ch.get("preprocessing") for ch in card.input_channels]
        if preprocessing != [ch.get("preprocessing") for ch in first.input_channels]:
            differing.append("input_channels (preprocessing)")
        if differing:
            raise CheckpointError(
                f"{path}: cannot be averaged with {checkpoints[0]}: they differ in {', '.join(differing)} "
                "(expected networks of one architecture and options trained for one task)"
            )
    members = [
        {"name": card.name or str(path), "weights_sha256": card.weights_sha256, "training": card.training}
        for path, (_, card) in zip(checkpoints, loaded)
    ]
    card = dataclasses.replace(
        first,
        ensemble_members=len(loaded),
        training={**first.training, "members": members},
        validation={},
        foreground_threshold=None,
        name=name if name is not None else first.name,
        description=description if description is not None else first.description,
        weights_sha256=None,
    )
    ensemble = ModelEnsemble([model for model, _ in loaded])
    return save_checkpoint(ensemble, card, Path(destination), overwrite=overwrite)


def unique_model_name(wanted: str) -> str:
    """``wanted``, or ``wanted-2``, ``-3``... when a user model of that name exists."""
    root = user_models_dir()
    name, counter = wanted, 2
    while (root / name).exists():
        name, counter = f"{wanted}-{counter}", counter + 1
    return name


def install_model(checkpoint: Path, name: str, description: str, training: dict[str, Any]) -> Path:
    """Copy a run's checkpoint into the user models folder under ``name`` with an updated card
    (``training`` merged into the card's, so the data, licence and parent the trainer recorded
    stay). It goes through :func:`load_checkpoint` / :func:`save_checkpoint`, so what is installed
    is proven to load, and the write is atomic (a half-installed model never appears in a list)."""
    model, card = load_checkpoint(checkpoint, device="cpu")
    card.name = name
    card.description = description
    card.training = {**card.training, **training}
    return save_checkpoint(model, card, user_models_dir() / name)


def describe_kept(result: Any) -> str:
    """What a run left behind, for a user deciding what to keep after a Cancel or a failure."""
    parts = []
    if result.best_checkpoint is not None:
        parts.append(f"best checkpoint: validation Dice {result.best_dice:.3f} at epoch {result.best_epoch}")
    if result.last_checkpoint is not None:
        dice = f"validation Dice {result.last_dice:.3f}" if result.last_dice is not None else "not validated"
        parts.append(f"last checkpoint: {result.steps} steps, {dice}")
    return "; ".join(parts) if parts else "no checkpoint was written"


def _choose_mirroring(source: Path, card: Any, data: Path) -> tuple[bool, dict[str, Any]]:
    """Plain against mirrored inference on the run's validation patients (read from ``data``, the
    MSD folder the run trained on), at the depth the card recommends: (mirror by default?, the
    figures)."""
    import numpy as np

    from .holdout import score_checkpoint

    cases = card.validation.get("cases")
    if not cases:
        raise CheckpointError(f"{source}: the card lists no validation cases to choose mirroring on")
    depth = int(card.recommended_depth or max(int(d) for d in card.validation.get("dice_per_depth", {"1": 0})))
    plain = score_checkpoint(source, Path(data), cases).dice.get(depth) or {}
    mirrored = score_checkpoint(source, Path(data), cases, mirror=True).dice.get(depth) or {}
    diffs = [mirrored[c] - plain[c] for c in cases if c in plain and c in mirrored]
    gain = float(np.mean(diffs)) if diffs else 0.0
    spread = float(np.std(diffs, ddof=1) / np.sqrt(len(diffs))) if len(diffs) > 1 else float("nan")
    choice = {
        "depth": depth,
        "cases": list(cases),
        "plain": round(float(np.mean(list(plain.values()))), 4) if plain else None,
        "mirrored": round(float(np.mean(list(mirrored.values()))), 4) if mirrored else None,
        "mean_paired_gain": round(gain, 4),
        "standard_error": round(spread, 4),
        "rule": "mirror by default when the mean paired gain on the run's validation patients is positive",
    }
    return gain > 0, choice
