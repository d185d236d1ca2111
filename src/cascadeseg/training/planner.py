"""The planner: from the data, the device and the budget to every training choice, with reasons.

nnU-Net turns a dataset fingerprint into a plan (target spacing, 2D/3D, patch, batch, network
topology) for a GPU with a fixed 1000-epoch schedule; MONAI Auto3DSeg analyses the data and trains
several candidates. Neither plans for a wall-clock budget on a CPU, which is where one-click
training runs most often here. This planner does, in two passes:

1. :func:`plan_training` (static): from the fingerprint, the device and the budget, choose 2D or
   3D, the slicing axis, the working grid (target spacing), the patch and batch size, the network
   width and depth, the loss, the sampling and the augmentation, and whether to start from a
   shipped model (few cases). Every choice records a reason; every field given in the
   :class:`TrainConfig` wins over the planner (and says so).
2. :func:`schedule_for_budget` (measured): once the network exists, the trainer times real
   training steps and one real validation case through the predictor, and this pass sizes the
   validation (case subset, cadence, depths) and the epochs to the budget. Nothing about speed is
   guessed: a faster or slower machine gets a different schedule for the same data.

The plan is written to ``plan.json`` in the run folder and printed by ``cascadeseg plan DATA``.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch

from .._cores import affinity_cores
from ..errors import ModelConfigError
from ..models import list_models, model_class
from ..models.unet import deep_supervision_weights
from .config import (
    DEFAULT_MINUTES,
    FEW_SHOT_MINUTES,
    FEW_SHOT_MINUTES_REASON,
    SLICE_BLOCK_FINE_TUNING_MINUTES,
    SLICE_BLOCK_FINE_TUNING_MINUTES_REASON,
    AugmentationConfig,
    TrainConfig,
)
from .fingerprint import DatasetFingerprint
from .split import MIN_PATIENTS_FOR_A_PATIENT_SPLIT

PLAN_FILE = "plan.json"

# A class named by its side ("left kidney", "right lung"): its mirror image is the other side's class.
SIDED_CLASS = re.compile(r"\b(left|right)\b", re.IGNORECASE)

# Defaults when nothing else decides (each is a measured choice, see docs/one_click_training.md).
DEFAULT_MODEL = "unet"  # most optimiser steps per second on a CPU: the best Dice at 20 minutes
# 2.5D (neighbouring slices as input channels) is an option, not the default: see
# docs/one_click_training.md ("One slice or 2.5D") for the measurement behind this.
CONTEXT_SLICES_REASON = (
    "one slice per sample: 2.5D (--context-slices 1) scored 0.027 +- 0.018 lower per patient on LGG at 20 "
    "CPU minutes (fewer steps, no gain from the neighbours)"
)
CPU_BF16_REASON = (
    "this CPU computes bf16 in hardware: training steps in bf16 autocast, timed against fp32 on the run's "
    "first steps and kept if faster (validation and prediction stay fp32); on LGG at 20 minutes bf16 took "
    "1.35x the steps and scored +0.027 +- 0.013 per patient over three fresh splits"
)
# Above this anisotropy (largest / smallest spacing) a 3D network mixes slices it cannot resolve:
# slice by slice along the coarse axis (nnU-Net plans 2D-like patches there too).
ANISOTROPY_2D = 3.0
# A stack whose physical extent along one axis is under this share of the others is a stack of
# thick slices whose header does not say so (LGG: 256 x 256 x 36 at "1 mm" is a 36 mm-tall brain).
FLAT_EXTENT = 0.3
# On a CPU a 3D network over cases larger than this (voxels at the working grid) sees each case
# too few times within a budget: 2D instead. (The hippocampus crops have 63 k voxels, the CT 1.4 M.)
CPU_3D_MAX_VOXELS = 3_000_000
# Share of training samples centred on a foreground voxel (measured: docs/one_click_training.md).
FOREGROUND_PROBABILITY = 0.33
# dice_ce's per-component term for 2D one-lesion-class runs (docs/one_click_training.md, stop 55)
COMPONENT_WEIGHT = 1.0
# Few patients: start from a shipped model that fits the data (transfer beats scratch).
FEW_SHOT_PATIENTS = 10
# Adam's learning rate: from scratch, and for a fine-tuning on a few patients (a tenth:
# benchmarks/fewshot_rules.py, docs/one_click_training.md, stop 60).
LEARNING_RATE = 1e-3
FEW_SHOT_LEARNING_RATE = 1e-4
# Validation: at most this share of the (post start-up) budget, in this many rounds.
VALIDATION_SHARE = 0.10
MIN_VALIDATIONS, MAX_VALIDATIONS = 3, 10
# Reserve at the end of a budget beyond the measured final validation and checkpoint writes:
# returning, releasing memory, the caller's export (1 s plus 1 % of the budget).
END_RESERVE_SECONDS = 1.0
END_RESERVE_SHARE = 0.01
# On a CPU, a network wider than 8 only where the budget affords this many optimiser steps at its
# measured step cost. The thread-minute rule of _base_width was measured on LGG 2D crops, where
# 60 thread-minutes, its switch to width 16, afford about 5,900 width-16 steps (0.55 s each); a
# 3D step costs 10-25x more (hippocampus patches: 12.75 s at width 16 against 4.5 s at width 8),
# so the same minutes would give a wide network a few hundred steps (docs/one_click_training.md).
WIDTH_STEP_FLOOR = 5000
# A network trained from scratch that gets fewer optimiser steps than this per structure to learn
# learns nothing usable: the 62-class TotalSegmentator CT at 20 CPU minutes had 12 per structure
# (722 steps) and validated at Dice 0.001, while the 24-class MR at 5 minutes had 94 (2,165 steps)
# and reached 0.23, and every other dataset's runs had 200 or more (docs/one_click_training.md,
# "Every dataset"). The budget is then flagged before training, with the minutes that would give
# this many; a floor that the measurements support, not a promise of a good model above it.
MIN_STEPS_PER_STRUCTURE = 50
BUDGET_WARNING_PREFIX = "a small budget for this task"


@dataclass
class DeviceProfile:
    """What the run may use: device kind, CPU cores, torch threads, memory."""

    kind: str  # "cpu", "cuda" or "mps"
    name: str
    cores: int  # CPU cores this process may use (affinity and OMP_NUM_THREADS respected)
    threads: int  # torch intra-op threads the run will use
    memory_gb: float  # RAM available now
    gpu_memory_gb: float | None = None
    processes: int = 1  # data-parallel processes of this run (each with ``threads`` threads)
    native_bf16: bool = False  # a CPU that computes bf16 in hardware (AMX / AVX512-BF16)

    @property
    def is_gpu(self) -> bool:
        return self.kind != "cpu"

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def available_cores() -> int:
    """CPU cores this process may use: its affinity, capped by ``OMP_NUM_THREADS`` when set."""
    cores = affinity_cores()
    env = os.environ.get("OMP_NUM_THREADS")
    if env and env.isdigit() and int(env) > 0:
        cores = min(cores, int(env))
    return max(1, cores)


def available_memory_gb() -> float:
    """RAM available now (``MemAvailable``), or 4 GB when the system does not say."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return 4.0


