"""The model card a run writes: a pure function of the run's config, data, state and validation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ModelConfigError
from ..inference.checkpoint import ModelCard
from .augmentation import mirrored_axes
from .config import AugmentationConfig, TrainConfig
from .validation import ValidationResult


@dataclass
class DataInfo:
    """What a card must record about the training data (filled once the data is read)."""

    num_classes: int
    class_values: list[int]  # output channel i is written as class_values[i]
    in_channels: int
    channel_names: list[str]
    preprocessing: list[dict[str, Any]]
    modality: str | None
    spacing: list[float]  # median spacing of the scans (z, y, x) mm
    source: Any  # the config's data, described
    case_count: int
    split_kind: str
    train_cases: list[str]
    val_cases: list[str]
    fingerprint: dict[str, Any] = field(default_factory=dict)  # what the model expects (issue: wrong-input warnings)


def card_class_names(
    cfg: TrainConfig, num_classes: int, parent: ModelCard | None, values: list[int] | None = None
) -> list[str]:
    names = cfg.class_names or (
        parent.class_names if parent is not None and parent.num_classes == num_classes else None
    )
    names = names or (["background"] + [f"class {k}" for k in (values or range(num_classes))[1:]])
    if len(names) != num_classes:
        raise ModelConfigError(f"class_names lists {len(names)} names but the model has {num_classes} classes")
    return list(names)


def build_card(
    *,
    cfg: TrainConfig,
    model: Any,
    data: DataInfo,
    validation: ValidationResult | None,
    state: dict[str, Any],
    device: str,
    world_size: int,
    loss: str,
    name: str,
    parent: ModelCard | None = None,
    note: str = "",
) -> ModelCard:
    """The card for ``model`` as trained so far. ``parent``: the card of the checkpoint the run
    started from (its licence, class names and description carry over unless the config says
    otherwise: a fine-tuned model is still bound by its parent's data licence)."""
    context = cfg.slice_context
    options = {
        "in_channels": data.in_channels * (2 * context + 1),
        "num_classes": data.num_classes,
        "dims": cfg.dims,
        **(cfg.model_options or {}),
    }
    validation_section: dict[str, Any] = {}
    recommended = None
    if validation is not None:
        validation_section = {
            "dice_per_depth": {str(k): round(v, 4) for k, v in validation.dice_per_depth.items()},
            "dice_per_case": {
                c: {str(k): round(v, 4) for k, v in d.items()} for c, d in validation.dice_per_case.items()
            },
            "metric": "mean over validation cases of the per-case 3D Dice (mean over the foreground classes present "
            "in the reference or the prediction), each case segmented by the Predictor on its own grid",
            "cases": list(validation.cases),
        }
        if model.info.pruning_depths:
            recommended = validation.recommended_depth
            if validation.prior_depth is not None:
                validation_section["prior_depth"] = int(validation.prior_depth)
                if validation.prior_fixed:
                    validation_section["prior_fixed"] = True
        if validation.candidates:
            validation_section["postprocessing_candidates"] = {
                name: {str(k): round(v, 4) for k, v in means.items()} for name, means in validation.candidates.items()
            }
        if validation.threshold_candidates:
            validation_section["threshold_candidates"] = {
                str(t): round(v, 4) for t, v in validation.threshold_candidates.items()
            }
    licence = cfg.data_licence or (parent.training.get("licence") if parent is not None else None)
    parent_name = (parent.name or parent.architecture) if parent is not None else None
    training = {
        "data": {
            "source": data.source,
            "cases": data.case_count,
            "split": data.split_kind,
            "train_cases": data.train_cases,
            "val_cases": data.val_cases,
            "modality": data.modality,
            "original_spacing": data.spacing,
            "fingerprint": data.fingerprint,
        },
        "command": cfg.command,
        "licence": licence,
        "loss": loss,
        "loss_options": dict(cfg.loss_options),
        "optimizer": cfg.optimizer,
        "lr": cfg.lr,
        "schedule": cfg.schedule,
        "batch_size": cfg.batch_size,
        "epochs_completed": int(state.get("epoch", 0)),
        "steps": int(state.get("step", 0)),
        "elapsed_minutes": round(float(state.get("elapsed", 0.0)) / 60.0, 2),
        "minutes": cfg.minutes,
        "device": device,
        "world_size": world_size,
        "seed": cfg.seed,
        "threads": cfg.threads,
        "target_spacing": cfg.target_spacing,
        "patch_size": cfg.patch_size,
        "cascade_training": cfg.cascade_training,
        "ema_decay": cfg.ema_decay,
        "init_checkpoint": cfg.init_checkpoint,
        "freeze": cfg.freeze,
        "parent": parent_name,
        "augmentation": cfg.to_dict()["augmentation"],
    }
    if parent is not None:  # how the starting weights were made, back to the first run
        training["parent_training"] = parent_lineage(parent)
    if note:
        training["note"] = note
    description = cfg.description or f"{model.info.title} ({cfg.dims}D) trained with cascadeseg train"
    if parent is not None and not cfg.description:
        description = f"{model.info.title} ({cfg.dims}D) fine-tuned from '{parent_name}'"
    names = card_class_names(cfg, data.num_classes, parent, data.class_values)
    return ModelCard(
        architecture=str(cfg.model),
        model_options=options,
        dims=int(cfg.dims or 2),
        input_channels=[{"name": n, "preprocessing": p} for n, p in zip(data.channel_names, data.preprocessing)],
        classes=[{"value": int(v), "name": n} for v, n in zip(data.class_values, names)],
        regions=parent.regions if parent is not None and parent.num_classes == data.num_classes else None,
        target_spacing=list(cfg.target_spacing) if cfg.target_spacing else None,
        patch_size=list(cfg.patch_size) if cfg.dims == 3 and cfg.patch_size else None,
        slice_size=list(cfg.patch_size) if cfg.dims == 2 and cfg.patch_size else None,
        slice_axis=int(cfg.axis or 0),
        context_slices=context,
        training=training,
        validation=validation_section,
        recommended_depth=recommended,
        mirror_axes=mirrored_axes(cfg.augmentation or AugmentationConfig(enabled=False), int(cfg.dims or 2)),
        postprocessing=None if validation is None else validation.postprocessing,
        foreground_threshold=None if validation is None else validation.foreground_threshold,
        name=name,
        description=description,
    )


LINEAGE_KEYS = ("command", "steps", "elapsed_minutes", "lr", "init_checkpoint")


def parent_lineage(parent: ModelCard) -> dict[str, Any]:
    """What made ``parent``'s weights: its training command, steps, minutes and learning rate, and
    its own parent's the same way (nested), so that a card names every command behind its weights."""
    training = parent.training or {}
    data = training.get("data")
    record = {
        "name": parent.name or parent.architecture,
        **{k: training[k] for k in LINEAGE_KEYS if k in training},
    }
    if isinstance(data, dict) and data.get("cases") is not None:
        record["data_cases"] = data["cases"]
    if isinstance(training.get("parent_training"), dict):
        record["parent_training"] = training["parent_training"]
    return record
