"""Checkpoints: a folder with the weights (safetensors) and a JSON model card.

Layout of a checkpoint folder (a ``.zip`` of it, with the files at the top or in one folder, is
read as well)::

    <name>/
        model.safetensors     # the state dict, nothing executable
        model_card.json       # ModelCard.to_dict(), versioned by "format_version"

Loading never unpickles: weights are read with ``safetensors`` only. A card whose
``format_version`` is newer than this code reads, a card that does not describe its weights
(missing or unexpected tensors, a shape that differs), a card with an unknown preprocessing or a
spacing that is not positive, or a corrupt file fails with a
:class:`~cascadeseg.errors.CheckpointError` that names the folder and what was wrong.

The card records the SHA-256 of ``model.safetensors`` (``weights_sha256``), and loading checks it:
damage inside the tensor data (a bad copy, a disk error) leaves the safetensors header intact and
would otherwise load as a silently different network. Cards written before the checksum existed
load unchecked.

Saving writes into a temporary folder beside the target and renames it into place
(:mod:`cascadeseg._atomic`), so an interrupted save never leaves a half-written checkpoint under
the final name; an existing folder is refused unless ``overwrite=True``.

Wherever a checkpoint is named (``load_checkpoint``, ``read_card``, ``cascadeseg predict -c``,
``--init-checkpoint``), a bare name that is not an existing path is looked up among the shipped and
user models (:func:`resolve_checkpoint`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .._atomic import staging_folder, swap_folder, write_json
from .._home import home_dir
from ..errors import CheckpointError, ModelConfigError, OutputExistsError

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model_card.json"
FORMAT_VERSION = 1
# Neighbours on either side a 2.5D network may read (more is a 3D network's job).
MAX_CONTEXT_SLICES = 4


@dataclass
class ModelCard:
    """Everything needed to run a checkpoint correctly, and what a user needs to trust it.

    Fields (all JSON-able; ``to_dict``/``from_dict`` round-trip them):

    * ``architecture``: registry name (``cascadeseg.models.model_names()``).
    * ``model_options``: the ``create_model`` keyword arguments (``in_channels``, ``num_classes``,
      ``dims``, ``base_width``, ``levels``, ``norm``, ``spacing``, ...).
    * ``dims``: 2 or 3 — how the network was trained (2D: slice by slice along ``slice_axis``).
    * ``input_channels``: ``[{"name": "FLAIR", "preprocessing": {"type": "mri_zscore", ...}}]``, one
      entry per network input channel in order; ``preprocessing`` is the spec dict that
      ``cascadeseg.preprocessing.apply_channel_preprocessing`` applies.
    * ``classes``: ``[{"value": 0, "name": "background"}, ...]``, one per output channel in channel
      order: output channel ``i`` is written as label value ``classes[i]["value"]`` (so BraTS
      channels 0..3 can be written as 0, 1, 2, 4).
    * ``regions``: optional BraTS-style regions, ``{"whole tumour": [1, 2, 4], ...}`` (label values).
    * ``target_spacing``: optional spacing (mm, array order z, y, x) the network was trained at.
    * ``patch_size`` (3D) / ``slice_size`` (2D): the training input size; 3D inference uses
      ``patch_size`` as the sliding-window size (anisotropic sizes allowed).
    * ``slice_axis``: the axis 2D models were trained along (0 = axial in (Z, Y, X) order).
    * ``context_slices``: 2D only; ``k`` > 0 makes the network "2.5D": it reads each slice with its
      ``k`` neighbours on either side as extra input channels (channel-major: every slice of
      channel 0, then of channel 1, ...; beyond the volume the pad value). ``0``: one slice.
    * ``training``: ``{"data": summary, "command": "...", "licence": "..."}`` and anything else the
      trainer records (epochs, time).
    * ``validation``: ``{"dice_per_depth": {"1": 0.78, ...}, ...}`` (string keys: JSON objects);
      ``validation.estimate``, when present, holds the figures quoted for new patients of weights
      that trained on every patient their parent was scored on (the parent's, with the reason).
    * ``recommended_depth``: the pruning depth inference uses by default (``None``: full depth).
    * ``mirror_axes``: the spatial axes of the network input (2D: y, x = 0, 1; 3D: z, y, x = 0, 1, 2)
      along which training mirrored its samples; test-time mirroring flips only these (``None``:
      a card from before the field, see :attr:`ModelCard.test_time_mirror_axes`).
    * ``test_time_mirroring``: whether inference mirrors by default (chosen on the validation
      patients; ``cascadeseg predict --no-mirror`` and the Segment dock's checkbox override it).
    * ``postprocessing``: what the predictor does to its label maps by default (``None``: nothing),
      chosen by the trainer on the validation patients.
    * ``foreground_threshold``: two-class models only; a voxel is foreground when the softmax
      probability of the foreground class exceeds it (``None``: the argmax, i.e. 0.5). Chosen on
      the validation patients by ``cascadeseg train --choose-threshold`` among
      :data:`cascadeseg.training.validation.THRESHOLD_CANDIDATES` (off by default), or set by hand.
      The probabilities the predictor returns stay the network's; only the label rule moves.
    * ``ensemble_members``: how many networks of this architecture and options the weights hold
      (``members.0.*``, ...); their class probabilities are averaged (:mod:`cascadeseg.models.ensemble`).
      1 (the default): one network.
    * ``name``, ``description``: shown in model lists.
    * ``project_version``: the napari-cascade version that wrote it.
    * ``weights_sha256``: SHA-256 (hex) of ``model.safetensors``, written by :func:`save_checkpoint`
      and verified on load (``None``: a card from before checksums, loaded unchecked).
    * ``format_version``: version of this card format; a newer one than :data:`FORMAT_VERSION` is
      refused rather than misread.
    * ``extra``: unknown keys of a same-version card, kept so that a round trip loses nothing.
    """

    architecture: str
    model_options: dict[str, Any]
    dims: int
    input_channels: list[dict[str, Any]]
    classes: list[dict[str, Any]]
    regions: dict[str, list[int]] | None = None
    target_spacing: list[float] | None = None
    patch_size: list[int] | None = None
    slice_size: list[int] | None = None
    slice_axis: int = 0
    context_slices: int = 0
    training: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    recommended_depth: int | None = None
    mirror_axes: list[int] | None = None
    test_time_mirroring: bool = False
    # Post-processing the predictor applies to every label map, chosen on the validation patients
    # when training ended (None: the raw argmax): {"largest_component": true} or
    # {"distant_islands_mm": 10.0} (cascadeseg.inference.postprocess.PostProcessing's fields).
    postprocessing: dict[str, Any] | None = None
    # Two-class models: the foreground probability above which a voxel is foreground (None: 0.5,
    # the argmax); `cascadeseg train --choose-threshold` chooses it on the validation patients.
    foreground_threshold: float | None = None
    # Networks averaged as one (cascadeseg.models.ensemble): 1 is a single network; n > 1 stores n
    # networks of this architecture and these options as members.0.* .. members.{n-1}.*.
    ensemble_members: int = 1
    name: str = ""
    description: str = ""
    project_version: str = ""
    weights_sha256: str | None = None
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.project_version:
            from .. import __version__

            self.project_version = __version__

    # -- derived ---------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channel_names(self) -> list[str]:
        return [str(ch.get("name", f"channel {i}")) for i, ch in enumerate(self.input_channels)]

    @property
    def network_in_channels(self) -> int:
        """Input channels of the network: each scan channel once per slice it reads."""
        return len(self.input_channels) * (2 * self.context_slices + 1)

    @property
    def class_values(self) -> list[int]:
        return [int(c["value"]) for c in self.classes]

    @property
    def class_names(self) -> list[str]:
        return [str(c.get("name", c["value"])) for c in self.classes]

    @property
    def class_colors(self) -> dict[int, str]:
        """Display colours the card gives (``{"value", "name", "color": "#rrggbb"}``), by value;
        classes without one are left to the viewer's own label colours."""
        return {int(c["value"]): str(c["color"]) for c in self.classes if c.get("color")}

    @property
    def test_time_mirror_axes(self) -> tuple[int, ...]:
        """The spatial axes test-time mirroring may flip: those training flipped. A flip the network
        never saw in training is not a harmless variation: along the hippocampus crops' first axis
        (not flipped in 3D training) it swaps anterior and posterior, and mirroring along all three
        axes took the shipped model from 0.883 to 0.060 Dice on its validation patients. Cards
        from before :attr:`mirror_axes` follow the trainer's flip rule of their time (in-plane
        axes, when flips were on)."""
        if self.mirror_axes is not None:
            return tuple(int(a) for a in self.mirror_axes)
        augmentation = self.training.get("augmentation")
        if isinstance(augmentation, dict) and not (
            augmentation.get("enabled", True) and augmentation.get("flip", True)
        ):
            return ()
        return (0, 1) if self.dims == 2 else (1, 2)

    def dice_for_depth(self, depth: int) -> float | None:
        """The Dice the card quotes for ``depth`` on new patients (``None`` when it has none): its
        ``validation.estimate`` when it has one (weights that trained on their parent's held-out
        patients carry the parent's figures on them), else its own ``validation.dice_per_depth``."""
        figures = self.validation.get("estimate") or self.validation
        value = figures.get("dice_per_depth", {}).get(str(depth))
        return None if value is None else float(value)

    # -- (de)serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        extra = data.pop("extra")
        data.update(extra)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "model card") -> ModelCard:
        """Build and validate a card; ``source`` names the file in error messages."""
        if not isinstance(data, dict):
            raise CheckpointError(f"{source}: expected a JSON object, got {type(data).__name__}")
        version = data.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or version < 1:
            raise CheckpointError(f"{source}: format_version must be a positive integer, got {version!r}")
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"{source}: model card format_version {version} is newer than this napari-cascade "
                f"reads (up to {FORMAT_VERSION}); upgrade napari-cascade to load this checkpoint"
            )
        known = {f.name for f in fields(cls)} - {"extra"}
        missing = [k for k in ("architecture", "model_options", "dims", "input_channels", "classes") if k not in data]
        if missing:
            raise CheckpointError(f"{source}: missing required field(s) {', '.join(missing)}")
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known}
        card = cls(**kwargs, extra=extra)
        card.validate(source)
        return card

    def validate(self, source: str = "model card") -> None:
        """Check internal consistency; raises :class:`CheckpointError` naming the field."""
        if self.dims not in (2, 3):
            raise CheckpointError(f"{source}: dims must be 2 or 3, got {self.dims!r}")
        opts = self.model_options
        if not isinstance(opts, dict):
            raise CheckpointError(f"{source}: model_options must be an object, got {type(opts).__name__}")
        if opts.get("dims", self.dims) != self.dims:
            raise CheckpointError(f"{source}: dims={self.dims} but model_options.dims={opts['dims']}")
        if not self.input_channels or not all(isinstance(c, dict) for c in self.input_channels):
            raise CheckpointError(f"{source}: input_channels must be a non-empty list of {{name, preprocessing}}")
        if not isinstance(self.context_slices, int) or not 0 <= self.context_slices <= MAX_CONTEXT_SLICES:
            raise CheckpointError(
                f"{source}: context_slices must be an integer in 0..{MAX_CONTEXT_SLICES}, got {self.context_slices!r}"
            )
        if self.context_slices and self.dims != 2:
            raise CheckpointError(f"{source}: context_slices={self.context_slices} needs a 2D model, not {self.dims}D")
        if "in_channels" in opts and opts["in_channels"] != self.network_in_channels:
            raise CheckpointError(
                f"{source}: model_options.in_channels={opts['in_channels']} but input_channels lists "
                f"{len(self.input_channels)} channel(s)"
                + (f" x {2 * self.context_slices + 1} slices" if self.context_slices else "")
            )
        if len(self.classes) < 2 or not all(isinstance(c, dict) and "value" in c for c in self.classes):
            raise CheckpointError(f"{source}: classes must list >= 2 entries of {{value, name}} (background included)")
        for entry in self.classes:
            color = entry.get("color")
            if color is not None and not _is_hex_color(color):
                raise CheckpointError(
                    f"{source}: class {entry.get('name', entry['value'])!r} has color {color!r}; expected '#rrggbb'"
                )
        if self.mirror_axes is not None and not all(
            isinstance(a, int) and 0 <= a < self.dims for a in self.mirror_axes
        ):
            raise CheckpointError(
                f"{source}: mirror_axes must list spatial axes 0..{self.dims - 1}, got {self.mirror_axes!r}"
            )
        if self.foreground_threshold is not None:
            t = self.foreground_threshold
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < float(t) < 1.0:
                raise CheckpointError(f"{source}: foreground_threshold must be a number in (0, 1), got {t!r}")
            if len(self.classes) != 2:
                raise CheckpointError(
                    f"{source}: foreground_threshold={t} needs a two-class model (background and one class); "
                    f"this card lists {len(self.classes)} classes"
                )
        if (
            isinstance(self.ensemble_members, bool)
            or not isinstance(self.ensemble_members, int)
            or self.ensemble_members < 1
        ):
            raise CheckpointError(f"{source}: ensemble_members must be an integer >= 1, got {self.ensemble_members!r}")
        values = self.class_values
        if len(set(values)) != len(values) or min(values) < 0:
            raise CheckpointError(f"{source}: class values must be distinct and non-negative, got {values}")
        if "num_classes" in opts and opts["num_classes"] != len(self.classes):
            raise CheckpointError(
                f"{source}: model_options.num_classes={opts['num_classes']} but classes lists {len(self.classes)}"
            )
        if self.slice_axis not in (0, 1, 2):
            raise CheckpointError(f"{source}: slice_axis must be 0, 1 or 2, got {self.slice_axis!r}")
        for key, size in (("patch_size", self.patch_size), ("slice_size", self.slice_size)):
            if size is not None and (not all(isinstance(s, int) and s > 0 for s in size)):
                raise CheckpointError(f"{source}: {key} must be positive integers, got {size!r}")
        if self.patch_size is not None and len(self.patch_size) != 3:
            raise CheckpointError(f"{source}: patch_size must have 3 entries (z, y, x), got {self.patch_size!r}")
        for key, spacing in (("target_spacing", self.target_spacing), ("model_options.spacing", opts.get("spacing"))):
            if spacing is not None and not _positive_spacing(spacing):
                raise CheckpointError(f"{source}: {key} must be 3 positive millimetre sizes (z, y, x), got {spacing!r}")
        for index, channel in enumerate(self.input_channels):
            problem = _preprocessing_problem(channel.get("preprocessing"))
            if problem:
                raise CheckpointError(f"{source}: input_channels[{index}] ({channel.get('name', '?')}): {problem}")

    def create_model(self) -> Any:
        """The untrained network this card describes (``create_model(architecture, **options)``),
        or an ensemble of ``ensemble_members`` such networks."""
        from ..models import create_model

        options = dict(self.model_options)
        options.setdefault("in_channels", self.network_in_channels)
        options.setdefault("num_classes", len(self.classes))
        options.setdefault("dims", self.dims)
        if self.ensemble_members == 1:
            return create_model(self.architecture, **options)
        from ..models.ensemble import ModelEnsemble

        return ModelEnsemble([create_model(self.architecture, **options) for _ in range(self.ensemble_members)])