def device_profile(device: torch.device, threads: int | None = None, processes: int = 1) -> DeviceProfile:
    """``processes``: the run's data-parallel processes (``torchrun``'s world size); on a CPU the
    plan is made for all of them together, so one process with two threads and two processes with
    one thread each plan the same network (only the batch is split)."""
    cores = available_cores()
    gpu = None
    name = device.type
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        gpu, name = props.total_memory / 1024**3, props.name
    return DeviceProfile(
        kind=device.type,
        name=name,
        cores=cores,
        threads=int(threads or cores),
        memory_gb=available_memory_gb(),
        gpu_memory_gb=gpu,
        processes=max(1, int(processes)),
        native_bf16=device.type == "cpu" and cpu_has_native_bf16(),
    )


def cpu_has_native_bf16() -> bool:
    """True where oneDNN runs bf16 convolutions in hardware (AMX or AVX512-BF16): there a bf16
    training step is faster than fp32; elsewhere bf16 is emulated and slower."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass
class Choice:
    value: Any
    reason: str
    source: str = "planned"  # "planned", "given" (the config said so) or "checkpoint"


@dataclass
class TrainPlan:
    """Every decision with its reason, the data and device it was made for, and the budget."""

    fingerprint: dict[str, Any]
    device: dict[str, Any]
    minutes: float | None
    choices: dict[str, Choice] = field(default_factory=dict)
    schedule: dict[str, Any] = field(default_factory=dict)  # filled by schedule_for_budget
    warnings: list[str] = field(default_factory=list)  # what the user should check before training

    def choose(self, name: str, value: Any, reason: str, source: str = "planned") -> Any:
        self.choices[name] = Choice(value, reason, source)
        return value

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    def to_dict(self) -> dict[str, Any]:
        return {
            "minutes": self.minutes,
            "device": self.device,
            "choices": {k: {"value": c.value, "source": c.source, "reason": c.reason} for k, c in self.choices.items()},
            "schedule": self.schedule,
            "warnings": self.warnings,
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainPlan:
        plan = cls(fingerprint=data.get("fingerprint", {}), device=data.get("device", {}), minutes=data.get("minutes"))
        for k, c in data.get("choices", {}).items():
            plan.choices[k] = Choice(c["value"], c["reason"], c.get("source", "planned"))
        plan.schedule = dict(data.get("schedule", {}))
        plan.warnings = [str(w) for w in data.get("warnings", [])]
        return plan

    def describe(self) -> str:
        """A readable table: choice, value, where it came from, why."""
        fp = self.fingerprint.get("summary", {})
        lines = [
            f"data: {self.fingerprint.get('num_cases')} case(s) of {self.fingerprint.get('num_patients')} patient(s), "
            f"modality {self.fingerprint.get('modality') or 'unknown'}, median spacing {fp.get('median_spacing')} mm, "
            f"median shape {fp.get('median_shape')}, classes {self.fingerprint.get('class_values')}",
            f"device: {self.device.get('name')} ({self.device.get('kind')}), {self.device.get('threads')} thread(s) "
            + (f"in each of {self.device['processes']} processes " if self.device.get("processes", 1) > 1 else "")
            + f"of {self.device.get('cores')} core(s), {self.device.get('memory_gb')} GB free"
            + (f", GPU {self.device.get('gpu_memory_gb')} GB" if self.device.get("gpu_memory_gb") else ""),
            f"budget: {f'{self.minutes:g} minutes' if self.minutes else 'epochs, no time limit'}",
            "",
        ]
        if self.warnings:  # first, where a short plan box or a scrolled terminal still shows them
            lines.append("warnings:")
            lines.extend(f"  ! {text}" for text in self.warnings)
            lines.append("")
        width = max(len(k) for k in self.choices) if self.choices else 10
        for name, choice in self.choices.items():
            tag = "" if choice.source == "planned" else f" [{choice.source}]"
            lines.append(f"  {name:<{width}}  {_show(choice.value)}{tag}\n  {'':<{width}}    {choice.reason}")
        if self.schedule:
            lines.append("")
            lines.append("schedule (measured on this machine):")
            for key, value in self.schedule.items():
                lines.append(f"  {key}: {_show(value)}")
        return "\n".join(lines)


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_show(v)}" for k, v in value.items())
    return str(value)


# ----------------------------------------------------------------------------------------------
# The static plan


# Why training's moving batch-norm statistics are kept (``--batch-norm-statistics clean`` measures
# them again before each validation and checkpoint; docs/one_click_training.md).
BATCH_NORM_STATISTICS_REASON = (
    "training's moving averages, as saved: measured again on clean training samples before each validation, "
    "the kept LGG models scored -0.0016 +- 0.0022 per patient at 20 minutes and -0.0008 +- 0.0010 at 5 "
    "(six runs each, 48 held-out patients), three-patient fine-tunings of the shipped ANU-Net -0.006 +- 0.004 "
    "(36), and the measurement costs validation time"
)


def plan_training(
    config: TrainConfig, fp: DatasetFingerprint, device: DeviceProfile, init_card: Any = None
) -> tuple[TrainConfig, TrainPlan]:
    """Fill every ``None`` of ``config`` (a copy is returned; ``config`` is not changed)."""
    cfg = config.copy()
    minutes = cfg.minutes
    budget_reason = ""
    if minutes is None and cfg.epochs is None:
        minutes, budget_reason = default_minutes(fp, init_card)
    plan = TrainPlan(fingerprint=fp.to_dict(), device=device.to_dict(), minutes=minutes)
    if budget_reason:
        plan.choose("minutes", minutes, budget_reason)
    cfg.minutes = minutes
    thread_minutes = (minutes or 60.0) * device.threads * (1 if device.is_gpu else device.processes)
    given = _given(config)

    # -- classes ----------------------------------------------------------------------------------
    cfg.class_values = _class_values(cfg, fp, init_card, plan)
    num_classes = len(cfg.class_values)
    _class_names(cfg, fp, init_card, plan)

    # -- threads --------------------------------------------------------------------------------
    if cfg.threads is None and not device.is_gpu:
        cfg.threads = plan.choose("threads", device.threads, f"the {device.cores} core(s) this process may use")
    elif cfg.layout and cfg.threads == cfg.layout.get("threads"):
        plan.choose("threads", cfg.threads, "the layout measured fastest (see processes)", "measured")
    elif cfg.threads is not None:
        plan.choose("threads", cfg.threads, "given", "given")
    if not device.is_gpu:
        _choose_processes(cfg, device, plan)
        _choose_cpu_precision(cfg, device, plan)

    # -- starting point ---------------------------------------------------------------------------
    if init_card is not None:
        plan.choose("init_checkpoint", cfg.init_checkpoint, "fine-tune the given checkpoint", "given")
    _choose_learning_rate(cfg, fp, init_card, plan)

    # -- 2D or 3D, and the slicing axis -----------------------------------------------------------
    if init_card is not None:
        # The network's dimensionality is the checkpoint's; a given --dims that contradicts it is
        # an error, never silently dropped. A 2D network slices along any axis: a given axis wins.
        if "dims" in given and int(given["dims"]) != int(init_card.dims):
            raise ModelConfigError(
                f"init checkpoint '{cfg.init_checkpoint}' is a {init_card.dims}D model, but dims={given['dims']} "
                f"was given: give dims={init_card.dims} (or leave it out) or start from a {given['dims']}D checkpoint"
            )
        if "dims" in given:
            cfg.dims = plan.choose("dims", int(init_card.dims), "given", "given")
        else:
            cfg.dims = plan.choose("dims", int(init_card.dims), "the checkpoint's", "checkpoint")
        if "axis" in given:
            cfg.axis = plan.choose("axis", int(given["axis"]), "given", "given")
        else:
            cfg.axis = plan.choose("axis", int(init_card.slice_axis), "the checkpoint's slicing axis", "checkpoint")
    else:
        dims, axis, why = _dims_and_axis(fp, device)
        cfg.dims = given.get("dims") or plan.choose("dims", dims, why)
        if "dims" in given:
            plan.choose("dims", cfg.dims, "given", "given")
        cfg.axis = given.get("axis", axis)
        plan.choose(
            "axis",
            cfg.axis,
            "given"
            if "axis" in given
            else f"slices normal to axis {axis} "
            f"({'the coarsest spacing' if fp.anisotropy > ANISOTROPY_2D else 'the thinnest extent'})"
            if cfg.dims == 2
            else "3D: unused",
            "given" if "axis" in given else "planned",
        )

    # -- slices per sample (2D) -----------------------------------------------------------------
    if cfg.dims != 2:
        if cfg.context_slices:
            raise ModelConfigError(
                f"context_slices={cfg.context_slices} needs a 2D model, but the plan is 3D: give --dims 2 or drop it"
            )
        cfg.context_slices = 0
    elif config.context_slices is not None:
        plan.choose("context_slices", cfg.context_slices, "given", "given")
    elif init_card is not None:
        cfg.context_slices = plan.choose(
            "context_slices", int(init_card.context_slices), "the checkpoint's (slices it reads)", "checkpoint"
        )
    else:
        cfg.context_slices = plan.choose("context_slices", 0, CONTEXT_SLICES_REASON)

    # -- working grid ----------------------------------------------------------------------------
    # A given grid (target_spacing, or inplane_size) wins over the checkpoint's: fine-tuning a
    # network on another modality's grid (MRI -> CT) is the user's call.
    if cfg.target_spacing is not None:
        plan.choose("target_spacing", cfg.target_spacing, "given", "given")
    elif init_card is not None and init_card.target_spacing and not cfg.inplane_size:
        cfg.target_spacing = plan.choose(
            "target_spacing",
            list(init_card.target_spacing),
            "the checkpoint's working grid (in-plane; slices stay native in 2D)",
            "checkpoint",
        )
    else:
        target, why = _target_spacing(fp, cfg.dims, cfg.axis, cfg.inplane_size, device, thread_minutes)
        cfg.target_spacing = plan.choose("target_spacing", target, why, "given" if cfg.inplane_size else "planned")
    working_shape = _working_shape(fp, cfg.target_spacing, cfg.dims, cfg.axis)

    # -- architecture, width, depth --------------------------------------------------------------
    if init_card is not None:
        if config.model is not None and config.model != init_card.architecture:
            raise ModelConfigError(
                f"init checkpoint '{cfg.init_checkpoint}' is of architecture '{init_card.architecture}', but "
                f"model '{config.model}' was given: leave the model out to fine-tune it, or drop the checkpoint"
            )
        cfg.model = plan.choose("model", init_card.architecture, "the checkpoint's architecture", "checkpoint")
        cfg.model_options = {
            k: v for k, v in init_card.model_options.items() if k not in ("in_channels", "num_classes", "dims")
        }
        plan.choose("model_options", cfg.model_options, "the checkpoint's", "checkpoint")
    else:
        if cfg.model is None:
            cfg.model = plan.choose(
                "model",
                DEFAULT_MODEL,
                "the plain U-Net takes the most optimiser steps per "
                "second, which wins under a budget (docs/training_results.md); pick a cascade or "
                "nested model with --model for its stages, attention maps or pruning",
            )
        else:
            plan.choose("model", cfg.model, "given", "given")
        _check_model(cfg.model)

    # -- patch and batch -------------------------------------------------------------------------
    if cfg.patch_size is not None:
        plan.choose("patch_size", list(cfg.patch_size), "given", "given")
    else:
        patch, why = _patch_size(working_shape, cfg.dims, cfg.axis, device, thread_minutes)
        cfg.patch_size = plan.choose("patch_size", patch, why)
    if init_card is None:
        options = dict(cfg.model_options or {})
        if "base_width" not in options:
            width, why = _base_width(device, thread_minutes)
            options["base_width"] = width
            plan.choose("base_width", width, why)
        else:
            plan.choose("base_width", options["base_width"], "given", "given")
        if "levels" not in options:
            levels, why = _levels(cfg.model, cfg.patch_size)
            if levels is not None:
                options["levels"] = levels
                plan.choose("levels", levels, why)
        if cfg.dims == 3 and "spacing" not in options:
            options["spacing"] = [round(float(s), 4) for s in cfg.target_spacing]
        cfg.model_options = options
    if cfg.batch_size is not None:
        plan.choose("batch_size", cfg.batch_size, "given", "given")
    else:
        batch, why = _batch_size(
            cfg.dims, cfg.patch_size, int((cfg.model_options or {}).get("base_width", 16)), num_classes, device
        )
        if not device.is_gpu and device.processes > 1:
            # The run's batch, split over its processes: the same recipe as one process would train.
            batch, why = (
                per_process_batch(batch, device.processes),
                f"{batch} ({why}) over {device.processes} processes",
            )
        cfg.batch_size = plan.choose("batch_size", batch, why)
    memory = estimate_training_memory_gb(
        cfg.dims, cfg.patch_size, int((cfg.model_options or {}).get("base_width", 16)), num_classes, cfg.batch_size
    )
    plan.choose(
        "estimated_training_memory_gb",
        round(memory, 2),
        "activations + logits of one step at this patch, width, class count and batch (analytic estimate)",
    )

    # -- loss, sampling, augmentation ------------------------------------------------------------
    info = model_class(cfg.model).info
    options_settled = bool(cfg.loss_options)  # given options are never replaced
    if options_settled:
        plan.choose("loss_options", dict(cfg.loss_options), "given", "given")
    if cfg.loss is not None:
        plan.choose("loss", cfg.loss, "given", "given")
    elif init_card is not None and init_card.training.get("loss"):
        from ..losses import loss_names

        name = init_card.training.get("loss")
        if name in loss_names():
            # its options too (a UNet# trained for its L1 head without the decoder branches keeps
            # that loss when fine-tuned), unless options were given; a card that records none
            # (also {}) keeps none: the checkpoint was trained that way
            cfg.loss = plan.choose("loss", name, "the loss the checkpoint was trained with", "checkpoint")
            if not options_settled and "loss_options" in init_card.training:
                cfg.loss_options = plan.choose(
                    "loss_options",
                    dict(init_card.training["loss_options"] or {}),
                    "the options the checkpoint's loss was trained with",
                    "checkpoint",
                )
                options_settled = True
    if cfg.loss is None:
        cfg.loss = plan.choose("loss", info.default_loss, f"the paper loss of {info.title}")
    if not options_settled and info.default_loss_options:
        cfg.loss_options = plan.choose(
            "loss_options",
            dict(info.default_loss_options),
            f"{info.title}'s own weighting of its output branches, for whichever loss (models/catalogue.toml; "
            "measured in docs/model_zoo.md); loss options given replace it",
        )
        options_settled = True
    fresh_2d_lesion_unet = init_card is None and cfg.model == "unet" and cfg.dims == 2 and num_classes == 2
    if not options_settled and fresh_2d_lesion_unet and cfg.loss == "dice_ce":
        # Measured only there: the plain U-Net trained from scratch in 2D on one lesion class (LGG).
        # A 3D or multi-class target (hippocampus, organs) is mostly one component per class, where
        # the term would be a per-image Dice never tested; a fine-tuning keeps its checkpoint's loss;
        # the nested models' comparisons (docs/model_zoo.md) keep the loss they were measured with.
        cfg.loss_options = plan.choose(
            "loss_options",
            {"component_weight": COMPONENT_WEIGHT},
            "each lesion component of a slice also scored alone (blob loss), so a missed small island costs as "
            "much as a missed large lesion: on LGG at 20 CPU minutes +0.019 +- 0.009 per patient over five "
            "splits, no split lower, every split's worst patient raised (docs/one_click_training.md); "
            "--loss-option component_weight=0 turns it off",
        )
    _weigh_unet_deep_supervision(cfg, plan)
    if cfg.foreground_probability is None:
        rare = fp.rarest_foreground_fraction
        cfg.foreground_probability = plan.choose(
            "foreground_probability",
            FOREGROUND_PROBABILITY,
            f"a third of the samples centred on foreground (nnU-Net's share; the rarest class covers {100 * rare:.2f} % "
            "of the voxels): on LGG at 20 minutes a third gave 0.778 internal validation Dice against 0.749 for a "
            "half, which over-segments",
        )
    if cfg.keep is not None:
        plan.choose("keep", cfg.keep, "given", "given")
    elif fp.num_patients < MIN_PATIENTS_FOR_A_PATIENT_SPLIT:
        cfg.keep = plan.choose(
            "keep",
            "best",
            f"{fp.num_patients} patient(s): validation is blocks of the training volumes, and by the end of the "
            "schedule the network has fitted those volumes (two CTs, each left out once: the final weights found no "
            "liver in the other CT, Dice 0.000; the best validated ones 0.504)",
        )
    else:
        if cfg.schedule in ("cosine", "step"):
            reason = (
                f"the {cfg.schedule} schedule ends at a small learning rate: the final weights are the converged "
                "ones (nnU-Net ships its final checkpoint); the best of a few validations on a few patients is "
                "partly noise and can be an early, unsettled epoch (5-minute LGG runs, six scored on 48 held-out "
                "patients: the best validated epoch -0.008 +- 0.009 against the final one)"
            )
            if _few_shot_fine_tuning(fp, init_card):
                reason += (
                    " (a fine-tuning on three shifted LGG patients, four folds, each scored on nine others: the best "
                    "validated epoch +0.017 +- 0.010 over the final one, not over two standard errors)"
                )
            cfg.keep = plan.choose("keep", "last", reason)
        else:
            cfg.keep = plan.choose(
                "keep", "best", f"a {cfg.schedule} schedule does not settle by the end: the best validated weights"
            )
    if cfg.batch_norm_statistics is not None:
        plan.choose("batch_norm_statistics", cfg.batch_norm_statistics, "given", "given")
    else:
        cfg.batch_norm_statistics = plan.choose("batch_norm_statistics", "running", BATCH_NORM_STATISTICS_REASON)
    if cfg.augmentation is None:
        ct = fp.modality == "CT"
        names = cfg.class_names or (init_card.class_names if init_card is not None else [])
        sided = [n for n in names if SIDED_CLASS.search(n)]
        cfg.augmentation = AugmentationConfig(
            flip=not sided,
            rot90=False,
            gamma_probability=0.3,
            contrast_probability=0.15,
            noise_probability=0.1,
            bias_probability=0.0 if ct else 0.3,
        )
        plan.choose(
            "augmentation",
            ("flips, " if not sided else "")
            + "small rotations, zoom, elastic; scale/shift, gamma, contrast, noise"
            + ("" if ct else ", bias field")
            + "; no 90-degree rotations"
            + ("; no flips" if sided else ""),
            "scans have a canonical orientation (a 90-degree turn shows anatomy no scanner makes); scans from "
            "other scanners differ in gamma, contrast, noise"
            + ("" if ct else " and coil bias")
            + " (nnU-Net's probabilities)"
            + (
                f"; classes named by side ({', '.join(sided)}): a mirrored sample would show one side's "
                "structure where the other's belongs (TotalSegmentator trains without mirroring for this)"
                if sided
                else ""
            ),
        )
    if cfg.augmentation_changes:
        cfg.augmentation = _changed_augmentation(cfg.augmentation or AugmentationConfig(), cfg.augmentation_changes)
        plan.choose("augmentation_changes", dict(cfg.augmentation_changes), "given: the rest as planned", "given")
    if cfg.val_batch_size is None:
        cfg.val_batch_size = None  # the predictor's own default (the same batches as inference)
    return cfg, plan


def _changed_augmentation(base: AugmentationConfig, changes: dict[str, Any]) -> AugmentationConfig:
    """``base`` with the settings ``changes`` names (an unknown name is refused with the choices)."""
    known = [f.name for f in fields(AugmentationConfig)]
    unknown = sorted(set(changes) - set(known))
    if unknown:
        raise ModelConfigError(f"augmentation: unknown setting(s) {unknown}; choose from {', '.join(known)}")
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()}
    return replace(base, **values)


# What a training set writes for a value nobody named (``label_1``), and a card's default (``class 1``).
PLACEHOLDER_CLASS_NAME = re.compile(r"^\s*(label_?|class\s*)\d+\s*$", re.IGNORECASE)


def _class_names(cfg: TrainConfig, fp: DatasetFingerprint, init_card: Any, plan: TrainPlan) -> None:
    """Name the classes: given names win; else the dataset's (``dataset.json``), filled in where the
    data names a value the checkpoint does not. A checkpoint that names a value otherwise than the
    data is a warning, not an error: starting a tumour model from a model of another structure is
    a deliberate transfer, but a label value that means one organ in the checkpoint and another in
    the data (LiTS' 2 = tumour onto CHAOS' 2 = right kidney) is more often a labelling slip."""
    values = list(cfg.class_values or [])
    data_names = {
        int(v): n for v, n in fp.class_names.items() if int(v) in values and not PLACEHOLDER_CLASS_NAME.match(n)
    }
    if cfg.class_names is not None:
        plan.choose("class_names", list(cfg.class_names), "given", "given")
        return
    if init_card is None:
        if data_names:
            names = [data_names.get(v, "background" if v == 0 else f"class {v}") for v in values]
            cfg.class_names = plan.choose("class_names", names, "dataset.json's labels")
        return
    card_names = dict(zip((int(v) for v in init_card.class_values), init_card.class_names, strict=False))
    differ = [
        (v, card_names[v], name)
        for v, name in data_names.items()
        if v != 0
        and v in card_names
        and not PLACEHOLDER_CLASS_NAME.match(card_names[v])
        and name.strip().casefold() != card_names[v].strip().casefold()
    ]
    if not differ and not data_names:
        return  # the card's names go on (training.card.card_class_names)
    names = [data_names.get(v, card_names.get(v, f"class {v}")) for v in values]
    if not differ:
        cfg.class_names = plan.choose("class_names", names, "dataset.json's labels (the checkpoint's agree)")
        return
    said = "; ".join(f"value {v} is '{old}' in the checkpoint but '{new}' in the data" for v, old, new in differ)
    cfg.class_names = plan.choose(
        "class_names", names, f"dataset.json's labels: the checkpoint's outputs are retrained to them ({said})"
    )
    plan.warn(
        f"{said}: the checkpoint's output for each is retrained as the data's class. If that is not meant, "
        "relabel the data to the checkpoint's values, or train a fresh model instead (no --init-checkpoint; "
        "--no-auto-init where the planner chose the checkpoint)."
    )


def _class_values(cfg: TrainConfig, fp: DatasetFingerprint, init_card: Any, plan: TrainPlan) -> list[int]:
    """The label values the network outputs, one channel each (background first)."""
    present = sorted(set(fp.class_values) | {0})
    if init_card is not None:
        values = [int(v) for v in init_card.class_values]
        unknown = sorted(set(present) - set(values))
        if unknown:
            known = ", ".join(f"{c['value']} ({c.get('name', '')})" for c in init_card.classes)
            raise ModelConfigError(
                f"the labels hold value(s) {unknown} but the init checkpoint was set up for classes {known}; "
                "relabel them, or start a fresh model"
            )
        return plan.choose("class_values", values, "the checkpoint's classes", "checkpoint")
    if cfg.class_values is not None:
        unknown = sorted(set(present) - set(cfg.class_values))
        if unknown:
            raise ModelConfigError(
                f"the labels hold value(s) {unknown} that class_values {cfg.class_values} does not list"
            )
        return plan.choose("class_values", list(cfg.class_values), "given", "given")
    if cfg.num_classes is not None:
        return plan.choose(
            "class_values", list(range(cfg.num_classes)), f"num_classes={cfg.num_classes} given", "given"
        )
    top = max(present)
    if present == list(range(top + 1)):
        values = present if top >= 1 else [0, 1]
        return plan.choose("class_values", values, f"label values 0..{values[-1]}")
    return plan.choose(
        "class_values",
        present,
        (
            f"{len(present)} label values present between 0 and {top}: one output channel per value present "
            f"({len(present)} instead of {top + 1}; each channel is written back as its value)"
        ),
    )


def plan_preprocessing(
    fp: DatasetFingerprint, fallback: list[dict[str, Any]], init_card: Any = None
) -> tuple[list[dict[str, Any]], str, str]:
    """Per channel: the checkpoint's spec for a channel mapped onto it (``fallback``, the reader's
    default, for one that is not), else the data's own by modality (CT: a window over the labelled
    structures' intensities, nnU-Net's CT normalisation; MR and unknown: robust z-score). A
    checkpoint's spec made for the other family (an MR z-score on CT data, a HU window on MR data)
    is replaced by the data's own: its units do not carry over (CHAOS MRI -> CT: liver Dice 0.75
    with the MR z-score, 0.97 with the CT window; docs/default_models.md). Returns the specs, the
    reason and its source ("planned" or "checkpoint")."""
    n = len(fp.channels)
    own, own_reason = _preprocessing_for_modality(fp)
    if init_card is None:
        return own, own_reason, "planned"
    from .transfer import map_channels

    names = [c.name for c in fp.channels]
    mapping = map_channels(init_card.channel_names, names) if n != len(init_card.input_channels) else list(range(n))
    data_is_ct = own[0]["type"] == "ct_window"
    specs: list[dict[str, Any]] = []
    replaced: list[int] = []
    for c, m in enumerate(mapping):
        if m is None:
            specs.append(fallback[c])
            continue
        inherited = dict(init_card.input_channels[m]["preprocessing"])
        if (inherited.get("type") == "ct_window") != data_is_ct:
            specs.append(own[c])
            replaced.append(c)
        else:
            specs.append(inherited)
    if not replaced:
        return specs, "the checkpoint's, channel by channel", "checkpoint"
    kind = "CT" if data_is_ct else "MR / unknown"
    rest = "" if len(replaced) == n else ", the other channels the checkpoint's"
    return (
        specs,
        (
            f"the data is {kind} and the checkpoint's input was not: channel(s) {replaced} get the data's own "
            f"normalisation ({own_reason}){rest}"
        ),
        "planned",
    )


def _preprocessing_for_modality(fp: DatasetFingerprint) -> tuple[list[dict[str, Any]], str]:
    """The data's own normalisation per channel, and why."""
    if fp.modality == "CT" or all(c.integer_valued and c.overall_percentiles[0] <= -500 for c in fp.channels):
        specs = []
        for c in fp.channels:
            low, high = c.foreground_percentiles[0], c.foreground_percentiles[2]
            if high - low < 50:  # a tiny labelled structure: fall back to a soft-tissue window
                low, high = -160.0, 240.0
            specs.append({"type": "ct_window", "window": [round(float(low)), round(float(high))]})
        return specs, (
            "CT: clip to the 0.5-99.5 percentiles of the labelled "
            "structures' HU (nnU-Net's CT normalisation), scaled to [0, 1]"
        )
    specs = [{"type": "mri_zscore", "percentiles": [0.5, 99.5], "foreground": "auto"} for _ in fp.channels]
    return specs, (
        "MR / unknown: z-score inside the head (brighter than "
        "5 % of the intensity range, whatever the background's value: a file already normalised or rescaled gives the "
        "same input), after clipping to its 0.5-99.5 percentiles"
    )


