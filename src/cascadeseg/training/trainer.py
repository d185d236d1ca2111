"""The training loop: ``train(config, callbacks, cancel) -> TrainResult``.

One code path for the command line, the GUI (in a thread worker, with in-memory volumes, callbacks
and a cancel event) and ``torchrun`` (DDP). What it guarantees:

* validation every ``val_every`` epochs with per-patient 3D Dice at every pruning depth, and the
  recommended depth (the shallowest within 1 Dice point of the best);
* ``last/`` after every validation and ``best/`` when the best Dice improved, each written
  atomically, so a kill at any moment leaves a loadable checkpoint, and ``resume`` continues from
  ``last/`` (optimiser state, step, elapsed time and best score included);
* cancellation (``cancel.is_set()``) is checked before every step: training stops within one
  step, writes the weights of the last finished step to ``last/`` and leaves ``best/`` alone;
* a wall-clock budget (``minutes``) that includes validation: stepping stops early enough for
  the final validation to fit;
* only rank 0 writes or validates; every rank agrees on when to stop.

Schedules: ``cosine`` decays over the planned run, measured as the larger of the step fraction and
the time fraction of the budget (so a time-limited run still ends at a small learning rate);
``step`` multiplies by ``gamma`` every ``step_size`` epochs; linear warm-up is optional.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..errors import CascadeSegError, DatasetError, ModelConfigError
from ..inference.checkpoint import ModelCard, load_checkpoint, load_weights, read_card
from ..inference.device import autocast_dtype, memory_format, release_cached_memory, resolve_device
from ..models import OutputRequest, SegmentationOutput, create_model
from .augmentation import augment_batch
from .callbacks import CallbackList, EpochInfo, StepInfo
from .config import TrainConfig
from .datasets import LoadedData, TrainingCase, case_sources, load_cases
from .distributed import (
    DistContext, all_max, barrier, check_parameters_agree, init_distributed, shutdown, sync_buffers, wrap_model,
)
from .run_folder import CsvLog, LOG_FILE, claim_run_folder, find_checkpoint, read_training_state, write_checkpoint
from .sampling import PatchDataset, epoch_length, resolve_patch_size
from .split import Split, check_validation_unseen, patient_groups, patient_id, split_by_patient, split_by_slice_blocks
from .validation import ValidationResult, validate


class TrainingError(CascadeSegError):
    """Training cannot go on (e.g. the loss became NaN); the message says what to change."""


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
    best_epoch: int | None
    dice_per_depth: dict[int, float] = field(default_factory=dict)  # of the best epoch
    recommended_depth: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    model: nn.Module | None = None  # the final weights (last step), on the CPU, in eval mode


def train(config: TrainConfig, callbacks: Any = None, cancel: Any = None) -> TrainResult:
    """Train as ``config`` says; see the module docstring. ``callbacks``: a
    :class:`~cascadeseg.training.callbacks.TrainingCallback`-like object or a list of them;
    ``cancel``: anything with ``is_set()`` (a ``threading.Event``)."""
    config.validate()
    if config.threads:
        torch.set_num_threads(int(config.threads))
    device = resolve_device(config.device)
    ctx = init_distributed(device)
    trainer = None
    try:
        trainer = _Trainer(config, CallbackList(callbacks), cancel, device, ctx)
        return trainer.run()
    finally:
        if trainer is not None:
            trainer.release()
        shutdown(ctx)
        release_cached_memory(device)


class _Trainer:
    def __init__(self, config: TrainConfig, callbacks: CallbackList, cancel: Any, device: torch.device, ctx: DistContext) -> None:
        self.config = config
        self.callbacks = callbacks
        self.cancel = cancel
        self.device = device
        self.ctx = ctx
        self.run_dir = Path(config.run_dir)

    # ------------------------------------------------------------------------------ setup

    def run(self) -> TrainResult:
        cfg = self.config
        if self.ctx.is_main:
            self.claim = claim_run_folder(self.run_dir, cfg.resume)
        barrier(self.ctx)
        init_card = read_card(cfg.init_checkpoint) if cfg.init_checkpoint else None
        if init_card is not None:
            # Fine-tuning keeps the resolution and slicing the network learned at.
            if cfg.inplane_size is None:
                cfg.inplane_size = init_card.training.get("inplane_size")
            cfg.axis = init_card.slice_axis
        self.data = load_cases(
            case_sources(cfg.data),
            axis=cfg.axis,
            inplane_size=cfg.inplane_size,
            num_classes=init_card.num_classes if init_card else cfg.num_classes,
            preprocessing=[c["preprocessing"] for c in init_card.input_channels] if init_card else cfg.preprocessing,
        )
        self.split = self._make_split(init_card)
        self.train_cases, self.val_cases = self._split_cases(self.split)
        # Channels-last for training too: oneDNN's and cuDNN's fast convolution paths (measured
        # on this project's 2-core CPU: 20-27 % faster forward + backward at width 8).
        self.memory_format = memory_format(self.device, cfg.dims)
        # Seeded initial weights: the same config starts from the same network (reproducible runs;
        # DDP ranks would agree anyway, as DDP broadcasts rank 0's weights).
        torch.manual_seed(int(cfg.seed))
        self.model = self._make_model(init_card).to(self.device, memory_format=self.memory_format)
        self.divisor = tuple(int(d) for d in self.model.size_divisor)
        self.patch = resolve_patch_size(self.train_cases, cfg.dims, cfg.axis, cfg.patch_size, self.divisor)
        self.depths: list[int | None] = list(self.model.info.pruning_depths) or [None]
        self.loss_name = cfg.loss or self._init_loss(init_card) or self.model.info.default_loss
        self.loss_fn = self._make_loss()
        self.optimizer = self._make_optimizer()
        self.ema = self._make_ema()
        self.amp_dtype = autocast_dtype(self.device) if (cfg.amp and self.device.type == "cuda") else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.state = {"epoch": 0, "step": 0, "elapsed": 0.0, "best_dice": -1.0, "best_epoch": -1, "phase": 0}
        self.last_validation: ValidationResult | None = None
        if cfg.resume:
            self._restore()
        elif self.ctx.is_main:
            cfg.save(self.run_dir)
            self.split.save(self.run_dir)
        self.phases = self._phases()
        self.columns = ["epoch", "step", "phase", "train_loss", "lr"] + [f"dice_depth{1 if d is None else d}" for d in self.depths] + [
            "recommended_depth", "best_dice", "epoch_seconds", "validation_seconds", "samples_per_second", "elapsed_seconds"]
        self.log = CsvLog(self.run_dir / LOG_FILE, self.columns)
        if self.ctx.is_main and cfg.resume:
            self.log.truncate_after(int(self.state["epoch"]))
        self.dataset = PatchDataset(
            self.train_cases, cfg.dims, cfg.axis, self.patch, cfg.foreground_probability,
            epoch_length(self.train_cases, cfg.dims, cfg.axis, cfg.steps_per_epoch, cfg.batch_size, self.ctx.world_size),
            cfg.seed,
        )
        self.sampler = (
            DistributedSampler(self.dataset, num_replicas=self.ctx.world_size, rank=self.ctx.rank, shuffle=False, drop_last=True)
            if self.ctx.is_distributed else None
        )
        self.loader = DataLoader(
            self.dataset, batch_size=cfg.batch_size, sampler=self.sampler, shuffle=False, drop_last=True,
            num_workers=cfg.num_workers, pin_memory=self.device.type == "cuda",
        )
        self.steps_per_epoch = len(self.loader)
        self.history: list[dict[str, Any]] = []
        if self.ctx.is_main:
            self.callbacks.emit("on_train_start", self._start_info())
        return self._loop()

    def _make_split(self, init_card: ModelCard | None) -> Split:
        cfg = self.config
        if cfg.resume:
            return Split.load(self.run_dir)
        ids = [c.case_id for c in self.data.cases]
        groups = patient_groups(cfg.data)
        if len({patient_id(i, groups) for i in ids}) >= 2:
            split = split_by_patient(ids, cfg.val_fraction, cfg.seed, cfg.val_cases, groups)
            # Cards are files from anywhere (older versions, hand-written, other tools): only a
            # recorded list of training cases is checked, anything else means "unknown".
            data = init_card.training.get("data") if init_card is not None else None
            seen = data.get("train_cases") if isinstance(data, dict) else None
            if isinstance(seen, list):
                check_validation_unseen(split, [str(c) for c in seen], f"init checkpoint '{cfg.init_checkpoint}'", groups)
            return split
        # One patient (the GUI's usual case): blocks of slices along the slicing axis.
        merged = Split(kind="slice_blocks", seed=cfg.seed, gap=cfg.slice_gap)
        for case in self.data.cases:
            annotated = None
            if cfg.annotated_slices_only:
                other = tuple(a for a in range(3) if a != cfg.axis)
                annotated = case.labels.any(axis=other)
            part = split_by_slice_blocks(
                case.case_id, case.spatial_shape[cfg.axis], cfg.axis, cfg.val_fraction, cfg.slice_block, cfg.slice_gap, cfg.seed, annotated
            )
            merged.train += part.train
            merged.val += part.val
            merged.train_blocks += part.train_blocks
            merged.val_blocks += part.val_blocks
        return merged

    def _split_cases(self, split: Split) -> tuple[list[TrainingCase], list[TrainingCase]]:
        by_id = {c.case_id: c for c in self.data.cases}
        missing = sorted(set(split.train + split.val) - set(by_id))
        if missing:
            raise DatasetError(f"the run's split.json names case(s) {missing} that the training data does not have")
        if split.kind == "patient":
            return [by_id[i] for i in split.train], [by_id[i] for i in split.val]

        def blocks(items, tag):
            return [by_id[b.case_id].restrict(b.axis, b.start, b.stop, f"[{tag}{b.start}:{b.stop}]") for b in items]

        return blocks(split.train_blocks, "train"), blocks(split.val_blocks, "val")

    def _make_model(self, init_card: ModelCard | None) -> nn.Module:
        cfg = self.config
        if cfg.init_checkpoint:
            model, card = load_checkpoint(cfg.init_checkpoint, device=None)
            if card.dims != cfg.dims:
                raise ModelConfigError(
                    f"init checkpoint '{cfg.init_checkpoint}' is a {card.dims}D model but dims={cfg.dims} was asked for"
                )
            if card.num_classes != self.data.num_classes:
                raise DatasetError(
                    f"init checkpoint '{cfg.init_checkpoint}' knows {card.num_classes} classes, the labels need {self.data.num_classes}"
                )
            cfg.model = card.architecture
            cfg.model_options = {k: v for k, v in card.model_options.items() if k not in ("in_channels", "num_classes", "dims")}
            if card.num_classes and cfg.class_names is None:
                cfg.class_names = card.class_names
            model.train()
            return model
        options = dict(cfg.model_options)
        if cfg.dims == 3:
            options.setdefault("spacing", list(self.train_cases[0].spacing))
        return create_model(cfg.model, in_channels=self.data.in_channels, num_classes=self.data.num_classes, dims=cfg.dims, **options)

    @staticmethod
    def _init_loss(init_card: Any) -> str | None:
        """Fine-tuning without a loss given continues with the loss the checkpoint was trained
        with (a shipped model may have left its paper's loss, e.g. the cascade's cross-entropy +
        Dice); a card without one, or with a loss this version does not know, leaves the choice to
        the model's paper loss."""
        from ..losses import loss_names

        name = init_card.training.get("loss") if init_card is not None else None
        return name if name in loss_names() else None

    def _make_loss(self) -> nn.Module:
        from ..losses import build_loss

        loss = build_loss(self.loss_name, **self.config.loss_options)
        return loss.to(self.device) if isinstance(loss, nn.Module) else loss

    def _make_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def _make_ema(self) -> AveragedModel | None:
        """The moving average of the weights (and of the batch-norm statistics, which must match
        the averaged weights), kept by torch's own ``AveragedModel``. Why: on 60-70 patients
        the validation Dice of one set of weights swings by several points from epoch to epoch
        (measured on LGG: 0.71-0.79 between neighbouring epochs); the average of the recent
        weights sits nearer the middle of that basin and generalises better."""
        if not self.config.ema_decay:
            return None
        return AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(float(self.config.ema_decay)), use_buffers=True)

    @property
    def _shipped_model(self) -> nn.Module:
        """The weights that are validated and written to ``best/`` and ``last/``."""
        return self.ema.module if self.ema is not None else self.model

    def _phases(self) -> list[str]:
        """``["full"]``, or ``["stage1", "full"]`` for stage-by-stage cascade training (stage 1
        alone for the first half of the epochs/budget, then stage 2 with stage 1 frozen)."""
        if self.config.cascade_training == "stagewise" and "stage1" in self.model.info.stages:
            return ["stage1", "full"]
        return ["full"]

    def _restore(self) -> None:
        folder = find_checkpoint(self.run_dir, "last")
        if folder is None:
            return  # killed before the first checkpoint: start from scratch with the same split
        state = read_training_state(folder)
        saved = load_weights(folder)  # checksum verified
        if self.ema is not None:
            # model.safetensors holds the average; the raw weights ride in the training state.
            self.ema.module.load_state_dict(saved, strict=True)
            self.ema.n_averaged.fill_(int(state.get("ema_updates", 1)))
            saved = state.get("raw_weights", saved)
        self.model.load_state_dict(saved, strict=True)
        if int(state.get("phase", 0)) == 1 and len(self._phases()) == 2:
            self._freeze_stage1()  # the saved optimiser state covers stage 2's parameters only
        self.optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        for key in self.state:
            if key in state:
                self.state[key] = state[key]
        best = find_checkpoint(self.run_dir, "best")
        if best is not None:
            card = read_card(best)
            dpd = card.validation.get("dice_per_depth", {})
            if dpd:
                self.last_validation = ValidationResult(
                    {int(k): float(v) for k, v in dpd.items()}, {}, card.recommended_depth or 1)

    # ------------------------------------------------------------------------------ loop

    def _loop(self) -> TrainResult:
        cfg = self.config
        budget = cfg.minutes * 60.0 if cfg.minutes else None
        model = wrap_model(self.model, self.ctx, self.device)
        stopped = "epochs"
        self.model.train()
        start_time = time.perf_counter() - float(self.state["elapsed"])
        self._session_start, self._session_first_step = time.perf_counter(), int(self.state["step"])
        validation_reserve: float | None = None  # measured after the first validation
        phase_of_epoch = self._phase_plan()
        consecutive_bad = 0
        while self.state["epoch"] < cfg.epochs:
            epoch = int(self.state["epoch"])
            phase = phase_of_epoch(epoch, all_max([time.perf_counter() - start_time], self.ctx, self.device)[0], budget)
            if phase != self.state["phase"]:
                model = self._enter_phase(phase, model)
            self.dataset.set_epoch(epoch)
            if self.sampler is not None:
                self.sampler.set_epoch(epoch)
            epoch_start = time.perf_counter()
            losses: list[float] = []
            samples = 0
            reason = None
            for step_in_epoch, (images, labels) in enumerate(self.loader, start=1):
                cancelled = bool(self.cancel is not None and self.cancel.is_set())
                reserve = validation_reserve
                if reserve is None:
                    reserve = self._estimate_validation_seconds(len(losses), time.perf_counter() - epoch_start, budget)
                # One collective per step: every rank sees the same clock and the same decision.
                flag, elapsed, reserve = all_max(
                    [float(cancelled), time.perf_counter() - start_time, reserve], self.ctx, self.device)
                if flag:
                    reason = "cancelled"
                    break
                if budget is not None and elapsed + reserve >= budget:
                    reason = "time"
                    break
                loss_value = self._step(model, images, labels, epoch, elapsed, budget)
                if not math.isfinite(loss_value):
                    consecutive_bad += 1
                    if consecutive_bad >= 5:
                        raise TrainingError(
                            f"the training loss was NaN/infinite for 5 steps in a row (epoch {epoch + 1}); "
                            f"lower the learning rate (lr={self._lr():.3g}) or check the labels"
                        )
                    continue
                consecutive_bad = 0
                losses.append(loss_value)
                samples += images.shape[0] * self.ctx.world_size
                self.state["step"] += 1
                if self.ctx.is_main:
                    now = time.perf_counter()
                    self.callbacks.emit("on_step", StepInfo(
                        epoch=epoch, step=int(self.state["step"]), step_in_epoch=step_in_epoch,
                        steps_per_epoch=self.steps_per_epoch, loss=loss_value, lr=self._lr(),
                        samples_per_second=samples / max(now - epoch_start, 1e-9),
                        elapsed_seconds=now - start_time, time_left_seconds=self._time_left(now - start_time, budget, epoch, step_in_epoch),
                    ))
            train_seconds = time.perf_counter() - epoch_start
            self.state["elapsed"] = time.perf_counter() - start_time
            if reason == "cancelled":
                stopped = "cancelled"
                if self.ctx.is_main:
                    self._save_last(epoch_complete=False, note=f"cancelled during epoch {epoch + 1}")
                break
            if reason == "time" and not losses:  # the budget ran out right after a validation
                stopped = "time"
                break
            validated = (epoch + 1) % cfg.val_every == 0 or reason == "time" or epoch + 1 == cfg.epochs
            val_seconds = 0.0
            if validated:
                val_seconds = self._end_of_epoch(epoch, losses, samples, train_seconds, start_time, budget)
                validation_reserve = val_seconds * 1.2
            self.state["epoch"] = epoch + 1
            self.state["elapsed"] = time.perf_counter() - start_time
            if self.ctx.is_main and validated:
                self._save_last(epoch_complete=True)
            barrier(self.ctx)
            if reason == "time":
                stopped = "time"
                break
        check_parameters_agree(self.model, self.ctx, self.device)
        sync_buffers(self.model, self.ctx)
        result = self._result(stopped, time.perf_counter() - start_time)
        if self.ctx.is_main:
            self.callbacks.emit("on_train_end", result)
        return result

    def _phase_plan(self):
        """Which phase an epoch belongs to (stagewise cascades: first half is stage 1)."""
        if len(self.phases) == 1:
            return lambda epoch, elapsed, budget: 0
        epochs = self.config.epochs

        def phase(epoch: int, elapsed: float, budget: float | None) -> int:
            if self.state["phase"] == 1:
                return 1  # never go back
            by_epochs = epoch >= epochs // 2
            by_time = budget is not None and elapsed >= budget / 2
            return 1 if (by_epochs or by_time) else 0

        return phase

    def _enter_phase(self, phase: int, model: nn.Module) -> nn.Module:
        """Stagewise phase 2: freeze the parameters stage 1 depends on, rebuild optimiser/DDP."""
        self.state["phase"] = phase
        if phase == 0:
            return model
        lr = self._lr()
        self._freeze_stage1()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return wrap_model(self.model, self.ctx, self.device)

    def _freeze_stage1(self) -> None:
        for p in self._stage1_parameters():
            p.requires_grad_(False)
        self.optimizer = self._make_optimizer()

    def _stage1_parameters(self) -> list[nn.Parameter]:
        """Parameters that stage 1's logits depend on, found by autograd on one small input."""
        size = self.patch
        x = torch.zeros((1, self.data.in_channels, *size), device=self.device)
        was = self.model.training
        self.model.eval()
        out = self.model(x, request=OutputRequest(stages=True))
        self.model.train(was)
        params = [p for p in self.model.parameters()]
        grads = torch.autograd.grad(out.stages["stage1"].sum(), params, allow_unused=True)
        return [p for p, g in zip(params, grads) if g is not None]

    def _step(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epoch: int, elapsed: float, budget: float | None) -> float:
        cfg = self.config
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(cfg.seed) * 1_000_003 + self.ctx.rank * 7919 + int(self.state["step"]))
        images, labels = augment_batch(images, labels, cfg.augmentation, gen)
        images = images.contiguous(memory_format=self.memory_format)
        self._set_lr(epoch, elapsed, budget)
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            out = model(images, request=OutputRequest.for_training())
            if self.phases[self.state["phase"]] == "stage1":
                # The other outputs join with weight 0 so every parameter gets a (zero) gradient,
                # which DDP needs; stage 2's weights therefore stay where they are.
                loss = self.loss_fn(SegmentationOutput(logits=out.stages["stage1"]), labels) + 0.0 * out.logits.sum()
            else:
                loss = self.loss_fn(out, labels)
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
        return float(loss.detach())

    def _estimate_validation_seconds(self, steps: int, seconds: float, budget: float | None) -> float:
        """Before the first validation: its cost guessed from the training pace (a forward pass
        costs about a third of a training step per voxel; times 1.5 for safety). The first steps
        are slow (lazy imports, allocator warm-up), so no guess before 10 steps, and the guess
        never takes more than half the budget from training."""
        if steps < 10 or budget is None:
            return 0.0
        voxels_per_second = steps * self.config.batch_size * float(np.prod(self.patch)) / max(seconds, 1e-9)
        val_voxels = sum(float(np.prod(c.spatial_shape)) for c in self.val_cases)
        return min(0.5 * budget, 1.5 * val_voxels / (3.0 * voxels_per_second))

    def _progress(self, elapsed: float, budget: float | None) -> float:
        planned = self.config.epochs * max(1, self.steps_per_epoch)
        fraction = self.state["step"] / planned
        if budget:
            fraction = max(fraction, elapsed / budget)
        return min(1.0, fraction)

    def _set_lr(self, epoch: int, elapsed: float, budget: float | None) -> None:
        cfg = self.config
        if cfg.schedule == "cosine":
            factor = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * self._progress(elapsed, budget)))
        elif cfg.schedule == "step":
            factor = cfg.gamma ** (epoch // max(1, cfg.step_size))
        else:
            factor = 1.0
        if cfg.warmup_steps and self.state["step"] < cfg.warmup_steps:
            factor *= (self.state["step"] + 1) / cfg.warmup_steps
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr * factor

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _time_left(self, elapsed: float, budget: float | None, epoch: int, step_in_epoch: int) -> float | None:
        """Seconds to the end: the smaller of the budget left and the planned steps left at this
        session's pace."""
        session_steps = self.state["step"] - self._session_first_step
        left_steps = self.config.epochs * self.steps_per_epoch - (epoch * self.steps_per_epoch + step_in_epoch)
        pace = (time.perf_counter() - self._session_start) / max(session_steps, 1)
        by_steps = max(0.0, left_steps * pace)
        return by_steps if budget is None else min(max(0.0, budget - elapsed), by_steps)

    # ------------------------------------------------------------------------------ epoch end

    def _end_of_epoch(self, epoch, losses, samples, train_seconds, start_time, budget) -> float:
        cfg = self.config
        t0 = time.perf_counter()
        result = None
        if self.ctx.is_main:
            result = validate(
                self._shipped_model, self.val_cases, dims=cfg.dims, axis=cfg.axis, num_classes=self.data.num_classes,
                depths=self.depths, divisor=self.divisor, patch_size=self.patch, device=self.device,
                batch_size=cfg.val_batch_size, autocast_dtype=self.amp_dtype,
            )
        val_seconds = time.perf_counter() - t0
        if not self.ctx.is_main or result is None:
            return val_seconds
        self.last_validation = result
        best = result.best_dice
        is_best = best > self.state["best_dice"]
        if is_best:
            self.state["best_dice"], self.state["best_epoch"] = best, epoch
        elapsed = time.perf_counter() - start_time
        self.state["elapsed"] = elapsed
        if is_best:
            write_checkpoint(self.run_dir, "best", self._shipped_model, self._card(result, epoch + 1), self._training_state(epoch + 1))
        train_loss = float(np.mean(losses)) if losses else float("nan")
        row = {
            "epoch": epoch + 1, "step": self.state["step"], "phase": self.phases[self.state["phase"]],
            "train_loss": round(train_loss, 5), "lr": f"{self._lr():.3g}",
            "recommended_depth": result.recommended_depth, "best_dice": round(self.state["best_dice"], 4),
            "epoch_seconds": round(train_seconds, 2), "validation_seconds": round(val_seconds, 2),
            "samples_per_second": round(samples / max(train_seconds, 1e-9), 2), "elapsed_seconds": round(elapsed, 1),
        }
        for depth, value in result.dice_per_depth.items():
            row[f"dice_depth{depth}"] = round(value, 4)
        self.log.append(row)
        self.history.append(row)
        self.callbacks.emit("on_epoch", EpochInfo(
            epoch=epoch, epochs=cfg.epochs, train_loss=train_loss, lr=self._lr(),
            dice_per_depth=dict(result.dice_per_depth), dice_per_case=result.dice_per_case,
            recommended_depth=result.recommended_depth, best_dice=self.state["best_dice"],
            best_epoch=int(self.state["best_epoch"]), is_best=is_best, elapsed_seconds=elapsed,
            epoch_seconds=train_seconds, validation_seconds=val_seconds,
            samples_per_second=samples / max(train_seconds, 1e-9),
            time_left_seconds=None if budget is None else max(0.0, budget - elapsed),
        ))
        return val_seconds

    def _save_last(self, epoch_complete: bool, note: str = "") -> None:
        epoch = int(self.state["epoch"])
        card = self._card(self.last_validation, epoch, note=note)
        write_checkpoint(self.run_dir, "last", self._shipped_model, card, self._training_state(epoch))

    def _training_state(self, next_epoch: int) -> dict[str, Any]:
        state = {k: v for k, v in self.state.items() if not k.startswith("_")}
        state["epoch"] = int(next_epoch)
        state["optimizer"] = self.optimizer.state_dict()
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        if self.ema is not None:
            state["raw_weights"] = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
            state["ema_updates"] = int(self.ema.n_averaged)
        return state

    # ------------------------------------------------------------------------------ card/result

    def _card(self, result: ValidationResult | None, epochs_done: int, note: str = "") -> ModelCard:
        cfg, data, model = self.config, self.data, self.model
        names = cfg.class_names or (["background"] + [f"class {k}" for k in range(1, data.num_classes)])
        if len(names) != data.num_classes:
            raise ModelConfigError(f"class_names lists {len(names)} names but the model has {data.num_classes} classes")
        options = {"in_channels": data.in_channels, "num_classes": data.num_classes, "dims": cfg.dims, **cfg.model_options}
        if cfg.dims == 3 and "spacing" not in cfg.model_options:
            options["spacing"] = list(self.train_cases[0].spacing)
        spacing = list(self.train_cases[0].spacing) if cfg.inplane_size else None
        validation: dict[str, Any] = {}
        recommended = None
        if result is not None:
            validation = {
                "dice_per_depth": {str(k): round(v, 4) for k, v in result.dice_per_depth.items()},
                "dice_per_case": {c: {str(k): round(v, 4) for k, v in d.items()} for c, d in result.dice_per_case.items()},
                "metric": "mean over validation cases of the per-case 3D Dice (foreground classes), on the original voxel grid",
                "cases": [c.case_id for c in self.val_cases],
            }
            if self.model.info.pruning_depths:
                recommended = result.recommended_depth
        training = {
            "data": self._data_summary(),
            "command": cfg.command,
            "licence": cfg.data_licence,
            "loss": self.loss_name,
            "optimizer": cfg.optimizer, "lr": cfg.lr, "schedule": cfg.schedule, "batch_size": cfg.batch_size,
            "epochs_completed": epochs_done, "steps": int(self.state["step"]),
            "elapsed_minutes": round(float(self.state["elapsed"]) / 60.0, 2),
            "device": str(self.device), "world_size": self.ctx.world_size, "seed": cfg.seed,
            "inplane_size": cfg.inplane_size, "cascade_training": cfg.cascade_training,
            "ema_decay": cfg.ema_decay, "init_checkpoint": cfg.init_checkpoint,
            "augmentation": cfg.to_dict()["augmentation"],
        }
        if note:
            training["note"] = note
        return ModelCard(
            architecture=cfg.model,
            model_options=options,
            dims=cfg.dims,
            input_channels=[{"name": n, "preprocessing": p} for n, p in zip(self._channel_names(), data.preprocessing)],
            classes=[{"value": k, "name": n} for k, n in enumerate(names)],
            target_spacing=spacing,
            patch_size=list(self.patch) if cfg.dims == 3 else None,
            slice_size=list(self.patch) if cfg.dims == 2 else None,
            slice_axis=cfg.axis,
            training=training,
            validation=validation,
            recommended_depth=recommended,
            name=self.run_dir.name,
            description=cfg.description or f"{model.info.title} ({cfg.dims}D) trained with cascadeseg train",
        )

    def _channel_names(self) -> list[str]:
        names = self.config.channel_names or self.data.channel_names
        if len(names) != self.data.in_channels:
            raise ModelConfigError(f"channel_names lists {len(names)} names but the images have {self.data.in_channels} channel(s)")
        return list(names)

    def _data_summary(self) -> dict[str, Any]:
        return {
            "source": self.config.to_dict()["data"] if not isinstance(self.config.data, list) else f"{len(self.data.cases)} case(s)",
            "cases": len(self.data.cases),
            "split": self.split.kind,
            "train_cases": [c.case_id for c in self.train_cases],
            "val_cases": [c.case_id for c in self.val_cases],
            "modality": self.data.modality,
            "original_spacing": list(self.data.spacing),
        }

    def _start_info(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir), "model": self.config.model, "dims": self.config.dims,
            "train_cases": len(self.train_cases), "val_cases": len(self.val_cases),
            "patch_size": list(self.patch), "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.config.epochs, "minutes": self.config.minutes, "device": str(self.device),
            "parameters": sum(p.numel() for p in self.model.parameters()), "loss": self.loss_name,
            "resumed_from_epoch": int(self.state["epoch"]) if self.config.resume else None,
        }

    def _result(self, stopped: str, elapsed: float) -> TrainResult:
        best = find_checkpoint(self.run_dir, "best") if self.ctx.is_main else None
        dpd, rec = {}, None
        if best is not None:
            card = read_card(best)
            dpd = {int(k): float(v) for k, v in card.validation.get("dice_per_depth", {}).items()}
            rec = card.recommended_depth
        return TrainResult(
            run_dir=self.run_dir, best_checkpoint=best,
            last_checkpoint=find_checkpoint(self.run_dir, "last") if self.ctx.is_main else None,
            stopped=stopped, epochs_completed=int(self.state["epoch"]), steps=int(self.state["step"]),
            elapsed_seconds=elapsed, best_dice=None if self.state["best_dice"] < 0 else float(self.state["best_dice"]),
            best_epoch=None if self.state["best_epoch"] < 0 else int(self.state["best_epoch"]) + 1,
            dice_per_depth=dpd, recommended_depth=rec, history=self.history,
            model=self._shipped_model.to("cpu").eval(),
        )

    def release(self) -> None:
        """Drop the model, optimiser and cached batches so GPU memory is returned; let go of the run folder."""
        if getattr(self, "claim", None) is not None:
            self.claim.release()
        for name in ("model", "ema", "optimizer", "loader", "dataset", "loss_fn", "scaler"):
            if hasattr(self, name):
                delattr(self, name)