def _is_hex_color(value: Any) -> bool:
    return (
        isinstance(value, str)
        and len(value) == 7
        and value[0] == "#"
        and all(ch in "0123456789abcdefABCDEF" for ch in value[1:])
    )


def _positive_spacing(spacing: Any) -> bool:
    try:
        values = [float(v) for v in spacing]
    except (TypeError, ValueError):
        return False
    return len(values) == 3 and all(math.isfinite(v) and v > 0 for v in values)


def _preprocessing_problem(spec: Any) -> str | None:
    """What is wrong with a channel's preprocessing spec (``None``: nothing), checked when the card
    is read so a bad card fails naming the checkpoint, not later inside a prediction."""
    from ..preprocessing.presets import KNOWN_TYPES

    if spec is None:
        return None
    if not isinstance(spec, dict):
        return f'preprocessing must be an object like {{"type": "mri_zscore"}}, got {spec!r}'
    kind = spec.get("type", "none")
    if kind not in KNOWN_TYPES:
        return f"preprocessing type {kind!r} is not known; expected one of {', '.join(KNOWN_TYPES)}"
    if kind == "ct_window":
        window, preset = spec.get("window"), spec.get("preset")
        if window is None and preset is None:
            return "ct_window needs 'window': [low, high] or a 'preset'"
        if window is not None and not (
            isinstance(window, (list, tuple))
            and len(window) == 2
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in window)
            and window[0] < window[1]
        ):
            return f"ct_window 'window' must be [low, high] with low < high, got {window!r}"
    percentiles = spec.get("percentiles")
    if percentiles is not None and not (
        isinstance(percentiles, (list, tuple))
        and len(percentiles) == 2
        and all(isinstance(v, (int, float)) and 0 <= v <= 100 for v in percentiles)
        and percentiles[0] < percentiles[1]
    ):
        return f"'percentiles' must be [low, high] within 0..100 with low < high, got {percentiles!r}"
    return None


