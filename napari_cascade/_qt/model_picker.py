"""Widgets the Segment and Compare docks share: the model chooser and the channel mapping.

:class:`ModelPicker` lists :func:`cascadeseg.inference.available_checkpoints` (shipped defaults,
then the user's models folder) plus any checkpoint folder the user browses to; it shows the
selected model card. :class:`ChannelMapper` maps the card's input channels to image layers of the
viewer, one combo box per channel, pre-filled by matching layer names to channel names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import napari
from napari.layers import Image, Labels
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from cascadeseg.errors import CascadeSegError, VolumeError
from cascadeseg.inference.checkpoint import (
    CARD_FILE,
    CheckpointEntry,
    ModelCard,
    available_checkpoints,
    read_card,
)
from cascadeseg.io import Volume
from cascadeseg.shipped import DEFAULT_MODEL

from .._channels import map_channels
from .._layers import volume_from_image_layers
from .._state import COMPARE, PROBABILITIES, CascadeState, layer_role, state_for
from .layout import hbox
from .notify import error

NO_MODEL = "(no model: pick or browse)"


def model_info(card: ModelCard) -> Any | None:
    """The architecture's :class:`~cascadeseg.models.ModelInfo` (``None`` if unknown here), from
    the zoo's catalogue: describing a model imports no torch on the GUI thread."""
    from cascadeseg.models import model_info as catalogue_entry

    try:
        return catalogue_entry(card.architecture)
    except CascadeSegError:
        return None


def card_summary(card: ModelCard) -> str:
    """A few lines a user reads before trusting a model."""
    info = model_info(card)
    title = info.title if info else card.architecture
    channels = ", ".join(card.channel_names)
    classes = ", ".join(name for name, value in zip(card.class_names, card.class_values) if value)
    data = _training_data_text(card.training.get("data", ""))
    licence = card.training.get("licence", "")
    lines = [
        f"<b>{card.name or card.architecture}</b> — {title}, {card.dims}D"
        + (f", an ensemble of {card.ensemble_members} networks" if card.ensemble_members > 1 else ""),
        f"channels: {channels}; classes: {classes}",
    ]
    if data:
        lines.append(f"trained on: {data}")
    if licence:
        lines.append(f"licence: {licence}")
    return "<br>".join(lines)


def _training_data_text(data: Any) -> str:
    """The card's training-data summary: free text, or the trainer's dict (source and counts)."""
    if not isinstance(data, dict):
        return str(data or "")
    parts = [str(data.get("source", "")).rstrip("/").rsplit("/", 1)[-1]]
    counts = []
    for key in ("train_cases", "val_cases"):
        value = data.get(key)
        count = len(value) if isinstance(value, (list, tuple)) else value
        if isinstance(count, int):
            counts.append(f"{count} {key.split('_')[0]}")
    if counts:
        parts.append(f"({', '.join(counts)} patients)")
    return " ".join(p for p in parts if p)


def _per_depth(card: ModelCard, *keys: str) -> dict[str, Any]:
    for key in keys:
        value = card.validation.get(key) or card.training.get(key)
        if isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
    return {}


# Figures already measured, by what decides them (architecture, options, input shape, depths): a
# fine-tuned model shares its parent's, and re-picking a model costs nothing.
_DEPTH_COSTS: dict[str, dict[int, Any]] = {}


def depth_costs(card: ModelCard, depths: list[int]) -> dict[int, Any]:
    """Parameters that run and GFLOPs per slice (2D) / patch (3D) at each depth, measured by the
    engine (``cascadeseg.models.zoo_table.measure``) on the meta device: no weights, no voxels,
    but every operation of four forward passes counted in Python: about 2 s of a worker taking
    turns with the GUI thread for the interpreter lock on the 2-core machine. Hence the cache: a
    Train run's end installs a model of an architecture measured before, and measuring it again
    while the docks re-listed their models froze the window 508 ms (a cache hit: 153 ms). Empty
    when the architecture cannot run on the meta device."""
    import torch

    from cascadeseg.models.zoo_table import measure

    if card.dims == 2:
        shape = (1, len(card.input_channels), *(card.slice_size or (256, 256)))
    else:
        shape = (1, len(card.input_channels), *(card.patch_size or (128, 128, 128)))
    key = json.dumps(
        [card.architecture, card.model_options, card.ensemble_members, shape, list(depths)], sort_keys=True, default=str
    )
    if key in _DEPTH_COSTS:
        return _DEPTH_COSTS[key]
    try:
        with torch.device("meta"):
            model = card.create_model().eval()
        costs = {depth: measure(model, shape, depth) for depth in depths}
    except (CascadeSegError, NotImplementedError, RuntimeError, TypeError, ValueError):
        # Shape-only (meta) execution cannot run data-dependent models such as the coarse-to-fine
        # crop; the depth list then shows the card's Dice without parameter/FLOP figures.
        costs = {}
    _DEPTH_COSTS[key] = costs
    return costs


