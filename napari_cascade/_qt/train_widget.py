"""The Train dock: one click from corrected masks to a model in the Segment dock's list.

Give it the data and a time budget: everything else is planned by the engine's planner
(:mod:`cascadeseg.training.planner`: 2D or 3D, working grid, patch, batch, width, loss,
validation) for this data on this machine, and *Show plan* prints its choices and reasons before
Train is pressed. Every choice can be overridden here (each field's "auto" is the planner's).

Train runs :func:`cascadeseg.training.train` in a napari thread worker (through
:class:`~napari_cascade._qt.workers.JobPanel`: one job at a time, Cancel, errors as
notifications). The trainer's step/epoch callbacks arrive in the worker thread and are handed to
the GUI thread with a queued Qt signal, where :class:`TrainingPlot` keeps them and has its own
thread draw them. The training runs with the objects alive at its start frozen out of garbage
collection (:func:`~napari_cascade._qt.feeding.kept_frozen`). Cancel sets the
trainer's cancel event: it stops within one step and keeps its last good checkpoint.

When the run ends on its own, the checkpoint its plan keeps (the final weights of a schedule that
settles, else the best validated ones: :attr:`TrainResult.model_checkpoint`) is installed under
:func:`cascadeseg.inference.user_models_dir` with a model card naming the data and the settings,
and a docked Segment widget re-lists its models and selects the new one, so it can be run at once.
A cancelled run is never installed on its own: the dock says what was kept (best and last
checkpoints with their Dice) and *Install best*, *Install last* or *Discard* decide.
The trainer releases the GPU's cached memory when it returns, however it ends.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import napari
import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QGroupBox,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from cascadeseg.editing import default_training_set_dir
from cascadeseg.errors import CascadeSegError, DatasetError, VolumeError
from cascadeseg.inference.checkpoint import (
    CheckpointEntry,
    available_checkpoints,
    read_card,
    user_models_dir,
)
from cascadeseg.inference.device import DEVICE_CHOICES, resolve_device
from cascadeseg.models import list_models
from cascadeseg.training.config import DEFAULT_MINUTES, FEW_SHOT_MINUTES, SLICE_BLOCK_FINE_TUNING_MINUTES
from cascadeseg.training.export import describe_kept, install_model, unique_model_name
from cascadeseg.training.split import slice_split_options
from cascadeseg.training.transfer import check_labels_fit

from .._layers import volume_from_image_layers
from .._state import REFERENCE, WORKING_MASK, connect_while_alive, layer_role, newest, state_for
from . import collection
from .correction_widget import scan_channel_layers
from .feeding import kept_frozen
from .layout import form, hbox, scrollable
from .model_picker import select_entry_by_name
from .training_plot import MATPLOTLIB_MODULES, TrainingPlot, warm_up_drawing
from .workers import JobPanel, queue_background_task

SOURCE_LAYERS, SOURCE_SET, SOURCE_FOLDER = "layers", "training_set", "folder"
# The minutes a new network starts with in the dock; a fine-tuning starts with the planner's budget
# (0 on the spin box, shown as "planned": FEW_SHOT_MINUTES or SLICE_BLOCK_FINE_TUNING_MINUTES by
# the number of patients; the plan says which and why).
FRESH_MINUTES = 10.0
PLANNED_MINUTES = 0.0

# What the first Train needs and opening the dock does not import: the trainer (and with it torch
# and the training modules), matplotlib for the live plot, and torch._dynamo, which torch.optim's
# optimisers import when the first one is made (about 800 modules with sympy and torch.onnx): made
# in the training, that import started full garbage collections over its 100,000 new objects,
# 120-220 ms each with the interpreter lock held, the live plot's longest freezes.
# Also what a run's start imports inside the engine's functions (the lock on the run folder, the
# checkpoint format, torch's serialisation settings, the losses, preprocessing and architectures):
# 55 modules the dock had not imported, each read again by PySide's import hook, which, with the
# live plot's first layout, left the GUI thread a 329 ms gap at Train's start with a CT open. The
# engine packages are imported whole, so an architecture or loss the plan picks is among them.
FIRST_RUN_MODULES = (
    "cascadeseg.training.trainer", "torch._dynamo", *MATPLOTLIB_MODULES,
    "cascadeseg.training.cpu_layout", "cascadeseg.resources", "filelock", "safetensors.torch",
)
# torch's private modules a run's start imported (torch 2.13): another torch may not have them.
FIRST_RUN_TORCH_INTERNALS = ("torch.utils.serialization", "torch.profiler._cupti_monitor")
FIRST_RUN_PACKAGES = ("cascadeseg.losses", "cascadeseg.preprocessing", "cascadeseg.models")
_FIRST_RUN_IMPORTED = threading.Event()


def import_for_first_run() -> None:
    """Import :data:`FIRST_RUN_MODULES` and every module of :data:`FIRST_RUN_PACKAGES` in a
    worker as the dock opens, and draw one small figure
    (:func:`warm_up_drawing`). The objects alive are kept out of the garbage collections these
    imports start: with a CT and a Segment result open, one such collection in the job's import of
    the trainer held the interpreter lock for 0.33 s, the first Train's freeze."""
    with kept_frozen():
        for module in FIRST_RUN_MODULES:
            importlib.import_module(module)
        for module in FIRST_RUN_TORCH_INTERNALS:
            with contextlib.suppress(ImportError):  # a torch without it: nothing to warm
                importlib.import_module(module)
        for package in FIRST_RUN_PACKAGES:
            path = importlib.import_module(package).__path__
            for info in pkgutil.walk_packages(path, prefix=f"{package}."):
                importlib.import_module(info.name)
        warm_up_drawing()
    _FIRST_RUN_IMPORTED.set()