def _given(config: TrainConfig) -> dict[str, Any]:
    return {k: getattr(config, k) for k in ("dims", "axis") if getattr(config, k) is not None}


def _check_model(name: str) -> None:
    names = [i.name for i in list_models()]
    if name not in names:
        raise ModelConfigError(f"model '{name}' is not known; expected one of {names}")


def _dims_and_axis(fp: DatasetFingerprint, device: DeviceProfile) -> tuple[int, int, str]:
    spacing, extent = fp.median_spacing, fp.median_extent_mm
    if fp.anisotropy > ANISOTROPY_2D:
        axis = int(np.argmax(spacing))
        return (
            2,
            axis,
            (
                f"spacing {np.round(spacing, 2).tolist()} mm is {fp.anisotropy:.1f}x anisotropic "
                f"(> {ANISOTROPY_2D}): slice by slice along the coarse axis"
            ),
        )
    flatness = float(extent.min() / extent.max())
    if flatness < FLAT_EXTENT:
        axis = int(np.argmin(extent))
        return (
            2,
            axis,
            (
                f"the median case is {np.round(extent).astype(int).tolist()} mm: {flatness:.2f} as thick as "
                f"wide, a stack of thick slices whose header does not say so (< {FLAT_EXTENT})"
            ),
        )
    voxels = float(np.prod(fp.median_shape))
    if not device.is_gpu and voxels > CPU_3D_MAX_VOXELS:
        axis = int(np.argmax(spacing)) if fp.anisotropy > 1.05 else 0
        return (
            2,
            axis,
            (
                f"near-isotropic, but the median case has {voxels / 1e6:.1f} M voxels: on a CPU a 3D network "
                f"would see each case too few times (> {CPU_3D_MAX_VOXELS / 1e6:.0f} M)"
            ),
        )
    return (
        3,
        0,
        (
            f"near-isotropic spacing {np.round(spacing, 2).tolist()} mm and {voxels / 1e6:.2f} M voxels per "
            f"case: 3D patches see the anatomy in all three directions"
        ),
    )