def pruning_depths(card: ModelCard) -> list[int]:
    info = model_info(card)
    return list(info.pruning_depths) if info and info.pruning_depths else []


def depth_choices(card: ModelCard, costs: dict[int, Any] | None = None) -> list[tuple[int | None, str]]:
    """``(depth, label)`` per pruning depth: the card's validation Dice, the parameters, and the
    expected speed.

    Dice is the card's ``validation.dice_per_depth``. Speed is the card's measured
    ``slices_per_second_per_depth`` when the trainer recorded it; otherwise the cost in GFLOPs
    per slice (or patch), which is what the speed of a depth is proportional to on one device.
    Parameters: the card's ``params_per_depth``, else measured (``costs`` from
    :func:`depth_costs`, computed off the GUI thread by the caller).
    """
    depths = pruning_depths(card)
    if not depths:
        return [(None, "full network (no pruning)")]
    params = _per_depth(card, "params_per_depth", "parameters_per_depth")
    speed = _per_depth(card, "slices_per_second_per_depth", "speed_per_depth")
    costs = costs or {}
    unit = "slice" if card.dims == 2 else "patch"
    choices = []
    for depth in depths:
        parts = [f"L{depth}"]
        dice = card.dice_for_depth(depth)
        parts.append(f"Dice {dice:.3f}" if dice is not None else "Dice n/a")
        cost = costs.get(depth)
        if str(depth) in params:
            parts.append(f"{float(params[str(depth)]) / 1e6:.2f} M params")
        elif cost is not None and cost.params_m is not None:
            parts.append(f"{cost.params_m:.2f} M params")
        if str(depth) in speed:
            parts.append(f"~{float(speed[str(depth)]):.0f} slices/s")
        elif cost is not None and cost.gflops is not None:
            parts.append(f"{cost.gflops:.2f} GFLOP/{unit}")
        if depth == card.recommended_depth:
            parts.append("recommended")
        choices.append((depth, " · ".join(parts)))
    return choices


def select_entry_by_name(combo: QComboBox, entries: list[CheckpointEntry], name: str) -> bool:
    """Select the checkpoint called ``name`` in ``combo``, which lists ``entries`` after one first
    item (no model, start fresh); ``False`` when none is called so."""
    for index, entry in enumerate(entries):
        if entry.name == name:
            combo.setCurrentIndex(index + 1)
            return True
    return False