def first_run_imported() -> bool:
    """Whether :func:`import_for_first_run` has finished. Train does not wait for it: a run
    started earlier imports what it needs itself (waiting only on Python's lock for a module the
    warm-up is importing at that moment), and its start may then freeze the window as before."""
    return _FIRST_RUN_IMPORTED.is_set()

FRESH = "start fresh (or a shipped model, when the planner finds one that fits few patients)"
AUTO = "auto"
PLOT_DOCK_NAME = "Training progress"
# How long the window gets to lay out and paint the plot's dock before the training starts, and
# the longest a training waits for that (a window that never runs the timer).
DOCK_SETTLE_MS = 150
DOCK_SETTLE_TIMEOUT_S = 2.0
# The decay of the shipped cascade's recipe (docs/default_models.md): a horizon of ~500 steps.
EMA_DECAY = 0.998

# One training at a time per process, whichever Train dock started it: two runs would compete
# for the same GPU memory and CPU cores, and a user rarely means it.
_TRAINING_LOCK = threading.Lock()


@dataclass
class TrainRequest:
    """Everything a run needs, gathered and checked on the GUI thread before the worker starts."""

    config: Any
    model_name: str
    source_text: str
    init_entry: CheckpointEntry | None
    outcome: dict[str, Any] = field(default_factory=dict)  # filled by the worker (survives Cancel)


class _Relay(QObject):
    """Hands trainer callbacks from the worker thread to the GUI thread (queued signals)."""

    step = Signal(object)
    epoch = Signal(object)
    plan = Signal(str)
    plan_warnings = Signal(object)


def _auto_spin_box(maximum: int, tooltip: str = "") -> QSpinBox:
    """A setting from 0 to ``maximum`` where 0, shown as "auto", leaves it to the planner."""
    box = QSpinBox()
    box.setRange(0, maximum)
    box.setSpecialValueText(AUTO)
    if tooltip:
        box.setToolTip(tooltip)
    return box