@dataclass(frozen=True)
class CheckpointEntry:
    """One loadable checkpoint in :func:`available_checkpoints`: where it came from and its card."""

    name: str
    path: Path
    card: ModelCard
    source: str  # "shipped" or "user"


# -- reading ---------------------------------------------------------------------------------------


def read_card(checkpoint: str | os.PathLike[str]) -> ModelCard:
    """Read and validate the model card of a checkpoint folder or ``.zip`` archive (or of a shipped /
    user model named by a bare name), without touching the weights."""
    path = _locate(checkpoint)
    if _is_archive(path):
        raw, source = _archive_member(path, CARD_FILE), f"{path}:{CARD_FILE}"
    else:
        card_path = _checkpoint_folder(path) / CARD_FILE
        if not card_path.is_file():
            raise CheckpointError(f"{card_path.parent}: not a checkpoint folder (no {CARD_FILE} inside)")
        raw, source = card_path.read_bytes(), str(card_path)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{source}: model card is not valid JSON ({exc})") from exc
    return ModelCard.from_dict(data, source=source)


def load_checkpoint(checkpoint: str | os.PathLike[str], device: Any = "cpu") -> tuple[Any, ModelCard]:
    """Load ``(model, card)`` from a checkpoint folder (or a file inside it) or a ``.zip`` archive
    of one, in eval mode on ``device`` (``None``: leave on the CPU).

    The model is rebuilt from the card and the safetensors weights must match it exactly: a
    missing or unexpected tensor or a different shape raises :class:`CheckpointError` listing
    them (first few) instead of loading a half-initialised network. Archives are read in memory
    (never extracted, so no path in them can point outside).
    """
    import torch

    path = _locate(checkpoint)
    root = path if _is_archive(path) else _checkpoint_folder(path)
    card = read_card(root)
    try:
        model = card.create_model()
    except ModelConfigError as exc:
        raise CheckpointError(f"{root}: the model card does not describe a buildable model: {exc}") from exc
    state = load_weights(root, card)
    check_state_matches(model.state_dict(), state, source=str(root))
    with torch.no_grad():
        model.load_state_dict(state, strict=True)
    model.eval()
    if device is not None:
        from .device import resolve_device

        model.to(resolve_device(device))
    return model, card