def _target_spacing(
    fp: DatasetFingerprint, dims: int, axis: int, inplane_size: int | None, device: DeviceProfile, thread_minutes: float
) -> tuple[list[float], str]:
    spacing = fp.median_spacing.astype(float).copy()
    shape = fp.median_shape.astype(float)
    if dims == 3:
        return [round(float(s), 4) for s in spacing], "the median spacing of the cases (nnU-Net's full-resolution grid)"
    plane = [a for a in range(3) if a != axis]
    longest = max(shape[a] * spacing[a] / spacing[plane[0]] for a in plane)  # in-plane pixels at the finest spacing
    in_plane = float(min(spacing[a] for a in plane))
    if inplane_size:
        wanted, why = float(inplane_size), f"inplane_size={inplane_size} given"
    elif device.is_gpu:
        wanted, why = 512.0, "a GPU trains at native resolution up to 512 px"
    elif thread_minutes <= 40:
        wanted, why = 128.0, f"a CPU budget of {thread_minutes:.0f} thread-minutes: 128 px slices"
    elif thread_minutes <= 240:
        wanted, why = 192.0, f"a CPU budget of {thread_minutes:.0f} thread-minutes: 192 px slices"
    else:
        wanted, why = 256.0, f"a CPU budget of {thread_minutes:.0f} thread-minutes: 256 px slices"
    factor = max(1.0, longest / wanted)
    target = spacing.copy()
    for a in plane:
        target[a] = in_plane * factor
    target[axis] = spacing[axis]  # 2D: the slices stay as they are (the predictor does the same)
    size = int(round(longest / factor))
    return [round(float(s), 4) for s in target], (
        f"in-plane {in_plane:.3g} mm x {factor:.3g} = {in_plane * factor:.3g} mm ({size} px across the median case); {why}"
    )


