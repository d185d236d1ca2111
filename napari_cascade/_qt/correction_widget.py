"""The Correct-mask dock: correction tools over napari's own paint/erase, autosave, training set.

Painting and erasing stay napari's (the labels layer's brush, eraser and fill); this dock adds what
correcting a predicted mask needs beyond them, each one step of an undo history:

* accept a prediction as the working mask (a copy, ``edited · <prediction>``: the prediction
  itself stays untouched);
* keep the largest component, fill holes (3D or slice by slice), remove islands below a size,
  interpolate between two hand-drawn slices (3D Slicer's "fill between slices").

Defaults (from the viewer's shared state, :mod:`napari_cascade._state`): the prediction is the
newest Segment result, the working mask the newest mask made from it (or a new one on Accept), the
scan the image that prediction was made from. A ground-truth layer is never offered as the mask to
edit while a prediction exists.

Nothing that touches the whole volume runs on the GUI thread: a tool computes its result and the
difference to the mask in a worker (:class:`~napari_cascade._qt.workers.JobPanel`), and the GUI
thread writes the changed voxels with ``Labels.data_setitem`` a chunk per event-loop turn
(:class:`~napari_cascade._qt.feeding.VoxelWriter`: the edit also lands in napari's own Ctrl+Z
history, as one step). Voxels the user painted meanwhile are left as painted. Every tool method
takes ``wait=True`` for scripts and tests, which then get the tool's result back.

Autosave follows napari's paint events: when the working mask changed, a worker snapshots it and
writes the recovery file (keyed by the scan's path). When a scan with a recovery file is opened,
the dock offers to restore it. "Add to training set" writes the scan (all channels) and the mask
into a local MSD folder, in the worker too.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import napari
import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
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
from cascadeseg.editing.history import LabelEdit
from cascadeseg.errors import CascadeSegError, VolumeError

from .._layers import GEOMETRY_KEY, labels_layer, layer_geometry, reference_volume, volume_from_image_layers
from .._state import (
    COMPARE,
    EDITED_PREFIX,
    PREDICTION,
    PROBABILITIES,
    REFERENCE,
    RESULT_KEY,
    WORKING_MASK,
    layer_role,
    newest,
    result_info,
    state_for,
)
from . import collection
from .feeding import LayerFeeder, VoxelWriter
from .layout import Section, hbox, scrollable
from .notify import error, info, warn
from .workers import JobPanel

DEFAULT_AUTOSAVE_S = 30
NEW_MASK = "(new: press Accept)"
T = TypeVar("T")


def user_action(method: Callable[..., T]) -> Callable[..., T | None]:
    """Run a GUI action; a user error becomes a napari notification (never a traceback dialog)."""

    @functools.wraps(method)
    def wrapper(self: CorrectionWidget, *args: Any, **kwargs: Any) -> T | None:
        try:
            return method(self, *args, **kwargs)
        except CascadeSegError as exc:
            error(str(exc))
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
        if isinstance(layer, Image) and layer_role(layer) == REFERENCE
        and scan_source(layer) == source and layer.data.shape == image.data.shape
    ]
    return sorted(same, key=lambda layer: (layer.metadata.get(GEOMETRY_KEY) or {}).get("channel_index", 0))


def _autosave(session: AutosaveSession, labels: np.ndarray) -> Path | str | None:
    """Snapshot and write a recovery file if ``labels`` changed (worker thread); a failure comes
    back as its message (an exception would end up in napari's traceback dialog)."""
    try:
        return session.tick(labels)
    except (OSError, CascadeSegError) as exc:
        return str(exc)


def _edit_between(before: np.ndarray, operation: Callable[[np.ndarray], np.ndarray], name: str) -> LabelEdit:
    """Snapshot, operate, diff (worker thread)."""
    snapshot = np.array(before, copy=True)
    return LabelEdit.between(snapshot, operation(snapshot), name)


class CorrectionWidget(QWidget):
    """Dock widget: correct a labels layer, autosave it, add it to the local training set."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        self.recovery = RecoveryStore()
        self._histories: dict[int, EditHistory] = {}
        self._autosave: AutosaveSession | None = None
        self._autosave_layer: Labels | None = None
        self._autosave_worker: Any = None
        self._dirty = False
        self._writer: VoxelWriter | None = None
        self._feeder: LayerFeeder | None = None  # an accepted prediction's new layer, being added
        self._offered: set[str] = set()
        self._picked: dict[str, str] = {}  # combo -> layer name the user chose
        self.pending_recovery: tuple[str, Image | Labels] | None = None
        self.last_added: Any = None
        self.last_value: Any = None  # what the last tool gave back (for wait=True)

        # -- layers ---------------------------------------------------------------------------
        self.scan_combo = QComboBox()
        self.mask_combo = QComboBox()
        self.prediction_combo = QComboBox()
        self.accept_button = QPushButton("Accept prediction as working mask")
        self.accept_button.setToolTip(
            "Copy the prediction into the working mask (a new layer 'edited · ...' unless the chosen "
            "mask is empty); undoable"
        )
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
        self._tool_buttons = [self.accept_button, self.largest_button, self.fill3d_button, self.fill2d_button,
                              self.islands_button, self.interpolate_button, self.save_button, self.add_button]
        self._build_layout()
        self._connect()
        self.refresh_layers()
        self.update_summary()
        self._check_all_for_recovery()

    # -- construction ---------------------------------------------------------------------------
    def _build_layout(self) -> None:
        form = QFormLayout()
        form.addRow("scan:", self.scan_combo)
        form.addRow("prediction:", self.prediction_combo)
        form.addRow("working mask:", self.mask_combo)
        form.addRow(self.accept_button)
        label_row = hbox(self.label_spin, self.all_labels)
        form.addRow("label value:", label_row)

        tools = QVBoxLayout()
        tools.addWidget(QLabel("Paint and erase with napari's label tools; then:"))
        tools.addWidget(self.largest_button)
        fill_row = hbox(self.fill3d_button, self.fill2d_button)
        tools.addLayout(fill_row)
        islands_row = hbox(self.islands_button, self.islands_spin)
        tools.addLayout(islands_row)
        tools.addWidget(self.interpolate_button)
        undo_row = hbox(self.undo_button, self.redo_button)
        tools.addLayout(undo_row)

        autosave = QFormLayout()
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

        set_form = QFormLayout()
        folder_row = hbox(self.set_folder, self.set_browse, grow=self.set_folder)
        set_form.addRow("folder:", folder_row)
        set_form.addRow("case:", self.case_name)
        set_form.addRow(self.overwrite)
        set_form.addRow(self.add_button)
        set_form.addRow(self.set_summary)

        # Four groups are taller than a laptop's dock column: the rarely used ones fold away, and
        # the dock scrolls rather than squash its buttons.
        self.sections = {
            "mask": Section("Mask", form),
            "tools": Section("Correct", tools),
            "autosave": Section("Save, autosave and recovery", autosave),
            "training set": Section("Training set (MSD / nnU-Net folder)", set_form, expanded=False),
        }
        layout = QVBoxLayout()
        for section in self.sections.values():
            layout.addWidget(section)
        layout.addWidget(self.job)
        layout.addWidget(self.status)
        layout.addStretch(1)
        scrollable(self, layout)
        collection.hold_while_shown(self)  # napari's status thread collects on the GUI thread too

    def _connect(self) -> None:
        events = self.viewer.layers.events
        events.inserted.connect(self._on_layer_inserted)
        events.removed.connect(self._on_layer_removed)
        self.mask_combo.currentIndexChanged.connect(self._mask_changed)
        self.prediction_combo.currentIndexChanged.connect(self._prediction_changed)
        for name, combo in (("scan", self.scan_combo), ("mask", self.mask_combo),
                            ("prediction", self.prediction_combo)):
            combo.activated.connect(lambda _=None, name=name, combo=combo: self._picked.update({name: combo.currentText()}))
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
        self.job.finished.connect(lambda _: self._set_tools_enabled())
        self._restart_timer()

    # -- layer lists ----------------------------------------------------------------------------
    def _candidates(self) -> tuple[list[Image], list[Labels], list[Labels]]:
        """(scans, predictions, working masks) the combos offer."""
        images = [layer for layer in self.viewer.layers
                  if isinstance(layer, Image) and layer_role(layer) not in (COMPARE, PROBABILITIES)]
        labels = [layer for layer in self.viewer.layers
                  if isinstance(layer, Labels) and layer_role(layer) != COMPARE]
        return images, labels, labels

    def _defaults(self, images: list[Image], labels: list[Labels]) -> dict[str, str]:
        """Newest prediction; the newest working mask made from it (else a new one); the scan it
        was made from. Without a prediction, the newest labels layer is what one corrects."""
        predictions = [layer for layer in labels if layer_role(layer) == PREDICTION]
        prediction = newest(predictions) or newest(
            [layer for layer in labels if layer_role(layer) == REFERENCE]
        )
        chosen_prediction = self._picked.get("prediction")
        if chosen_prediction in [layer.name for layer in labels]:
            prediction = next(layer for layer in labels if layer.name == chosen_prediction)
        masks = [layer for layer in labels if layer_role(layer) == WORKING_MASK]
        own = [layer for layer in masks if prediction is not None
               and (result_info(layer) or {}).get("prediction") == prediction.name]
        mask = newest(own) or newest(masks)
        image_name = (result_info(prediction) or {}).get("image") if prediction is not None else None
        scan = next((layer for layer in images if layer.name == image_name), None)
        if scan is None and prediction is not None:  # the first image on the prediction's grid
            scan = next((layer for layer in images
                         if tuple(layer.data.shape[-3:]) == tuple(prediction.data.shape[-3:])), None)
        return {
            "scan": scan.name if scan is not None else (images[0].name if images else ""),
            "prediction": prediction.name if prediction is not None else "",
            "mask": mask.name if mask is not None else NEW_MASK,
        }

    def refresh_layers(self, *_: Any) -> None:
        """Re-fill the layer choices: what the user picked while it exists, else the defaults."""
        images, predictions, masks = self._candidates()
        defaults = self._defaults(images, predictions)
        for key, combo, names in (
            ("scan", self.scan_combo, [layer.name for layer in images]),
            ("prediction", self.prediction_combo, [layer.name for layer in predictions]),
            ("mask", self.mask_combo, [NEW_MASK] + [layer.name for layer in masks]),
        ):
            picked = self._picked.get(key)
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names)
            combo.setCurrentText(picked if picked in names else defaults[key])
            combo.blockSignals(False)
        self._mask_changed()
        self._update_undo_buttons()

    def _prediction_changed(self, *_: Any) -> None:
        self._picked["prediction"] = self.prediction_combo.currentText()
        if "mask" not in self._picked:  # follow the prediction's own working mask
            self.refresh_layers()

    def _on_layer_inserted(self, event: Any) -> None:
        layer = event.value
        if layer_role(layer) == COMPARE:
            return  # Compare adds a dozen panels at once: none is a scan or a mask
        self.refresh_layers()
        layer.events.name.connect(self.refresh_layers)
        if isinstance(layer, (Image, Labels)):
            self._check_for_recovery(layer)

    def _on_layer_removed(self, event: Any) -> None:
        layer = event.value
        if layer_role(layer) == COMPARE:
            return
        self._histories.pop(id(layer), None)
        if layer is self._autosave_layer:
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
                "no working mask: press 'Accept prediction as working mask', or pick a labels layer as the working mask"
            )
        return layer

    def scan_layer(self) -> Image:
        layer = self._layer(self.scan_combo.currentText(), Image)
        if layer is None:
            raise VolumeError("no scan: open an image and pick it as the scan")
        return layer

    def select_mask(self, layer: Labels) -> None:
        self._picked["mask"] = layer.name
        self.mask_combo.setCurrentText(layer.name)
        self._mask_changed()

    def history(self, layer: Labels) -> EditHistory:
        return self._histories.setdefault(id(layer), EditHistory())

    @property
    def busy(self) -> bool:
        """A tool, a save or an add to the training set is running or still writing voxels."""
        return self.job.busy or self._writer is not None or self._feeder is not None

    def wait(self, timeout_s: float = 600.0) -> Any:
        """Process events until the running tool has finished; returns what it gave back."""
        deadline = time.monotonic() + timeout_s
        while self.busy and time.monotonic() < deadline:
            QApplication.processEvents()
            time.sleep(0.002)
        return self.last_value

    # -- editing --------------------------------------------------------------------------------
    def _mask_array(self, layer: Labels) -> np.ndarray:
        data = layer.data
        if not isinstance(data, np.ndarray) or data.ndim != 3:
            raise VolumeError(
                f"labels layer '{layer.name}' holds {type(data).__name__} of shape {np.shape(data)}; "
                "the correction tools need a 3D in-memory label array"
            )
        return data

    def _start(self, label: str, job: Callable[[], Any], on_result: Callable[[Any], None], wait: bool) -> Any:
        """Run ``job`` in the dock's worker, then ``on_result`` on the GUI thread; with ``wait``,
        return what it left in ``last_value``."""
        if self.busy:
            raise VolumeError("the dock is still busy with the last step; wait for it to finish")
        self.last_value = None
        self._set_tools_enabled(False)
        if not self.job.start(lambda progress, cancel: job(), on_result, label):
            self._set_tools_enabled()
            return None
        return self.wait() if wait else True

    def _set_tools_enabled(self, enabled: bool | None = None) -> None:
        if enabled is None:
            enabled = not self.busy
        for button in self._tool_buttons:
            button.setEnabled(enabled)
        self._update_undo_buttons()

    def apply(self, name: str, operation: Callable[[np.ndarray], np.ndarray], wait: bool = False) -> Any:
        """Run ``operation`` on the working mask as one undoable step (module docstring); the
        result (``wait=True``) is the number of voxels changed."""
        layer = self.mask_layer()
        data = self._mask_array(layer)
        return self._start(name, lambda: _edit_between(data, operation, name),
                           lambda edit: self._write_edit(layer, edit), wait)

    def _write_edit(self, layer: Labels, edit: LabelEdit, undo: bool = False, record: bool = True) -> None:
        """Write a computed edit into ``layer`` (a chunk per turn); ``record``: push it on the
        dock's history when done."""
        if edit.num_voxels == 0:
            self.last_value = 0
            self.status.setText(f"{edit.name}: nothing to change")
            return
        expected, values = (edit.new_values, edit.old_values) if undo else (edit.old_values, edit.new_values)
        writer = VoxelWriter(layer, edit.indices, expected, values, owner=self)
        self._writer = writer

        def finished(count: int) -> None:
            self._writer = None
            if record:
                self.history(layer).push(edit)
            self.last_value = count if record else edit.name
            verb = "undo" if undo else ("redo" if not record else "")
            self.status.setText(f"{verb}: {edit.name}" if verb else f"{edit.name}: {count} voxel(s) changed")
            self._dirty = True
            self._set_tools_enabled()

        writer.done.connect(finished)
        self._set_tools_enabled(False)
        if edit.num_voxels <= writer.per_turn:
            writer.run_now()
        else:
            writer.start()

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
    def keep_largest(self, wait: bool = False) -> Any:
        label = self._label()
        return self.apply("keep largest component", lambda a: keep_largest_component(a, label), wait)

    @user_action
    def fill_holes(self, per_slice: bool = False, wait: bool = False) -> Any:
        axis = self.slicing_axis(self.mask_layer()) if per_slice else None
        name = f"fill holes ({'each slice' if per_slice else '3D'})"
        label = self._label()
        return self.apply(name, lambda a: fill_holes(a, label, slice_axis=axis), wait)

    @user_action
    def remove_islands(self, min_size: int | None = None, wait: bool = False) -> Any:
        size = int(self.islands_spin.value() if min_size is None else min_size)
        label = self._label()
        return self.apply(f"remove islands < {size}", lambda a: remove_islands(a, size, label), wait)

    @user_action
    def interpolate(self, wait: bool = False) -> Any:
        layer = self.mask_layer()
        axis = self.slicing_axis(layer)
        label = int(self.label_spin.value())
        spacing = tuple(float(s) for s in layer.scale[-3:])
        return self.apply(
            "interpolate between slices",
            lambda a: interpolate_between_slices(a, label, axis=axis, spacing=spacing),
            wait,
        )

    @user_action
    def undo(self, wait: bool = False) -> Any:
        """Undo the last step; with ``wait``, its name (``None``: nothing to undo)."""
        return self._undo_redo(redo=False, wait=wait)

    @user_action
    def redo(self, wait: bool = False) -> Any:
        return self._undo_redo(redo=True, wait=wait)

    def _undo_redo(self, redo: bool, wait: bool) -> Any:
        layer = self.mask_layer()
        history = self.history(layer)
        verb = "redo" if redo else "undo"
        if not (history.can_redo if redo else history.can_undo):
            self.status.setText(f"nothing to {verb}")
            return None
        data = self._mask_array(layer)
        # The history moves the step (and checks which voxels are still its own) in the worker;
        # the GUI thread then writes them back a chunk per turn.
        step = (history.redo if redo else history.undo)

        def job() -> LabelEdit | None:
            return step(data, writer=lambda where, values: None)

        return self._start(verb, job, lambda edit: self._write_edit(layer, edit, undo=not redo, record=False),
                           wait)

    def _update_undo_buttons(self) -> None:
        layer = self._layer(self.mask_combo.currentText(), Labels)
        history = self._histories.get(id(layer)) if layer is not None else None
        idle = not self.busy
        self.undo_button.setEnabled(bool(idle and history and history.can_undo))
        self.redo_button.setEnabled(bool(idle and history and history.can_redo))
        self.undo_button.setText(f"Undo {history.undo_name}" if history and history.can_undo else "Undo")
        self.redo_button.setText(f"Redo {history.redo_name}" if history and history.can_redo else "Redo")

    @user_action
    def accept_prediction(self, wait: bool = False) -> Any:
        """Copy the prediction into the working mask as an undoable step; the prediction stays
        as it was. The copy goes into the chosen working mask only when that mask is still empty;
        otherwise (or with none chosen) a new layer ``edited · <prediction>`` is made, so that
        accepting never overwrites a mask the user has painted. With ``wait``: the mask layer."""
        prediction = self._layer(self.prediction_combo.currentText(), Labels)
        if prediction is None:
            raise VolumeError("no prediction: run the Segment dock or open a label map, then pick it here")
        predicted = self._mask_array(prediction)
        target = self._layer(self.mask_combo.currentText(), Labels)
        if target is prediction or (target is not None and target.data.shape != prediction.data.shape):
            target = None
        name = f"accept '{prediction.name}'"
        target_data = target.data if target is not None else None

        def job() -> tuple[LabelEdit, np.ndarray | None]:
            if target_data is not None and not target_data.any():
                return _edit_between(target_data, lambda a: predicted.astype(a.dtype, copy=False), name), None
            copy = np.array(predicted, copy=True)
            return LabelEdit.between(np.zeros_like(copy), copy, name), copy

        def show(layer: Labels) -> None:
            layer.selected_label = max(1, int(self.label_spin.value()))
            self.viewer.layers.selection.active = layer
            self.last_value = layer

        def place(outcome: tuple[LabelEdit, np.ndarray | None]) -> None:
            edit, copy = outcome
            if copy is None:  # the empty chosen mask receives the copy
                self._write_edit(target, edit)
                show(target)
                return
            data, kwargs, _ = labels_layer(copy, reference_volume(prediction), EDITED_PREFIX + prediction.name)
            if "class" in prediction.features:  # the classes keep their names (status bar, training set)
                kwargs["features"] = prediction.features.copy()
            kwargs["metadata"][GEOMETRY_KEY][RESULT_KEY] = {
                "kind": WORKING_MASK, "prediction": prediction.name, "created": time.time(),
            }

            def added() -> None:
                self._feeder = None
                layer = feeder.results[0]
                self.select_mask(layer)
                self.history(layer).push(edit)  # undo empties the new mask, as undo of an accept should
                self.status.setText(f"{name}: '{layer.name}' is the working mask")
                show(layer)
                self._set_tools_enabled()

            def failed(exc: Exception) -> None:
                self._feeder = None
                self._set_tools_enabled()
                error(f"{name}: the working mask could not be added: {exc}")

            # The new layer in a turn of its own, napari's scene update in the next, and the dock's
            # own updates after them (all in one turn: 284-504 ms of freeze with a CT open, against
            # 233-380 ms for napari's insertion alone).
            feeder = LayerFeeder(self.viewer, [lambda: self.viewer.add_labels(data, **kwargs)], batch=True, owner=self)
            feeder.done.connect(added)
            feeder.failed.connect(failed)
            self._feeder = feeder
            self._set_tools_enabled(False)
            feeder.start()

        return self._start(name, job, place, wait)

    # -- autosave and recovery ------------------------------------------------------------------
    def _restart_timer(self, *_: Any) -> None:
        self.timer.start(int(self.autosave_spin.value()) * 1000)

    def _follow_selected_label(self, event: Any = None) -> None:
        """The label value the tools edit follows the label picked in napari's layer controls."""
        layer = self._autosave_layer
        if layer is not None and int(layer.selected_label) > 0:
            self.label_spin.setValue(int(layer.selected_label))

    def _mark_dirty(self, *_: Any) -> None:
        self._dirty = True

    def _mask_changed(self, *_: Any) -> None:
        layer = self._layer(self.mask_combo.currentText(), Labels)
        if layer is self._autosave_layer:
            return
        if self._autosave_layer is not None:
            for event, slot in ((self._autosave_layer.events.selected_label, self._follow_selected_label),
                                (self._autosave_layer.events.paint, self._mark_dirty),
                                (self._autosave_layer.events.data, self._mark_dirty)):
                event.disconnect(slot)
        if self._autosave is not None:
            self.wait_for_autosave()
            self.autosave_now()  # switching masks must not drop the previous one's last edits
        self._autosave, self._autosave_layer, self._dirty = None, layer, False
        if layer is not None:
            layer.events.selected_label.connect(self._follow_selected_label)
            layer.events.paint.connect(self._mark_dirty)
            layer.events.data.connect(self._mark_dirty)
        if layer is not None and isinstance(layer.data, np.ndarray):
            # Keyed by the scan, so reopening the scan finds it even when the mask came from its
            # own label file (whose layer carries the label file's path).
            source = self._scan_source_for(layer) or scan_source(layer)
            if source is not None:
                self._autosave = AutosaveSession(source, self.recovery, layer_name=layer.name)
                # The layer as it is now needs no recovery: its checksum (a pass over the mask)
                # is taken off the GUI thread.
                self._run_autosave_worker(self._autosave.mark_clean, layer.data)
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

    def _run_autosave_worker(self, function: Callable[..., Any], *args: Any,
                             done: Callable[[Any], None] | None = None) -> None:
        self.wait_for_autosave()
        worker = create_worker(function, *args, _start_thread=False)
        if done is not None:
            worker.returned.connect(done)
        worker.finished.connect(self._autosave_finished)
        self._autosave_worker = worker
        collection.hold_until_finished(worker)  # garbage is collected on the GUI thread meanwhile
        worker.start()

    def autosave_now(self, background: bool = False) -> Path | None:
        """Write the recovery file if the working mask changed. The timer calls this with
        ``background=True``: snapshot, checksum, compression and writing (seconds for a large CT)
        run in a worker, and only when napari reported an edit since the last write."""
        session, layer = self._autosave, self._autosave_layer
        if session is None or layer is None or self._autosave_worker is not None:
            return None  # nothing to save, or a write is still running: the next tick catches up
        if background and not self._dirty:
            return None
        self._dirty = False
        if not background:
            return self._autosaved(_autosave(session, np.asarray(layer.data)), layer.name)
        name = layer.name
        self._run_autosave_worker(_autosave, session, layer.data, done=lambda outcome: self._autosaved(outcome, name))
        return None

    def _autosaved(self, outcome: Path | str | None, layer_name: str) -> Path | None:
        if outcome is None:
            return None
        if isinstance(outcome, Path):
            try:
                self.autosave_status.setText(f"autosaved '{layer_name}' to {outcome}")
            except RuntimeError:  # the dock was closed while the write ran
                pass
            return outcome
        # A full disk must not break editing: say so and keep going (the next edit retries).
        self._dirty = True
        self.autosave_status.setText(f"autosave failed: {outcome}")
        warn(f"Autosave failed: {outcome}")
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
        if source is None or source in self._offered or layer_role(image) != REFERENCE:
            return
        try:
            found = self.recovery.find(source)
        except CascadeSegError as exc:
            warn(str(exc))
            return
        if found is None:
            return
        self._offered.add(source)
        self.pending_recovery = (source, image)
        text = f"'{Path(source).name}' has {found.describe()}."
        self.recovery_label.setText(text + " Restore them as a new labels layer?")
        self.recovery_box.setVisible(True)
        self.sections["autosave"].set_expanded(True)
        info(f"Unsaved edits found: {text} Restore them from the Correct mask dock.")

    @user_action
    def restore_recovery(self) -> Labels:
        """Add the recovered labels as a new layer on the scan's grid and make it the working mask."""
        if self.pending_recovery is None:
            raise VolumeError("no recovery file is waiting to be restored")
        source, image = self.pending_recovery
        labels, found = self.recovery.load(source, expected_shape=tuple(image.data.shape[-3:]))
        data, kwargs, _ = labels_layer(labels, reference_volume(image), f"recovered · {found.layer_name}")
        kwargs["metadata"][GEOMETRY_KEY][RESULT_KEY] = {"kind": WORKING_MASK, "created": time.time()}
        layer = self.viewer.add_labels(data, **kwargs)
        self.pending_recovery = None
        self.recovery_box.setVisible(False)
        if isinstance(image, Image):
            self._picked["scan"] = image.name
            self.scan_combo.setCurrentText(image.name)
        self.select_mask(layer)
        # The recovery file stays until the restored mask is saved: a second crash loses nothing.
        info(f"Restored {found.describe()} as '{layer.name}'")
        return layer

    @user_action
    def discard_recovery(self) -> None:
        if self.pending_recovery is not None:
            self.recovery.clear(self.pending_recovery[0])
        self.pending_recovery = None
        self.recovery_box.setVisible(False)

    @user_action
    def save_mask(self, path: str | os.PathLike[str], overwrite: bool = False, wait: bool = False) -> Any:
        """Save the working mask as NIfTI with the scan's geometry (in the worker); clears its
        recovery file. With ``wait``: the written path."""
        from cascadeseg.io import save_labels

        layer = self.mask_layer()
        data = self._mask_array(layer)
        reference = reference_volume(layer)
        session = self._autosave if self._autosave_layer is layer else None
        self.wait_for_autosave()  # an in-flight recovery write must not outlive the clear below

        def job() -> Path:
            snapshot = np.array(data, copy=True)
            written = save_labels(snapshot, reference, path, overwrite=overwrite)
            if session is not None:
                session.saved_cleanly(snapshot)
            return written

        def saved(written: Path) -> None:
            self.last_value = written
            self.autosave_status.setText(f"saved '{layer.name}' to {written}; recovery file cleared")
            info(f"Saved '{layer.name}' to {written}")

        return self._start("save", job, saved, wait)

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
            summary = self.training_set().summary(read_uncounted=False)  # on the GUI thread: read no mask
        except CascadeSegError as exc:
            self.set_summary.setText(str(exc))
            return
        self.set_summary.setText(f"{summary.folder}: {summary.describe()}")

    @user_action
    def add_to_training_set(self, wait: bool = False) -> Any:
        """Write the scan (every channel) and the working mask as a new case (in the worker)."""
        scan = self.scan_layer()
        mask = self.mask_layer()
        image = volume_from_image_layers(scan_channel_layers(self.viewer, scan))
        data = self._mask_array(mask)
        if data.shape != image.spatial_shape:
            raise VolumeError(
                f"mask '{mask.name}' has shape {data.shape} but scan '{scan.name}' has "
                f"{image.spatial_shape}; pick the mask drawn on this scan"
            )
        training_set = self.training_set()
        case_id = self.case_name.text().strip() or case_id_from_source(scan_source(scan), fallback=scan.name)
        overwrite = self.overwrite.isChecked()
        self._added_from = state_for(self.viewer).model_behind(mask)
        class_names = state_for(self.viewer).class_names_behind(mask)  # dataset.json's labels

        def job() -> Any:
            labels = np.array(data, copy=True)  # editing may go on while it writes
            if not labels.any():
                raise VolumeError(
                    f"mask '{mask.name}' is empty: paint the structure before adding it to the training set"
                )
            return training_set.add_case(image, labels, case_id, overwrite=overwrite, label_names=class_names)

        return self._start("add to training set", job, self._case_added, wait)

    def _case_added(self, added: Any) -> None:
        self.last_added = self.last_value = added
        if added.is_new_version:
            note = f"case '{added.requested_id}' already existed, kept as new version '{added.case_id}'"
        elif added.replaced:
            note = f"replaced case '{added.case_id}'"
        else:
            note = f"added case '{added.case_id}'"
        info(f"Training set: {note} ({added.annotated_slices} annotated slices)")
        self.status.setText(note)
        self.update_summary()
        state_for(self.viewer).case_added.emit({
            "folder": str(self.training_set().folder), "case_id": added.case_id,
            "model": getattr(self, "_added_from", None),
        })

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        self.timer.stop()
        self.wait_for_autosave()
        self.autosave_now()
        self.job.wait()
        super().closeEvent(event)