def load_weights(checkpoint: str | os.PathLike[str], card: ModelCard | None = None) -> dict[str, Any]:
    """The state dict of a checkpoint folder or archive, after its checksum was verified against
    the card (read here unless given). Safetensors only: nothing is unpickled."""
    from safetensors import SafetensorError
    from safetensors.torch import load, load_file

    root = _locate(checkpoint)
    archive = _is_archive(root)
    if not archive:
        root = _checkpoint_folder(root)
    card = card if card is not None else read_card(root)
    weights = root / WEIGHTS_FILE
    if not archive and not weights.is_file():
        raise CheckpointError(f"{root}: weights file {WEIGHTS_FILE} is missing")
    raw = _archive_member(root, WEIGHTS_FILE) if archive else None
    _check_digest(
        card,
        hashlib.sha256(raw).hexdigest() if raw is not None else _file_sha256(weights),
        f"{root}:{WEIGHTS_FILE}" if archive else str(weights),
    )
    try:
        return load(raw) if raw is not None else load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{weights}: corrupt or unreadable safetensors file ({exc})") from exc


def verify_checkpoint(checkpoint: str | os.PathLike[str]) -> str:
    """``"verified"`` when the weights match the card's checksum, ``"no checksum"`` for a card
    without one; a mismatch or an unreadable checkpoint raises :class:`CheckpointError`."""
    root = _locate(checkpoint)
    card = read_card(root)
    if card.weights_sha256 is None:
        return "no checksum"
    if _is_archive(root):
        digest, name = hashlib.sha256(_archive_member(root, WEIGHTS_FILE)).hexdigest(), f"{root}:{WEIGHTS_FILE}"
    else:
        weights = _checkpoint_folder(root) / WEIGHTS_FILE
        if not weights.is_file():
            raise CheckpointError(f"{root}: weights file {WEIGHTS_FILE} is missing")
        digest, name = _file_sha256(weights), str(weights)
    _check_digest(card, digest, name)
    return "verified"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the weights ({exc})") from exc
    return digest.hexdigest()