def _working_shape(fp: DatasetFingerprint, target: list[float], dims: int, axis: int) -> list[int]:
    scale = fp.median_spacing / np.asarray(target, dtype=float)
    shape = np.maximum(1, np.round(fp.median_shape * scale)).astype(int)
    if dims == 2:
        shape[axis] = int(fp.median_shape[axis])
    return [int(s) for s in shape]


def _patch_size(
    working: list[int], dims: int, axis: int, device: DeviceProfile, thread_minutes: float
) -> tuple[list[int], str]:
    if dims == 2:
        plane = [working[a] for a in range(3) if a != axis]
        if device.is_gpu:
            return [int(s) for s in plane], "whole slices (nnU-Net's 2D patch covers the slice)"
        cap = 96 if thread_minutes <= 240 else 128
        patch = [min(int(s), cap) for s in plane]
        return patch, (
            f"crops of at most {cap} px (on a CPU, crops around the foreground beat whole slices: on LGG "
            "at 20 CPU minutes whole 128 px slices, as many pixels per step, scored 0.043 +- 0.025 lower "
            "per patient over two folds; inference runs on whole slices)"
        )
    cap_voxels = 128**3 if device.is_gpu else 64**3
    patch = [int(s) for s in working]
    while float(np.prod(patch)) > cap_voxels:
        i = int(np.argmax(patch))
        patch[i] = max(16, int(patch[i] * 0.875))
    why = (
        "the median case"
        if patch == list(working)
        else f"shrunk from the median case {working} to {int(np.prod(patch))} voxels"
    )
    return patch, f"{why} (at most {round(cap_voxels ** (1 / 3))}^3 voxels on a {'GPU' if device.is_gpu else 'CPU'})"


