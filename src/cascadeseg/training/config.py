"""The training configuration: one JSON-able record of every choice a run makes.

The same :class:`TrainConfig` comes from the command line (``cascadeseg train``), from the GUI's
train widget, and from ``config.json`` when a killed run is resumed, so a run folder always says
exactly how its checkpoints were made.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .._atomic import write_json
from ..errors import CascadeSegError, ModelConfigError
from ..inference.checkpoint import MAX_CONTEXT_SLICES
from ..io.volume import Volume

CONFIG_FILE = "config.json"

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "step", "constant", "plateau")
CASCADE_TRAINING = ("end_to_end", "stagewise")
# Which foreground voxel a foreground-centred sample is centred on (training/sampling.py).
FOREGROUND_SAMPLING = ("voxel", "component")
FREEZE = ("none", "encoder")


@dataclass
class AugmentationConfig:
    """On-the-fly augmentation (the papers': flips, 90-degree and small rotations, intensity
    scaling, smooth elastic deformation). Probabilities are per sample."""

    enabled: bool = True
    flip: bool = True
    rot90: bool = True
    rotate_degrees: float = 15.0
    scale_range: tuple[float, float] = (0.9, 1.1)  # isotropic zoom of the sampled field of view
    intensity_scale: tuple[float, float] = (0.9, 1.1)
    intensity_shift: float = 0.1  # in units of the normalised intensity (z-score: standard deviations)
    elastic_probability: float = 0.3
    elastic_magnitude: float = 0.03  # displacement of a control point, as a fraction of the image size
    elastic_control_points: int = 5  # per axis; the displacement between them is cubic-smooth
    spatial_probability: float = 0.8  # probability of a rotation/zoom being drawn at all
    # Scanner and protocol variation (nnU-Net's set, for scans from other sites): each drawn per
    # sample with its probability; 0 switches one off.
    gamma_probability: float = 0.0
    gamma_range: tuple[float, float] = (0.7, 1.5)  # intensity ** gamma on the sample's [min, max]
    contrast_probability: float = 0.0
    contrast_range: tuple[float, float] = (0.75, 1.25)  # around the sample's mean
    noise_probability: float = 0.0
    noise_std: float = 0.1  # Gaussian noise, at most this standard deviation (normalised units)
    bias_probability: float = 0.0
    bias_magnitude: float = 0.3  # a smooth multiplicative field exp(+-magnitude), MR's coil inhomogeneity
    # A structure that barely stands out (a small, dim lesion): the labelled foreground's contrast to
    # the tissue around it scaled by a factor drawn from the range, per sample holding foreground
    # and channel. Off unless asked for (docs/one_click_training.md measures it).
    foreground_contrast_probability: float = 0.0
    foreground_contrast_range: tuple[float, float] = (0.25, 1.0)
    foreground_contrast_margin: int = 3  # voxels: the ring around the foreground its contrast is taken to


# The budget of a run given neither minutes nor epochs (the planner records which and why; the
# Train dock's "planned" budget for a fine-tuning). Here, not in the planner, because the dock
# reads them at opening, before torch is imported.
DEFAULT_MINUTES = 30.0  # `cascadeseg train DATA` with neither --minutes nor --epochs
# ... unless it fine-tunes a model on a few patients (benchmarks/fewshot_rules.py --minutes 2
# --compare-with an 8-minute run; docs/one_click_training.md, stop 63). From three patients the run
# validates on a whole patient and keeps its last weights, and the gain comes in the first epoch:
FEW_SHOT_MINUTES = 2.0
FEW_SHOT_MINUTES_REASON = (
    "from three patients (whole-patient validation, the last weights kept) the gain comes in the first epoch "
    "and holds: the shipped FLAIR ANU-Net fine-tuned on three shifted LGG patients, four folds each scored on "
    "nine others, 2 minutes +0.009 +- 0.010 against 8 (0.726 against 0.718; the starting model 0.641); "
    "--minutes gives more"
)
# One or two patients validate on slice blocks and keep the best validated weights; 2 minutes did
# not hold there, so they get the budget their rules were measured at.
SLICE_BLOCK_FINE_TUNING_MINUTES = 8.0
SLICE_BLOCK_FINE_TUNING_MINUTES_REASON = (
    "one or two patients validate on slice blocks and keep the best validated weights: six two-patient folds "
    "of shifted LGG patients, each scored on ten others, kept 0.694 at 8 minutes (the starting model 0.641); "
    "at 2 minutes -0.018 +- 0.017 against 8, one fold -0.098; --minutes gives another"
)

# What the planner decides when a field is left as None ("auto"); every one can be given instead.
PLANNED_FIELDS = (
    "model",
    "dims",
    "axis",
    "target_spacing",
    "patch_size",
    "batch_size",
    "model_options",
    "loss",
    "epochs",
    "steps_per_epoch",
    "val_max_cases",
    "foreground_probability",
    "threads",
    "processes",
    "init_checkpoint",
    "augmentation",
    "preprocessing",
    "minutes",
    "class_values",
    "keep",
    "context_slices",
    "batch_norm_statistics",
)


def option(
    default: Any = None, help: str = "", *, group: str = "run", cli: bool = True, **argparse_options: Any
) -> Any:
    """A :class:`TrainConfig` field with what ``cascadeseg train`` needs to offer it: the help
    text, its argparse group and options (``type``, ``choices``, ``nargs``, ``flag``, ``action``).
    The CLI is built from these (``cascadeseg.cli.train``), so a new field is one line here."""
    metadata = {"help": help, "group": group, "cli": cli, **argparse_options}
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Everything a training run needs; ``None`` means "let the planner choose".

    ``data`` is an MSD / nnU-Net folder, a list of ``(image_path, label_path)`` pairs, or a list
    of in-memory ``(Volume, Volume)`` pairs (the GUI's path; these are described, not stored, in
    ``config.json``). ``run_dir`` is the run folder; it must not exist unless ``resume`` is set.

    The planner (:mod:`cascadeseg.training.planner`) fills every field left ``None`` from the data,
    the device and the budget, and writes its reasons to ``plan.json``; explicit values always
    win. The caller's config is never changed: the trainer works on the planned copy, which is
    what ``config.json`` holds. Each field's metadata is its ``cascadeseg train`` option.
    """

    data: Any = option(None, cli=False)
    run_dir: str = option("runs/train", "run folder to create; never overwritten", cli=False)
    model: str | None = option(
        None, "architecture (see 'cascadeseg models'); the checkpoint's when fine-tuning", group="model"
    )
    dims: int | None = option(
        None,
        "2: slices, 3: patches (planned from the spacing and the case size)",
        group="model",
        type=int,
        choices=(2, 3),
    )
    model_options: dict[str, Any] | None = option(None, cli=False)
    loss: str | None = option(
        None, "loss name (planned: the model's paper loss; fine-tuning: the checkpoint's)", group="loss and optimiser"
    )
    loss_options: dict[str, Any] = option({}, cli=False)
    num_classes: int | None = option(
        None, "classes incl. background (from the labels: max label + 1)", group="model", type=int
    )
    class_values: list[int] | None = option(
        None,
        "the label values the model outputs, background (0) first "
        "(planned: the values present; gaps such as TotalSegmentator's are "
        "packed into as many output channels as values)",
        group="model",
        type=int,
        nargs="+",
    )
    class_names: list[str] | None = option(None, "one name per class, background first", group="model", nargs="+")
    channel_names: list[str] | None = option(
        None, "one name per input channel (from the data)", group="model", nargs="+"
    )
    preprocessing: list[dict[str, Any]] | None = option(
        None,
        'per-channel preprocessing as a JSON list, e.g. \'[{"type": "mri_zscore", "percentiles": [0.5, 99.5]}]\' '
        "(planned: z-score for MR, a window over the labelled structures for CT)",
        group="data and sampling",
        type="json",
    )
    axis: int | None = option(
        None,
        "2D slicing axis (z, y, x; 0 = axial); planned: the coarse or thin axis",
        group="data and sampling",
        type=int,
        choices=(0, 1, 2),
    )
    target_spacing: list[float] | None = option(
        None,
        "working grid spacing z y x in mm (2D: the slices stay native)",
        group="data and sampling",
        type=float,
        nargs=3,
    )
    inplane_size: int | None = option(
        None,
        "in-plane pixels of the median case on the working grid (instead of --target-spacing)",
        group="data and sampling",
        type=int,
    )
    patch_size: list[int] | None = option(
        None, "2D crop H W or 3D patch D H W", group="data and sampling", type=int, nargs="+"
    )
    context_slices: int | None = option(
        None,
        "2D: neighbouring slices on either side the network reads as extra input channels (2.5D); "
        "0: the slice alone (planned: the init checkpoint's, else 0)",
        group="data and sampling",
        type=int,
    )
    batch_size: int | None = option(None, "samples per step", group="budget", type=int)
    epochs: int | None = option(
        None,
        f"epochs (an upper bound with --minutes; neither given: a {DEFAULT_MINUTES:g}-minute budget, less for a "
        "few-shot fine-tuning)",
        group="budget",
        type=int,
    )
    minutes: float | None = option(
        None,
        "wall-clock budget including data loading, validation and checkpoints "
        f"(planned when neither --minutes nor --epochs is given: {DEFAULT_MINUTES:g}; a fine-tuning on 3-10 "
        f"patients {FEW_SHOT_MINUTES:g}, on 1-2 patients {SLICE_BLOCK_FINE_TUNING_MINUTES:g})",
        group="budget",
        type=float,
    )
    steps_per_epoch: int | None = option(
        None, "batches per epoch (planned: one validation interval)", group="budget", type=int
    )
    optimizer: str = option("adam", "optimiser", group="loss and optimiser", choices=("adam", "adamw", "sgd"))
    lr: float | None = option(
        None,
        "base learning rate (planned: 1e-3; a fine-tuning on 10 patients or fewer 1e-4)",
        group="loss and optimiser",
        type=float,
    )
    momentum: float = option(0.99, "SGD momentum", group="loss and optimiser", type=float)
    weight_decay: float = option(0.0, "weight decay", group="loss and optimiser", type=float)
    schedule: str = option(
        "cosine",
        "learning-rate schedule ('plateau': x gamma after step_size validations "
        "without a better Dice, paper 000's rule)",
        group="loss and optimiser",
        choices=("cosine", "step", "constant", "plateau"),
    )
    keep: str | None = option(
        None,
        "which checkpoint is the run's model: 'last' (the final weights) or 'best' (best validation Dice)",
        group="loss and optimiser",
        choices=("last", "best"),
    )
    step_size: int = option(
        30,
        "step schedule: epochs per decay; plateau: validations without improvement (patience)",
        group="loss and optimiser",
        type=int,
    )
    gamma: float = option(0.1, "step schedule: decay factor", group="loss and optimiser", type=float)
    warmup_steps: int = option(0, "linear warm-up steps", group="loss and optimiser", type=int)
    grad_clip: float | None = option(12.0, "gradient norm clip (0: off)", group="loss and optimiser", type=float)
    # Exponential moving average of the weights: validated, checkpointed and shipped instead of
    # the raw weights.
    ema_decay: float | None = option(
        None,
        "keep a moving average of the weights with this decay (e.g. 0.999) and "
        "validate, checkpoint and ship it instead of the raw weights",
        group="loss and optimiser",
        type=float,
    )
    batch_norm_statistics: str | None = option(
        None,
        "batch-norm statistics of the weights each validation scores and each checkpoint keeps: "
        "'running' (training's moving averages; planned) or 'clean' (measured again on un-augmented "
        "training samples first; on LGG no measurable change at 5 or 20 minutes)",
        group="loss and optimiser",
        choices=("clean", "running"),
    )
    amp: bool = option(
        True,
        "no mixed precision on CUDA (never used on a CPU)",
        group="loss and optimiser",
        flag="--no-amp",
        action="store_false",
    )
    cpu_precision: str | None = option(
        None,
        "arithmetic of the training steps on a CPU: fp32, or bf16 autocast (planned: bf16 where the CPU "
        "computes it in hardware and its first steps time faster, else fp32; validation and prediction stay fp32)",
        group="loss and optimiser",
        choices=("fp32", "bf16"),
    )
    seed: int = option(0, "seed of split, sampling and augmentation", type=int)
    val_fraction: float = option(0.2, "share of patients for validation", group="data and sampling", type=float)
    val_cases: list[str] = option(
        [], "case id forced into validation (repeatable)", group="data and sampling", flag="--val-case", action="append"
    )
    val_max_cases: int | None = option(
        None, "validation cases per validation (planned: what the budget affords)", group="data and sampling", type=int
    )
    slice_gap: int = option(
        3, "single volume: slices left out beside validation blocks", group="data and sampling", type=int
    )
    slice_block: int = option(8, "single volume: slices per split block", group="data and sampling", type=int)
    annotated_slices_only: bool = option(
        False, "single volume: use only slices that carry labels", group="data and sampling", action="store_true"
    )
    foreground_probability: float | None = option(
        None,
        "share of samples centred on foreground (planned from the foreground share)",
        group="data and sampling",
        type=float,
    )
    foreground_sampling: str = option(
        "voxel",
        "foreground-centred samples: a voxel drawn uniformly from the class's voxels, or a connected "
        "component (per slice in 2D) first, so small islands and a lesion's end slices are drawn as often as its bulk",
        group="data and sampling",
        choices=FOREGROUND_SAMPLING,
    )
    augmentation: AugmentationConfig | None = option(None, cli=False)
    # Settings changed on top of the augmentation (planned or given): `--augmentation '{"flip": false}'`
    # changes that one setting of the plan and keeps the rest.
    augmentation_changes: dict[str, Any] | None = option(None, cli=False)
    cascade_training: str = option(
        "end_to_end",
        "cascades: both stages jointly, or stage 1 first then stage 2 with stage 1 frozen",
        group="model",
        choices=("end_to_end", "stagewise"),
    )
    num_workers: int = option(0, "DataLoader worker processes", flag="--workers", type=int)
    device: str = option("auto", "auto, cuda, cuda:N, mps or cpu")
    resume: bool = option(False, cli=False)
    init_checkpoint: str | None = option(
        None,
        "fine-tune: start from this checkpoint (a folder or a model name "
        "from 'cascadeseg models --checkpoints'); its patient split must not "
        "validate on its training patients",
        group="model",
    )
    freeze: str = option(
        "none",
        "fine-tuning: 'encoder' keeps the starting model's encoder (every parameter under a module "
        "named *encoder) as it is and trains the rest",
        group="model",
        choices=FREEZE,
    )
    # No init checkpoint given: may the planner start from a shipped model that fits the data?
    auto_init: bool = option(
        True,
        "never start from a shipped model on its own (few patients otherwise do)",
        group="model",
        flag="--no-auto-init",
        action="store_false",
    )
    val_every: int = option(1, "validate every N epochs", group="budget", type=int)
    choose_postprocessing: bool = option(
        True,
        "never post-process (otherwise each validation also scores keeping "
        "each label's largest island and dropping small distant ones, and the "
        "model keeps what beats the raw argmax by over 0.005 Dice)",
        group="budget",
        flag="--no-postprocessing",
        action="store_false",
    )
    choose_threshold: bool = option(
        False,
        "two-class models: each validation also scores foreground thresholds "
        "0.5 down to 0.1 at the recommended depth and the model keeps the best "
        "(figures and card follow it; off unless asked: no gain on held-out LGG "
        "patients, docs/one_click_training.md)",
        group="budget",
        action="store_true",
    )
    val_batch_size: int | None = option(
        None,
        "slices (2D) or windows (3D) per validation batch (unset: the predictor's own, as at inference)",
        group="budget",
        type=int,
    )
    description: str = option("", "text for the model card")
    command: str | None = option(None, cli=False)  # the command line that made the run (in the model card)
    data_licence: str | None = option(None, "licence of the training data, written into the model card")
    threads: int | None = option(None, "torch CPU threads (planned: the cores this process may use)", type=int)
    processes: int | None = option(
        None,
        "data-parallel training processes on a CPU, one thread each (planned: the faster of one process with a "
        "thread per core and a process per core, measured on this machine before training)",
        type=int,
    )
    # What that measurement found (set by the command line for the processes it starts; in plan.json).
    layout: dict[str, Any] | None = option(None, cli=False)

    def __post_init__(self) -> None:
        if isinstance(self.augmentation, dict):
            self.augmentation = AugmentationConfig(**self.augmentation)

    def copy(self, **changes: Any) -> TrainConfig:
        """A deep-enough copy (lists and dicts copied; the data is shared, never written)."""
        import copy

        data = self.data
        clone = copy.deepcopy(replace(self, data=None))
        clone.data = data
        for key, value in changes.items():
            setattr(clone, key, value)
        return clone

    @property
    def slice_context(self) -> int:
        """Neighbours on either side a sample carries: ``context_slices`` in 2D, 0 in 3D (and
        when unset); the one rule the trainer, its cards and its sampler follow."""
        return int(self.context_slices or 0) if self.dims == 2 else 0

    def is_planned(self) -> bool:
        """Every field the planner decides has a value."""
        return all(getattr(self, name) is not None for name in PLANNED_FIELDS if name != "init_checkpoint")

    # -- checks --------------------------------------------------------------------------------

    def validate(self) -> None:
        """Reject inconsistent options before any data is read (each message names the option)."""

        def bad(name: str, value: Any, expected: str) -> CascadeSegError:
            return ModelConfigError(f"training option '{name}' = {value!r} is invalid: expected {expected}")

        if self.dims is not None and self.dims not in (2, 3):
            raise bad("dims", self.dims, "2 or 3")
        if self.axis is not None and self.axis not in (0, 1, 2):
            raise bad("axis", self.axis, "0, 1 or 2")
        if self.batch_size is not None and self.batch_size < 1:
            raise bad("batch_size", self.batch_size, "a positive integer")
        if self.processes is not None and self.processes < 1:
            raise bad("processes", self.processes, "a positive number of processes")
        if self.threads is not None and self.threads < 1:
            raise bad("threads", self.threads, "a positive number of threads")
        if self.epochs is not None and self.epochs < 1:
            raise bad("epochs", self.epochs, "a positive integer")
        if self.target_spacing is not None and (
            len(self.target_spacing) != 3 or not all(float(v) > 0 for v in self.target_spacing)
        ):
            raise bad("target_spacing", self.target_spacing, "three positive spacings (z, y, x) in mm")
        if self.val_max_cases is not None and self.val_max_cases < 1:
            raise bad("val_max_cases", self.val_max_cases, "a positive number of cases")
        if self.minutes is not None and self.minutes <= 0:
            raise bad("minutes", self.minutes, "a positive number of minutes")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise bad("steps_per_epoch", self.steps_per_epoch, "a positive integer")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", self.optimizer, f"one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", self.schedule, f"one of {SCHEDULES}")
        if self.cascade_training not in CASCADE_TRAINING:
            raise bad("cascade_training", self.cascade_training, f"one of {CASCADE_TRAINING}")
        if self.lr is not None and not self.lr > 0:
            raise bad("lr", self.lr, "a positive learning rate")
        if not 0.0 < self.val_fraction < 1.0:
            raise bad("val_fraction", self.val_fraction, "a fraction between 0 and 1")
        if self.foreground_probability is not None and not 0.0 <= self.foreground_probability <= 1.0:
            raise bad("foreground_probability", self.foreground_probability, "a probability in [0, 1]")
        if self.foreground_sampling not in FOREGROUND_SAMPLING:
            raise bad("foreground_sampling", self.foreground_sampling, f"one of {FOREGROUND_SAMPLING}")
        if self.freeze not in FREEZE:
            raise bad("freeze", self.freeze, f"one of {FREEZE}")
        if self.context_slices is not None and not 0 <= self.context_slices <= MAX_CONTEXT_SLICES:
            raise bad("context_slices", self.context_slices, f"0..{MAX_CONTEXT_SLICES} neighbours on either side")
        if self.context_slices and self.dims == 3:
            raise bad("context_slices", self.context_slices, "0 for a 3D model (2.5D is a 2D network's input)")
        if self.inplane_size is not None and self.inplane_size < 8:
            raise bad("inplane_size", self.inplane_size, "at least 8 pixels")
        if self.patch_size is not None and self.dims is not None and len(self.patch_size) != self.dims:
            raise bad("patch_size", self.patch_size, f"{self.dims} sizes for a {self.dims}D model")
        if self.num_classes is not None and self.num_classes < 2:
            raise bad("num_classes", self.num_classes, "at least 2 (the background counts)")
        if self.class_values is not None and (
            len(self.class_values) < 2
            or self.class_values[0] != 0
            or len(set(self.class_values)) != len(self.class_values)
        ):
            raise bad("class_values", self.class_values, "distinct label values starting with the background 0")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise bad("ema_decay", self.ema_decay, "a decay in (0, 1), e.g. 0.999")
        if self.slice_gap < 0 or self.slice_block < 1:
            raise bad("slice_gap/slice_block", (self.slice_gap, self.slice_block), "gap >= 0 and block >= 1")

    # -- JSON ----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out = asdict(replace(self, data=None))
        out["data"] = describe_data(self.data)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ModelConfigError(f"training config: unknown option(s) {unknown} (expected some of {sorted(known)})")
        return cls(**values)

    def save(self, folder: Path) -> Path:
        """Write ``config.json`` atomically into ``folder``."""
        path = Path(folder) / CONFIG_FILE
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, folder: Path) -> TrainConfig:
        return cls.from_dict(read_run_json(Path(folder) / CONFIG_FILE, "training config"))


def describe_data(data: Any) -> Any:
    """A JSON-able description of the data source (in-memory volumes are summarised)."""
    if data is None or isinstance(data, (str, os.PathLike)):
        return None if data is None else str(data)
    if isinstance(data, Sequence):
        items: list[Any] = []
        for pair in data:
            if isinstance(pair, Sequence) and len(pair) == 2 and isinstance(pair[0], Volume):
                image = pair[0]
                items.append(
                    {
                        "in_memory": True,
                        "shape": list(image.array.shape),
                        "spacing": list(image.spacing),
                        "source": None if image.source is None else str(image.source),
                    }
                )
            elif isinstance(pair, Sequence) and len(pair) == 2:
                items.append([str(pair[0]), str(pair[1])])
            else:
                items.append(str(pair))
        return items
    return str(data)


def read_run_json(path: Path, what: str) -> Any:
    """A run folder's JSON file; an unreadable one names the file and what it holds."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise CascadeSegError(f"{path}: cannot read the run's {what} ({exc})") from exc


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON atomically and durably (:func:`cascadeseg._atomic.write_json`)."""
    write_json(path, payload, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, (Path, os.PathLike)):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