def _check_digest(card: ModelCard, digest: str, weights: str) -> None:
    if card.weights_sha256 is not None and digest != card.weights_sha256.lower():
        raise CheckpointError(
            f"{weights}: the weights are damaged: their SHA-256 is {digest[:16]}... but {CARD_FILE} "
            f"records {card.weights_sha256[:16]}... (the file changed after it was saved: a bad copy, a disk "
            f"error or an edit); expected the checkpoint as saved: copy or download it again"
        )


def _locate(checkpoint: str | os.PathLike[str]) -> Path:
    """A path as given, or, for a bare name (no folder part) that is not an existing path, the
    shipped / user model of that name."""
    path = Path(checkpoint).expanduser()
    if path.exists() or len(path.parts) != 1 or path.is_absolute():
        return path
    return resolve_checkpoint(checkpoint)


def _is_archive(path: Path) -> bool:
    return path.suffix.lower() == ".zip" and path.is_file()


def _archive_member(archive: Path, name: str) -> bytes:
    """The bytes of ``name`` at the top of ``archive`` or inside its single top folder."""
    import zipfile

    try:
        with zipfile.ZipFile(archive) as handle:
            members = [m for m in handle.namelist() if m.rsplit("/", 1)[-1] == name and m.count("/") <= 1]
            if len(members) != 1:
                raise CheckpointError(
                    f"{archive}: expected exactly one {name} at the top of the archive (or in one top folder), "
                    f"found {len(members)}"
                )
            return handle.read(members[0])
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{archive}: not a readable zip archive ({exc})") from exc