def _base_width(device: DeviceProfile, thread_minutes: float) -> tuple[int, str]:
    if device.is_gpu:
        return 32, "the papers' width (a GPU affords it)"
    if thread_minutes <= 60:
        return 8, (
            f"{thread_minutes:.0f} CPU thread-minutes: a narrow network takes more steps (LGG 2D crops at 20 "
            "minutes: 14,391 at width 8 against 6,158 at width 16, which validated 0.087 lower on the same 13 "
            "patients)"
        )
    if thread_minutes <= 300:
        return 16, f"{thread_minutes:.0f} CPU thread-minutes: width 16"
    return 24, f"{thread_minutes:.0f} CPU thread-minutes: width 24 (paper: 32)"


def narrower_width(plan: TrainPlan, cfg: TrainConfig, step_seconds: float, seconds_left: float) -> int | None:
    """After the first steps are timed: the narrower width a planned CPU network should have when
    the budget affords it fewer than :data:`WIDTH_STEP_FLOOR` steps (recorded in the plan), or
    ``None`` to keep it. A given width, a checkpoint's width and a GPU's are never changed."""
    choice = plan.choices.get("base_width")
    if choice is None or choice.source != "planned" or cfg.init_checkpoint or plan.device.get("kind") != "cpu":
        return None
    width = int(choice.value)
    steps = (1.0 - VALIDATION_SHARE) * max(0.0, seconds_left) / max(step_seconds, 1e-9)
    if width <= 8 or steps >= WIDTH_STEP_FLOOR:
        return None
    narrower = 16 if width > 16 else 8
    plan.choose(
        "base_width",
        narrower,
        f"{choice.reason}, but width {width} measured {step_seconds:.2f} s per step: about {steps:.0f} steps in "
        f"the budget, under the {WIDTH_STEP_FLOOR} a wider network is planned for; a narrow network takes "
        "more steps",
    )
    return narrower