class ModelPicker(QWidget):
    """Model list + Browse + Refresh, and the selected card's summary. Emits ``changed``."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.combo = QComboBox()
        self.combo.setToolTip("Shipped default models, then your models folder, then browsed checkpoints")
        self.browse_button = QPushButton("Browse…")
        self.browse_button.setToolTip(
            "Pick a checkpoint folder (model.safetensors + model_card.json), or a folder of them "
            "(a training run, your models folder)"
        )
        self.refresh_button = QPushButton("↻")
        self.refresh_button.setToolTip("Refresh the model list (e.g. after training a model)")
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        row = hbox(self.combo, self.browse_button, self.refresh_button, grow=self.combo)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.summary)
        self._entries: list[CheckpointEntry] = []
        self._browsed: list[CheckpointEntry] = []
        self.combo.currentIndexChanged.connect(self._on_index)
        self.browse_button.clicked.connect(self._browse)
        self.refresh_button.clicked.connect(self.refresh)
        self.refresh()

    def refresh(self) -> None:
        """Re-list the checkpoints, keeping the current choice when it still exists."""
        current = self.current_entry()
        self._entries = list(available_checkpoints())
        known = {entry.path for entry in self._entries}
        self._entries += [entry for entry in self._browsed if entry.path not in known]
        self.combo.blockSignals(True)
        self.combo.clear()
        self.combo.addItem(NO_MODEL)
        for entry in self._entries:
            self.combo.addItem(f"{entry.name} ({entry.card.architecture}, {entry.source})")
        index = 0
        if current is not None:
            index = next((i + 1 for i, e in enumerate(self._entries) if e.path == current.path), 0)
        elif self._entries:
            # a model preselected: the product's default (made for the bundled sample), else the first
            index = next((i + 1 for i, e in enumerate(self._entries) if e.name == DEFAULT_MODEL), 1)
        self.combo.setCurrentIndex(index)
        self.combo.blockSignals(False)
        self._on_index()

    def current_entry(self) -> CheckpointEntry | None:
        index = self.combo.currentIndex() - 1
        return self._entries[index] if 0 <= index < len(self._entries) else None

    def select_path(self, path: str | Path) -> CheckpointEntry | None:
        """Add a checkpoint folder to the list and select it; a bad folder is a notification.

        A folder of checkpoints (a training run with ``best/`` and ``last/``, or a models folder)
        adds every checkpoint inside and selects ``best`` (else the first).
        """
        folder = Path(path)
        if folder.is_file():
            folder = folder.parent
        inside = sorted(p.parent for p in folder.glob(f"*/{CARD_FILE}")) if folder.is_dir() else []
        candidates = [folder] if (folder / CARD_FILE).is_file() or not inside else inside
        entries = []
        for candidate in candidates:
            try:
                card = read_card(candidate)
            except CascadeSegError as exc:
                error(str(exc))
                continue
            name = candidate.name if candidate == folder else f"{folder.name}/{candidate.name}"
            entries.append(CheckpointEntry(name=name, path=candidate, card=card, source="browsed"))
        if not entries:
            return None
        paths = {entry.path for entry in entries}
        self._browsed = [e for e in self._browsed if e.path not in paths] + entries
        self.refresh()
        chosen = next((e for e in entries if e.path.name == "best"), entries[0])
        index = next(i + 1 for i, e in enumerate(self._entries) if e.path == chosen.path)
        self.combo.setCurrentIndex(index)
        return chosen

    def select_name(self, name: str) -> bool:
        return select_entry_by_name(self.combo, self._entries, name)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Checkpoint folder (model.safetensors + model_card.json)")
        if folder:
            self.select_path(folder)

    def _on_index(self, *_: Any) -> None:
        entry = self.current_entry()
        self.summary.setText(card_summary(entry.card) if entry else "No model selected.")
        self.changed.emit()


class ChannelMapper(QWidget):
    """One combo box of image layers per model input channel, pre-filled by
    :func:`napari_cascade._channels.map_channels` (names, series descriptions, modality); a choice
    the user makes is kept while its layer exists. Emits ``changed`` when a choice changes."""

    changed = Signal()

    def __init__(self, viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.form = QFormLayout()
        self.form.setContentsMargins(0, 0, 0, 0)
        self.note = QLabel("")
        self.note.setWordWrap(True)
        self.note.setVisible(False)
        layout.addLayout(self.form)
        layout.addWidget(self.note)
        self.combos: list[QComboBox] = []
        self.channels: list[dict[str, Any]] = [{"name": "image"}]
        self._chosen: dict[str, str] = {}  # channel -> layer name the user picked
        self._unconfirmed: list[str] = []  # channels mapped without a name saying so
        self._build()
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
            event.connect(self._on_layers_changed)

    @property
    def channel_names(self) -> list[str]:
        return [str(channel.get("name", "")) for channel in self.channels]

    def set_channels(self, channels: list[dict[str, Any]] | list[str]) -> None:
        """The model's input channels: the card's ``input_channels`` (or bare names)."""
        self.channels = [c if isinstance(c, dict) else {"name": str(c)} for c in channels] or [{"name": "image"}]
        self._chosen = {}
        self._build()

    def _build(self) -> None:
        while self.form.rowCount():
            self.form.removeRow(0)
        self.combos = []
        for name in self.channel_names:
            combo = QComboBox()
            combo.setToolTip(f"The image layer holding the model's '{name}' channel")
            combo.activated.connect(lambda _=None, channel=name, box=combo: self._picked(channel, box))
            self.form.addRow(f"{name}:", combo)
            self.combos.append(combo)
        self._refill()

    def _picked(self, channel: str, combo: QComboBox) -> None:
        self._chosen[channel] = combo.currentText()
        self._update_note()
        self.changed.emit()

    def image_layers(self) -> list[Image]:
        """Image layers that can hold a scan channel (not Compare's views or probability maps)."""
        return [layer for layer in self.viewer.layers
                if isinstance(layer, Image) and layer_role(layer) not in (COMPARE, PROBABILITIES)]

    def _on_layers_changed(self, event: Any = None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None and layer_role(layer) in (COMPARE, PROBABILITIES):
            return  # Compare adds a dozen panels at once: none of them is a scan channel
        self._refill()

    def _refill(self, *_: Any) -> None:
        layers = self.image_layers()
        names = [layer.name for layer in layers]
        self._chosen = {c: n for c, n in self._chosen.items() if n in names}
        choices = map_channels(self.channels, layers)
        unconfirmed = []
        for channel, combo, choice in zip(self.channel_names, self.combos, choices):
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names)
            if channel in self._chosen:
                combo.setCurrentText(self._chosen[channel])
            elif choice.layer is not None:
                combo.setCurrentText(choice.layer.name)
                if not choice.confirmed and len(self.channels) + len(names) > 2:
                    unconfirmed.append(channel)
            combo.blockSignals(False)
        self._unconfirmed = unconfirmed
        self._update_note()
        self.changed.emit()

    def _update_note(self) -> None:
        unconfirmed = self.unconfirmed
        if unconfirmed:
            self.note.setText(
                "Check " + ", ".join(f"'{c}'" for c in unconfirmed)
                + ": no layer name, series description or modality says which layer it is."
            )
        self.note.setVisible(bool(unconfirmed))

    @property
    def unconfirmed(self) -> list[str]:
        """Channels whose layer no name, series description or modality confirms (and that the
        user has not picked)."""
        return [c for c in self._unconfirmed if c not in self._chosen]

    def selected_layers(self) -> list[Image]:
        """The layers in model channel order; a clear :class:`VolumeError` when they do not fit."""
        by_name = {layer.name: layer for layer in self.image_layers()}
        if not by_name:
            raise VolumeError("no image layer in the viewer: open a scan first (File > Open, or File > Open Sample)")
        chosen = []
        for channel, combo in zip(self.channel_names, self.combos):
            layer = by_name.get(combo.currentText())
            if layer is None:
                raise VolumeError(f"model channel '{channel}': no image layer chosen")
            chosen.append(layer)
        for layer in chosen:
            ndim = layer.data.ndim
            if getattr(layer, "rgb", False) or ndim != 3:
                extra = (
                    " (a multi-channel layer: open the scan with the napari-cascade reader, one layer per channel)"
                    if ndim == 4 else ""
                )
                raise VolumeError(
                    f"layer '{layer.name}' has shape {tuple(layer.data.shape)}: the model needs a 3D scan "
                    f"(Z, Y, X) per channel{extra}"
                )
        if len(self.channels) > 1 and len({id(layer) for layer in chosen}) < len(chosen):
            raise VolumeError(
                f"the model expects {len(self.channels)} different channels "
                f"({', '.join(self.channel_names)}) but the same layer was chosen twice; "
                f"the viewer has {len(by_name)} image layer(s)"
            )
        return chosen


def labels_layers(viewer: napari.Viewer) -> list[Labels]:
    return [layer for layer in viewer.layers if isinstance(layer, Labels)]


def model_and_channel_boxes(models: ModelPicker, channels: ChannelMapper) -> tuple[QGroupBox, QGroupBox]:
    """The "Model" and "Image layer per model channel" groups the Segment and Compare docks open with."""
    model_box = QGroupBox("Model")
    QVBoxLayout(model_box).addWidget(models)
    channel_box = QGroupBox("Image layer per model channel")
    QVBoxLayout(channel_box).addWidget(channels)
    return model_box, channel_box


class ModelChoiceDock:
    """Mixin of the docks that run a chosen model on chosen image layers (Segment, Compare): the
    viewer's shared state and model cache, the model picker and the channel mapper, and the
    model list kept current (the shared state calls :meth:`show_model` when a model was installed)."""

    viewer: napari.Viewer
    state: CascadeState
    cache: Any
    models: ModelPicker
    channels: ChannelMapper

    def _init_model_choice(self, viewer: napari.Viewer) -> None:
        self.viewer = viewer
        self.state = state_for(viewer)
        self.cache = self.state.models
        self.models = ModelPicker()
        self.channels = ChannelMapper(viewer)

    def _chosen_model(self) -> CheckpointEntry:
        """The selected checkpoint; none selected is a user mistake (:class:`CascadeSegError`)."""
        entry = self.models.current_entry()
        if entry is None:
            raise CascadeSegError(
                "no model selected: pick one of the shipped models or browse to a checkpoint folder"
            )
        return entry

    def _chosen_scan(self) -> tuple[str, Volume]:
        """The scan the chosen image layers make (one per model channel), and the first layer's
        name, which results are named after; a mismatch raises :class:`CascadeSegError`."""
        layers = self.channels.selected_layers()
        return layers[0].name, volume_from_image_layers(layers)

    def refresh_models(self) -> None:
        """Re-list the checkpoints (e.g. after a model was trained)."""
        self.models.refresh()

    def show_model(self, name: str) -> None:
        """A model was installed (the shared state's ``model_installed``): list and select it."""
        self.models.refresh()
        self.models.select_name(name)