def check_state_matches(expected: dict[str, Any], found: dict[str, Any], source: str) -> None:
    """Raise :class:`CheckpointError` when ``found`` tensors do not fit the model's ``expected`` ones."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [
        f"{k} {tuple(found[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(found))
        if tuple(found[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensor(s) ({_few(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s) ({_few(unexpected)})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es) (weights vs card: {_few(mismatched)})")
    if problems:
        raise CheckpointError(
            f"{source}: the weights do not match the model described by {CARD_FILE}: " + "; ".join(problems)
        )


def _few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def _checkpoint_folder(folder: str | os.PathLike[str]) -> Path:
    path = Path(folder).expanduser()
    if path.is_file() and path.name in (CARD_FILE, WEIGHTS_FILE):
        path = path.parent
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint folder does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path}: expected a checkpoint folder ({WEIGHTS_FILE} + {CARD_FILE}), got a file")
    return path


# -- writing ---------------------------------------------------------------------------------------


def save_checkpoint(model: Any, card: ModelCard, folder: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write ``model``'s weights and ``card`` into ``folder`` atomically; returns the folder.

    The files are written into a temporary sibling folder which is then renamed into place, so a
    crash leaves either the old checkpoint or the new one. An existing ``folder`` raises
    :class:`OutputExistsError` unless ``overwrite`` is true. The card is checked against the
    model's tensors before anything is written.
    """
    from safetensors.torch import save_file

    target = Path(folder).expanduser()
    if target.exists() and not overwrite:
        raise OutputExistsError(
            f"{target}: checkpoint folder already exists; choose another name (or pass overwrite=True to replace it)"
        )
    card.validate(source=f"card for {target}")
    _check_card_fits_model(card, model, target)
    # Clone so tied/shared tensors become independent (safetensors refuses shared storage).
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    with staging_folder(target.parent, target.name) as staged:
        weights = staged / WEIGHTS_FILE
        save_file(
            state,
            str(weights),
            metadata={"architecture": card.architecture, "format_version": str(card.format_version)},
        )
        weights.chmod(0o644)  # safetensors creates it owner-only; others must read it too
        record = card.to_dict()
        record["weights_sha256"] = _file_sha256(weights)
        write_json(staged / CARD_FILE, record)
        swap_folder(staged, target)  # the staging folder itself becomes the checkpoint
    return target