def _levels(model: str, patch: list[int]) -> tuple[int | None, str]:
    """Resolution levels so the coarsest feature map keeps >= 4 voxels along the smallest patch
    axis (nnU-Net's rule); nested models keep their paper's 5 levels (their pruning heads depend
    on it)."""
    info = model_class(model).info
    if info.pruning_depths:
        return None, ""
    smallest = min(int(p) for p in patch)
    levels = int(max(2, min(5, 1 + math.floor(math.log2(max(smallest, 8) / 4)))))
    if levels == 5:
        return None, ""
    return levels, f"{levels} levels: the coarsest map keeps >= 4 voxels of the {smallest}-voxel patch axis"


def _weigh_unet_deep_supervision(cfg: TrainConfig, plan: TrainPlan) -> None:
    """A plain U-Net with ``deep_supervision`` gets nnU-Net's halving weights for its outputs below
    full resolution, unless ``aux_weights`` was given (other given loss options are kept)."""
    options = cfg.model_options or {}
    if cfg.model != "unet" or not options.get("deep_supervision"):
        return
    given = dict(cfg.loss_options or {})
    if "aux_weights" in given:
        return
    weights = deep_supervision_weights(int(options.get("levels", 5)))
    before = plan.choices.get("loss_options")
    reason = "nnU-Net's deep-supervision weights, halved per level below full resolution"
    if before is not None:
        reason = f"{before.reason}; plus {reason}"
    cfg.loss_options = plan.choose("loss_options", {**given, "aux_weights": weights}, reason)


