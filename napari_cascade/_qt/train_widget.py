"""The Train dock: one click from corrected masks to a model in the Segment dock's list.

Every choice has a working default: the source (the current image + labels layers, the local
training set, or any MSD folder), the model with its paper's loss preselected (fine-tuning: the
loss the checkpoint was trained with), 2D/3D, a time budget or a number of epochs, fine-tuning
from a checkpoint or a fresh start, and the device.

Train runs :func:`cascadeseg.training.train` in a napari thread worker (through
:class:`~napari_cascade._qt.workers.JobPanel`: one job at a time, Cancel, errors as
notifications). The trainer's step/epoch callbacks arrive in the worker thread and are handed to
the GUI thread with a queued Qt signal, where :class:`TrainingPlot` draws them. Cancel sets the
trainer's cancel event: it stops within one step and keeps its last good checkpoint.

When the run ends, its best checkpoint (best validation Dice) is installed under
:func:`cascadeseg.inference.user_models_dir` with a model card naming the data and the settings,
and a docked Segment widget re-lists its models and selects the new one, so it can be run at once.
The trainer releases the GPU's cached memory when it returns, however it ends.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import napari
import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from cascadeseg.editing import default_training_set_dir
from cascadeseg.errors import CascadeSegError, DatasetError, ModelConfigError, VolumeError
from cascadeseg.inference.checkpoint import (
    CheckpointEntry,
    available_checkpoints,
    load_checkpoint,
    read_card,
    save_checkpoint,
    user_models_dir,
)
from cascadeseg.inference.device import DEVICE_CHOICES, resolve_device
from cascadeseg.models import list_models

from .correction_widget import scan_channel_layers
from .layout import scrollable
from .training_plot import TrainingPlot
from .._layers import volume_from_image_layers
from .workers import JobPanel

SOURCE_LAYERS, SOURCE_SET, SOURCE_FOLDER = "layers", "training_set", "folder"
FRESH = "start fresh"
PLOT_DOCK_NAME = "Training progress"
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


def unique_model_name(wanted: str) -> str:
    """``wanted``, or ``wanted-2``, ``-3``… when a user model of that name exists."""
    root = user_models_dir()
    name, counter = wanted, 2
    while (root / name).exists():
        name, counter = f"{wanted}-{counter}", counter + 1
    return name


def install_model(checkpoint: Path, name: str, description: str, training: dict[str, Any]) -> Path:
    """Copy a run's checkpoint into the user models folder under ``name`` with an updated card.

    It goes through :func:`load_checkpoint` / :func:`save_checkpoint`, so what is installed is
    proven to load, and the write is atomic (a half-installed model never appears in the list).
    """
    model, card = load_checkpoint(checkpoint, device="cpu")
    card.name = name
    card.description = description
    card.training = {**card.training, **training}
    return save_checkpoint(model, card, user_models_dir() / name)


class TrainWidget(QWidget):
    """Dock widget: train or fine-tune a model on corrected masks with one click."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.plot = TrainingPlot()
        self.last_request: TrainRequest | None = None
        self.installed: Path | None = None
        self._relay = _Relay()
        self._relay.step.connect(self.plot.add_step)
        self._relay.epoch.connect(self.plot.add_epoch)
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
        for info in self._models.values():
            self.model_combo.addItem(f"{info.title} ({info.name})", info.name)
        self.loss_combo = QComboBox()
        self.dims_combo = QComboBox()
        self.axis_combo = QComboBox()
        for label, axis in (("axial (z)", 0), ("coronal (y)", 1), ("sagittal (x)", 2)):
            self.axis_combo.addItem(label, axis)
        self.base_width = QSpinBox()
        self.base_width.setRange(2, 128)
        self.base_width.setValue(16)
        self.base_width.setToolTip("Channels of the first level (paper: 32); smaller trains faster on a CPU")

        # -- budget and device ----------------------------------------------------------------
        self.budget_kind = QComboBox()
        self.budget_kind.addItem("time budget", "minutes")
        self.budget_kind.addItem("epochs", "epochs")
        self.minutes = QDoubleSpinBox()
        self.minutes.setRange(0.01, 10_000)
        self.minutes.setDecimals(2)
        self.minutes.setValue(10.0)
        self.minutes.setSuffix(" min")
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 100_000)
        self.epochs.setValue(50)
        self.device = QComboBox()
        for name in DEVICE_CHOICES:
            self.device.addItem(name, name)
        self.inplane = QSpinBox()
        self.inplane.setRange(0, 1024)
        self.inplane.setValue(0)
        self.inplane.setSpecialValueText("native")
        self.inplane.setToolTip("Resample slices to this size (pixels) for fast training; 'native' keeps them")
        self.batch_size = QSpinBox()
        self.batch_size.setRange(1, 512)
        self.batch_size.setValue(8)
        self.steps_per_epoch = QSpinBox()
        self.steps_per_epoch.setRange(0, 1_000_000)
        self.steps_per_epoch.setSpecialValueText("auto")
        self.threads = QSpinBox()
        self.threads.setRange(0, 256)
        self.threads.setSpecialValueText("auto")
        self.threads.setToolTip(
            "CPU threads for training (auto: PyTorch's default); fewer keeps a shared machine responsive"
        )
        self.average_weights = QCheckBox("average the weights (EMA 0.998)")
        self.average_weights.setToolTip(
            "Validate, keep and install a moving average of the weights instead of the last step's: "
            "steadier validation Dice from epoch to epoch (the shipped cascade was trained this way)"
        )
        self.model_name = QLineEdit()
        self.model_name.setPlaceholderText("name of the new model (default: <model>-<date>)")
        self.train_button = QPushButton("Train")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.setToolTip("Stop at the next step; the best checkpoint so far is kept and installed")
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
        self.viewer.layers.events.inserted.connect(self._on_inserted)
        self.viewer.layers.events.removed.connect(self.refresh_layers)
        self.refresh_layers()
        self.refresh_checkpoints()
        self._model_changed()
        self._source_changed()
        self._budget_changed()

    def _build_layout(self) -> None:
        source_box = QGroupBox("Training data")
        form = QFormLayout(source_box)
        form.addRow("source:", self.source)
        form.addRow("image:", self.image_combo)
        form.addRow("labels:", self.labels_combo)
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.folder, 1)
        folder_row.addWidget(self.folder_browse)
        form.addRow("folder:", folder_row)
        form.addRow(self.annotated_only)

        model_box = QGroupBox("Model")
        model_form = QFormLayout(model_box)
        init_row = QHBoxLayout()
        init_row.addWidget(self.init_combo, 1)
        init_row.addWidget(self.init_browse)
        model_form.addRow("weights:", init_row)
        model_form.addRow("architecture:", self.model_combo)
        model_form.addRow("loss:", self.loss_combo)
        model_form.addRow("2D / 3D:", self.dims_combo)
        model_form.addRow("2D slices along:", self.axis_combo)
        model_form.addRow("base width:", self.base_width)

        run_box = QGroupBox("Run")
        run_form = QFormLayout(run_box)
        budget_row = QHBoxLayout()
        budget_row.addWidget(self.budget_kind)
        budget_row.addWidget(self.minutes)
        budget_row.addWidget(self.epochs)
        run_form.addRow("stop after:", budget_row)
        run_form.addRow("device:", self.device)
        run_form.addRow("CPU threads:", self.threads)
        run_form.addRow("in-plane size:", self.inplane)
        run_form.addRow("batch size:", self.batch_size)
        run_form.addRow("steps per epoch:", self.steps_per_epoch)
        run_form.addRow(self.average_weights)
        run_form.addRow("new model:", self.model_name)

        layout = QVBoxLayout()
        for box in (source_box, model_box, run_box):
            layout.addWidget(box)
        buttons = QHBoxLayout()
        buttons.addWidget(self.train_button, 1)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)
        layout.addWidget(self.job)
        layout.addWidget(self.status)
        layout.addStretch(1)
        scrollable(self, layout)

    # -- choices ------------------------------------------------------------------------------
    def _on_inserted(self, event: Any) -> None:
        event.value.events.name.connect(self.refresh_layers)
        self.refresh_layers()

    def refresh_layers(self, *_: Any) -> None:
        for combo, kind in ((self.image_combo, Image), (self.labels_combo, Labels)):
            current = combo.currentText()
            combo.clear()
            combo.addItems([layer.name for layer in self.viewer.layers if isinstance(layer, kind)])
            if current:
                combo.setCurrentText(current)

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
        for index, entry in enumerate(self._checkpoints):
            if entry.name == name:
                self.init_combo.setCurrentIndex(index + 1)
                return True
        return False

    def add_init_checkpoint(self, folder: str | Path) -> CheckpointEntry | None:
        """Add a checkpoint folder to fine-tune from and select it; a bad folder is a notification."""
        path = Path(folder)
        try:
            card = read_card(path)
        except CascadeSegError as exc:
            show_error(f"napari-cascade: {exc}")
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
            self.folder.setText(str(default_training_set_dir()))

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "MSD / nnU-Net dataset folder", self.folder.text())
        if folder:
            self.folder.setText(folder)

    def _model_changed(self, *_: Any) -> None:
        """Preselect the paper's loss and the dimensions the architecture supports."""
        from cascadeseg.losses import loss_names

        info = self._models[self.model_combo.currentData()]
        self.loss_combo.clear()
        for name in loss_names():
            self.loss_combo.addItem(f"{name} (paper)" if name == info.default_loss else name, name)
        self.loss_combo.setCurrentIndex(max(0, self.loss_combo.findData(info.default_loss)))
        current = self.dims_combo.currentData()
        self.dims_combo.clear()
        for dims in info.dims:
            self.dims_combo.addItem(f"{dims}D", dims)
        if current in info.dims:
            self.dims_combo.setCurrentIndex(self.dims_combo.findData(current))

    def _init_changed(self, *_: Any) -> None:
        """Fine-tuning fixes architecture and dimensions to the checkpoint's."""
        entry = self.init_entry()
        fresh = entry is None
        for widget in (self.model_combo, self.dims_combo, self.base_width):
            widget.setEnabled(fresh)
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

        summary = TrainingSet(folder).summary()
        if summary.num_cases == 0:
            raise DatasetError(f"training data folder {folder}: holds no complete case (image and label)")
        values = set(summary.labels.values()) or None
        channels = len(summary.channel_names) or None
        return str(folder), f"{folder.name} ({summary.describe()})", values, channels

    def gather(self) -> TrainRequest:
        """Read and check the choices; a user mistake raises :class:`CascadeSegError`."""
        from cascadeseg.training.config import TrainConfig

        split: dict[str, int] = {}
        if self.source.currentData() == SOURCE_LAYERS:
            data, source_text, values, channels = self._layer_data()
            split = self._slice_split(data[0][1].array)
        else:
            data, source_text, values, channels = self._folder_data()
        entry = self.init_entry()
        if entry is not None:
            self._check_fits(entry, values, channels)
        device = self.device.currentData()
        resolve_device(device)  # a missing GPU is reported now, before any data is read
        architecture = entry.card.architecture if entry else self.model_combo.currentData()
        dims = int(entry.card.dims if entry else self.dims_combo.currentData())
        name = unique_model_name(self.model_name.text().strip() or f"{architecture}-{time.strftime('%Y%m%d-%H%M')}")
        by_time = self.budget_kind.currentData() == "minutes"
        config = TrainConfig(
            data=data,
            run_dir=str(user_models_dir().parent / "runs" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"),
            model=architecture,
            dims=dims,
            model_options={} if entry else {"base_width": int(self.base_width.value())},
            loss=self.loss_combo.currentData(),
            axis=int(self.axis_combo.currentData()),
            inplane_size=int(self.inplane.value()) or None,
            batch_size=int(self.batch_size.value()),
            # A time budget stops the run; the epoch count is then only an upper bound.
            epochs=100_000 if by_time else int(self.epochs.value()),
            minutes=float(self.minutes.value()) if by_time else None,
            steps_per_epoch=int(self.steps_per_epoch.value()) or None,
            device=device,
            threads=int(self.threads.value()) or None,
            ema_decay=EMA_DECAY if self.average_weights.isChecked() else None,
            init_checkpoint=str(entry.path) if entry else None,
            annotated_slices_only=bool(
                self.source.currentData() == SOURCE_LAYERS and self.annotated_only.isChecked()
            ),
            description=f"trained in napari-cascade's Train dock on {source_text}",
            **split,
        )
        config.validate()
        return TrainRequest(config=config, model_name=name, source_text=source_text, init_entry=entry)

    def _slice_split(self, labels: np.ndarray) -> dict[str, int]:
        """Slice-block split options that fit the slices a user painted on one scan.

        One scan validates on blocks of its own slices (8 slices with a gap of 3 by default,
        which needs 19 annotated slices); a user who corrected 6 slices should still be able to
        train, so blocks and gap shrink with the number of annotated slices, keeping at least
        two blocks and some training slices.
        """
        axis = int(self.axis_combo.currentData())
        other = tuple(a for a in range(3) if a != axis)
        counted = labels.any(axis=other) if self.annotated_only.isChecked() else np.ones(labels.shape[axis], bool)
        available = int(np.count_nonzero(counted))
        if available < 3:
            raise DatasetError(
                f"only {available} slice(s) along the training axis hold labels; paint at least 3 "
                "(some train the model, at least one validates it)"
            )
        block = max(1, min(8, available // 5))
        gap = max(0, min(3, (available - 2 * block) // 4))
        return {"slice_block": block, "slice_gap": gap}

    @staticmethod
    def _check_fits(entry: CheckpointEntry, values: set[int] | None, channels: int | None) -> None:
        """The labels and channels must be ones the checkpoint was set up for."""
        card = entry.card
        if values is not None:
            unknown = sorted(values - set(card.class_values))
            if unknown:
                known = ", ".join(f"{c['value']} ({c.get('name', '')})" for c in card.classes)
                raise ModelConfigError(
                    f"the labels hold value(s) {unknown} but model '{entry.name}' was set up for classes {known}; "
                    "relabel them, or start a fresh model"
                )
        if channels is not None and channels != len(card.input_channels):
            raise ModelConfigError(
                f"the image has {channels} channel(s) but model '{entry.name}' expects "
                f"{len(card.input_channels)} ({', '.join(card.channel_names)}); pick matching data or start fresh"
            )

    # -- running ------------------------------------------------------------------------------
    def start(self) -> bool:
        """Start training in a worker thread; ``False`` (with a notification) if refused."""
        if self.job.busy or _TRAINING_LOCK.locked():
            show_error("napari-cascade: a training is already running; wait for it to finish or press Cancel")
            return False
        try:
            request = self.gather()
        except CascadeSegError as exc:
            show_error(f"napari-cascade: {exc}")
            self.status.setText(str(exc))
            return False
        self.last_request = request
        self.installed = None
        self._show_plot()
        self.plot.reset(f"training '{request.model_name}'")
        self._stop = threading.Event()
        started = self.job.start(self._job(request, self._stop), self._trained, f"training {request.model_name}")
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
            self.status.setText("cancelling: the trainer stops after the current step…")

    def _show_plot(self) -> None:
        window = getattr(self.viewer, "window", None)
        if window is None or PLOT_DOCK_NAME in window.dock_widgets:
            return
        window.add_dock_widget(self.plot, name=PLOT_DOCK_NAME, area="bottom")

    def _job(self, request: TrainRequest, stop: threading.Event) -> Callable[..., Any]:
        from cascadeseg.training.trainer import train
        from cascadeseg.training.callbacks import FunctionCallback

        relay = self._relay

        def job(progress: Callable[[Any], None], _panel_cancel: threading.Event) -> Any:
            def on_step(info: Any) -> None:
                relay.step.emit(info)
                if info.time_left_seconds is not None:
                    elapsed = info.elapsed_seconds
                    progress(elapsed / max(elapsed + info.time_left_seconds, 1e-6))

            if not _TRAINING_LOCK.acquire(blocking=False):
                raise CascadeSegError("a training is already running; wait for it to finish or cancel it")
            import torch

            threads = torch.get_num_threads()  # the trainer sets its own; segmentation keeps ours
            try:
                result = train(request.config, FunctionCallback(on_step=on_step, on_epoch=relay.epoch.emit), stop)
                request.outcome["result"] = result
                request.outcome["installed"] = self._install(request, result)
            finally:
                torch.set_num_threads(threads)
                _TRAINING_LOCK.release()
            return request.outcome

        return job

    @staticmethod
    def _install(request: TrainRequest, result: Any) -> Path | None:
        """Install the best validated checkpoint as a user model (also after a Cancel: what was
        learnt is kept). ``None`` when the run stopped before its first validation."""
        if result.best_checkpoint is None:
            return None
        config = request.config
        reasons = {"epochs": "all epochs", "time": "the time budget", "cancelled": "Cancel"}
        stopped = reasons.get(result.stopped, result.stopped)
        if request.init_entry is not None:
            origin = f"fine-tuned from '{request.init_entry.name}'"
        else:
            origin = f"trained from scratch ({config.model}, {config.dims}D)"
        description = (
            f"{origin} on {request.source_text}; stopped by {stopped} after {result.epochs_completed} epoch(s); "
            f"best validation Dice {result.best_dice:.3f} at epoch {result.best_epoch}"
        )
        training = {
            "run_dir": str(result.run_dir),
            "source": request.source_text,
            "stopped": result.stopped,
            "epochs_completed": result.epochs_completed,
            "elapsed_seconds": round(float(result.elapsed_seconds), 1),
            "trained_with": "napari-cascade Train dock",
        }
        return install_model(Path(result.best_checkpoint), request.model_name, description, training)

    def _finished(self, job_outcome: Any) -> None:
        self.train_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if job_outcome.error is not None:
            self.plot.finish(f"failed: {job_outcome.error}")
            self.status.setText(f"training failed: {job_outcome.error}")

    def _trained(self, outcome: dict[str, Any]) -> None:
        """The run ended (all epochs, time budget or Cancel; GUI thread): announce the installed
        model and make a docked Segment widget list and select it."""
        result, installed = outcome["result"], outcome.get("installed")
        self.installed = installed
        cancelled = result.stopped == "cancelled"
        last = f"last checkpoint: {result.last_checkpoint}" if result.last_checkpoint else "no checkpoint written"
        if installed is not None:
            text = f"model '{installed.name}' saved to {installed} (best Dice {result.best_dice:.3f})"
            self._refresh_segment_widgets(installed.name)
        else:
            text = f"no validated checkpoint to install; {last}"
        head = "cancelled" if cancelled else "done"
        self.plot.finish(f"{head}: {text}")
        self.status.setText(f"training {head}: {text}; run folder {result.run_dir}")
        show_info(f"napari-cascade: training {head}: {text}")
        self.refresh_checkpoints()

    def _refresh_segment_widgets(self, name: str) -> None:
        window = getattr(self.viewer, "window", None)
        docked = list(window.dock_widgets.values()) if window is not None else []
        for widget in docked:
            if hasattr(widget, "refresh_models"):
                widget.refresh_models()
                picker = getattr(widget, "models", None)
                if picker is not None and hasattr(picker, "select_name"):
                    picker.select_name(name)  # ready to run at once

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        self._stop.set()
        self.job.wait()
        super().closeEvent(event)
