"""Checkpoints: a folder with the weights (safetensors) and a JSON model card.

Layout of a checkpoint folder (a ``.zip`` of it, with the files at the top or in one folder, is
read as well)::

    <name>/
        model.safetensors     # the state dict, nothing executable
        model_card.json       # ModelCard.to_dict(), versioned by "format_version"

Loading never unpickles: weights are read with ``safetensors`` only. A card whose
``format_version`` is newer than this code reads, a card that does not describe its weights
(missing or unexpected tensors, a shape that differs) or a corrupt file fails with a
:class:`~cascadeseg.errors.CheckpointError` that names the folder and what was wrong.

Saving writes into a temporary folder beside the target and renames it into place, so an
interrupted save never leaves a half-written checkpoint under the final name; an existing folder is
refused unless ``overwrite=True``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ModelConfigError, OutputExistsError

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model_card.json"
FORMAT_VERSION = 1


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
    * ``training``: ``{"data": summary, "command": "...", "licence": "..."}`` and anything else the
      trainer records (epochs, time).
    * ``validation``: ``{"dice_per_depth": {"1": 0.78, ...}, ...}`` (string keys: JSON objects).
    * ``recommended_depth``: the pruning depth inference uses by default (``None``: full depth).
    * ``name``, ``description``: shown in model lists.
    * ``project_version``: the napari-cascade version that wrote it.
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
    training: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    recommended_depth: int | None = None
    name: str = ""
    description: str = ""
    project_version: str = ""
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
    def class_values(self) -> list[int]:
        return [int(c["value"]) for c in self.classes]

    @property
    def class_names(self) -> list[str]:
        return [str(c.get("name", c["value"])) for c in self.classes]

    def dice_for_depth(self, depth: int) -> float | None:
        """Validation Dice recorded for ``depth`` (``None`` when the card has none)."""
        value = self.validation.get("dice_per_depth", {}).get(str(depth))
        return None if value is None else float(value)

    # -- (de)serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        extra = data.pop("extra")
        data.update(extra)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "model card") -> "ModelCard":
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
        if "in_channels" in opts and opts["in_channels"] != len(self.input_channels):
            raise CheckpointError(
                f"{source}: model_options.in_channels={opts['in_channels']} but input_channels lists "
                f"{len(self.input_channels)} channel(s)"
            )
        if len(self.classes) < 2 or not all(isinstance(c, dict) and "value" in c for c in self.classes):
            raise CheckpointError(f"{source}: classes must list >= 2 entries of {{value, name}} (background included)")
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

    def create_model(self) -> Any:
        """The untrained network this card describes (``create_model(architecture, **options)``)."""
        from ..models import create_model

        options = dict(self.model_options)
        options.setdefault("in_channels", len(self.input_channels))
        options.setdefault("num_classes", len(self.classes))
        options.setdefault("dims", self.dims)
        return create_model(self.architecture, **options)


@dataclass(frozen=True)
class CheckpointEntry:
    """One loadable checkpoint in :func:`available_checkpoints`: where it came from and its card."""

    name: str
    path: Path
    card: ModelCard
    source: str  # "shipped" or "user"


# -- reading ---------------------------------------------------------------------------------------

def read_card(checkpoint: str | os.PathLike[str]) -> ModelCard:
    """Read and validate the model card of a checkpoint folder or ``.zip`` archive, without
    touching the weights."""
    path = Path(checkpoint).expanduser()
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
    from safetensors import SafetensorError
    from safetensors.torch import load, load_file

    path = Path(checkpoint).expanduser()
    archive = _is_archive(path)
    root = path if archive else _checkpoint_folder(path)
    card = read_card(root)
    weights = root / WEIGHTS_FILE
    if not archive and not weights.is_file():
        raise CheckpointError(f"{root}: weights file {WEIGHTS_FILE} is missing")
    try:
        model = card.create_model()
    except ModelConfigError as exc:
        raise CheckpointError(f"{root}: the model card does not describe a buildable model: {exc}") from exc
    try:
        state = load(_archive_member(root, WEIGHTS_FILE)) if archive else load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{weights}: corrupt or unreadable safetensors file ({exc})") from exc
    check_state_matches(model.state_dict(), state, source=str(root))
    with torch.no_grad():
        model.load_state_dict(state, strict=True)
    model.eval()
    if device is not None:
        from .device import resolve_device

        model.to(resolve_device(device))
    return model, card


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
        raise OutputExistsError(f"{target}: checkpoint folder already exists (pass overwrite=True to replace it)")
    card.validate(source=f"card for {target}")
    _check_card_fits_model(card, model, target)
    # Clone so tied/shared tensors become independent (safetensors refuses shared storage).
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; a checkpoint is an ordinary, shareable folder
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"architecture": card.architecture,
                                                              "format_version": str(card.format_version)})
        (tmp / WEIGHTS_FILE).chmod(0o644)  # safetensors creates it owner-only; others must read it too
        (tmp / CARD_FILE).write_text(json.dumps(card.to_dict(), indent=2) + "\n", encoding="utf-8")
        if target.exists():
            backup = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, backup)
            os.replace(tmp, target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _check_card_fits_model(card: ModelCard, model: Any, target: Path) -> None:
    """Refuse to save a card that would not rebuild this model (caught now, not at load time)."""
    info = getattr(model, "info", None)
    if info is not None and info.name != card.architecture:
        raise CheckpointError(f"{target}: card architecture '{card.architecture}' but the model is '{info.name}'")
    for attr, expected in (("in_channels", len(card.input_channels)), ("num_classes", card.num_classes),
                           ("dims", card.dims)):
        actual = getattr(model, attr, expected)
        if actual != expected:
            raise CheckpointError(f"{target}: card says {attr}={expected} but the model has {attr}={actual}")


# -- discovery -------------------------------------------------------------------------------------

def user_models_dir() -> Path:
    """Where user-trained checkpoints live: ``$CASCADESEG_HOME/models`` (default ``~/.cascadeseg/models``).

    Not created here: listing must not write into the user's home.
    """
    home = os.environ.get("CASCADESEG_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".cascadeseg"
    return base / "models"


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