def per_process_batch(batch: int, processes: int) -> int:
    """Each of ``processes`` data-parallel processes' share of a batch of ``batch`` (rounded up)."""
    return max(1, -(-int(batch) // max(1, int(processes))))


def _choose_processes(cfg: TrainConfig, device: DeviceProfile, plan: TrainPlan) -> None:
    """Record how the run uses the CPU: its processes (``torchrun``'s world size, or what the
    command line measured and started: :mod:`.cpu_layout`)."""
    layout = cfg.layout or {}
    if layout:
        reason, source = str(layout.get("reason", "measured")), "measured"
    elif device.processes > 1:
        reason, source = "the processes torchrun started", "given"
    elif cfg.processes is not None:
        reason, source = "given", "given"
    else:
        reason, source = "one process (measuring threads against processes is the command line's step)", "planned"
    cfg.processes = plan.choose("processes", device.processes, reason, source)


def default_minutes(fp: DatasetFingerprint, init_card: Any) -> tuple[float, str]:
    """The budget of a run given neither minutes nor epochs, and why."""
    if not _few_shot_fine_tuning(fp, init_card):
        return DEFAULT_MINUTES, f"no budget given: {DEFAULT_MINUTES:g} minutes"
    given = f"no budget given, a fine-tuning on {fp.num_patients} patient(s): "
    if fp.num_patients < MIN_PATIENTS_FOR_A_PATIENT_SPLIT:
        return SLICE_BLOCK_FINE_TUNING_MINUTES, given + SLICE_BLOCK_FINE_TUNING_MINUTES_REASON
    return FEW_SHOT_MINUTES, given + FEW_SHOT_MINUTES_REASON


def _few_shot_fine_tuning(fp: DatasetFingerprint, init_card: Any) -> bool:
    """A fine-tuning (a starting checkpoint) on ``FEW_SHOT_PATIENTS`` patients or fewer: the
    regime benchmarks/fewshot_rules.py measures, which gets its own learning rate."""
    return init_card is not None and fp.num_patients <= FEW_SHOT_PATIENTS


def _choose_learning_rate(cfg: TrainConfig, fp: DatasetFingerprint, init_card: Any, plan: TrainPlan) -> None:
    """The optimiser's base learning rate: 1e-3, or a tenth of it for a fine-tuning on a few
    patients, which at 1e-3 moves a trained network away from what it knew faster than two or three
    patients can teach it anything."""
    if cfg.lr is not None:
        plan.choose("lr", cfg.lr, "given", "given")
    elif _few_shot_fine_tuning(fp, init_card):
        cfg.lr = plan.choose(
            "lr",
            FEW_SHOT_LEARNING_RATE,
            f"a fine-tuning on {fp.num_patients} patient(s) (<= {FEW_SHOT_PATIENTS}): a tenth of {LEARNING_RATE:g}; "
            "the shipped FLAIR ANU-Net fine-tuned on two shifted LGG patients for 8 minutes, six folds, each scored "
            "on ten others: 0.694 against 0.635 at 1e-3 (+0.060 +- 0.021, no fold lower), the starting model 0.641; "
            "on three, four folds each scored on nine others: 0.718 against 0.652 (+0.066 +- 0.041)",
        )
    else:
        reason = (
            "the base rate (Adam's usual one); on LGG at 20 CPU minutes 3e-3 scored 0.037 +- 0.013 lower per patient"
        )
        if init_card is not None:
            reason += " (a fine-tuning on more than a few patients keeps it: a tenth is measured on few-shot runs only)"
        cfg.lr = plan.choose("lr", LEARNING_RATE, reason)


def _choose_cpu_precision(cfg: TrainConfig, device: DeviceProfile, plan: TrainPlan) -> None:
    """The arithmetic of a CPU run's training steps. bf16 autocast where the CPU computes bf16 in
    hardware; the run's first steps then time it against fp32 and keep the faster
    (``Trainer._pick_precision``). Validation, export and prediction stay fp32 (one predictor)."""
    if cfg.cpu_precision is not None:
        plan.choose("cpu_precision", cfg.cpu_precision, "given", "given")
    elif device.native_bf16:
        cfg.cpu_precision = plan.choose("cpu_precision", "bf16", CPU_BF16_REASON)
    else:
        cfg.cpu_precision = plan.choose(
            "cpu_precision", "fp32", "this CPU has no bf16 in hardware (AMX / AVX512-BF16): emulated bf16 is slower"
        )


def estimate_training_memory_gb(dims: int, patch: list[int], width: int, num_classes: int, batch: int) -> float:
    """Bytes of one training step: the stored activations of a 5-level U-Net (about 12 float maps
    per level's width: two convolutions, each with its normalisation and activation, encoder and
    decoder; nested decoders are within a factor 2) plus the logits and their softmax, one-hot
    target and gradients (6 maps per class). An estimate to size batch and patch, not a promise:
    the tests measure the real peak."""
    voxels = float(np.prod(patch))
    per_level = sum(width * 2**level * voxels / (2**dims) ** level for level in range(5))
    activations = 12 * per_level
    logits = 6 * num_classes * voxels
    return 4.0 * batch * (activations + logits) / 1024**3


def _batch_size(dims: int, patch: list[int], width: int, num_classes: int, device: DeviceProfile) -> tuple[int, str]:
    if device.is_gpu:
        budget = 0.6 * float(device.gpu_memory_gb or 8.0)
        batch = 32 if dims == 2 else 4
        where = f"{budget:.0f} GB of GPU memory"
    else:
        budget = min(2.5, 0.3 * device.memory_gb)
        batch = 8 if dims == 2 else 2
        where = f"{budget:.1f} GB of RAM (so a whole run stays under 4 GB)"
    while batch > 1 and estimate_training_memory_gb(dims, patch, width, num_classes, batch) > budget:
        batch //= 2
    why = f"fits {where} at this patch, width and {num_classes} classes"
    if batch == 8 and dims == 2 and not device.is_gpu:
        why += (
            "; on LGG at 20 CPU minutes batch 4 (1.6x the steps) scored 0.079 +- 0.037 lower per patient on one "
            "split and batch 16 (0.56x the steps) 0.008 +- 0.012 lower over three"
        )
    return batch, why


# ----------------------------------------------------------------------------------------------
# The measured schedule


def schedule_for_budget(
    plan: TrainPlan,
    cfg: TrainConfig,
    *,
    step_seconds: float,
    case_seconds: list[float],
    startup_seconds: float,
    train_samples: int,
    world_size: int = 1,
    statistics_seconds: float = 0.0,
) -> dict[str, Any]:
    """Size validation and epochs from measured costs; writes ``plan.schedule`` and returns the
    config fields it sets (``val_max_cases``, ``steps_per_epoch``, ``epochs``, ``validation_depths``).

    ``step_seconds``: one training step (measured); ``case_seconds``: the predicted validation cost of
    each validation case (one case measured, scaled by voxels); ``startup_seconds``: already spent;
    ``statistics_seconds``: the batch-norm statistics measured before each validation (timed).
    """
    out: dict[str, Any] = {}
    n_cases = len(case_seconds)
    per_case = float(np.mean(case_seconds)) if case_seconds else 0.0
    if cfg.minutes:
        budget = cfg.minutes * 60.0
        left = max(1.0, budget - startup_seconds)
        val_budget = VALIDATION_SHARE * left
        k = cfg.val_max_cases or n_cases
        k = min(k, n_cases)
        one = per_case * k + statistics_seconds
        rounds = int(min(MAX_VALIDATIONS, math.floor(val_budget / one))) if one > 0 else MAX_VALIDATIONS
        if rounds < MIN_VALIDATIONS and cfg.val_max_cases is None:
            # Not even three validations of every case fit in the share: validate on a subset.
            per_round = val_budget / MIN_VALIDATIONS - statistics_seconds
            k = max(1, min(n_cases, int(per_round / max(per_case, 1e-9))))
            one = per_case * k + statistics_seconds
            rounds = MIN_VALIDATIONS
        rounds = max(1, rounds)
        train_seconds = max(step_seconds, left - rounds * one - END_RESERVE_SECONDS - END_RESERVE_SHARE * budget)
        steps = max(1, int(train_seconds / step_seconds))
        out["steps_per_epoch"] = cfg.steps_per_epoch or max(1, int(math.ceil(steps / rounds)))
        # One validation per epoch; the trainer keeps each epoch at its planned length in
        # seconds, so the budget, not this count, normally ends the run.
        out["epochs"] = cfg.epochs or rounds
        out["val_max_cases"] = k
        _warn_if_too_few_steps(plan, cfg, steps, step_seconds, startup_seconds, one)
        plan.schedule.update(
            {
                "startup_seconds": round(startup_seconds, 1),
                "seconds_per_step": round(step_seconds, 4),
                "seconds_per_validation_case": round(per_case, 3),
                "validation_cases": f"{k} of {n_cases}",
                "validations": rounds,
                "validation_seconds_each": round(one, 1),
                "batch_norm_statistics_seconds": round(statistics_seconds, 2),
                "estimated_steps": steps,
                "steps_per_epoch": out["steps_per_epoch"],
                "estimated_samples_seen": steps * int(cfg.batch_size or 1) * world_size,
                "passes_over_training_data": round(
                    steps * int(cfg.batch_size or 1) * world_size / max(train_samples, 1), 1
                ),
            }
        )
    else:
        epochs = cfg.epochs or 50
        out["epochs"] = epochs
        out["val_max_cases"] = min(cfg.val_max_cases or n_cases, n_cases)
        plan.schedule.update(
            {
                "seconds_per_step": round(step_seconds, 4),
                "seconds_per_validation_case": round(per_case, 3),
                "epochs": epochs,
                "validation_cases": f"{out['val_max_cases']} of {n_cases}",
            }
        )
    return out


def _warn_if_too_few_steps(
    plan: TrainPlan,
    cfg: TrainConfig,
    steps: int,
    step_seconds: float,
    startup_seconds: float,
    validation_seconds: float,
) -> None:
    """Warn when a from-scratch run gets fewer than :data:`MIN_STEPS_PER_STRUCTURE` optimiser steps
    per structure, with the minutes that would give that many (start-up, the validations and the
    end reserve kept aside as :func:`schedule_for_budget` keeps them; ``validation_seconds``: one
    validation). Re-planned after a calibration narrows the network: the earlier warning is
    replaced, not repeated."""
    plan.warnings = [w for w in plan.warnings if not w.startswith(BUDGET_WARNING_PREFIX)]
    if cfg.init_checkpoint:  # fine-tuning starts from a model that has learnt the structures
        return
    structures = len(cfg.class_values or [0]) - 1  # a planned config always lists its values
    wanted = MIN_STEPS_PER_STRUCTURE * structures
    if structures < 1 or steps >= wanted:
        return
    # A longer budget validates MAX_VALIDATIONS times, unless that exceeds its validation share.
    validations = MAX_VALIDATIONS * validation_seconds
    seconds = (wanted * step_seconds + startup_seconds + validations + END_RESERVE_SECONDS) / (1 - END_RESERVE_SHARE)
    if validations > VALIDATION_SHARE * (seconds - startup_seconds):
        kept = 1.0 - VALIDATION_SHARE
        seconds = (wanted * step_seconds + startup_seconds * kept + END_RESERVE_SECONDS) / (kept - END_RESERVE_SHARE)
    minutes = math.ceil(seconds / 60.0)
    plan.warn(
        f"{BUDGET_WARNING_PREFIX}: about {steps} optimiser steps for {structures} structure(s), "
        f"{steps / structures:.0f} per structure; runs from scratch with under {MIN_STEPS_PER_STRUCTURE} "
        f"per structure learned nothing usable (a 62-structure CT: 12 per structure in 20 CPU minutes, "
        f"Dice 0.001). Give at least {minutes} minutes, a GPU, a starting checkpoint "
        f"that knows these structures (--init-checkpoint), or labels with fewer structures"
    )