class TrainWidget(QWidget):
    """Dock widget: train or fine-tune a model on corrected masks with one click."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self._plot: TrainingPlot | None = None  # made when first shown (matplotlib, below)
        queue_background_task(import_for_first_run, name="napari-cascade: importing the trainer")
        self.last_request: TrainRequest | None = None
        self.installed: Path | None = None
        self.last_plan_warnings: list[str] = []
        self._relay = _Relay()
        self._relay.step.connect(lambda info: self.plot.add_step(info))
        self._relay.epoch.connect(lambda info: self.plot.add_epoch(info))
        self._relay.plan.connect(lambda text: self.plan_text.setPlainText(text) if text else None)
        self._relay.plan_warnings.connect(self._warn_about_plan)
        self._models = {info.name: info for info in list_models()}
        self._checkpoints: list[CheckpointEntry] = []

        # -- source ---------------------------------------------------------------------------
        self.source = QComboBox()
        self.source.addItem("current image + labels layers", SOURCE_LAYERS)
        self.source.addItem("local training set", SOURCE_SET)
        self.source.addItem("MSD / nnU-Net folder", SOURCE_FOLDER)
        self.image_combo = QComboBox()
        self.labels_combo = QComboBox()
        self.folder = QLineEdit(str(default_training_set_dir()))
        self.folder_browse = QPushButton("…")
        self.annotated_only = QCheckBox("train on annotated slices only")
        self.annotated_only.setChecked(True)
        self.annotated_only.setToolTip(
            "For one scan: use only slices that hold labels, so unlabelled slices are not learnt as background"
        )

        # -- model ----------------------------------------------------------------------------
        self.init_combo = QComboBox()
        self.init_browse = QPushButton("Browse…")
        self.init_browse.setToolTip("Fine-tune a checkpoint folder that is not in the list")
        self._browsed: list[CheckpointEntry] = []
        self.model_combo = QComboBox()
        self.model_combo.addItem("auto (planned: U-Net, most steps per minute)", None)
        for info in self._models.values():
            self.model_combo.addItem(f"{info.title} ({info.name})", info.name)
        self.loss_combo = QComboBox()
        self.dims_combo = QComboBox()
        self.axis_combo = QComboBox()
        self.axis_combo.addItem("auto (planned)", None)
        for label, axis in (("axial (z)", 0), ("coronal (y)", 1), ("sagittal (x)", 2)):
            self.axis_combo.addItem(label, axis)
        self.base_width = _auto_spin_box(
            128, "Channels of the first level (paper: 32); auto: planned for the device and budget"
        )
        self.freeze_encoder = QCheckBox("keep the starting model's encoder (train the rest)")
        self.freeze_encoder.setToolTip(
            "Fine-tuning only: the encoder's weights stay as the chosen model's, the decoder, gates and "
            "heads learn. Off by default: on the TCIA glioblastoma studies it scored lower than fine-tuning "
            "everything (docs/one_click_training.md)"
        )

        # -- budget and device ----------------------------------------------------------------
        self.budget_kind = QComboBox()
        self.budget_kind.addItem("time budget", "minutes")
        self.budget_kind.addItem("epochs", "epochs")
        self.minutes = QDoubleSpinBox()
        self.minutes.setRange(PLANNED_MINUTES, 10_000)
        self.minutes.setDecimals(2)
        self.minutes.setSpecialValueText("planned")  # shown at PLANNED_MINUTES: the planner's budget
        self.minutes.setValue(FRESH_MINUTES)
        self.minutes.setSuffix(" min")
        self.minutes.setToolTip(
            f"The run ends within 10 % of this, validation and export included. {FRESH_MINUTES:g} minutes for a new "
            "network; 'planned' (0) when weights to fine-tune are chosen, until you change it: the planner gives a "
            f"fine-tuning on 3-10 patients {FEW_SHOT_MINUTES:g} minutes (its gain comes in the first epoch), on 1-2 "
            f"{SLICE_BLOCK_FINE_TUNING_MINUTES:g}, and any other run {DEFAULT_MINUTES:g} (Show plan says which)"
        )
        self._default_minutes = FRESH_MINUTES  # the dock's last default: replaced only while the user keeps it
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 100_000)
        self.epochs.setValue(50)
        self.device = QComboBox()
        for name in DEVICE_CHOICES:
            self.device.addItem(name, name)
        self.inplane = _auto_spin_box(
            1024, "In-plane pixels of the median scan on the working grid; auto: planned for the budget"
        )
        self.batch_size = _auto_spin_box(512)
        self.steps_per_epoch = _auto_spin_box(1_000_000)
        self.threads = _auto_spin_box(
            256, "CPU threads for training (auto: PyTorch's default); fewer keeps a shared machine responsive"
        )
        self.average_weights = QCheckBox("average the weights (EMA 0.998)")
        self.average_weights.setToolTip(
            "Validate, keep and install a moving average of the weights instead of the last step's: "
            "steadier validation Dice from epoch to epoch (the shipped cascade was trained this way)"
        )
        self.fine_tune_button = QPushButton("Fine-tune on the training set")
        self.fine_tune_button.setToolTip("One click after 'Add to training set': fine-tune the model whose prediction "
                                         "you corrected on the local training set, with this budget")
        self.fine_tune_button.setVisible(False)
        self._offer: dict[str, Any] | None = None
        self.plan_button = QPushButton("Show plan")
        self.plan_button.setToolTip("What training would do with this data on this machine, and why "
                                    "(reads the data and times a few steps; nothing is trained)")
        self.plan_text = QPlainTextEdit()
        self.plan_text.setReadOnly(True)
        self.plan_text.setPlaceholderText("the planner's choices appear here (Show plan, or when training starts)")
        self.plan_text.setMaximumHeight(160)
        self.install_best_button = QPushButton("Install best")
        self.install_last_button = QPushButton("Install last")
        self.discard_button = QPushButton("Discard")
        for button in (self.install_best_button, self.install_last_button, self.discard_button):
            button.setVisible(False)
        self.model_name = QLineEdit()
        self.model_name.setPlaceholderText("name of the new model (default: <model>-<date>)")
        self.train_button = QPushButton("Train")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.setToolTip("Stop within seconds; the checkpoints so far are kept and you choose what to install")
        self.job = JobPanel()
        # The panel's own Cancel drops a job's result; a cancelled training still has one (its
        # last good checkpoint), so the trainer gets its own stop event and this dock its own button.
        self.job.cancel_button.hide()
        self._stop = threading.Event()
        self.status = QLabel("")
        self.status.setWordWrap(True)

        self._build_layout()
        self.source.currentIndexChanged.connect(self._source_changed)
        self.folder_browse.clicked.connect(self._browse)
        self.model_combo.currentIndexChanged.connect(self._model_changed)
        self.init_combo.currentIndexChanged.connect(self._init_changed)
        self.init_browse.clicked.connect(self._browse_init)
        self.budget_kind.currentIndexChanged.connect(self._budget_changed)
        self.train_button.clicked.connect(lambda: self.start())
        self.cancel_button.clicked.connect(self.cancel)
        self.job.finished.connect(self._finished)
        self.plan_button.clicked.connect(lambda: self.show_plan())
        self.fine_tune_button.clicked.connect(lambda: self.fine_tune_on_training_set())
        connect_while_alive(state_for(self.viewer).case_added, self, self._case_added)
        self.install_best_button.clicked.connect(lambda: self.install_kept("best"))
        self.install_last_button.clicked.connect(lambda: self.install_kept("last"))
        self.discard_button.clicked.connect(self.discard_kept)
        self.viewer.layers.events.inserted.connect(self._on_inserted)
        self.viewer.layers.events.removed.connect(self.refresh_layers)
        self.refresh_layers()
        self.refresh_checkpoints()
        self._model_changed()
        self._source_changed()
        self._budget_changed()

    @property
    def plot(self) -> TrainingPlot:
        """The live training plot, made when first needed: its matplotlib canvas is not built (nor
        matplotlib imported on the GUI thread) when the dock opens, only when a run starts."""
        if self._plot is None:
            self._plot = TrainingPlot()
        return self._plot

    def _build_layout(self) -> None:
        source_box = QGroupBox("Training data")
        form(
            ("source:", self.source),
            ("image:", self.image_combo),
            ("labels:", self.labels_combo),
            ("folder:", hbox(self.folder, self.folder_browse, grow=self.folder)),
            self.annotated_only,
            parent=source_box,
        )

        model_box = QGroupBox("Model")
        form(
            ("weights:", hbox(self.init_combo, self.init_browse, grow=self.init_combo)),
            ("architecture:", self.model_combo),
            ("loss:", self.loss_combo),
            ("2D / 3D:", self.dims_combo),
            ("2D slices along:", self.axis_combo),
            ("base width:", self.base_width),
            self.freeze_encoder,
            parent=model_box,
        )

        run_box = QGroupBox("Run")
        form(
            ("stop after:", hbox(self.budget_kind, self.minutes, self.epochs)),
            ("device:", self.device),
            ("CPU threads:", self.threads),
            ("in-plane size:", self.inplane),
            ("batch size:", self.batch_size),
            ("steps per epoch:", self.steps_per_epoch),
            self.average_weights,
            ("new model:", self.model_name),
            parent=run_box,
        )

        layout = QVBoxLayout()
        for box in (source_box, model_box, run_box):
            layout.addWidget(box)
        buttons = hbox(self.plan_button, self.train_button, self.cancel_button, grow=self.train_button)
        layout.addLayout(buttons)
        layout.addWidget(self.fine_tune_button)
        layout.addWidget(self.plan_text)
        layout.addWidget(self.job)
        layout.addWidget(self.status)
        kept = hbox(self.install_best_button, self.install_last_button, self.discard_button)
        layout.addLayout(kept)
        layout.addStretch(1)
        scrollable(self, layout)
        collection.hold_while_shown(self)  # napari's status thread collects on the GUI thread too

    # -- choices ------------------------------------------------------------------------------
    def _on_inserted(self, event: Any) -> None:
        event.value.events.name.connect(self.refresh_layers)
        self.refresh_layers()
        if isinstance(event.value, Labels) and layer_role(event.value) == WORKING_MASK:
            self.labels_combo.setCurrentText(event.value.name)  # a new corrected mask is what to train on

    def refresh_layers(self, *_: Any) -> None:
        for combo, kind in ((self.image_combo, Image), (self.labels_combo, Labels)):
            current = combo.currentText()
            combo.clear()
            combo.addItems([layer.name for layer in self.viewer.layers if isinstance(layer, kind)])
            if current:
                combo.setCurrentText(current)
            elif kind is Labels:
                default = self._default_labels()
                if default is not None:
                    combo.setCurrentText(default.name)

    def _default_labels(self) -> Any:
        """What a user trains on: the newest corrected working mask; else a labels layer no dock
        made (drawn by hand, or ground truth opened from a file); never a raw prediction."""
        labels = [layer for layer in self.viewer.layers if isinstance(layer, Labels)]
        masks = [layer for layer in labels if layer_role(layer) == WORKING_MASK]
        if masks:
            return newest(masks)
        own = [layer for layer in labels if layer_role(layer) == REFERENCE]
        return own[0] if own else None

    def _case_added(self, event: dict[str, Any]) -> None:
        """A case went into a training set: offer the one-click fine-tune of the model behind it."""
        self._offer = dict(event)
        model = event.get("model")
        self.fine_tune_button.setText(f"Fine-tune {model} on the training set" if model else
                                      "Train on the training set")
        self.fine_tune_button.setVisible(True)

    def fine_tune_on_training_set(self) -> bool:
        """Source: the training set just added to; weights: the model whose prediction was
        corrected (when installed); everything else as the dock says (auto: planned). Starts."""
        offer = self._offer or {"folder": str(default_training_set_dir()), "model": None}
        self.source.setCurrentIndex(self.source.findData(SOURCE_SET))
        self.folder.setText(str(offer["folder"]))
        if offer.get("model") and not self.select_init(str(offer["model"])):
            self.init_combo.setCurrentIndex(0)
        return self.start()

    def refresh_checkpoints(self) -> None:
        """Re-list the checkpoints one can fine-tune from (shipped and user models)."""
        current = self.init_combo.currentText()
        listed = list(available_checkpoints())
        known = {entry.path for entry in listed}
        self._checkpoints = listed + [entry for entry in self._browsed if entry.path not in known]
        self.init_combo.blockSignals(True)
        self.init_combo.clear()
        self.init_combo.addItem(FRESH, None)
        for entry in self._checkpoints:
            self.init_combo.addItem(f"fine-tune {entry.name} ({entry.card.architecture})", str(entry.path))
        if current:
            self.init_combo.setCurrentText(current)
        self.init_combo.blockSignals(False)
        self._init_changed()

    def init_entry(self) -> CheckpointEntry | None:
        path = self.init_combo.currentData()
        return next((e for e in self._checkpoints if str(e.path) == path), None) if path else None

    def select_init(self, name: str) -> bool:
        """Choose the checkpoint called ``name`` to fine-tune from."""
        self.refresh_checkpoints()
        return select_entry_by_name(self.init_combo, self._checkpoints, name)

    def add_init_checkpoint(self, folder: str | Path) -> CheckpointEntry | None:
        """Add a checkpoint folder to fine-tune from and select it; a bad folder is a notification."""
        path = Path(folder)
        try:
            card = read_card(path)
        except CascadeSegError as exc:
            show_error(str(exc))
            return None
        entry = CheckpointEntry(name=path.name, path=path, card=card, source="browsed")
        self._browsed = [e for e in self._browsed if e.path != path] + [entry]
        self.refresh_checkpoints()
        index = self.init_combo.findData(str(path))
        if index < 0:  # listed already under its own (resolved) path: pick it by name
            self.select_init(entry.name)
        else:
            self.init_combo.setCurrentIndex(index)
        return entry

    def _browse_init(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Checkpoint to fine-tune (model.safetensors + model_card.json)")
        if folder:
            self.add_init_checkpoint(folder)

    def _source_changed(self, *_: Any) -> None:
        kind = self.source.currentData()
        for widget in (self.image_combo, self.labels_combo, self.annotated_only):
            widget.setEnabled(kind == SOURCE_LAYERS)
        self.folder.setEnabled(kind != SOURCE_LAYERS)
        self.folder_browse.setEnabled(kind != SOURCE_LAYERS)
        if kind == SOURCE_SET:
            self.folder.setText(str((self._offer or {}).get("folder") or default_training_set_dir()))

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "MSD / nnU-Net dataset folder", self.folder.text())
        if folder:
            self.folder.setText(folder)

    def _model_changed(self, *_: Any) -> None:
        """Preselect the paper's loss and the dimensions the architecture supports."""
        from cascadeseg.losses import loss_names

        name = self.model_combo.currentData()
        info = self._models.get(name) if name else None
        self.loss_combo.clear()
        self.loss_combo.addItem("auto (the model's paper loss)", None)
        for loss in loss_names():
            self.loss_combo.addItem(f"{loss} (paper)" if info is not None and loss == info.default_loss else loss, loss)
        if info is not None:
            self.loss_combo.setCurrentIndex(max(0, self.loss_combo.findData(info.default_loss)))
        current = self.dims_combo.currentData()
        self.dims_combo.clear()
        self.dims_combo.addItem("auto (planned from the spacing)", None)
        for dims in (info.dims if info is not None else (2, 3)):
            self.dims_combo.addItem(f"{dims}D", dims)
        if current is not None:
            self.dims_combo.setCurrentIndex(max(0, self.dims_combo.findData(current)))

    def _init_changed(self, *_: Any) -> None:
        """Fine-tuning fixes architecture and dimensions to the checkpoint's."""
        entry = self.init_entry()
        fresh = entry is None
        for widget in (self.model_combo, self.dims_combo, self.base_width):
            widget.setEnabled(fresh)
        self.freeze_encoder.setEnabled(not fresh)  # a fresh network has no encoder worth keeping
        if fresh:
            self.freeze_encoder.setChecked(False)
        # The budget follows the choice until the user sets one of their own.
        default = FRESH_MINUTES if fresh else PLANNED_MINUTES
        if self.minutes.value() == self._default_minutes:
            self.minutes.setValue(default)
        self._default_minutes = default
        if entry is not None:
            self.model_combo.setCurrentIndex(self.model_combo.findData(entry.card.architecture))
            self.dims_combo.setCurrentIndex(self.dims_combo.findData(entry.card.dims))
            self.axis_combo.setCurrentIndex(self.axis_combo.findData(entry.card.slice_axis))
            # Continue with the loss the checkpoint was trained with (still the user's to change).
            trained_with = self.loss_combo.findData(entry.card.training.get("loss"))
            if trained_with >= 0:
                self.loss_combo.setCurrentIndex(trained_with)

    def _budget_changed(self, *_: Any) -> None:
        by_time = self.budget_kind.currentData() == "minutes"
        self.minutes.setVisible(by_time)
        self.epochs.setVisible(not by_time)

    # -- gathering ----------------------------------------------------------------------------
    def _layer(self, name: str, kind: type) -> Any:
        if name and name in self.viewer.layers and isinstance(self.viewer.layers[name], kind):
            return self.viewer.layers[name]
        return None

    def _layer_data(self) -> tuple[Any, str, set[int], int]:
        image_layer = self._layer(self.image_combo.currentText(), Image)
        labels_layer = self._layer(self.labels_combo.currentText(), Labels)
        if image_layer is None or labels_layer is None:
            raise VolumeError(
                "training from layers needs an image layer and a labels layer; open a scan and paint its mask"
            )
        image = volume_from_image_layers(scan_channel_layers(self.viewer, image_layer))
        labels = np.array(labels_layer.data, copy=True)  # the user may keep painting meanwhile
        if labels.shape != image.spatial_shape:
            raise VolumeError(
                f"labels layer '{labels_layer.name}' has shape {labels.shape}, the image "
                f"'{image_layer.name}' {image.spatial_shape}: paint the labels on the image's grid"
            )
        if not labels.any():
            raise DatasetError(
                f"labels layer '{labels_layer.name}' is empty: paint the structure on a few slices "
                "(or accept a prediction and correct it) before training"
            )
        label_volume = image.with_array(labels, channel_names=[], modality=None)
        values = {int(v) for v in np.unique(labels)}
        text = f"'{image_layer.name}' + '{labels_layer.name}'"
        return [(image, label_volume)], text, values, image.num_channels

    def _folder_data(self) -> tuple[Any, str, set[int] | None, int | None]:
        folder = Path(self.folder.text().strip()).expanduser()
        if not (folder / "imagesTr").is_dir() or not (folder / "labelsTr").is_dir():
            raise DatasetError(
                f"training data folder {folder}: expected an MSD / nnU-Net folder with imagesTr/ and "
                "labelsTr/ (add cases with 'Add to training set' in the Correct mask dock)"
            )
        from cascadeseg.editing import TrainingSet

        summary = TrainingSet(folder).summary(read_uncounted=False)  # on the GUI thread: read no mask
        if summary.num_cases == 0:
            raise DatasetError(f"training data folder {folder}: holds no complete case (image and label)")
        values = set(summary.labels.values()) or None
        channels = len(summary.channel_names) or None
        return str(folder), f"{folder.name} ({summary.describe()})", values, channels

    def gather(self) -> TrainRequest:
        """Read and check the choices; a user mistake raises :class:`CascadeSegError`. Fields left
        at "auto" stay ``None`` in the config: the planner decides them."""
        from cascadeseg.training.config import TrainConfig

        split: dict[str, int] = {}
        if self.source.currentData() == SOURCE_LAYERS:
            data, source_text, values, channels = self._layer_data()
            axis = self.axis_combo.currentData()
            split = slice_split_options(data[0][1].array, 0 if axis is None else int(axis), self.annotated_only.isChecked())
        else:
            data, source_text, values, channels = self._folder_data()
        entry = self.init_entry()
        if entry is not None:
            check_labels_fit(entry.card, values, entry.name)
        device = self.device.currentData()
        resolve_device(device)  # a missing GPU is reported now, before any data is read
        architecture = entry.card.architecture if entry else self.model_combo.currentData()
        dims = entry.card.dims if entry else self.dims_combo.currentData()
        wanted = self.model_name.text().strip() or f"{architecture or 'model'}-{time.strftime('%Y%m%d-%H%M')}"
        name = unique_model_name(wanted)
        by_time = self.budget_kind.currentData() == "minutes"
        options = {"base_width": int(self.base_width.value())} if (not entry and self.base_width.value()) else None
        axis = self.axis_combo.currentData()
        config = TrainConfig(
            data=data,
            run_dir=str(user_models_dir().parent / "runs" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"),
            model=architecture,
            dims=None if dims is None else int(dims),
            model_options=options,
            loss=self.loss_combo.currentData(),
            axis=None if axis is None else int(axis),
            inplane_size=int(self.inplane.value()) or None,
            batch_size=int(self.batch_size.value()) or None,
            # A time budget stops the run (the planner sizes the epochs to it).
            epochs=None if by_time else int(self.epochs.value()),
            minutes=float(self.minutes.value()) if by_time and self.minutes.value() > PLANNED_MINUTES else None,
            steps_per_epoch=int(self.steps_per_epoch.value()) or None,
            device=device,
            threads=int(self.threads.value()) or None,
            ema_decay=EMA_DECAY if self.average_weights.isChecked() else None,
            init_checkpoint=str(entry.path) if entry else None,
            freeze="encoder" if entry is not None and self.freeze_encoder.isChecked() else "none",
            annotated_slices_only=bool(
                self.source.currentData() == SOURCE_LAYERS and self.annotated_only.isChecked()
            ),
            description=f"trained in napari-cascade's Train dock on {source_text}",
            **split,
        )
        config.validate()
        return TrainRequest(config=config, model_name=name, source_text=source_text, init_entry=entry)

    # -- running ------------------------------------------------------------------------------
    def _gather_or_say_why(self) -> TrainRequest | None:
        """The request from the current choices, or ``None`` once the reason it cannot be made is
        shown (a notification and the status line): how both Train and Plan begin."""
        try:
            return self.gather()
        except CascadeSegError as exc:
            show_error(str(exc))
            self.status.setText(str(exc))
            return None

    def start(self) -> bool:
        """Start training in a worker thread; ``False`` (with a notification) if refused."""
        if self.job.busy or _TRAINING_LOCK.locked():
            show_error("a training is already running; wait for it to finish or press Cancel")
            return False
        request = self._gather_or_say_why()
        if request is None:
            return False
        self.last_request = request
        self.installed = None
        self._show_kept_choice(False)
        self.plot.reset(f"training '{request.model_name}'")
        # The plot's dock in a turn of its own: napari's dock insertion and the main window's new
        # layout (0.1-0.4 s of Qt on the GUI thread) on top of building the plot was the first
        # Train's longest freeze.
        dock_settled = threading.Event()
        QTimer.singleShot(0, lambda: self._show_plot(dock_settled))
        self._stop = threading.Event()
        job = self._job(request, self._stop, dock_settled)
        started = self.job.start(job, self._trained, f"training {request.model_name}")
        if started:
            self.train_button.setEnabled(False)
            self.cancel_button.setEnabled(True)
            self.status.setText(f"training '{request.model_name}' on {request.source_text}…")
        return started

    @property
    def busy(self) -> bool:
        return self.job.busy

    def cancel(self) -> None:
        """Stop the running training at its next step (the last good checkpoint is kept)."""
        if self.job.busy:
            self._stop.set()
            self.cancel_button.setEnabled(False)
            self.status.setText("cancelling: the trainer stops after the current step or batch…")

    def _show_plot(self, settled: threading.Event) -> None:
        """Dock the plot, then set ``settled`` once the window has had :data:`DOCK_SETTLE_MS` to
        lay the dock out and paint it: the training waits for that before it starts."""
        window = getattr(self.viewer, "window", None)
        if window is not None and PLOT_DOCK_NAME not in window.dock_widgets:
            window.add_dock_widget(self.plot, name=PLOT_DOCK_NAME, area="bottom")
        QTimer.singleShot(DOCK_SETTLE_MS, settled.set)

    def show_plan(self) -> bool:
        """Plan with the current choices in a worker and show the plan (nothing is trained)."""
        if self.job.busy:
            show_error("a training or plan is running; wait for it or press Cancel")
            return False
        request = self._gather_or_say_why()
        if request is None:
            return False

        def job(progress: Callable[[Any], None], cancel: threading.Event) -> Any:
            from cascadeseg.training.trainer import plan_only

            return plan_only(request.config, cancel=cancel)

        def shown(plan: Any) -> None:
            self.plan_text.setPlainText(plan.describe())
            self._warn_about_plan(plan.warnings)

        self.plan_text.setPlainText("planning: reading the data and timing a few steps…")
        return self.job.start(job, shown, "planning")

    def _warn_about_plan(self, warnings: list[str]) -> None:
        """What the planner asks the user to check (also at the top of the plan text)."""
        self.last_plan_warnings = list(warnings)
        for text in warnings:
            show_warning(f"Train: {text}")

    def _job(self, request: TrainRequest, stop: threading.Event, dock_settled: threading.Event) -> Callable[..., Any]:
        relay = self._relay

        def job(progress: Callable[[Any], None], _panel_cancel: threading.Event) -> Any:
            # The plot's dock first: its insertion and layout on the GUI thread make hundreds of
            # Python calls, each waiting its turn for the interpreter lock while the planner reads
            # the data (with a CT open, Train's start froze the window for 0.30-0.36 s).
            dock_settled.wait(DOCK_SETTLE_TIMEOUT_S)
            # Imported here, in the worker: the trainer brings torch, which on the GUI thread froze
            # the window for a second at the first Train of a session (import_for_first_run has
            # usually imported it by now).
            with kept_frozen():
                from cascadeseg.training.callbacks import FunctionCallback
                from cascadeseg.training.trainer import train

            def on_step(info: Any) -> None:
                relay.step.emit(info)
                if info.time_left_seconds is not None:
                    elapsed = info.elapsed_seconds
                    progress(elapsed / max(elapsed + info.time_left_seconds, 1e-6))

            def on_train_start(info: dict[str, Any]) -> None:
                relay.plan.emit(info.get("plan") or "")
                if info.get("plan_warnings"):
                    relay.plan_warnings.emit(list(info["plan_warnings"]))

            if not _TRAINING_LOCK.acquire(blocking=False):
                raise CascadeSegError("a training is already running; wait for it to finish or cancel it")
            try:
                with kept_frozen():  # no full collections over napari's objects while it trains
                    result = train(request.config, FunctionCallback(
                        on_step=on_step, on_epoch=relay.epoch.emit, on_train_start=on_train_start), stop)
                request.outcome["result"] = result
                if result.stopped != "cancelled":  # a cancelled run waits for the user's choice
                    # the run's model: the checkpoint its plan keeps (the final weights of a schedule
                    # that settles, else the best validated ones)
                    kept = "last" if result.model_checkpoint == result.last_checkpoint else "best"
                    request.outcome["installed"] = self._install(request, result, kept)
            finally:
                _TRAINING_LOCK.release()
            return request.outcome

        return job

    @staticmethod
    def _install(request: TrainRequest, result: Any, which: str) -> Path | None:
        """Install the run's ``best`` or ``last`` checkpoint as a user model; ``None`` when the
        run has no such checkpoint."""
        checkpoint = result.best_checkpoint if which == "best" else result.last_checkpoint
        if checkpoint is None:
            return None
        config = request.config
        reasons = {"epochs": "its planned epochs", "time": "the time budget", "cancelled": "Cancel"}
        stopped = reasons.get(result.stopped, result.stopped)
        if request.init_entry is not None:
            origin = f"fine-tuned from '{request.init_entry.name}'"
        elif config.init_checkpoint:
            origin = f"fine-tuned from '{Path(config.init_checkpoint).name}'"
        else:
            origin = f"trained from scratch ({config.model or 'planned model'})"
        dice = result.best_dice if which == "best" else result.last_dice
        scored = f"validation Dice {dice:.3f}" if dice is not None else "not validated"
        description = (
            f"{origin} on {request.source_text}; stopped by {stopped} after {result.epochs_completed} epoch(s); "
            f"{which} checkpoint, {scored}"
        )
        training = {
            "run_dir": str(result.run_dir),
            "source": request.source_text,
            "stopped": result.stopped,
            "installed_checkpoint": which,
            "epochs_completed": result.epochs_completed,
            "elapsed_seconds": round(float(result.elapsed_seconds), 1),
            "trained_with": "napari-cascade Train dock",
        }
        return install_model(Path(checkpoint), request.model_name, description, training)

    def install_kept(self, which: str) -> Path | None:
        """After a Cancel: install the kept ``best`` or ``last`` checkpoint (the user's choice)."""
        request = self.last_request
        result = request.outcome.get("result") if request is not None else None
        if result is None or self.installed is not None:
            return None
        try:
            installed = self._install(request, result, which)
        except CascadeSegError as exc:
            show_error(str(exc))
            return None
        if installed is None:
            show_error(f"the run has no {which} checkpoint to install")
            return None
        self.installed = installed
        self._show_kept_choice(False)
        self._refresh_segment_widgets(installed.name)
        self.refresh_checkpoints()
        text = f"model '{installed.name}' installed from the {which} checkpoint ({installed})"
        self.status.setText(text)
        show_info(text)
        return installed

    def discard_kept(self) -> None:
        """After a Cancel: install nothing (the run folder stays, for a later --resume)."""
        request = self.last_request
        result = request.outcome.get("result") if request is not None else None
        self._show_kept_choice(False)
        where = f"; its run folder {result.run_dir} is kept" if result is not None else ""
        self.status.setText(f"nothing installed{where}")

    def _show_kept_choice(self, visible: bool, result: Any = None) -> None:
        self.install_best_button.setVisible(visible)
        self.install_last_button.setVisible(visible)
        self.discard_button.setVisible(visible)
        if result is not None:
            self.install_best_button.setEnabled(result.best_checkpoint is not None)
            self.install_last_button.setEnabled(result.last_checkpoint is not None)

    def _finished(self, job_outcome: Any) -> None:
        self.train_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if job_outcome.error is not None:
            self.plot.finish(f"failed: {job_outcome.error}")
            self.status.setText(f"training failed: {job_outcome.error}; nothing was installed")

    def _trained(self, outcome: dict[str, Any]) -> None:
        """The run ended (GUI thread). On its own (epochs or budget): announce the installed
        model and make a docked Segment widget list and select it. After a Cancel: say what was
        kept and offer the choice."""
        result, installed = outcome["result"], outcome.get("installed")
        self.installed = installed
        if result.stopped == "cancelled":
            kept = describe_kept(result)
            minutes = self.last_request.config.minutes or (result.plan.minutes if result.plan is not None else None)
            done = result.elapsed_seconds / max(result.elapsed_seconds, (minutes or 0) * 60, 1e-9)
            self.job.progress_bar.setValue(int(1000 * min(1.0, done)))
            self.job.status.setText(f"training cancelled after {result.steps} steps")
            self.plot.finish(f"cancelled: {kept}")
            self.status.setText(f"training cancelled after {result.steps} steps; kept: {kept}. "
                                "Install one of them as a model, or discard the run.")
            self._show_kept_choice(True, result)
            show_info(f"training cancelled; kept: {kept}")
            return
        last = f"last checkpoint: {result.last_checkpoint}" if result.last_checkpoint else "no checkpoint written"
        if installed is not None:
            dice = "not validated" if result.model_dice is None else f"validation Dice {result.model_dice:.3f}"
            text = f"model '{installed.name}' saved to {installed} ({result.keep} checkpoint, {dice})"
            self._refresh_segment_widgets(installed.name)
        else:
            text = f"no validated checkpoint to install; {last}"
        self.plot.finish(f"done: {text}")
        self.status.setText(f"training done: {text}; run folder {result.run_dir}")
        show_info(f"training done: {text}")
        self.refresh_checkpoints()

    def _refresh_segment_widgets(self, name: str) -> None:
        """Tell the other docks (through the viewer's shared state) that model ``name`` is ready:
        Segment and Compare re-list their models and select it."""
        state_for(self.viewer).announce_model(name)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        self._stop.set()
        self.job.wait()
        super().closeEvent(event)
