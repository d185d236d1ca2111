"""The training loop: ``train(config, callbacks, cancel) -> TrainResult``, as named hooks.

One code path for the command line, the GUI (in a thread worker, with in-memory volumes, callbacks
and a cancel event) and ``torchrun`` (DDP). :meth:`Trainer.run_training` only calls hooks, as
nnU-Net's ``run_training`` does, so a variant overrides one hook and keeps the rest::

    on_train_start()            read, fingerprint, plan, prepare, split, build; calibrate on a budget
    for each epoch:
        on_epoch_start()
        train_step(images, labels)   for every batch, until the epoch, the budget or a Cancel ends it
        on_epoch_end(reason)         validate through the predictor, save_checkpoint('last'/'best'), log
    on_train_end()

What it guarantees:

* the caller's :class:`TrainConfig` is never changed; the planned copy is ``config.json`` and the
  planner's reasons are ``plan.json`` (:mod:`.planner`);
* validation is the predictor's path and ``cascadeseg.metrics``' Dice (:mod:`.validation`);
* a wall-clock budget (``minutes``) is the budget: it counts from the call, data loading included;
  the trainer measures a training step and a validation case before sizing the schedule, and
  stops stepping early enough for the final validation and the checkpoint writes to fit;
* ``last/`` after every validation and ``best/`` when the Dice improved, each written atomically;
  the first validation comes within the first tenth of a budget, so a usable checkpoint exists
  from the first minutes on; ``resume`` continues from ``last/``;
* cancellation (``cancel.is_set()``) is checked before every step, between validation batches and
  between cases while reading: a run stops within one step or one batch, writes the last finished
  step's weights to ``last/`` and leaves ``best/`` alone;
* only rank 0 writes or validates; every rank agrees on when to stop.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, DistributedSampler

from ..distributed import (
    DistContext,
    all_max,
    barrier,
    check_parameters_agree,
    init_distributed,
    shutdown,
    sync_buffers,
    wrap_model,
)
from ..errors import CancelledError, DatasetError, ModelConfigError, TrainingError
from ..inference.checkpoint import ModelCard, load_weights, read_card
from ..inference.device import autocast_dtype, memory_format, release_cached_memory, resolve_device
from ..models import OutputRequest, SegmentationOutput, create_model, list_models
from . import planner as planner_module
from .augmentation import augment_batch
from .batch_norm import reestimate_batch_norm, reestimation_samples
from .callbacks import CallbackList, EpochInfo, StepInfo
from .card import DataInfo, build_card
from .config import TrainConfig, write_json_atomic
from .datasets import (
    RawCase,
    TrainingCase,
    case_sources,
    dataset_class_names,
    default_preprocessing,
    prepare_case,
    read_cases,
)
from .fingerprint import DatasetFingerprint, fingerprint
from .planner import (
    END_RESERVE_SECONDS,
    END_RESERVE_SHARE,
    PLAN_FILE,
    TrainPlan,
    device_profile,
    narrower_width,
    plan_preprocessing,
    plan_training,
    schedule_for_budget,
)
from .run_folder import LOG_FILE, CsvLog, claim_run_folder, find_checkpoint, read_training_state, write_checkpoint
from .sampling import PatchDataset, epoch_length
from .schedule import lr_factor, run_progress
from .split import (
    MIN_PATIENTS_FOR_A_PATIENT_SPLIT,
    SliceBlock,
    Split,
    check_validation_unseen,
    patient_groups,
    patient_id,
    split_by_patient,
    split_by_slice_blocks,
)
from .validation import ValidationResult, validate

RESULT_FILE = "result.json"  # how the run ended: written last, by rank 0

# Steps timed before a budget is scheduled (after one warm-up step: lazy imports, allocator), of
# each setting a comparison times (threads, CPU precision), and the share of the budget they may
# take (slow 3D steps on a small budget stop after two).
CALIBRATION_STEPS = 3
CALIBRATION_SHARE = 0.05


def median_seconds(times: Sequence[float]) -> float:
    """Median step time; infinite when none was timed (that setting cannot win)."""
    return float(np.median(times)) if len(times) else float("inf")


@dataclass
class TrainState:
    """Where a run stands; saved in ``training_state.pt`` and restored by ``resume``."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimiser steps
    elapsed: float = 0.0  # seconds since the call, over all sittings (data loading included)
    best_dice: float = -1.0
    best_epoch: int = -1  # 0-based
    phase: int = 0  # stagewise cascades: 0 stage 1, 1 stage 2
    validation_seconds: float = 0.0  # the last validation's measured cost
    plateau_factor: float = 1.0  # the plateau schedule's learning-rate factor
    plateau_best: float = -1.0  # its best validation Dice so far
    plateau_bad: int = 0  # validations since that best
    checkpoint_seconds: float = 0.0  # the last checkpoint write's measured cost

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def update(self, saved: dict[str, Any]) -> None:
        for f in fields(self):
            if f.name in saved:
                setattr(self, f.name, type(getattr(self, f.name))(saved[f.name]))


@dataclass
class TrainResult:
    """What a finished (or cancelled, or timed-out) run produced."""

    run_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    stopped: str  # "epochs", "time" or "cancelled"
    epochs_completed: int
    steps: int
    elapsed_seconds: float
    best_dice: float | None
    best_epoch: int | None  # 1-based
    dice_per_depth: dict[int, float] = field(default_factory=dict)  # of the run's model (the checkpoint it keeps)
    recommended_depth: int | None = None
    last_dice: float | None = None  # the last validation's best depth (what last/ scored)
    history: list[dict[str, Any]] = field(default_factory=list)
    model: nn.Module | None = None  # the final weights (last step), on the CPU, in eval mode
    plan: TrainPlan | None = None
    keep: str = "best"  # which checkpoint is the run's model (the plan's 'keep')

    @property
    def model_checkpoint(self) -> Path | None:
        """The run's model: the checkpoint its plan keeps ('last' or 'best'), else the other one."""
        first, second = (
            (self.last_checkpoint, self.best_checkpoint)
            if self.keep == "last"
            else (self.best_checkpoint, self.last_checkpoint)
        )
        return first if first is not None else second

    @property
    def model_dice(self) -> float | None:
        """The validation Dice of :attr:`model_checkpoint` (the run's own validation patients)."""
        kept = self.model_checkpoint
        if kept is None:
            return None
        return self.last_dice if kept == self.last_checkpoint else self.best_dice


# An epoch's planned steps are changed when the time left calls for this much more or fewer.
EPOCH_LENGTH_TOLERANCE = 0.05


def train(config: TrainConfig, callbacks: Any = None, cancel: Any = None, started: float | None = None) -> TrainResult:
    """Train as ``config`` says (fields left ``None`` are planned); see the module docstring.
    ``callbacks``: a :class:`~cascadeseg.training.callbacks.TrainingCallback`-like object or a list
    of them; ``cancel``: anything with ``is_set()`` (a ``threading.Event``); ``started``: the
    ``time.perf_counter()`` the budget counts from (the command line passes its process start,
    so interpreter and library start-up count too; default: now)."""
    started = time.perf_counter() if started is None else started
    config.validate()
    previous_threads = torch.get_num_threads()
    device = resolve_device(config.device)
    ctx = init_distributed(device)
    trainer = None
    completed = False
    try:
        trainer = Trainer(config, CallbackList(callbacks), cancel, device, ctx, started)
        result = trainer.run_training()
        completed = True
        return result
    finally:
        if trainer is not None:
            trainer.release()
            del trainer
        if ctx.is_distributed:
            # DDP's reducer holds the process group; freed only at interpreter exit (it sits in
            # reference cycles), it tore down Gloo's threads there and aborted the process
            # ("terminate called without an active exception", 1 run in ~8).
            gc.collect()
        shutdown(ctx, completed=completed)
        release_cached_memory(device)
        torch.set_num_threads(previous_threads)


def is_encoder_parameter(name: str) -> bool:
    """Whether a parameter's dotted name lies under a module named ``encoder`` or ``*_encoder``
    (``body.encoder...``, ``stage1.encoder...``, ``body.former_encoder...``), the outermost such
    name deciding: U2-Net's decoder blocks are small U-Nets with encoders of their own
    (``body.former_decoder.blocks.0.encoder...``), and they are decoder."""
    for part in name.split(".")[:-1]:
        if part == "encoder" or part.endswith("_encoder"):
            return True
        if part == "decoder" or part.endswith("_decoder"):
            return False
    return False