def _check_card_fits_model(card: ModelCard, model: Any, target: Path) -> None:
    """Refuse to save a card that would not rebuild this model (caught now, not at load time)."""
    info = getattr(model, "info", None)
    if info is not None and info.name != card.architecture:
        raise CheckpointError(f"{target}: card architecture '{card.architecture}' but the model is '{info.name}'")
    for attr, expected in (
        ("in_channels", card.network_in_channels),
        ("num_classes", card.num_classes),
        ("dims", card.dims),
    ):
        actual = getattr(model, attr, expected)
        if actual != expected:
            raise CheckpointError(f"{target}: card says {attr}={expected} but the model has {attr}={actual}")
    members = len(getattr(model, "members", ())) or 1
    if members != card.ensemble_members:
        raise CheckpointError(
            f"{target}: card says ensemble_members={card.ensemble_members} but the model holds {members} network(s)"
        )


# -- discovery -------------------------------------------------------------------------------------


def user_models_dir() -> Path:
    """Where user-trained checkpoints live: ``models/`` in the home folder
    (:func:`cascadeseg._home.home_dir`: ``$CASCADESEG_HOME`` or the platform's user data folder).

    Not created here: listing must not write into the user's home.
    """
    return home_dir() / "models"


def shipped_checkpoints_dir() -> Path | None:
    """The folder of default checkpoints shipped with the package (``None`` if it has none)."""
    from ..shipped import checkpoints_dir

    path = Path(checkpoints_dir())
    return path if path.is_dir() else None


def available_checkpoints() -> list[CheckpointEntry]:
    """Shipped default checkpoints, then the user's, each with its card (sorted by name).

    A folder whose card cannot be read is skipped with a warning naming it, so one broken user
    model never hides the others from the GUI's list.
    """
    entries: list[CheckpointEntry] = []
    for source, root in (("shipped", shipped_checkpoints_dir()), ("user", user_models_dir())):
        if root is None or not root.is_dir():
            continue
        for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if not (sub / CARD_FILE).is_file():
                continue
            try:
                card = read_card(sub)
            except CheckpointError as exc:
                warnings.warn(f"skipping checkpoint {sub}: {exc}", stacklevel=2)
                continue
            entries.append(CheckpointEntry(name=sub.name, path=sub, card=card, source=source))
    return entries


def resolve_checkpoint(name_or_path: str | os.PathLike[str]) -> Path:
    """A checkpoint folder (or ``.zip``) from a path, or from the name of a shipped / user checkpoint.

    A path that exists wins; otherwise the name is looked up in :func:`available_checkpoints`.
    Unknown names fail listing the names that exist.
    """
    path = Path(name_or_path).expanduser()
    if _is_archive(path):
        return path
    if path.exists():
        return _checkpoint_folder(path)
    entries = available_checkpoints()
    for entry in entries:
        if entry.name == str(name_or_path):
            return entry.path
    names = ", ".join(e.name for e in entries) or "none installed"
    raise CheckpointError(
        f"checkpoint {str(name_or_path)!r} is neither an existing folder nor a known model name "
        f"(known: {names}; user models go in {user_models_dir()})"
    )
