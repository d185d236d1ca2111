"""The Correct-mask dock: correction tools over napari's own paint/erase, autosave, training set.

Painting and erasing stay napari's (the labels layer's brush, eraser and fill); this dock adds what
correcting a predicted mask needs beyond them, each one step of an undo history:

* accept a prediction as the working mask (a copy: the prediction itself stays untouched);
* keep the largest component, fill holes (3D or slice by slice), remove islands below a size,
  interpolate between two hand-drawn slices (3D Slicer's "fill between slices").

The maths is :mod:`cascadeseg.editing`; an edit is written with ``Labels.data_setitem`` so that it
also lands in napari's own Ctrl+Z history, and recorded as a compact diff in an
:class:`~cascadeseg.editing.EditHistory` for the dock's Undo/Redo buttons.

A QTimer autosaves the working mask to a recovery file (keyed by the scan's path, only when the
voxels changed). When a scan with a recovery file is opened, the dock offers to restore it.
"Add to training set" writes the scan (all channels) and the mask into a local MSD folder.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import napari
import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QApplication,
    QVBoxLayout,
    QWidget,
)

from cascadeseg.editing import (
    AutosaveSession,
    EditHistory,
    RecoveryStore,
    TrainingSet,
    case_id_from_source,
    default_training_set_dir,
    fill_holes,
    interpolate_between_slices,
    keep_largest_component,
    remove_islands,
)
from cascadeseg.errors import CascadeSegError, VolumeError

from .._layers import GEOMETRY_KEY, labels_layer, layer_geometry, reference_volume, volume_from_image_layers
from .workers import JobPanel

DEFAULT_AUTOSAVE_S = 30
T = TypeVar("T")


def user_action(method: Callable[..., T]) -> Callable[..., T | None]:
    """Run a GUI action; a user error becomes a napari notification (never a traceback dialog)."""

    @functools.wraps(method)
    def wrapper(self: "CorrectionWidget", *args: Any, **kwargs: Any) -> T | None:
        try:
            return method(self, *args, **kwargs)
        except CascadeSegError as exc:
            show_error(f"napari-cascade: {exc}")
            self.status.setText(str(exc))
            return None

    return wrapper


def scan_source(layer: Any) -> str | None:
    """The file a layer's scan came from (reader metadata), or ``None`` for layers made in napari."""
    source = layer_geometry(layer).get("source")
    return str(source) if source else None


def scan_channel_layers(viewer: napari.Viewer, image: Image) -> list[Image]:
    """Every image layer holding a channel of ``image``'s scan, in channel order.

    The reader opens a multi-channel scan as one layer per channel, all with the same source and a
    ``channel_index``; the training set needs every channel, whichever one the user picked.
    """
    source = scan_source(image)
    if source is None:
        return [image]
    same = [
        layer
        for layer in viewer.layers
        if isinstance(layer, Image) and scan_source(layer) == source and layer.data.shape == image.data.shape
    ]
    return sorted(same, key=lambda layer: (layer.metadata.get(GEOMETRY_KEY) or {}).get("channel_index", 0))


def _write_recovery(session: AutosaveSession, snapshot: np.ndarray, checksum: int) -> Path | str:
    """Write a recovery snapshot; a failure comes back as its message (never raises: it may run
    in a worker thread, where an exception would end up in napari's traceback dialog)."""
    try:
        return session.write(snapshot, checksum)
    except (OSError, CascadeSegError) as exc:
        return str(exc)


