"""The training configuration: one JSON-able record of every choice a run makes.

The same :class:`TrainConfig` comes from the command line (``cascadeseg train``), from the GUI's
train widget, and from ``config.json`` when a killed run is resumed, so a run folder always says
exactly how its checkpoints were made.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

from .._atomic import write_json
from ..errors import CascadeSegError, ModelConfigError
from ..io.volume import Volume

CONFIG_FILE = "config.json"

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "step", "constant")
CASCADE_TRAINING = ("end_to_end", "stagewise")


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


@dataclass
class TrainConfig:
    """Everything a training run needs.

    ``data`` is an MSD / nnU-Net folder, a list of ``(image_path, label_path)`` pairs, or a list
    of in-memory ``(Volume, Volume)`` pairs (the GUI's path; these are described, not stored, in
    ``config.json``). ``run_dir`` is the run folder; it must not exist unless ``resume`` is set.
    """

    data: Any = None
    run_dir: str = "runs/train"
    model: str = "unet"
    dims: int = 2
    model_options: dict[str, Any] = field(default_factory=dict)
    loss: str | None = None  # None: the model's paper loss (ModelInfo.default_loss)
    loss_options: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None  # None: from the labels (max label + 1, at least 2)
    class_names: list[str] | None = None
    channel_names: list[str] | None = None  # None: from the data (dataset.json or file suffixes)
    preprocessing: list[dict[str, Any]] | None = None  # one spec per channel; None: by modality
    # 2D: slices along ``axis`` (0 = axial in the canonical orientation); 3D: patches.
    axis: int = 0
    inplane_size: int | None = None  # resample slices to this size for cheap CPU training
    patch_size: list[int] | None = None  # 2D crop (H, W) or 3D patch (D, H, W); None: whole slice
    batch_size: int = 8
    epochs: int = 50
    minutes: float | None = None  # wall-clock budget; whichever of epochs/minutes comes first
    steps_per_epoch: int | None = None  # None: one pass over the training slices (2D) / cases x 4 (3D)
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.99
    weight_decay: float = 0.0
    schedule: str = "cosine"
    step_size: int = 30  # epochs between decays of the step schedule
    gamma: float = 0.1
    warmup_steps: int = 0
    grad_clip: float | None = 12.0
    # Exponential moving average of the weights (e.g. 0.999): validated, checkpointed and shipped
    # instead of the raw weights; None: off.
    ema_decay: float | None = None
    amp: bool = True  # mixed precision; only ever used on CUDA
    seed: int = 0
    val_fraction: float = 0.2
    val_cases: list[str] = field(default_factory=list)  # case ids forced into validation
    slice_gap: int = 3  # single volume: slices dropped between training and validation blocks
    slice_block: int = 8  # single volume: slices per split block
    annotated_slices_only: bool = False  # single volume: train/validate on slices with labels only
    foreground_probability: float = 0.5  # share of samples centred on foreground
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    cascade_training: str = "end_to_end"
    num_workers: int = 0
    device: str = "auto"
    resume: bool = False
    init_checkpoint: str | None = None  # fine-tune: start from these weights
    val_every: int = 1
    val_batch_size: int = 16
    description: str = ""
    command: str | None = None  # the command line that made the run (written into the model card)
    data_licence: str | None = None
    threads: int | None = None  # torch intra-op threads; None: torch's default

    def __post_init__(self) -> None:
        if isinstance(self.augmentation, dict):
            self.augmentation = AugmentationConfig(**self.augmentation)

    # -- checks --------------------------------------------------------------------------------

    def validate(self) -> None:
        """Reject inconsistent options before any data is read (each message names the option)."""

        def bad(name: str, value: Any, expected: str) -> CascadeSegError:
            return ModelConfigError(f"training option '{name}' = {value!r} is invalid: expected {expected}")

        if self.dims not in (2, 3):
            raise bad("dims", self.dims, "2 or 3")
        if self.axis not in (0, 1, 2):
            raise bad("axis", self.axis, "0, 1 or 2")
        if self.batch_size < 1:
            raise bad("batch_size", self.batch_size, "a positive integer")
        if self.epochs < 1:
            raise bad("epochs", self.epochs, "a positive integer")
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
        if not self.lr > 0:
            raise bad("lr", self.lr, "a positive learning rate")
        if not 0.0 < self.val_fraction < 1.0:
            raise bad("val_fraction", self.val_fraction, "a fraction between 0 and 1")
        if not 0.0 <= self.foreground_probability <= 1.0:
            raise bad("foreground_probability", self.foreground_probability, "a probability in [0, 1]")
        if self.inplane_size is not None and self.inplane_size < 8:
            raise bad("inplane_size", self.inplane_size, "at least 8 pixels")
        if self.patch_size is not None and len(self.patch_size) != self.dims:
            raise bad("patch_size", self.patch_size, f"{self.dims} sizes for a {self.dims}D model")
        if self.num_classes is not None and self.num_classes < 2:
            raise bad("num_classes", self.num_classes, "at least 2 (the background counts)")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise bad("ema_decay", self.ema_decay, "a decay in (0, 1), e.g. 0.999")
        if self.slice_gap < 0 or self.slice_block < 1:
            raise bad("slice_gap/slice_block", (self.slice_gap, self.slice_block), "gap >= 0 and block >= 1")

    # -- JSON ----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["data"] = describe_data(self.data)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
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
    def load(cls, folder: Path) -> "TrainConfig":
        path = Path(folder) / CONFIG_FILE
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CascadeSegError(f"{path}: cannot read the run's training config ({exc})") from exc
        return cls.from_dict(values)


def describe_data(data: Any) -> Any:
    """A JSON-able description of the data source (in-memory volumes are summarised)."""
    if data is None or isinstance(data, (str, os.PathLike)):
        return None if data is None else str(data)
    if isinstance(data, Sequence):
        items = []
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


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON atomically and durably (:func:`cascadeseg._atomic.write_json`)."""
    write_json(path, payload, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, (Path, os.PathLike)):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