class Trainer:
    """The run; :meth:`run_training` calls the hooks in order (see the module docstring)."""

    def __init__(
        self,
        config: TrainConfig,
        callbacks: CallbackList,
        cancel: Any,
        device: torch.device,
        ctx: DistContext,
        started: float | None = None,
        dry_run: bool = False,
    ) -> None:
        self.requested = config  # never written to
        self.cfg = config.copy()
        self.callbacks = callbacks
        self.cancel = cancel
        self.device = device
        self.ctx = ctx
        self.run_dir = Path(config.run_dir)
        self.started = time.perf_counter() if started is None else started
        self.state = TrainState()
        self.history: list[dict[str, Any]] = []
        self.last_validation: ValidationResult | None = None
        self.plan: TrainPlan | None = None
        self.parent_card: ModelCard | None = None
        self.dry_run = dry_run  # plan and measure only: no run folder, no files

    # ------------------------------------------------------------------------------ the run

    def run_training(self) -> TrainResult:
        stopped = "epochs"
        try:
            self.on_train_start()
            while self.state.epoch < int(self.cfg.epochs or 1):
                self.on_epoch_start()
                reason = self.train_epoch()
                if reason == "cancelled":
                    stopped = "cancelled"
                    break
                self.on_epoch_end(reason)
                if reason == "time":
                    stopped = "time"
                    break
        except CancelledError:
            stopped = "cancelled"
        if stopped == "cancelled" and hasattr(self, "model") and self.ctx.is_main:
            self.save_checkpoint(
                "last", validation=self.last_validation, note=f"cancelled during epoch {self.state.epoch + 1}"
            )
        return self.on_train_end(stopped)

    # ------------------------------------------------------------------------------ start

    @property
    def planned_processes(self) -> int:
        """The run's data-parallel processes: this group's size; for a plan only (``cascadeseg
        plan``), the processes the config asks for (each is planned and timed as this one)."""
        if self.ctx.is_distributed or not self.dry_run:
            return self.ctx.world_size
        return int(self.cfg.processes or 1)

    def on_train_start(self, calibrate: bool = True) -> None:
        """Read, plan, build; then (``calibrate``) time the first steps and size the schedule."""
        cfg = self.cfg
        if self.ctx.is_main and not self.dry_run:
            self.claim = claim_run_folder(self.run_dir, cfg.resume)
        barrier(self.ctx)
        if cfg.resume:
            self._load_planned_config()
        try:
            raw = read_cases(case_sources(cfg.data), cfg.num_classes, self.cancel)
            read_cancelled = False
        except CancelledError:
            read_cancelled = True
        self._check_cancel("while reading the data", read_cancelled)
        self.patient_groups = patient_groups(cfg.data)  # versions and cases of one patient (dataset.json)
        data_channel_names = self._data_channel_names(raw[0])
        fp = fingerprint(
            [(r.case_id, r.image, r.labels) for r in raw],
            data_channel_names,
            lambda case: patient_id(case, self.patient_groups),
        )
        fp.class_names = dataset_class_names(cfg.data)
        if not cfg.resume:
            self._plan(fp, raw)
        torch.set_num_threads(int(self.cfg.threads or torch.get_num_threads()))
        self._check_cancel("while planning")
        self._build_data(raw, fp, data_channel_names)
        del raw
        self._build_network()
        self.amp_dtype = autocast_dtype(self.device) if (self.cfg.amp and self.device.type == "cuda") else None
        self._set_cpu_precision(self.cfg.cpu_precision)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.phases = self._phases()
        if self.cfg.resume:
            self._restore()
        elif self.ctx.is_main and not self.dry_run:
            self.split.save(self.run_dir)
            self._save_plan()
        self._build_loader()
        self.columns = (
            ["epoch", "step", "phase", "train_loss", "lr"]
            + [f"dice_depth{d}" for d in self._depth_keys()]
            + [
                "recommended_depth",
                "best_dice",
                "epoch_seconds",
                "validation_seconds",
                "samples_per_second",
                "elapsed_seconds",
            ]
            # Last, and only in runs that choose a threshold: readers that index the columns by
            # position (benchmark scripts) see the same columns as before.
            + (["foreground_threshold"] if self.cfg.choose_threshold else [])
        )
        self.log = CsvLog(self.run_dir / LOG_FILE, self.columns)
        if self.ctx.is_main and self.cfg.resume:
            self.log.truncate_after(self.state.epoch)
        self.model_for_steps = wrap_model(self.model, self.ctx, self.device)
        self.model.train()
        self._pending_losses: list[float] = []
        if self._validates_start():
            self._validate_start()
        if calibrate and (self.dry_run or (self.cfg.minutes and not self.cfg.resume)):
            self.calibrate()
        if self.dry_run:
            return
        if self.ctx.is_main and not self.cfg.resume:
            self._save_plan()  # again, with the measured schedule
        if self.ctx.is_main:
            self.callbacks.emit("on_train_start", self._start_info())

    def _validates_start(self) -> bool:
        """A fine-tuning (a checkpoint to start from; not a resume, not a dry run) with validation
        patients: the starting weights are validated before the first step, as epoch 0."""
        return bool(self.cfg.init_checkpoint) and not self.cfg.resume and not self.dry_run and bool(self.val_order)

    def _validate_start(self) -> None:
        """Validate the starting weights and let them compete for ``best/``: a fine-tuning that no
        epoch improves keeps what it started from instead of something worse (on the TCIA studies,
        fifteen minutes of fine-tuning took the shipped FLAIR model from 0.30 to 0.07 on the held-out
        patient). Where the plan keeps ``last/`` the run's model stays the final weights; the start's
        Dice is then the first row of the log, the yardstick of what the run added."""
        self.epoch_losses: list[float] = []  # no step yet: the log row has no training loss
        self.epoch_samples = 0
        result = self._validation_agreed(True)
        self.state.elapsed = self._elapsed()
        if self.ctx.is_main and result is not None:
            self.on_validation_end(result, 0.0)
        barrier(self.ctx)

    def _save_plan(self) -> None:
        """``config.json`` (the planned config: what a resume continues with) and ``plan.json``."""
        self.cfg.save(self.run_dir)
        if self.plan is not None:
            write_json_atomic(self.run_dir / PLAN_FILE, self.plan.to_dict())

    def _check_cancel(self, where: str, cancelled: bool = False) -> None:
        """Raise :class:`CancelledError` when Cancel was asked (or ``cancelled``: this rank's
        reading of the data stopped on it) on any rank. Every rank calls this at the
        same points and they decide together: a Ctrl-C reaches the processes a moment apart, and a
        rank that stopped alone would leave the others waiting in their next collective."""
        self._agree_cancel(where, cancelled or bool(self.cancel is not None and self.cancel.is_set()))

    def _agree_cancel(self, where: str, cancelled: bool) -> None:
        """Raise :class:`CancelledError` on every rank when ``cancelled`` on any."""
        if self.ctx.is_distributed:
            cancelled = bool(all_max([float(cancelled)], self.ctx, self.device)[0])
        if cancelled:
            raise CancelledError(f"training cancelled {where}")

    def _load_planned_config(self) -> None:
        """Resume: the stored (planned) config, with the caller's budget extensions."""
        stored = TrainConfig.load(self.run_dir)
        stored.data, stored.resume, stored.run_dir = self.cfg.data, True, self.cfg.run_dir
        for key in ("epochs", "minutes", "threads", "cpu_precision"):
            value = getattr(self.requested, key)
            if value is not None and value != getattr(TrainConfig(), key):
                setattr(stored, key, value)
        self.cfg = stored
        plan_path = self.run_dir / PLAN_FILE
        if plan_path.is_file():
            import json

            self.plan = TrainPlan.from_dict(json.loads(plan_path.read_text()))
            self._resume_precision_here()

    def _resume_precision_here(self) -> None:
        """A resumed CPU run whose earlier sitting planned (or measured) bf16 steps continues in
        fp32 on a CPU that emulates bf16, where it is slower than fp32 (a run folder moved to
        another machine); bf16 given to either sitting is kept. The plan records the change."""
        assert self.plan is not None
        choice = self.plan.choices.get("cpu_precision")
        if (
            self.device.type != "cpu"
            or self.cfg.cpu_precision != "bf16"
            or self.requested.cpu_precision is not None
            or choice is None
            or choice.source == "given"
            or planner_module.cpu_has_native_bf16()
        ):
            return
        self.cfg.cpu_precision = self.plan.choose(
            "cpu_precision",
            "fp32",
            f"{choice.reason}; resumed on a CPU without bf16 in hardware, where emulated bf16 is slower: fp32",
        )
        if self.ctx.is_main:
            write_json_atomic(self.run_dir / PLAN_FILE, self.plan.to_dict())

    def _plan(self, fp: DatasetFingerprint, raw: list[RawCase]) -> None:
        """Fill the config's open choices (:mod:`.planner`); a few patients and no checkpoint or
        architecture named: start from a shipped model that fits."""
        from .transfer import pick_starting_checkpoint

        profile = device_profile(self.device, self.cfg.threads, processes=self.planned_processes)
        init_card = None
        auto_reason = None
        if (
            self.cfg.init_checkpoint is None
            and self.cfg.auto_init
            and self.cfg.model is None
            and fp.num_patients <= _few_shot_patients()
        ):
            probe, _ = plan_training(self.cfg, fp, profile)
            entry, auto_reason = pick_starting_checkpoint(
                num_classes=len(probe.class_values or [0, 1]), modality=fp.modality, dims=int(probe.dims or 2)
            )
            if entry is not None:
                entry, auto_reason = self._without_leak(entry, auto_reason, fp)
            if entry is not None:
                self.cfg.init_checkpoint = entry.name  # a shipped model's name, as a user would give it
        if self.cfg.init_checkpoint:
            init_card = read_card(self.cfg.init_checkpoint)  # a folder, or a shipped / user model's name
            self.parent_card = init_card
        epoch_length_given = self.cfg.steps_per_epoch is not None
        self.cfg, self.plan = plan_training(self.cfg, fp, profile, init_card)
        if epoch_length_given:
            # Recorded in the plan so that a resumed run keeps honouring it (see _keep_epoch_duration).
            self.plan.choose("steps_per_epoch", self.cfg.steps_per_epoch, "given: every epoch this long", "given")
        if auto_reason is not None:
            self.plan.choose(
                "init_checkpoint",
                self.cfg.init_checkpoint,
                auto_reason,
                "planned" if self.cfg.init_checkpoint else "planned",
            )
        if self.cfg.preprocessing is None:
            self.cfg.preprocessing = self._plan_preprocessing(fp, raw[0], init_card)
        else:
            self.plan.choose("preprocessing", self.cfg.preprocessing, "given", "given")

    def _without_leak(self, entry: Any, reason: str, fp: DatasetFingerprint) -> tuple[Any, str]:
        """A shipped model trained on some of these patients must not validate on them: validate
        on the patients it has not seen, or, when it has seen them all, start fresh."""
        data = entry.card.training.get("data")
        groups = self.patient_groups
        seen = {patient_id(str(c)) for c in data.get("train_cases", [])} if isinstance(data, dict) else set()
        patients = sorted({patient_id(c, groups) for c in fp.case_ids})
        overlap = [p for p in patients if p in seen]
        if not overlap or self.cfg.val_cases:
            return entry, reason
        unseen = [p for p in patients if p not in seen]
        wanted = max(1, int(round(self.cfg.val_fraction * len(patients))))
        if len(patients) < 2 or not unseen:
            return None, (
                f"shipped '{entry.name}' was trained on {len(overlap)} of these {len(patients)} patient(s): "
                f"its validation would be optimistic, so training starts fresh"
            )
        order = np.random.default_rng(self.cfg.seed).permutation(len(unseen))
        chosen = [unseen[i] for i in order[: min(wanted, len(unseen), len(patients) - 1)]]
        self.cfg.val_cases = [c for c in fp.case_ids if patient_id(c, groups) in set(chosen)]
        return entry, reason + (
            f"; it was trained on {len(overlap)} of these patients, so validation uses {len(chosen)} it has not seen"
        )

    def _plan_preprocessing(
        self, fp: DatasetFingerprint, first: RawCase, init_card: ModelCard | None
    ) -> list[dict[str, Any]]:
        assert self.plan is not None
        fallback = default_preprocessing(first.image, first.image.num_channels)
        specs, reason, source = plan_preprocessing(fp, fallback, init_card)
        return self.plan.choose("preprocessing", specs, reason, source)

    def _build_data(self, raw: list[RawCase], fp: DatasetFingerprint, data_names: list[str]) -> None:
        cfg = self.cfg
        if self.parent_card is None and cfg.init_checkpoint:
            self.parent_card = read_card(cfg.init_checkpoint)
        values = [int(v) for v in (cfg.class_values or range(max(2, max(fp.class_values) + 1)))]
        unknown = sorted(set(fp.class_values) - set(values))
        if unknown:
            where = f"init checkpoint '{cfg.init_checkpoint}'" if self.parent_card is not None else "the model"
            raise DatasetError(f"the labels hold value(s) {unknown} that {where} does not know (classes {values})")
        num_classes = len(values)
        specs = cfg.preprocessing or default_preprocessing(raw[0].image, raw[0].image.num_channels)
        slice_axis = int(cfg.axis or 0) if cfg.dims == 2 else None
        info = {i.name: i for i in list_models()}[str(cfg.model)]
        self.needs_body = self._loss_region(info) == "body"
        cases: list[TrainingCase] = []
        for r in raw:
            self._check_cancel("while preparing the data")
            cases.append(
                prepare_case(
                    r,
                    specs,
                    cfg.target_spacing,
                    slice_axis,
                    values,
                    body_at_inference=info.body_mask_at_inference,
                    training_body=self.needs_body,
                )
            )
        self.cases = cases
        self.num_classes = num_classes
        self.class_values = values
        self.in_channels = raw[0].image.num_channels
        self.data_channel_names = data_names
        self.channel_names = self._channel_names(data_names)
        self.preprocessing = list(specs)
        self.modality = fp.modality
        self.fingerprint = fp
        self.split = self._make_split()
        self.train_cases, self.val_cases = self._split_cases(self.split)
        self.val_order = self._validation_order()

    def _loss_region(self, info: Any) -> str | None:
        """Where the run's loss trains: ``"body"`` (its paper's region of interest, e.g. CU-Net's
        loss-weighted sampling inside the head) or ``None`` (every voxel)."""
        from ..losses import build_loss, loss_region

        return loss_region(build_loss(str(self.cfg.loss or info.default_loss), **self.cfg.loss_options))

    def _validation_order(self) -> list[TrainingCase]:
        """The order validation cases are taken in when only a subset fits the budget: the cases
        forced into validation first, then a seeded shuffle (not the alphabet: ids group by site)."""
        forced = [c for c in self.val_cases if c.case_id in set(self.cfg.val_cases)]
        rest = [c for c in self.val_cases if c.case_id not in set(self.cfg.val_cases)]
        order = np.random.default_rng(self.cfg.seed).permutation(len(rest))
        return forced + [rest[i] for i in order]

    def _data_channel_names(self, first: RawCase) -> list[str]:
        """What the data's channels are: the user's ``channel_names`` when given (they also decide
        which input of a starting checkpoint each channel feeds), else the files' (dataset.json,
        DICOM series), else their indices ("0000", ...)."""
        count = first.image.num_channels
        if self.cfg.channel_names:
            if len(self.cfg.channel_names) != count:
                raise ModelConfigError(
                    f"channel_names lists {len(self.cfg.channel_names)} names but the images have {count} channel(s)"
                )
            return list(self.cfg.channel_names)
        return list(first.image.channel_names) or [f"{c:04d}" for c in range(count)]

    def _channel_names(self, data_names: list[str]) -> list[str]:
        """The card's channel names: the data's (the user's when given, checked in
        :meth:`_data_channel_names`), or a parent checkpoint's when the data names none."""
        if not self.cfg.channel_names and self.parent_card is not None:
            if len(self.parent_card.channel_names) == self.in_channels:
                return list(self.parent_card.channel_names)  # "0000" would lose what the parent knew
        return list(data_names)

    def _make_split(self) -> Split:
        cfg = self.cfg
        if cfg.resume:
            return Split.load(self.run_dir)
        ids = [c.case_id for c in self.cases]
        groups = self.patient_groups
        patients = len({patient_id(i, groups) for i in ids})
        # Two patients split one-to-one would train on half the data: with fewer than three,
        # every volume gives training and validation blocks of its own slices instead (a volume
        # too thin for blocks trains whole); with no volume thick enough, whole patients again.
        # Validation patients named by the user are a patient split.
        if patients < MIN_PATIENTS_FOR_A_PATIENT_SPLIT and not cfg.val_cases:
            blocks = self._slice_block_split()
            if blocks is not None or patients < 2:
                if blocks is None:  # one thin volume: let split_by_slice_blocks say what it needs
                    blocks = self._slice_block_split(strict=True)
                assert blocks is not None  # strict: raises instead
                return blocks
        split = split_by_patient(ids, cfg.val_fraction, cfg.seed, cfg.val_cases, groups)
        # Cards are files from anywhere: only a recorded list of training cases is checked.
        data = self.parent_card.training.get("data") if self.parent_card is not None else None
        seen = data.get("train_cases") if isinstance(data, dict) else None
        if isinstance(seen, list):
            check_validation_unseen(split, [str(c) for c in seen], f"init checkpoint '{cfg.init_checkpoint}'", groups)
        return split

    def _slice_block_split(self, strict: bool = False) -> Split | None:
        """Blocks of slices along the slicing axis, in each scan's own slice indices (validation
        blocks with a gap to the training ones). A volume too thin for two blocks trains whole
        (``strict``: it raises the split's own error instead); ``None`` when no volume gives a
        validation block."""
        cfg = self.cfg
        axis = int(cfg.axis or 0)
        merged = Split(kind="slice_blocks", seed=cfg.seed, gap=cfg.slice_gap)
        other = tuple(a for a in range(3) if a != axis)
        for case in self.cases:
            annotated = None
            if cfg.annotated_slices_only:
                annotated = np.asarray(case.labels_full.any(axis=other))
            foreground = np.asarray((case.labels_full > 0).sum(axis=other))  # voxels per slice
            slices = case.labels_full.shape[axis]
            try:
                part = split_by_slice_blocks(
                    case.case_id,
                    slices,
                    axis,
                    cfg.val_fraction,
                    cfg.slice_block,
                    cfg.slice_gap,
                    cfg.seed,
                    annotated,
                    foreground,
                )
            except DatasetError:
                if strict:
                    raise
                merged.train.append(case.case_id)
                merged.train_blocks.append(SliceBlock(case.case_id, axis, 0, slices))
                continue
            merged.train += part.train
            merged.val += part.val
            merged.train_blocks += part.train_blocks
            merged.val_blocks += part.val_blocks
        return merged if merged.val_blocks else None

    def _split_cases(self, split: Split) -> tuple[list[TrainingCase], list[TrainingCase]]:
        by_id = {c.case_id: c for c in self.cases}
        missing = sorted(set(split.train + split.val) - set(by_id))
        if missing:
            raise DatasetError(f"the run's split.json names case(s) {missing} that the training data does not have")
        if split.kind == "patient":
            return [by_id[i] for i in split.train], [by_id[i] for i in split.val]

        def blocks(items, tag):
            return [by_id[b.case_id].restrict(b.axis, b.start, b.stop, f"[{tag}{b.start}:{b.stop}]") for b in items]

        return blocks(split.train_blocks, "train"), blocks(split.val_blocks, "val")

    def _build_network(self) -> None:
        """The network and what trains it: its loss, optimiser and weight average."""
        self._build_model()
        if self.cfg.freeze == "encoder":
            self._freeze_encoder()
        self.loss_fn = self._make_loss()
        self.optimizer = self._make_optimizer()
        self.ema = self._make_ema()

    def _build_model(self) -> None:
        cfg = self.cfg
        # Channels-last: oneDNN's and cuDNN's fast convolution paths (20-27 % faster forward +
        # backward at width 8 on this project's 2-core CPU).
        self.memory_format = memory_format(self.device, int(cfg.dims or 2))
        # Seeded initial weights: the same config starts from the same network.
        torch.manual_seed(int(cfg.seed))
        if cfg.init_checkpoint:
            from .transfer import describe_mapping, load_for_data

            model, card, mapping = load_for_data(
                cfg.init_checkpoint, self.in_channels, self.data_channel_names, self.cfg.slice_context
            )
            if card.dims != cfg.dims:
                raise ModelConfigError(
                    f"init checkpoint '{cfg.init_checkpoint}' is a {card.dims}D model but dims={cfg.dims} was asked for"
                )
            if mapping != list(range(len(mapping))) and self.plan is not None:
                self.plan.choose(
                    "channel_mapping",
                    describe_mapping(card, self.data_channel_names, mapping),
                    "data channels onto the checkpoint's inputs (by name; a one-channel network spreads "
                    "its input weights evenly over unnamed channels)",
                )
                self.channel_names = list(self.data_channel_names)
            model.train()
        else:
            model = create_model(
                str(cfg.model),
                in_channels=self.network_in_channels,
                num_classes=self.num_classes,
                dims=int(cfg.dims or 2),
                **(cfg.model_options or {}),
            )
        self.model = model.to(self.device, memory_format=self.memory_format)
        divisor = tuple(int(d) for d in self.model.size_divisor)
        self.patch = tuple(-(-int(p) // d) * d for p, d in zip(cfg.patch_size or self._largest_plane(), divisor))
        self.loss_name = str(cfg.loss or self.model.info.default_loss)

    def _freeze_encoder(self) -> None:
        """``freeze="encoder"``: the starting model's encoder stays as it is (its batch-norm
        statistics still follow the new data), the decoder, gates and heads train: few-shot
        adaptation's guard against distorting learnt features. Offered, never planned: on the
        TCIA leave-one-patient-out check it scored 0.079 against 0.267 for the whole network
        (docs/one_click_training.md)."""
        frozen = [p for name, p in self.model.named_parameters() if is_encoder_parameter(name)]
        if not frozen:
            raise ModelConfigError(
                f"training option 'freeze' = 'encoder': model '{self.model.info.name}' has no module named "
                "*encoder to freeze; expected a U-Net family model (unet, unet_plus_plus, anu_net, ...)"
            )
        if not self.cfg.init_checkpoint:
            raise ModelConfigError(
                "training option 'freeze' = 'encoder' needs a starting model (--init-checkpoint, or a shipped "
                "model the plan starts from): a freshly initialised encoder has nothing to keep"
            )
        for p in frozen:
            p.requires_grad_(False)
        if self.plan is not None:
            total = sum(p.numel() for p in self.model.parameters())
            kept = sum(p.numel() for p in frozen)
            self.plan.choose(
                "freeze", "encoder", f"{kept:,} of {total:,} parameters kept from the starting model", "given"
            )

    @property
    def network_in_channels(self) -> int:
        """The network's input channels: each scan channel once per slice it reads."""
        return self.in_channels * (2 * self.cfg.slice_context + 1)

    def _largest_plane(self) -> list[int]:
        shapes = np.array([c.spatial_shape for c in self.train_cases])
        if self.cfg.dims == 2:
            return [int(shapes[:, a].max()) for a in range(3) if a != self.cfg.axis]
        return [min(int(np.median(shapes[:, a])), cap) for a, cap in zip(range(3), (32, 128, 128))]

    def _build_loader(self) -> None:
        cfg = self.cfg
        length = epoch_length(
            self.train_cases,
            int(cfg.dims or 2),
            int(cfg.axis or 0),
            cfg.steps_per_epoch,
            int(cfg.batch_size or 8),
            self.ctx.world_size,
        )
        self.dataset = PatchDataset(
            self.train_cases,
            int(cfg.dims or 2),
            int(cfg.axis or 0),
            self.patch,
            float(cfg.foreground_probability if cfg.foreground_probability is not None else 0.5),
            length,
            cfg.seed,
            body_code=self.num_classes if self.needs_body else None,
            context_slices=self.cfg.slice_context,
            foreground_sampling=cfg.foreground_sampling,
        )
        self._make_loader()

    def _make_loader(self) -> None:
        self.sampler: DistributedSampler | None = (
            DistributedSampler(
                self.dataset, num_replicas=self.ctx.world_size, rank=self.ctx.rank, shuffle=False, drop_last=True
            )
            if self.ctx.is_distributed
            else None
        )
        self.loader = DataLoader(
            self.dataset,
            batch_size=int(self.cfg.batch_size or 8),
            sampler=self.sampler,
            shuffle=False,
            drop_last=True,
            num_workers=self.cfg.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        self.steps_per_epoch = len(self.loader)

    def _set_epoch_length(self, steps: int) -> None:
        """Batches per epoch from now on (the budget's schedule after calibration)."""
        self.dataset.length = max(1, steps) * int(self.cfg.batch_size or 8) * self.ctx.world_size
        self._make_loader()

    def _make_loss(self) -> nn.Module:
        from ..losses import build_loss

        loss = build_loss(self.loss_name, **self.cfg.loss_options)
        return loss.to(self.device) if isinstance(loss, nn.Module) else loss

    def _make_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        lr = self._base_lr()
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)

    def _base_lr(self) -> float:
        """The planned (or given) base learning rate; a planned config always has one."""
        if self.cfg.lr is None:
            raise RuntimeError("the training configuration was not planned: it has no learning rate")
        return float(self.cfg.lr)

    def _make_ema(self) -> AveragedModel | None:
        """torch's ``AveragedModel`` of the weights and batch-norm statistics. Why: on 60-70
        patients the validation Dice of one set of weights swings by several points from epoch to
        epoch (LGG: 0.71-0.79 between neighbours); the recent average generalises better."""
        if not self.cfg.ema_decay:
            return None
        return AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(float(self.cfg.ema_decay)), use_buffers=True)

    @property
    def shipped_model(self) -> nn.Module:
        """The weights that are validated and written to ``best/`` and ``last/``."""
        return self.ema.module if self.ema is not None else self.model

    def _phases(self) -> list[str]:
        """``["full"]``, or ``["stage1", "full"]`` for stage-by-stage cascade training."""
        if self.cfg.cascade_training == "stagewise" and "stage1" in self.model.info.stages:
            return ["stage1", "full"]
        return ["full"]

    def _depth_keys(self) -> list[int]:
        """The pruning depths this network has (a 3-level ANU-Net has L1 and L2)."""
        return list(range(1, self.model.max_depth + 1)) if self.model.info.pruning_depths else [1]

    def _restore(self) -> None:
        folder = find_checkpoint(self.run_dir, "last")
        if folder is None:
            return  # killed before the first checkpoint: start from scratch with the same split
        saved_state = read_training_state(folder)
        saved = load_weights(folder)  # checksum verified
        if self.ema is not None:
            # model.safetensors holds the average; the raw weights ride in the training state.
            self.ema.module.load_state_dict(saved, strict=True)
            self.ema.n_averaged.fill_(int(saved_state.get("ema_updates", 1)))
            saved = saved_state.get("raw_weights", saved)
        self.model.load_state_dict(saved, strict=True)
        if int(saved_state.get("phase", 0)) == 1 and len(self.phases) == 2:
            self._freeze_stage1()  # the saved optimiser state covers stage 2's parameters only
        self.optimizer.load_state_dict(saved_state["optimizer"])
        if "scaler" in saved_state and self.scaler.is_enabled():
            self.scaler.load_state_dict(saved_state["scaler"])
        self.state.update(saved_state)
        self._resumed_elapsed = self.state.elapsed  # this sitting's clock adds to the earlier ones
        best = find_checkpoint(self.run_dir, "best")
        if best is not None:
            best_card = read_card(best)
            dpd = best_card.validation.get("dice_per_depth", {})
            if dpd:
                values = {int(k): float(v) for k, v in dpd.items()}
                depth = best_card.recommended_depth
                kept = depth if depth in values else max(values, key=values.__getitem__)
                self.last_validation = ValidationResult(values, {}, kept)

    # ------------------------------------------------------------------------------ calibration

    def calibrate(self) -> None:
        """Time real training steps (they count: they are the run's first steps) and one real
        validation case through the predictor, then size the schedule to the budget
        (:func:`.planner.schedule_for_budget`)."""
        cfg = self.cfg
        self.epoch_start, self.epoch_samples = time.perf_counter(), 0
        self.epoch_losses = []
        self._calibration_start: float | None = self.epoch_start
        cap = CALIBRATION_SHARE * (self._budget() or float("inf"))
        calibration_start = time.perf_counter()
        done = 0

        def timed_steps(count: int, setting: Callable[[int], None] | None = None) -> list[float]:
            """Seconds of ``count`` training steps; ``setting(i)`` is called before step ``i``."""
            nonlocal done
            times: list[float] = []
            for i in range(count):
                # Slow steps on a small budget: two are enough to know the pace. Decided with the
                # Cancel by every rank together (each rank's clock could fall either side of the cap).
                over_cap = i >= 2 and time.perf_counter() - calibration_start > cap
                cancelled = bool(self.cancel is not None and self.cancel.is_set())
                over_cap, cancelled = (
                    bool(v) for v in all_max([float(over_cap), float(cancelled)], self.ctx, self.device)
                )
                if cancelled:
                    raise CancelledError("training cancelled while measuring the training speed")
                if over_cap:
                    break
                if setting is not None:
                    setting(i)
                images, labels = self.draw_batch(fresh=done == 0)
                t0 = time.perf_counter()
                elapsed, reserve = all_max([self._elapsed(), self._end_reserve()], self.ctx, self.device)
                loss = self.train_step(images, labels, elapsed, reserve)
                times.append(time.perf_counter() - t0)
                done += 1
                if math.isfinite(loss):
                    self._pending_losses.append(loss)
                    self.epoch_losses.append(loss)
                    self.epoch_samples += images.shape[0] * self.ctx.world_size
                    self._report_step(loss, done)
            return times

        times = timed_steps(min(1 + CALIBRATION_STEPS, max(2, self.steps_per_epoch)))
        step_seconds = float(np.median(times[1:]))

        def room() -> int:
            """Steps a comparison (threads, precision) may time: the calibration's steps are epoch
            0's, so a given epoch length (``--steps-per-epoch``) is not exceeded (a planned one is
            re-sized from the measured pace below)."""
            if self.requested.steps_per_epoch is None:
                return 1 + 2 * CALIBRATION_STEPS
            return min(1 + 2 * CALIBRATION_STEPS, self.steps_per_epoch - done)

        def taking_turns(use_alternative: Callable[[bool], None]) -> tuple[list[float], list[float]]:
            """Step times of the planned setting and of the alternative, the two taking turns step
            by step (the alternative first; its first step, the first use of its kernels, is not
            counted), so that a passing slowdown (another process starting, the clock changing)
            falls on both alike. Timed one after the other, such a slowdown on the first steps made
            a 20-minute LGG run keep fp32 (0.093 s per step) over bf16 (0.098 s measured, 0.068 s
            in every other run) and take 21 % fewer steps."""
            times = timed_steps(room(), lambda i: use_alternative(i % 2 == 0))
            return times[1::2], times[2::2]

        def untimed(alternative: str) -> str | None:
            """Why a comparison may not time ``alternative`` now, or ``None`` when it may: slow
            first steps on a small budget (or a loaded machine) would take the calibration past
            its share, and a given epoch length may have no steps left."""
            spent = time.perf_counter() - calibration_start
            if spent >= cap / 2:
                return (
                    f"{alternative}: the first steps took {spent:.2f} s, "
                    f"over half the calibration's {cap:.2f} s share of the budget"
                )
            if room() < 3:  # the alternative's uncounted first step, then one step of each
                return f"{alternative}: the given epoch length leaves no steps to time it"
            return None

        if self._threads_to_compare():
            why = untimed("one thread not tried")
            if why is not None:
                self._keep_planned("threads", why)  # the plan says why they were not measured
            else:
                many = int(cfg.threads or 1)
                step_seconds = self._pick_threads(*taking_turns(lambda one: torch.set_num_threads(1 if one else many)))
        if self._precision_to_compare():
            # Data-parallel ranks must take the same steps: they keep the planned precision (the
            # command line's layout measurement timed the processes with it).
            why = (
                "data-parallel processes keep it, untimed against fp32"
                if self.ctx.is_distributed
                else untimed("fp32 not timed")
            )
            if why is not None:
                self._keep_planned("cpu_precision", why)
            else:
                step_seconds = self._pick_precision(
                    *taking_turns(lambda fp32: self._set_cpu_precision("fp32" if fp32 else "bf16"))
                )
        step_seconds, elapsed = all_max([step_seconds, self._elapsed()], self.ctx, self.device)
        budget = self._budget()
        if budget is not None and self.plan is not None:
            width = narrower_width(self.plan, cfg, step_seconds, budget - elapsed)
            if width is not None:  # the same on every rank: from the values they agreed on
                self._rebuild_at_width(width)
                self.calibrate()
                return
        count = done
        case_seconds = self._validation_costs() if self.ctx.is_main else [0.0] * len(self.val_order)
        statistics_seconds = self._batch_norm_cost() if self.ctx.is_main else 0.0
        values = [0.0, 0.0, 0.0, 0.0]
        if self.ctx.is_main:
            assert self.plan is not None
            samples = (
                sum(c.spatial_shape[int(cfg.axis or 0)] for c in self.train_cases)
                if cfg.dims == 2
                else len(self.train_cases)
            )
            out = schedule_for_budget(
                self.plan,
                cfg,
                step_seconds=step_seconds,
                case_seconds=case_seconds,
                startup_seconds=time.perf_counter() - self.started,
                train_samples=samples,
                world_size=self.planned_processes,
                statistics_seconds=statistics_seconds,
            )
            values = [
                float(out["steps_per_epoch"]),
                float(out["epochs"]),
                float(out["val_max_cases"]),
                float(self.plan.schedule.get("validation_seconds_each", 0.0)),
            ]
        agreed = all_max(values, self.ctx, self.device)  # rank 0's schedule, on every rank
        steps_per_epoch, epochs, val_cases = (int(v) for v in agreed[:3])
        cfg.steps_per_epoch, cfg.epochs, cfg.val_max_cases = steps_per_epoch, epochs, val_cases
        self.validation_estimate = agreed[3]
        self._set_epoch_length(steps_per_epoch)
        self._calibration_steps = count

    def _rebuild_at_width(self, width: int) -> None:
        """Start over with a narrower network of the same design (the wider one's timed steps are
        dropped: a few seconds of a budget long enough to have planned it wide)."""
        self.cfg.model_options = {**(self.cfg.model_options or {}), "base_width": int(width)}
        self._build_network()
        self.model_for_steps = wrap_model(self.model, self.ctx, self.device)
        self.model.train()
        self.state.step = 0
        self._pending_losses = []

    def draw_batch(self, fresh: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The next training batch for steps taken outside an epoch's loop (the calibration, the
        CPU layout measurement; ``fresh``: from the start of a pass), drawing on into a new pass
        when the epoch is shorter."""
        if fresh:
            self._batches = iter(self.loader)
        try:
            return next(self._batches)
        except StopIteration:
            self._batches = iter(self.loader)
            return next(self._batches)

    def _threads_to_compare(self) -> bool:
        """A CPU run in one process whose threads were planned (not given) and are several:
        its first steps also try one thread (a small network can run faster on one: the 2D U-Net
        of a 20-minute LGG plan took 99.5 samples/s with two threads and 135.6 with one)."""
        return (
            self.device.type == "cpu"
            and not self.ctx.is_distributed
            and self.requested.threads is None
            and int(self.cfg.threads or 1) > 1
            and self.plan is not None
        )

    def _pick_threads(self, many_thread_times: list[float], one_thread_times: list[float]) -> float:
        """Keep the faster (median step seconds) of the planned threads and one thread, timed
        taking turns; sets the faster and returns its step time. The plan records both."""
        many = int(self.cfg.threads or 1)
        many_seconds, one = median_seconds(many_thread_times), median_seconds(one_thread_times)
        if one < many_seconds:
            self.cfg.threads = 1
        torch.set_num_threads(int(self.cfg.threads or 1))
        assert self.plan is not None
        self.plan.choose(
            "threads",
            self.cfg.threads,
            f"measured on the run's first steps: {one:.3f} s per step with 1 thread, {many_seconds:.3f} s with {many}",
            "measured",
        )
        return min(one, many_seconds)

    def _set_cpu_precision(self, precision: str | None) -> None:
        """bf16 autocast for the training steps of a CPU run (``cpu_precision``); fp32 otherwise."""
        if self.device.type == "cpu":
            self.amp_dtype = torch.bfloat16 if precision == "bf16" else None

    def _precision_to_compare(self) -> bool:
        """A CPU run whose bf16 steps were planned (not given): in one process, after its first
        steps, bf16 and fp32 steps are timed taking turns, and the faster is kept."""
        choice = self.plan.choices.get("cpu_precision") if self.plan is not None else None
        return (
            self.device.type == "cpu"
            and choice is not None
            and choice.source == "planned"
            and self.cfg.cpu_precision == "bf16"
        )

    def _keep_planned(self, name: str, why: str) -> None:
        """A calibration comparison not made: the planned ``name`` stays, and its reason says why."""
        assert self.plan is not None
        planned = self.plan.choices[name]
        self.plan.choose(name, getattr(self.cfg, name), f"{planned.reason}; {why}", planned.source)

    def _pick_precision(self, bf16_times: list[float], fp32_times: list[float]) -> float:
        """Keep the faster (median step seconds) of bf16 and fp32 steps, timed taking turns; sets
        it and returns its step time. The plan records both."""
        bf16_seconds, fp32 = median_seconds(bf16_times), median_seconds(fp32_times)
        self.cfg.cpu_precision = "bf16" if bf16_seconds < fp32 else "fp32"
        self._set_cpu_precision(self.cfg.cpu_precision)
        assert self.plan is not None
        self.plan.choose(
            "cpu_precision",
            self.cfg.cpu_precision,
            f"measured on the run's first steps: {bf16_seconds:.3f} s per step in bf16, {fp32:.3f} s in fp32 "
            "(validation and prediction stay fp32)",
            "measured",
        )
        return min(bf16_seconds, fp32)

    def _validation_costs(self) -> list[float]:
        """Seconds each validation case will take, measured by the predictor on real data (one
        or two batches of the smallest and of the largest case, scaled to every case's size)."""
        from ..inference.predictor import PredictionRequest, Predictor

        if not self.val_order:
            return []
        predictor = Predictor(
            self.shipped_model, self._card(None), device=self.device, batch_size=self.cfg.val_batch_size
        )
        want = PredictionRequest(depths=self._validate_depths())
        mode, axis, depth = f"{self.cfg.dims}d", int(self.cfg.axis or 0), predictor.model.max_depth
        largest = max(self.val_order, key=lambda c: float(np.prod(c.scan.working_shape)))
        seconds = predictor.estimate_seconds(largest.scan, mode, axis, depth, want)
        self.model.train()
        per_voxel = seconds / float(np.prod(largest.scan.working_shape))
        return [per_voxel * float(np.prod(c.scan.working_shape)) for c in self.val_order]

    def _batch_norm_cost(self) -> float:
        """Seconds the batch-norm statistics take before each validation: two of their batches
        timed (a real, short measurement; each validation measures them again in full), scaled."""
        if self.cfg.batch_norm_statistics != "clean":
            return 0.0
        return self.reestimate_batch_norm(batches=2) / 2 * self._batch_norm_batches()

    def _batch_norm_batches(self) -> int:
        """Batches the statistics are measured on: the planned voxel count, but never more than an
        epoch's steps (forward passes only: at most about a third of an epoch's training time)."""
        batch = int(self.cfg.batch_size or 8)
        return min(reestimation_samples(self.patch, batch) // batch, max(2, int(self.steps_per_epoch)))

    def _validate_depths(self) -> bool:
        """Every pruning depth from one pass, unless its maps would not fit: a many-class 3D map
        per head (K x voxels x 4 bytes each) beyond 1 GB validates the full depth only."""
        if not self.model.info.pruning_depths:
            return False
        if self.cfg.dims == 3:
            voxels = max(float(np.prod(c.labels_full.shape)) for c in self.val_order) if self.val_order else 0.0
            heads = len(self.model.info.pruning_depths) + 1
            if 4.0 * self.num_classes * voxels * heads > 1024**3:
                return False
        return True

    # ------------------------------------------------------------------------------ epochs

    def on_epoch_start(self) -> None:
        epoch = self.state.epoch
        phase = self._phase_for(epoch)
        if phase != self.state.phase:
            self._enter_phase(phase)
        self.dataset.set_epoch(epoch)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        set_epoch = getattr(self.loss_fn, "set_epoch", None)
        if callable(set_epoch):
            # a per-epoch loss schedule (CU-Net's omega decay, a linearly fading aux weight)
            set_epoch(epoch, int(self.cfg.epochs or 1))
        # Epoch 0's clock starts with the calibration steps it holds (their samples count in it).
        self.epoch_start = getattr(self, "_calibration_start", None) or time.perf_counter()
        self._calibration_start = None
        self.loop_start = time.perf_counter()  # the pace of this epoch's loop (no calibration in it)
        self.epoch_steps = 0  # steps of this sitting's loop (calibration steps excluded)
        self.epoch_losses = list(self._pending_losses)
        self.epoch_samples = len(self._pending_losses) * int(self.cfg.batch_size or 8) * self.ctx.world_size
        self._pending_losses = []

    def train_epoch(self) -> str | None:
        """Steps until the epoch ends (``None``), the budget says stop (``"time"``) or Cancel
        (``"cancelled"``)."""
        skip = getattr(self, "_calibration_steps", 0) if self.state.epoch == 0 else 0
        self._calibration_steps = 0
        budget = self._budget()
        consecutive_bad = 0
        for step_in_epoch, (images, labels) in enumerate(self.loader, start=1 + skip):
            if step_in_epoch > self.steps_per_epoch:
                break
            cancelled = bool(self.cancel is not None and self.cancel.is_set())
            flag, elapsed, reserve = all_max(
                [float(cancelled), self._elapsed(), self._end_reserve()], self.ctx, self.device
            )
            if flag:
                return "cancelled"
            if budget is not None and elapsed + reserve >= budget:
                return "time"
            loss = self.train_step(images, labels, elapsed, reserve)
            if not math.isfinite(loss):
                consecutive_bad += 1
                if consecutive_bad >= 5:
                    raise TrainingError(
                        f"the training loss was NaN/infinite for 5 steps in a row (epoch {self.state.epoch + 1}); "
                        f"lower the learning rate (lr={self._lr():.3g}) or check the labels"
                    )
                continue
            consecutive_bad = 0
            self.epoch_steps += 1
            self.epoch_losses.append(loss)
            self.epoch_samples += images.shape[0] * self.ctx.world_size
            self._report_step(loss, step_in_epoch)
        if budget is not None:
            # Every rank reaches this point after the same steps; they decide on the clock they
            # agree on (each rank's own could fall either side of the budget).
            elapsed, reserve = all_max([self._elapsed(), self._end_reserve()], self.ctx, self.device)
            if elapsed + reserve >= budget:
                return "time"
        return None

    def _report_step(self, loss: float, step_in_epoch: int) -> None:
        if self.ctx.is_main:
            now = time.perf_counter()
            self.callbacks.emit(
                "on_step",
                StepInfo(
                    epoch=self.state.epoch,
                    step=self.state.step,
                    step_in_epoch=step_in_epoch,
                    steps_per_epoch=self.steps_per_epoch,
                    loss=loss,
                    lr=self._lr(),
                    samples_per_second=self.epoch_samples / max(now - self.epoch_start, 1e-9),
                    elapsed_seconds=self._elapsed(),
                    time_left_seconds=self._time_left(step_in_epoch),
                ),
            )

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, elapsed: float, reserve: float) -> float:
        """One optimiser step on a batch (augmented here, on the device); the loss value.
        ``elapsed``/``reserve``: the clock and end reserve every rank agreed on (the learning
        rate follows them; ranks that disagreed would drift apart)."""
        cfg = self.cfg
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(cfg.seed) * 1_000_003 + self.ctx.rank * 7919 + self.state.step)
        if cfg.augmentation is not None:
            images, labels = augment_batch(
                images,
                labels,
                cfg.augmentation,
                gen,
                channel_slices=2 * self.cfg.slice_context + 1,
                num_classes=self.num_classes,
            )
        body = None
        if self.needs_body:  # the body mask rode in the labels (see PatchDataset): split them again
            body = labels >= self.num_classes
            labels = labels - self.num_classes * body.long()
        from ..losses import training_region

        roi = training_region(self.loss_fn, labels, body)
        images = images.contiguous(memory_format=self.memory_format)
        self._set_lr(elapsed, reserve)
        with torch.autocast(
            device_type=self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        ):
            out = self.model_for_steps(images, request=OutputRequest.for_training())
            if self.phases[self.state.phase] == "stage1":
                # The other outputs join with weight 0 so every parameter gets a (zero) gradient,
                # which DDP needs; stage 2's weights therefore stay where they are.
                loss = (
                    self.loss_fn(SegmentationOutput(logits=out.stages["stage1"]), labels, roi=roi)
                    + 0.0 * out.logits.sum()
                )
            else:
                loss = self.loss_fn(out, labels, roi=roi)
        if not torch.isfinite(loss.detach()):
            self.optimizer.zero_grad(set_to_none=True)
            return float("nan")
        self.scaler.scale(loss).backward()
        if cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.state.step += 1
        return float(loss.detach())

    def on_epoch_end(self, reason: str | None) -> None:
        """Validate (every ``val_every`` epochs, at the last epoch and when the budget ends),
        checkpoint, log, and keep the next epochs at the planned duration."""
        epoch = self.state.epoch
        train_seconds = time.perf_counter() - self.epoch_start
        loop_seconds = time.perf_counter() - self.loop_start
        # The budget ran out right after a validation: nothing new to validate. Only rank 0 holds
        # the validation, so it decides for all (a rank that validated alone would wait for ever).
        if reason == "time" and not self.epoch_losses:
            nothing_new = self.last_validation is not None
            if all_max([float(nothing_new)], self.ctx, self.device)[0]:
                self.state.elapsed = self._elapsed()
                return
        validated = (epoch + 1) % self.cfg.val_every == 0 or reason == "time" or epoch + 1 == self.cfg.epochs
        result = self._validation_agreed(validated)
        self.state.epoch = epoch + 1
        self.state.elapsed = self._elapsed()
        if self.ctx.is_main and result is not None:
            self.on_validation_end(result, train_seconds)
        if self.ctx.is_main and validated:
            self.save_checkpoint("last", validation=result)
        barrier(self.ctx)
        self._keep_epoch_duration(loop_seconds)

    def _validation_agreed(self, validated: bool) -> ValidationResult | None:
        """:meth:`run_validation` (when ``validated``), then every rank learns whether it was
        cancelled: only rank 0 validates, so only rank 0 sees a Cancel between its batches. A
        Cancel that came after the validation's last batch is left to the next step's check, so
        the finished validation is kept (it may be the run's best)."""
        cancelled = False
        result = None
        try:
            result = self.run_validation() if validated else None
        except CancelledError:
            cancelled = True
        self._agree_cancel("during validation", cancelled)  # not the live Cancel: see above
        return result

    def _clean_batches(self, count: int) -> Iterator[torch.Tensor]:
        """The first ``count`` batches of this epoch's pass (:meth:`draw_batch`), without the
        augmentation a training step adds (:meth:`train_step`), for the batch-norm statistics."""
        for i in range(count):
            if self.cancel is not None and self.cancel.is_set():
                raise CancelledError("training cancelled while measuring the batch-norm statistics")
            images, _ = self.draw_batch(fresh=i == 0)
            yield images.to(self.device).contiguous(memory_format=self.memory_format)

    def reestimate_batch_norm(self, batches: int | None = None) -> float:
        """Rank 0, where the plan says ``batch_norm_statistics = "clean"``: the batch-norm
        statistics of the weights about to be validated and saved measured again on clean
        training samples (:mod:`.batch_norm`; ``batches``: default the planned voxel count).
        Returns the seconds it took (0 where nothing was done)."""
        if self.cfg.batch_norm_statistics != "clean" or not self.ctx.is_main:
            return 0.0
        count = batches if batches is not None else self._batch_norm_batches()
        model = self.shipped_model
        t0 = time.perf_counter()
        reestimate_batch_norm(
            model, self._clean_batches(count), lambda images: model(images, request=OutputRequest.for_training())
        )
        return time.perf_counter() - t0

    def run_validation(self) -> ValidationResult | None:
        """Rank 0: the batch-norm statistics of the weights about to be validated and saved
        (:meth:`reestimate_batch_norm`), then the validation subset through the predictor
        (:mod:`.validation`); the statistics count in the validation's seconds."""
        if not self.ctx.is_main:
            return None
        statistics_seconds = self.reestimate_batch_norm()
        if not self.val_order:
            return None
        cases = self.val_order[: self.cfg.val_max_cases or len(self.val_order)]
        result = validate(
            self.shipped_model,
            self._card(None),
            cases,
            depths=self._validate_depths(),
            device=self.device,
            batch_size=self.cfg.val_batch_size,
            cancel=self.cancel,
            choose_postprocessing=self.cfg.choose_postprocessing,
            choose_threshold=self.cfg.choose_threshold,
            prior_depth=self._prior_depth(),
            prior_fixed=self.split.kind == "slice_blocks",
        )
        self.model.train()
        result.seconds += statistics_seconds
        self.state.validation_seconds = result.seconds
        return result

    def _prior_depth(self) -> int | None:
        """A fine-tuning's starting point for the depth choice: the starting model's recommended
        depth, chosen on its own validation patients (:func:`.validation.recommended_depth`)."""
        card = self.parent_card
        if card is None or card.recommended_depth is None or not self.model.info.pruning_depths:
            return None
        return int(card.recommended_depth)

    def on_validation_end(self, result: ValidationResult, train_seconds: float) -> None:
        epoch = self.state.epoch - 1
        self.last_validation = result
        best = result.dice_at_recommended_depth
        if self.cfg.schedule == "plateau":
            self._update_plateau(best)
        is_best = math.isfinite(best) and best > self.state.best_dice
        if is_best:
            self.state.best_dice, self.state.best_epoch = best, epoch
            self.save_checkpoint("best", validation=result)
        losses = self.epoch_losses
        train_loss = float(np.mean(losses)) if losses else float("nan")
        row = {
            "epoch": epoch + 1,
            "step": self.state.step,
            "phase": self.phases[self.state.phase],
            "train_loss": round(train_loss, 5),
            "lr": f"{self._lr():.3g}",
            "recommended_depth": result.recommended_depth,
            "best_dice": round(self.state.best_dice, 4),
            "epoch_seconds": round(train_seconds, 2),
            "validation_seconds": round(result.seconds, 2),
            "samples_per_second": round(self.epoch_samples / max(train_seconds, 1e-9), 2),
            "elapsed_seconds": round(self.state.elapsed, 1),
        }
        for depth, value in result.dice_per_depth.items():
            row[f"dice_depth{depth}"] = round(value, 4)
        if result.threshold_candidates:
            # 0.5 (the argmax) is recorded as such, not as an empty cell.
            row["foreground_threshold"] = result.foreground_threshold or 0.5
        self.log.append(row)
        self.history.append(row)
        budget = self._budget()
        self.callbacks.emit(
            "on_epoch",
            EpochInfo(
                epoch=epoch,
                epochs=int(self.cfg.epochs or 1),
                train_loss=train_loss,
                lr=self._lr(),
                dice_per_depth=dict(result.dice_per_depth),
                dice_per_case=result.dice_per_case,
                recommended_depth=result.recommended_depth,
                best_dice=self.state.best_dice,
                best_epoch=self.state.best_epoch,
                is_best=is_best,
                elapsed_seconds=self.state.elapsed,
                epoch_seconds=train_seconds,
                validation_seconds=result.seconds,
                samples_per_second=self.epoch_samples / max(train_seconds, 1e-9),
                time_left_seconds=None if budget is None else max(0.0, budget - self.state.elapsed),
                extra={"foreground_threshold": result.foreground_threshold} if result.threshold_candidates else {},
            ),
        )

    def _update_plateau(self, dice: float) -> None:
        """Paper 000's plateau rule (Keras' ReduceLROnPlateau), monitored on the validation Dice
        (the trainer validates through the predictor, which has no loss to report)."""
        from ..models.recipes import PlateauSchedule

        schedule = PlateauSchedule(factor=self.cfg.gamma, patience=max(1, self.cfg.step_size), mode="max")
        if self.state.plateau_best >= 0:
            schedule.load_state_dict(
                {"best": self.state.plateau_best, "bad": self.state.plateau_bad, "current": self.state.plateau_factor}
            )
        self.state.plateau_factor = schedule.update(dice if math.isfinite(dice) else 0.0)
        self.state.plateau_best, self.state.plateau_bad = float(schedule.best), int(schedule.bad)

    def save_checkpoint(self, name: str, validation: ValidationResult | None, note: str = "") -> Path:
        """``last/`` or ``best/``: weights, card and training state, swapped in atomically."""
        t0 = time.perf_counter()
        state = self.state.to_dict()
        card = self._card(validation, note=note)
        training_state = dict(state)
        training_state["optimizer"] = self.optimizer.state_dict()
        if self.scaler.is_enabled():
            training_state["scaler"] = self.scaler.state_dict()
        if self.ema is not None:
            training_state["raw_weights"] = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
            training_state["ema_updates"] = int(self.ema.n_averaged)
        path = write_checkpoint(self.run_dir, name, self.shipped_model, card, training_state)
        self.state.checkpoint_seconds = time.perf_counter() - t0
        return path

    def _epoch_length_given(self) -> bool:
        """``--steps-per-epoch`` was given: explicit options win, so the budget is then a ceiling
        (the run still stops when it runs out) and never stretches or shrinks the user's epochs."""
        choice = self.plan.choices.get("steps_per_epoch") if self.plan is not None else None
        return choice is not None and choice.source == "given"

    def _keep_epoch_duration(self, train_seconds: float) -> None:
        """With a budget, the remaining epochs share the time that is left: their steps follow the
        pace measured over the epoch just ended, sized so that the last epoch ends where the end
        reserve begins. (Keeping the planned epoch length in seconds, corrected only when 20 % off,
        left a budget partly unspent whenever the calibration's pace was slower than the run's:
        20-minute runs stopped at 83-88 % of their budget.) Rank 0 decides; every rank follows."""
        budget = self._budget()
        epochs_left = int(self.cfg.epochs or 0) - self.state.epoch
        if not budget or epochs_left < 1 or self.epoch_steps < 2 or self._epoch_length_given():
            return
        pace = all_max([train_seconds / self.epoch_steps], self.ctx, self.device)[0]
        wanted = 0.0
        if self.ctx.is_main:
            validation = self.state.validation_seconds or getattr(self, "validation_estimate", 0.0)
            between = validation / max(1, int(self.cfg.val_every)) + self.state.checkpoint_seconds
            left = budget - self._elapsed() - self._end_reserve() - (epochs_left - 1) * between
            wanted = max(1.0, round(left / epochs_left / max(pace, 1e-9)))
        wanted = all_max([wanted], self.ctx, self.device)[0]
        if abs(wanted - self.steps_per_epoch) / max(1, self.steps_per_epoch) > EPOCH_LENGTH_TOLERANCE:
            self._set_epoch_length(int(wanted))

    # ------------------------------------------------------------------------------ end

    def on_train_end(self, stopped: str) -> TrainResult:
        if hasattr(self, "model"):
            check_parameters_agree(self.model, self.ctx, self.device)
            sync_buffers(self.model, self.ctx)
        result = self._result(stopped)
        if self.ctx.is_main and not self.dry_run and self.run_dir.is_dir():
            write_json_atomic(
                self.run_dir / RESULT_FILE,
                {
                    "stopped": stopped,
                    "elapsed_seconds": round(result.elapsed_seconds, 2),
                    "budget_seconds": self._budget(),
                    "epochs_completed": result.epochs_completed,
                    "steps": result.steps,
                    "best_dice": result.best_dice,
                    "best_epoch": result.best_epoch,
                    "last_dice": result.last_dice,
                    "keep": result.keep,
                    "model_checkpoint": None if result.model_checkpoint is None else str(result.model_checkpoint),
                    "model_dice": result.model_dice,
                },
            )
        if self.ctx.is_main:
            self.callbacks.emit("on_train_end", result)
        return result

    def _result(self, stopped: str) -> TrainResult:
        main = self.ctx.is_main
        best = find_checkpoint(self.run_dir, "best") if main else None
        last = find_checkpoint(self.run_dir, "last") if main else None
        keep = self.cfg.keep or "best"
        # The depth figures of the run's model (the checkpoint the plan keeps, when it was validated).
        kept = (last if keep == "last" and last is not None else None) or best
        dpd, rec = {}, None
        if kept is not None:
            card = read_card(kept)
            dpd = {int(k): float(v) for k, v in card.validation.get("dice_per_depth", {}).items()}
            rec = card.recommended_depth
        last_dice = None
        if self.last_validation is not None and math.isfinite(self.last_validation.dice_at_recommended_depth):
            last_dice = float(self.last_validation.dice_at_recommended_depth)
        return TrainResult(
            run_dir=self.run_dir,
            best_checkpoint=best,
            last_checkpoint=last,
            keep=keep,
            stopped=stopped,
            epochs_completed=self.state.epoch,
            steps=self.state.step,
            elapsed_seconds=self._elapsed(),
            best_dice=None if self.state.best_dice < 0 else float(self.state.best_dice),
            # 1-based; 0 is the starting weights of a fine-tuning that no epoch beat
            best_epoch=None if self.state.best_dice < 0 else self.state.best_epoch + 1,
            dice_per_depth=dpd,
            recommended_depth=rec,
            last_dice=last_dice,
            history=self.history,
            model=self.shipped_model.to("cpu").eval() if hasattr(self, "model") else None,
            plan=self.plan,
        )

    def release(self) -> None:
        """Drop the model, optimiser and cached batches so GPU memory is returned; let go of the
        run folder."""
        if getattr(self, "claim", None) is not None:
            self.claim.release()
        for name in (
            "model",
            "model_for_steps",
            "ema",
            "optimizer",
            "loader",
            "dataset",
            "loss_fn",
            "scaler",
            "cases",
            "train_cases",
            "val_cases",
            "val_order",
        ):
            if hasattr(self, name):
                delattr(self, name)

    # ------------------------------------------------------------------------------ helpers

    def _elapsed(self) -> float:
        """Seconds of this run: earlier sittings plus this one since the call."""
        return self._earlier + (time.perf_counter() - self.started)

    @property
    def _earlier(self) -> float:
        return getattr(self, "_resumed_elapsed", 0.0)

    def _budget(self) -> float | None:
        return self.cfg.minutes * 60.0 if self.cfg.minutes else None

    def _end_reserve(self) -> float:
        """Seconds kept for the end: the last validation's measured cost (the calibration's
        estimate before the first), the checkpoint writes, and a small margin; 10 % over."""
        estimate = self.state.validation_seconds or getattr(self, "validation_estimate", 0.0)
        if not self.cfg.minutes:
            return 0.0
        return (
            1.1 * (estimate + 2 * self.state.checkpoint_seconds)
            + END_RESERVE_SECONDS
            + END_RESERVE_SHARE * float(self._budget() or 0.0)
        )

    def _planned_steps(self) -> int:
        return int(self.cfg.epochs or 1) * max(1, self.steps_per_epoch)

    def _set_lr(self, elapsed: float, reserve: float) -> None:
        cfg = self.cfg
        budget = self._budget()
        training_seconds = None if budget is None else max(1.0, budget - reserve)
        progress = run_progress(self.state.step, self._planned_steps(), elapsed, training_seconds)
        factor = lr_factor(
            cfg.schedule,
            progress,
            self.state.epoch,
            self.state.step,
            step_size=cfg.step_size,
            gamma=cfg.gamma,
            warmup_steps=cfg.warmup_steps,
            plateau_factor=self.state.plateau_factor,
        )
        lr = self._base_lr() * factor  # once per step, not once per parameter group
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _time_left(self, step_in_epoch: int) -> float | None:
        """Seconds to the end: the smaller of the budget left and the planned steps left at the
        current pace."""
        left_steps = self._planned_steps() - (self.state.epoch * self.steps_per_epoch + step_in_epoch)
        pace = (time.perf_counter() - self.epoch_start) / max(1, len(self.epoch_losses))
        by_steps = max(0.0, left_steps * pace)
        budget = self._budget()
        return by_steps if budget is None else min(max(0.0, budget - self._elapsed()), by_steps)

    def _phase_for(self, epoch: int) -> int:
        """Stagewise cascades: the first half (of the epochs or of the budget) is stage 1."""
        if len(self.phases) == 1:
            return 0
        if self.state.phase == 1:
            return 1  # never go back
        budget = self._budget()
        elapsed = all_max([self._elapsed()], self.ctx, self.device)[0]
        by_epochs = epoch >= int(self.cfg.epochs or 1) // 2
        by_time = budget is not None and elapsed >= budget / 2
        return 1 if (by_epochs or by_time) else 0

    def _enter_phase(self, phase: int) -> None:
        """Stagewise phase 2: freeze the parameters stage 1 depends on, rebuild optimiser/DDP."""
        self.state.phase = phase
        if phase == 0:
            return
        lr = self._lr()
        self._freeze_stage1()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model_for_steps = wrap_model(self.model, self.ctx, self.device)

    def _freeze_stage1(self) -> None:
        for p in self._stage1_parameters():
            p.requires_grad_(False)
        self.optimizer = self._make_optimizer()

    def _stage1_parameters(self) -> list[nn.Parameter]:
        """Parameters that stage 1's logits depend on, found by autograd on one small input."""
        x = torch.zeros((1, self.network_in_channels, *self.patch), device=self.device)
        was = self.model.training
        self.model.eval()
        out = self.model(x, request=OutputRequest(stages=True))
        self.model.train(was)
        params = list(self.model.parameters())
        grads = torch.autograd.grad(out.stages["stage1"].sum(), params, allow_unused=True)
        return [p for p, g in zip(params, grads) if g is not None]

    def _card(self, validation: ValidationResult | None, note: str = "") -> ModelCard:
        data = DataInfo(
            num_classes=self.num_classes,
            class_values=self.class_values,
            in_channels=self.in_channels,
            channel_names=self.channel_names,
            preprocessing=self.preprocessing,
            modality=self.modality,
            spacing=[round(float(v), 4) for v in self.fingerprint.median_spacing],
            source=self.cfg.to_dict()["data"] if not isinstance(self.cfg.data, list) else f"{len(self.cases)} case(s)",
            case_count=len(self.cases),
            split_kind=self.split.kind,
            train_cases=[c.case_id for c in self.train_cases],
            val_cases=[c.case_id for c in self.val_cases],
            fingerprint=_expected_input(self.fingerprint),
        )
        return build_card(
            cfg=self.cfg,
            model=self.model,
            data=data,
            validation=validation,
            state=self.state.to_dict(),
            device=str(self.device),
            world_size=self.ctx.world_size,
            loss=self.loss_name,
            name=self.run_dir.name,
            parent=self.parent_card,
            note=note,
        )

    def _start_info(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "model": self.cfg.model,
            "dims": self.cfg.dims,
            "split": self.split.kind,
            "volumes": len(self.cases),
            "train_cases": len(self.train_cases),
            "val_cases": len(self.val_cases),
            "validation_cases": min(len(self.val_order), self.cfg.val_max_cases or len(self.val_order)),
            "patch_size": list(self.patch),
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.cfg.epochs,
            "minutes": self.cfg.minutes,
            "device": str(self.device),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "loss": self.loss_name,
            "resumed_from_epoch": self.state.epoch if self.cfg.resume else None,
            "plan": self.plan.describe() if self.plan is not None else None,
            "plan_warnings": list(self.plan.warnings) if self.plan is not None else [],
            "init_checkpoint": self.cfg.init_checkpoint,
        }


def plan_only(config: TrainConfig, cancel: Any = None) -> TrainPlan:
    """What ``train(config)`` would do, measured on this machine, without training or writing
    anything: the plan with its measured schedule (``cascadeseg plan``, the Train dock's plan)."""
    started = time.perf_counter()
    config.validate()
    previous_threads = torch.get_num_threads()
    device = resolve_device(config.device)
    trainer = Trainer(
        config.copy(resume=False), CallbackList(None), cancel, device, DistContext(), started, dry_run=True
    )
    try:
        trainer.on_train_start()
        assert trainer.plan is not None
        return trainer.plan
    finally:
        trainer.release()
        release_cached_memory(device)
        torch.set_num_threads(previous_threads)


def _few_shot_patients() -> int:
    from .planner import FEW_SHOT_PATIENTS

    return FEW_SHOT_PATIENTS


def _expected_input(fp: DatasetFingerprint) -> dict[str, Any]:
    """What a model trained on this data expects of a scan (recorded in its card, so the
    predictor can warn when a scan does not fit)."""
    spacings = np.asarray(fp.spacings, dtype=float)
    return {
        "modality": fp.modality,
        "spacing_min": [round(float(v), 4) for v in spacings.min(axis=0)],
        "spacing_max": [round(float(v), 4) for v in spacings.max(axis=0)],
        "channels": [
            {
                "name": c.name,
                "foreground_percentiles": c.foreground_percentiles,
                "overall_percentiles": c.overall_percentiles,
            }
            for c in fp.channels
        ],
    }