class CorrectionWidget(QWidget):
    """Dock widget: correct a labels layer, autosave it, add it to the local training set."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.recovery = RecoveryStore()
        self._histories: dict[int, EditHistory] = {}
        self._autosave: AutosaveSession | None = None
        self._autosave_layer: Labels | None = None
        self._autosave_worker: Any = None
        self._offered: set[str] = set()
        self.pending_recovery: tuple[str, Image | Labels] | None = None
        self.last_added: Any = None

        # -- layers ---------------------------------------------------------------------------
        self.scan_combo = QComboBox()
        self.mask_combo = QComboBox()
        self.prediction_combo = QComboBox()
        self.accept_button = QPushButton("Accept prediction as working mask")
        self.accept_button.setToolTip("Copy the prediction into the working mask (a new layer if none); undoable")
        self.label_spin = QSpinBox()
        self.label_spin.setRange(1, 65535)
        self.all_labels = QCheckBox("all labels")
        self.all_labels.setToolTip("Apply largest component / fill holes / remove islands to every label value")

        # -- tools ----------------------------------------------------------------------------
        self.largest_button = QPushButton("Keep largest component")
        self.fill3d_button = QPushButton("Fill holes (3D)")
        self.fill2d_button = QPushButton("Fill holes (each slice)")
        self.islands_spin = QSpinBox()
        self.islands_spin.setRange(1, 10_000_000)
        self.islands_spin.setValue(100)
        self.islands_spin.setSuffix(" voxels")
        self.islands_button = QPushButton("Remove islands smaller than")
        self.interpolate_button = QPushButton("Interpolate between drawn slices")
        self.interpolate_button.setToolTip(
            "Fill the empty slices between slices that hold the label, along the axis the viewer slices"
        )
        self.undo_button = QPushButton("Undo")
        self.redo_button = QPushButton("Redo")

        # -- autosave -------------------------------------------------------------------------
        self.autosave_spin = QSpinBox()
        self.autosave_spin.setRange(1, 3600)
        self.autosave_spin.setValue(DEFAULT_AUTOSAVE_S)
        self.autosave_spin.setSuffix(" s")
        self.autosave_status = QLabel("")
        self.autosave_status.setWordWrap(True)
        self.recovery_label = QLabel("")
        self.recovery_label.setWordWrap(True)
        self.restore_button = QPushButton("Restore")
        self.discard_button = QPushButton("Discard")
        self.recovery_box = QWidget()
        self.save_button = QPushButton("Save mask…")
        self.timer = QTimer(self)

        # -- training set ---------------------------------------------------------------------
        self.set_folder = QLineEdit(str(default_training_set_dir()))
        self.set_browse = QPushButton("…")
        self.case_name = QLineEdit()
        self.case_name.setPlaceholderText("case name (default: the scan's file name)")
        self.overwrite = QCheckBox("replace a case of that name (else keep a new version)")
        self.add_button = QPushButton("Add to training set")
        self.set_summary = QLabel("")
        self.set_summary.setWordWrap(True)
        self.job = JobPanel()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self._build_layout()
        self._connect()
        self.refresh_layers()
        self.update_summary()
        self._check_all_for_recovery()

    # -- construction ---------------------------------------------------------------------------
    def _build_layout(self) -> None:
        layers_box = QGroupBox("Mask")
        form = QFormLayout(layers_box)
        form.addRow("scan:", self.scan_combo)
        form.addRow("working mask:", self.mask_combo)
        form.addRow("prediction:", self.prediction_combo)
        form.addRow(self.accept_button)
        label_row = QHBoxLayout()
        label_row.addWidget(self.label_spin)
        label_row.addWidget(self.all_labels)
        form.addRow("label value:", label_row)

        tools_box = QGroupBox("Correct (paint/erase with napari's label tools)")
        tools = QVBoxLayout(tools_box)
        tools.addWidget(self.largest_button)
        fill_row = QHBoxLayout()
        fill_row.addWidget(self.fill3d_button)
        fill_row.addWidget(self.fill2d_button)
        tools.addLayout(fill_row)
        islands_row = QHBoxLayout()
        islands_row.addWidget(self.islands_button)
        islands_row.addWidget(self.islands_spin)
        tools.addLayout(islands_row)
        tools.addWidget(self.interpolate_button)
        undo_row = QHBoxLayout()
        undo_row.addWidget(self.undo_button)
        undo_row.addWidget(self.redo_button)
        tools.addLayout(undo_row)

        autosave_box = QGroupBox("Autosave and recovery")
        autosave = QFormLayout(autosave_box)
        autosave.addRow("autosave every:", self.autosave_spin)
        autosave.addRow(self.autosave_status)
        recovery_layout = QHBoxLayout(self.recovery_box)
        recovery_layout.setContentsMargins(0, 0, 0, 0)
        recovery_layout.addWidget(self.recovery_label, 1)
        recovery_layout.addWidget(self.restore_button)
        recovery_layout.addWidget(self.discard_button)
        self.recovery_box.setVisible(False)
        autosave.addRow(self.recovery_box)
        autosave.addRow(self.save_button)

        set_box = QGroupBox("Training set (MSD / nnU-Net folder)")
        set_form = QFormLayout(set_box)
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.set_folder, 1)
        folder_row.addWidget(self.set_browse)
        set_form.addRow("folder:", folder_row)
        set_form.addRow("case:", self.case_name)
        set_form.addRow(self.overwrite)
        set_form.addRow(self.add_button)
        set_form.addRow(self.set_summary)
        set_form.addRow(self.job)

        # Four groups are taller than a laptop screen's dock area: scroll rather than squash.
        content = QWidget()
        layout = QVBoxLayout(content)
        for box in (layers_box, tools_box, autosave_box, set_box):
            layout.addWidget(box)
        layout.addWidget(self.status)
        layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(content)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        # A scroll area's own size hint is tiny; ask for the content's width so the dock opens wide.
        scroll.setMinimumWidth(content.sizeHint().width() + scroll.verticalScrollBar().sizeHint().width())
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)

    def _connect(self) -> None:
        events = self.viewer.layers.events
        events.inserted.connect(self._on_layer_inserted)
        events.removed.connect(self._on_layer_removed)
        self.mask_combo.currentIndexChanged.connect(self._mask_changed)
        self.accept_button.clicked.connect(lambda: self.accept_prediction())
        self.largest_button.clicked.connect(lambda: self.keep_largest())
        self.fill3d_button.clicked.connect(lambda: self.fill_holes(per_slice=False))
        self.fill2d_button.clicked.connect(lambda: self.fill_holes(per_slice=True))
        self.islands_button.clicked.connect(lambda: self.remove_islands())
        self.interpolate_button.clicked.connect(lambda: self.interpolate())
        self.undo_button.clicked.connect(lambda: self.undo())
        self.redo_button.clicked.connect(lambda: self.redo())
        self.autosave_spin.valueChanged.connect(self._restart_timer)
        self.timer.timeout.connect(lambda: self.autosave_now(background=True))
        self.restore_button.clicked.connect(lambda: self.restore_recovery())
        self.discard_button.clicked.connect(lambda: self.discard_recovery())
        self.save_button.clicked.connect(self._save_dialog)
        self.set_browse.clicked.connect(self._browse_set)
        self.set_folder.editingFinished.connect(self.update_summary)
        self.add_button.clicked.connect(lambda: self.add_to_training_set())
        self._restart_timer()

    # -- layer lists ----------------------------------------------------------------------------
    def refresh_layers(self) -> None:
        """Re-fill the layer choices, keeping the current ones when they still exist."""
        images = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]
        labels = [layer.name for layer in self.viewer.layers if isinstance(layer, Labels)]
        for combo, names in ((self.scan_combo, images), (self.mask_combo, labels), (self.prediction_combo, labels)):
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names)
            if current in names:
                combo.setCurrentText(current)
            combo.blockSignals(False)
        self._mask_changed()
        self._update_undo_buttons()

    def _on_layer_inserted(self, event: Any) -> None:
        self.refresh_layers()
        layer = event.value
        layer.events.name.connect(lambda *_: self.refresh_layers())
        if isinstance(layer, (Image, Labels)):
            self._check_for_recovery(layer)

    def _on_layer_removed(self, event: Any) -> None:
        self._histories.pop(id(event.value), None)
        if event.value is self._autosave_layer:
            self.wait_for_autosave()
            self.autosave_now()  # the last edits of a deleted mask still reach the recovery file
            self._autosave, self._autosave_layer = None, None
        self.refresh_layers()

    def _layer(self, name: str, kind: type) -> Any:
        if name and name in self.viewer.layers and isinstance(self.viewer.layers[name], kind):
            return self.viewer.layers[name]
        return None

    def mask_layer(self) -> Labels:
        layer = self._layer(self.mask_combo.currentText(), Labels)
        if layer is None:
            raise VolumeError(
                "no working mask: add a labels layer (or accept a prediction) and pick it as the working mask"
            )
        return layer

    def scan_layer(self) -> Image:
        layer = self._layer(self.scan_combo.currentText(), Image)
        if layer is None:
            raise VolumeError("no scan: open an image and pick it as the scan")
        return layer

    def select_mask(self, layer: Labels) -> None:
        self.mask_combo.setCurrentText(layer.name)
        self._mask_changed()

    def history(self, layer: Labels) -> EditHistory:
        return self._histories.setdefault(id(layer), EditHistory())

    # -- editing --------------------------------------------------------------------------------
    def _mask_array(self, layer: Labels) -> np.ndarray:
        data = layer.data
        if not isinstance(data, np.ndarray) or data.ndim != 3:
            raise VolumeError(
                f"labels layer '{layer.name}' holds {type(data).__name__} of shape {np.shape(data)}; "
                "the correction tools need a 3D in-memory label array"
            )
        return data

    def apply(self, name: str, operation: Callable[[np.ndarray], np.ndarray]) -> int:
        """Run ``operation`` on the working mask as one undoable step; returns voxels changed."""
        layer = self.mask_layer()
        data = self._mask_array(layer)
        edit = self.history(layer).apply(data, operation(data), name, writer=layer.data_setitem)
        changed = 0 if edit is None else edit.num_voxels
        self.status.setText(f"{name}: {changed} voxel(s) changed" if changed else f"{name}: nothing to change")
        self._update_undo_buttons()
        return changed

    def _label(self) -> int | None:
        return None if self.all_labels.isChecked() else int(self.label_spin.value())

    def slicing_axis(self, layer: Any) -> int:
        """The layer axis the viewer slices along (the slider's axis in a 2D view; 0 in 3D)."""
        if self.viewer.dims.ndisplay != 2:
            return 0
        not_displayed = list(self.viewer.dims.not_displayed)
        offset = self.viewer.dims.ndim - layer.ndim  # layers align on their last axes
        axes = [axis - offset for axis in not_displayed if axis - offset >= 0]
        return axes[-1] if axes else 0

    @user_action
    def keep_largest(self) -> int:
        return self.apply("keep largest component", lambda a: keep_largest_component(a, self._label()))

    @user_action
    def fill_holes(self, per_slice: bool = False) -> int:
        axis = self.slicing_axis(self.mask_layer()) if per_slice else None
        name = f"fill holes ({'each slice' if per_slice else '3D'})"
        return self.apply(name, lambda a: fill_holes(a, self._label(), slice_axis=axis))

    @user_action
    def remove_islands(self, min_size: int | None = None) -> int:
        size = int(self.islands_spin.value() if min_size is None else min_size)
        return self.apply(f"remove islands < {size}", lambda a: remove_islands(a, size, self._label()))

    @user_action
    def interpolate(self) -> int:
        layer = self.mask_layer()
        axis = self.slicing_axis(layer)
        label = int(self.label_spin.value())
        spacing = tuple(float(s) for s in layer.scale[-3:])
        return self.apply(
            "interpolate between slices",
            lambda a: interpolate_between_slices(a, label, axis=axis, spacing=spacing),
        )

    @user_action
    def undo(self) -> str | None:
        return self._undo_redo(redo=False)

    @user_action
    def redo(self) -> str | None:
        return self._undo_redo(redo=True)

    def _undo_redo(self, redo: bool) -> str | None:
        layer = self.mask_layer()
        history = self.history(layer)
        step = (history.redo if redo else history.undo)(self._mask_array(layer), writer=layer.data_setitem)
        verb = "redo" if redo else "undo"
        self.status.setText(f"{verb}: {step.name}" if step else f"nothing to {verb}")
        self._update_undo_buttons()
        return None if step is None else step.name

    def _update_undo_buttons(self) -> None:
        layer = self._layer(self.mask_combo.currentText(), Labels)
        history = self._histories.get(id(layer)) if layer is not None else None
        self.undo_button.setEnabled(bool(history and history.can_undo))
        self.redo_button.setEnabled(bool(history and history.can_redo))
        self.undo_button.setText(f"Undo {history.undo_name}" if history and history.can_undo else "Undo")
        self.redo_button.setText(f"Redo {history.redo_name}" if history and history.can_redo else "Redo")

    @user_action
    def accept_prediction(self) -> Labels:
        """Copy the prediction into the working mask as an undoable step; the prediction stays
        as it was. The copy goes into the chosen working mask only when that mask is still empty;
        otherwise (or with none chosen) a new layer ``<prediction> (edited)`` is made, so that
        accepting never overwrites a mask the user has painted."""
        prediction = self._layer(self.prediction_combo.currentText(), Labels)
        if prediction is None:
            raise VolumeError("no prediction: run the Segment widget or open a label map, then pick it here")
        target = self._layer(self.mask_combo.currentText(), Labels)
        reusable = (
            target is not None
            and target is not prediction
            and target.data.shape == prediction.data.shape
            and not np.asarray(target.data).any()
        )
        if not reusable:
            data, kwargs, _ = labels_layer(
                np.zeros_like(np.asarray(prediction.data)),
                reference_volume(prediction),
                f"{prediction.name} (edited)",
            )
            target = self.viewer.add_labels(data, **kwargs)
            self.select_mask(target)
        predicted = np.asarray(prediction.data)
        self.apply(f"accept '{prediction.name}'", lambda a: predicted.astype(a.dtype, copy=False))
        target.selected_label = max(1, int(self.label_spin.value()))
        self.viewer.layers.selection.active = target
        return target

    # -- autosave and recovery ------------------------------------------------------------------
    def _restart_timer(self, *_: Any) -> None:
        self.timer.start(int(self.autosave_spin.value()) * 1000)

    def _follow_selected_label(self, event: Any = None) -> None:
        """The label value the tools edit follows the label picked in napari's layer controls."""
        layer = self._autosave_layer
        if layer is not None and int(layer.selected_label) > 0:
            self.label_spin.setValue(int(layer.selected_label))

    def _mask_changed(self, *_: Any) -> None:
        layer = self._layer(self.mask_combo.currentText(), Labels)
        if layer is self._autosave_layer:
            return
        if self._autosave_layer is not None:
            self._autosave_layer.events.selected_label.disconnect(self._follow_selected_label)
        if layer is not None:
            layer.events.selected_label.connect(self._follow_selected_label)
        if self._autosave is not None:
            self.wait_for_autosave()
            self.autosave_now()  # switching masks must not drop the previous one's last edits
        self._autosave, self._autosave_layer = None, layer
        if layer is not None and isinstance(layer.data, np.ndarray):
            # Keyed by the scan, so reopening the scan finds it even when the mask came from its
            # own label file (whose layer carries the label file's path).
            source = self._scan_source_for(layer) or scan_source(layer)
            if source is not None:
                self._autosave = AutosaveSession(source, self.recovery, layer_name=layer.name)
                self._autosave.mark_clean(layer.data)
                self.autosave_status.setText(f"autosaving '{layer.name}' to {self.recovery.path_for(source)}")
            else:
                self.autosave_status.setText(
                    f"'{layer.name}' is not tied to a scan file: open the scan through napari-cascade to autosave"
                )
        self._update_undo_buttons()

    def _scan_source_for(self, layer: Labels) -> str | None:
        scan = self._layer(self.scan_combo.currentText(), Image)
        if scan is not None and tuple(scan.data.shape[-3:]) == tuple(layer.data.shape[-3:]):
            return scan_source(scan)
        return None

    def autosave_now(self, background: bool = False) -> Path | None:
        """Write the recovery file if the working mask changed (the timer calls this with
        ``background=True``: the snapshot is taken here, compressing and writing it, which takes
        a second or two for a large CT mask, happens in a worker thread)."""
        session, layer = self._autosave, self._autosave_layer
        if session is None or layer is None or self._autosave_worker is not None:
            return None  # nothing to save, or a write is still running: the next tick catches up
        pending = session.pending(np.asarray(layer.data))
        if pending is None:
            return None
        if not background:
            return self._autosaved(_write_recovery(session, *pending), layer.name)
        worker = create_worker(_write_recovery, session, *pending, _start_thread=False)
        worker.returned.connect(lambda outcome: self._autosaved(outcome, layer.name))
        worker.finished.connect(self._autosave_finished)
        self._autosave_worker = worker
        worker.start()
        return None

    def _autosaved(self, outcome: Path | str, layer_name: str) -> Path | None:
        if isinstance(outcome, Path):
            self.autosave_status.setText(f"autosaved '{layer_name}' to {outcome}")
            return outcome
        # A full disk must not break editing: say so and keep going (the next tick retries).
        self.autosave_status.setText(f"autosave failed: {outcome}")
        show_warning(f"napari-cascade: autosave failed ({outcome})")
        return None

    def _autosave_finished(self) -> None:
        self._autosave_worker = None

    def wait_for_autosave(self, timeout_s: float = 30.0) -> None:
        """Block (processing events) until a background recovery write has finished."""
        deadline = time.monotonic() + timeout_s
        while self._autosave_worker is not None and time.monotonic() < deadline:
            QApplication.processEvents()
            time.sleep(0.01)

    def _check_all_for_recovery(self) -> None:
        for layer in list(self.viewer.layers):
            if isinstance(layer, (Image, Labels)):
                self._check_for_recovery(layer)

    def _check_for_recovery(self, image: Image | Labels) -> None:
        """Offer a recovery file of the scan (or label file) ``image`` was opened from."""
        source = scan_source(image)
        if source is None or source in self._offered:
            return
        try:
            info = self.recovery.find(source)
        except CascadeSegError as exc:
            show_warning(f"napari-cascade: {exc}")
            return
        if info is None:
            return
        self._offered.add(source)
        self.pending_recovery = (source, image)
        text = f"'{Path(source).name}' has {info.describe()}."
        self.recovery_label.setText(text + " Restore them as a new labels layer?")
        self.recovery_box.setVisible(True)
        show_info(f"napari-cascade: {text} Restore them from the Correct mask dock.")

    @user_action
    def restore_recovery(self) -> Labels:
        """Add the recovered labels as a new layer on the scan's grid and make it the working mask."""
        if self.pending_recovery is None:
            raise VolumeError("no recovery file is waiting to be restored")
        source, image = self.pending_recovery
        labels, info = self.recovery.load(source, expected_shape=tuple(image.data.shape[-3:]))
        data, kwargs, _ = labels_layer(labels, reference_volume(image), f"{info.layer_name} (recovered)")
        layer = self.viewer.add_labels(data, **kwargs)
        self.pending_recovery = None
        self.recovery_box.setVisible(False)
        if isinstance(image, Image):
            self.scan_combo.setCurrentText(image.name)
        self.select_mask(layer)
        # The recovery file stays until the restored mask is saved: a second crash loses nothing.
        show_info(f"napari-cascade: restored {info.describe()} as '{layer.name}'")
        return layer

    @user_action
    def discard_recovery(self) -> None:
        if self.pending_recovery is not None:
            self.recovery.clear(self.pending_recovery[0])
        self.pending_recovery = None
        self.recovery_box.setVisible(False)

    @user_action
    def save_mask(self, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """Save the working mask as NIfTI with the scan's geometry; clears its recovery file."""
        from cascadeseg.io import save_labels

        layer = self.mask_layer()
        data = self._mask_array(layer)
        written = save_labels(data, reference_volume(layer), path, overwrite=overwrite)
        self.wait_for_autosave()  # an in-flight recovery write must not outlive the clear below
        if self._autosave is not None and self._autosave_layer is layer:
            self._autosave.saved_cleanly(data)
        self.autosave_status.setText(f"saved '{layer.name}' to {written}; recovery file cleared")
        return written

    def _save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save mask", "", "NIfTI (*.nii.gz *.nii)")
        if path:
            self.save_mask(path, overwrite=True)  # the dialog already asked before replacing

    # -- training set ---------------------------------------------------------------------------
    def _browse_set(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Training set folder", self.set_folder.text())
        if folder:
            self.set_folder.setText(folder)
            self.update_summary()

    def training_set(self) -> TrainingSet:
        text = self.set_folder.text().strip()
        if not text:
            raise VolumeError("training set folder: empty; choose a folder for the training set")
        return TrainingSet(Path(text))

    def update_summary(self) -> None:
        try:
            summary = self.training_set().summary()
        except CascadeSegError as exc:
            self.set_summary.setText(str(exc))
            return
        self.set_summary.setText(f"{summary.folder}: {summary.describe()}")

    @user_action
    def add_to_training_set(self) -> bool:
        """Write the scan (every channel) and the working mask as a new case (in a worker)."""
        scan = self.scan_layer()
        mask = self.mask_layer()
        image = volume_from_image_layers(scan_channel_layers(self.viewer, scan))
        labels = np.array(self._mask_array(mask), copy=True)  # editing may go on while it writes
        if labels.shape != image.spatial_shape:
            raise VolumeError(
                f"mask '{mask.name}' has shape {labels.shape} but scan '{scan.name}' has "
                f"{image.spatial_shape}; pick the mask drawn on this scan"
            )
        if not labels.any():
            raise VolumeError(f"mask '{mask.name}' is empty: paint the structure before adding it to the training set")
        training_set = self.training_set()
        case_id = self.case_name.text().strip() or case_id_from_source(scan_source(scan), fallback=scan.name)
        overwrite = self.overwrite.isChecked()

        def job(progress: Callable[[Any], None], cancel: threading.Event) -> Any:
            return training_set.add_case(image, labels, case_id, overwrite=overwrite)

        return self.job.start(job, self._case_added, "add to training set")

    def _case_added(self, added: Any) -> None:
        self.last_added = added
        if added.is_new_version:
            note = f"case '{added.requested_id}' already existed, kept as new version '{added.case_id}'"
        elif added.replaced:
            note = f"replaced case '{added.case_id}'"
        else:
            note = f"added case '{added.case_id}'"
        show_info(f"napari-cascade: {note} ({added.annotated_slices} annotated slices)")
        self.status.setText(note)
        self.update_summary()

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        self.timer.stop()
        self.wait_for_autosave()
        self.autosave_now()
        self.job.wait()
        super().closeEvent(event)
