"""The Segment dock: image layers + model + depth + 2D/3D + device -> a labels layer.

All the work is the engine's :class:`cascadeseg.inference.Predictor`; this widget gathers the
choices, runs it in a thread worker (:mod:`napari_cascade._qt.workers`) and turns the result into
layers. Re-running on the same image follows the user's choice: a new layer, or "replace '<layer>'"
naming the earlier result it replaces (by default the one of the same model and depth). A result
the user has edited since it was produced is never replaced: it is kept, renamed "edited · ...",
and the new result comes beside it. An edit is seen by napari's paint and data events (brush,
fill, eraser, the correction tools) and, for writes that emit no event, by a checksum of the
voxels taken in the worker when the widget wrote them and again before replacing them.

Everything that touches a whole volume (prediction, checksums) runs in the worker; the GUI thread
only adds or updates one layer.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import napari
import numpy as np
from napari.layers import Image, Labels
from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from cascadeseg.errors import CascadeSegError
from cascadeseg.inference.checkpoint import CheckpointEntry
from cascadeseg.inference.device import DEVICE_CHOICES, resolve_device

from .._layers import (
    GEOMETRY_KEY,
    class_style,
    geometry_metadata,
    labels_layer,
    transform_kwargs,
)
from .._state import EDITED_PREFIX, PREDICTION, PROBABILITIES, RESULT_KEY, connect_while_alive, result_info
from . import collection
from .feeding import LayerFeeder
from .layout import form, hbox, scrollable
from .model_picker import (
    ModelChoiceDock,
    depth_choices,
    depth_costs,
    model_and_channel_boxes,
    pruning_depths,
)
from .notify import error, info, warn
from .workers import JobPanel, queue_background_task

AXES = (("axial (z)", 0), ("coronal (y)", 1), ("sagittal (x)", 2))
DEVICE_LABELS = {"auto": "auto (CUDA, MPS, CPU)", "cuda": "CUDA GPU", "mps": "Apple MPS", "cpu": "CPU"}


def device_combo() -> QComboBox:
    """The device choice of the docks that run a model (Segment, Compare), by its readable name."""
    combo = QComboBox()
    for name in DEVICE_CHOICES:
        combo.addItem(DEVICE_LABELS.get(name, name), name)
    return combo


def threshold_box() -> QDoubleSpinBox:
    """The 'foreground above' choice of the docks that run a model (Segment, Compare)."""
    box = QDoubleSpinBox()
    box.setRange(0.01, 0.99)  # wide enough to show a card's own threshold unclamped
    box.setSingleStep(0.05)
    box.setDecimals(2)
    box.setToolTip(
        "Two-class models: a voxel is foreground when its probability is above this "
        "(lower finds more, higher keeps less; 0.50 is the usual argmax)"
    )
    return box


def show_card_threshold(box: QDoubleSpinBox, card: Any) -> None:
    """The card's own rule (0.50: the argmax), editable for two-class models only."""
    box.setValue(card.foreground_threshold or 0.5)
    box.setEnabled(card.num_classes == 2)


def chosen_threshold(box: QDoubleSpinBox) -> float | None:
    """The threshold a run asks for (``PredictionRequest.foreground_threshold``); ``None`` for
    models with other class counts, whose labels are the argmax."""
    return box.value() if box.isEnabled() else None


ADD = "add"


def voxel_checksum(array: np.ndarray) -> int:
    """CRC32 of the voxels: cheap (about 1 GB/s) and enough to notice that a mask was edited."""
    data = np.ascontiguousarray(array)
    return zlib.crc32(memoryview(data).cast("B"))


def is_edited(layer: Labels) -> bool:
    """Whether a result layer was changed since the widget wrote it: an edit event was seen, or
    its voxels no longer match the checksum taken then (a CRC of the volume: call it off the GUI
    thread for a large one)."""
    recorded = result_info(layer)
    if recorded is None:
        return False
    return bool(recorded.get("edited")) or recorded.get("checksum") != voxel_checksum(layer.data)


def _flag_edits(layer: Labels) -> None:
    """Record in the layer's metadata that it was painted or its data replaced (napari's events)."""

    def flag(*_: Any) -> None:
        recorded = result_info(layer)
        if recorded is not None and not recorded.get("writing"):
            recorded["edited"] = True

    layer.events.paint.connect(flag)
    layer.events.data.connect(flag)


@dataclass
class SegmentRequest:
    """Everything a run needs, gathered on the GUI thread before the worker starts."""

    entry: CheckpointEntry
    image_name: str
    volume: Any
    mode: str
    axis: int
    depth: int | None
    device: str
    probabilities: bool
    mirror: bool = False
    foreground_threshold: float | None = None  # two-class models; None: the model's own rule
    target: str = ADD  # ADD, or the name of the earlier result to replace
    # The voxels of the layer to replace, checked against its recorded checksum in the worker.
    target_data: Any = None
    target_checksum: int | None = None


@dataclass
class SegmentOutcome:
    """What the worker hands back: the engine's result, its checksum, and whether the layer to
    replace was found edited."""

    result: Any
    checksum: int
    target_edited: bool = False
    notes: list[str] = field(default_factory=list)


class SegmentWidget(QWidget, ModelChoiceDock):
    """Dock widget: segment the chosen image layer(s) with the chosen model."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._init_model_choice(napari_viewer)
        self.last_result: Any = None
        self._feeder: LayerFeeder | None = None

        self.depth = QComboBox()
        self.mode_2d = QRadioButton("2D, slice by slice along")
        self.mode_3d = QRadioButton("3D (sliding window)")
        self.mode_group = QButtonGroup(self)
        self.mode_group.addButton(self.mode_2d)
        self.mode_group.addButton(self.mode_3d)
        self.axis = QComboBox()
        for label, value in AXES:
            self.axis.addItem(label, value)
        self.device = device_combo()
        self.probabilities = QCheckBox("also add the probability map")
        self.mirror = QCheckBox("test-time mirroring (more accurate, 4x slower)")
        self.mirror.setToolTip("Average the prediction over the image and its mirror images, as nnU-Net does")
        self.threshold = threshold_box()
        self.rerun = QComboBox()
        self.rerun.setToolTip(
            "Where the result goes: a new layer, or in place of an earlier result of this scan "
            "(a result you have edited is never replaced)"
        )
        self.run_button = QPushButton("Run")
        self.job = JobPanel()

        model_box, channel_box = model_and_channel_boxes(self.models, self.channels)
        options = form(
            ("pruning depth:", self.depth),
            ("mode:", hbox(self.mode_2d, self.axis)),
            ("", self.mode_3d),
            ("device:", self.device),
            ("output:", self.probabilities),
            ("", self.mirror),
            ("foreground above:", self.threshold),
            ("result:", self.rerun),
        )
        layout = QVBoxLayout()
        layout.addWidget(model_box)
        layout.addWidget(channel_box)
        layout.addLayout(options)
        layout.addWidget(self.run_button)
        layout.addWidget(self.job)
        layout.addStretch(1)
        scrollable(self, layout)
        collection.hold_while_shown(self)  # napari's status thread collects on the GUI thread too

        self.models.changed.connect(self._model_changed)
        self._picked_target: str | None = None
        self.rerun.activated.connect(self._target_chosen)
        self.depth.currentIndexChanged.connect(self._refill_targets)
        self.channels.changed.connect(self._refill_targets)
        self.run_button.clicked.connect(self.run)
        self.job.finished.connect(lambda _: self.run_button.setEnabled(True))
        connect_while_alive(self.state.model_installed, self, self.show_model)
        self._model_changed()

    # -- model list ------------------------------------------------------------------------
    def _model_changed(self) -> None:
        entry = self.models.current_entry()
        self.depth.blockSignals(True)
        self.depth.clear()
        if entry is None:
            self.channels.set_channels(["image"])
            self.depth.addItem("(pick a model)", None)
            self.depth.blockSignals(False)
            self._refill_targets()
            return
        card = entry.card
        self.channels.set_channels(card.input_channels)
        for depth, label in depth_choices(card):
            self.depth.addItem(label, depth)
        size = card.slice_size if card.dims == 2 else card.patch_size
        self.depth.setToolTip(
            "validation Dice from the model card; parameters that run at this depth; GFLOPs per "
            + ("x".join(map(str, size)) + " input" if size else "input") + " (speed scales with it)"
        )
        self._measure_depths(entry)
        self.mirror.setChecked(card.test_time_mirroring and bool(card.test_time_mirror_axes))
        self.mirror.setEnabled(bool(card.test_time_mirror_axes))
        show_card_threshold(self.threshold, card)
        if card.recommended_depth is not None:
            index = self.depth.findData(card.recommended_depth)
            if index >= 0:
                self.depth.setCurrentIndex(index)
        self.depth.blockSignals(False)
        # A 2D network only runs slice by slice and a 3D one only by window (the engine refuses
        # the other), so the other mode is shown but disabled, with the reason.
        self.mode_2d.setEnabled(card.dims == 2)
        self.mode_3d.setEnabled(card.dims == 3)
        (self.mode_2d if card.dims == 2 else self.mode_3d).setChecked(True)
        reason = f"this model is a {card.dims}D network"
        self.mode_2d.setToolTip("" if card.dims == 2 else reason)
        self.mode_3d.setToolTip("" if card.dims == 3 else reason)
        self.axis.setEnabled(card.dims == 2)
        self.axis.setCurrentIndex(self.axis.findData(card.slice_axis))
        self._refill_targets()

    def _measure_depths(self, entry: CheckpointEntry) -> None:
        """Fill in parameters and GFLOPs per depth from a worker (building the model on the meta
        device takes a moment; the list is usable at once with the card's Dice)."""
        depths = pruning_depths(entry.card)
        if not depths:
            return

        def show(costs: dict[int, Any]) -> None:
            try:  # the widget may have closed while the worker ran (its combo boxes deleted)
                current = self.models.current_entry()
                if current is None or current.path != entry.path or not costs:
                    return  # the user picked another model meanwhile
                for index, (depth, label) in enumerate(depth_choices(entry.card, costs)):
                    if self.depth.itemData(index) == depth:
                        self.depth.setItemText(index, label)
            except RuntimeError:  # the widget was closed while the worker ran
                return

        queue_background_task(_quiet_depth_costs, entry.card, depths, on_result=show, name="napari-cascade: depth costs")

    # -- where the result goes -------------------------------------------------------------
    def result_name(self, image_name: str, depth: int | None) -> str:
        """The layer name of a result of the current model on ``image_name`` at ``depth``."""
        entry = self.models.current_entry()
        model = entry.name if entry is not None else "model"
        return f"{image_name} · {model}" + (f" L{depth}" if depth is not None else "")

    def _image_name(self) -> str:
        combos = self.channels.combos
        return combos[0].currentText() if combos else ""

    def previous_results(self, image_name: str) -> list[Labels]:
        """This dock's earlier results on ``image_name``, oldest first."""
        return [
            layer for layer in self.state.labels_layers(PREDICTION)
            if (result_info(layer) or {}).get("image") == image_name
        ]

    def _refill_targets(self, *_: Any) -> None:
        """"add a new layer" plus "replace '<name>'" per earlier unedited result of this scan.
        Preselected: what the user picked, while it exists; else the result this run would
        rename (same model and depth); else a new layer."""
        image_name = self._image_name()
        candidates = [layer.name for layer in self.previous_results(image_name)
                      if not (result_info(layer) or {}).get("edited")]
        self.rerun.blockSignals(True)
        self.rerun.clear()
        self.rerun.addItem("add a new layer", ADD)
        for name in candidates:
            self.rerun.addItem(f"replace '{name}'", name)
        wanted = self.result_name(image_name, self.depth.currentData())
        picked = self._picked_target
        choice = picked if picked == ADD or picked in candidates else (wanted if wanted in candidates else ADD)
        self.rerun.setCurrentIndex(max(0, self.rerun.findData(choice)))
        self.rerun.blockSignals(False)

    def _target_chosen(self, *_: Any) -> None:
        self._picked_target = self.rerun.currentData()

    # -- running ---------------------------------------------------------------------------
    def gather(self) -> SegmentRequest:
        """Read the choices and check them; user mistakes raise :class:`CascadeSegError`."""
        entry = self._chosen_model()
        image_name, volume = self._chosen_scan()
        device = self.device.currentData()
        resolve_device(device)  # a missing GPU is reported now, not after loading the model
        target = self.rerun.currentData() or ADD
        target_layer = self._result_layer(target)
        recorded = result_info(target_layer) if target_layer is not None else None
        return SegmentRequest(
            entry=entry,
            image_name=image_name,
            volume=volume,
            mode="2d" if entry.card.dims == 2 else "3d",
            axis=int(self.axis.currentData()),
            depth=self.depth.currentData(),
            device=device,
            probabilities=self.probabilities.isChecked(),
            mirror=self.mirror.isChecked(),
            foreground_threshold=chosen_threshold(self.threshold),
            target=target if target_layer is not None else ADD,
            target_data=target_layer.data if target_layer is not None else None,
            target_checksum=(recorded or {}).get("checksum"),
        )

    def _result_layer(self, name: str) -> Labels | None:
        return next((layer for layer in self.state.labels_layers(PREDICTION) if layer.name == name), None)

    def run(self) -> bool:
        """Start a segmentation in a worker thread; ``False`` (with a notification) if refused."""
        try:
            request = self.gather()
        except CascadeSegError as exc:
            error(str(exc))
            return False
        from cascadeseg.inference.input_check import input_warnings

        for message in input_warnings(request.volume, request.entry.card, request.mode,
                                      request.axis if request.mode == "2d" else None):
            warn(message)  # the scan does not fit the model: say so before running, then run anyway
        started = self.job.start(
            self._job(request), lambda outcome: self._add_result(request, outcome), "segmentation"
        )
        if started:
            self.run_button.setEnabled(False)
        return started

    def _job(self, request: SegmentRequest) -> Callable[..., Any]:
        from cascadeseg.inference.predictor import PredictionRequest, Predictor

        def job(progress: Callable[[Any], None], cancel: threading.Event) -> SegmentOutcome:
            model, card = self.cache.load(request.entry.path)
            predictor = Predictor(model, card, device=request.device)
            result = predictor.predict(
                request.volume,
                mode=request.mode,
                axis=request.axis if request.mode == "2d" else None,
                depth=request.depth,
                want=PredictionRequest(
                    probabilities=request.probabilities,
                    mirror=request.mirror,
                    foreground_threshold=request.foreground_threshold,
                ),
                progress=progress,
                cancel=cancel,
            )
            edited = request.target_data is not None and (
                voxel_checksum(request.target_data) != request.target_checksum
            )
            return SegmentOutcome(result, voxel_checksum(result.labels.array), target_edited=edited)

        return job

    # -- results ---------------------------------------------------------------------------
    def _add_result(self, request: SegmentRequest, outcome: SegmentOutcome) -> None:
        """Place the result (GUI thread): in the layer it replaces, or as new layers added over a
        few event-loop turns (napari needs 0.2-0.5 s of GUI time per new layer)."""
        result = outcome.result
        self.last_result = result
        card = request.entry.card
        name = self.result_name(request.image_name, result.depth if pruning_depths(card) else None)
        recorded = {
            "kind": PREDICTION,
            "image": request.image_name,
            "model": request.entry.name,
            "model_path": str(request.entry.path),
            "depth": result.depth,
            "mode": result.mode,
            "device": result.device,
            "classes": dict(zip(map(str, card.class_values), card.class_names)),
            "foreground_threshold": request.foreground_threshold,
            "seconds": round(float(result.timings.get("total", 0.0)), 3),
            "rate": round(float(result.rate), 2),
            "unit": result.unit,
            "checksum": outcome.checksum,
            "created": time.time(),
        }
        data, kwargs, _ = labels_layer(result.labels.array, result.labels, name, **{RESULT_KEY: recorded})
        kwargs.update(class_style(card.class_values, card.class_names, card.class_colors))
        steps: list[Callable[[], Any]] = []
        target = self._replaceable(request, outcome)
        if target is not None:
            recorded["writing"] = True  # our own replacement is no edit
            target.metadata = kwargs["metadata"]
            target.data = data
            target.features = kwargs["features"]
            if "colormap" in kwargs:
                target.colormap = kwargs["colormap"]
            recorded.pop("writing")
            target.name = name
            placed: list[Any] = [target]
        else:
            placed = []
            steps.append(lambda: placed.append(self._new_result_layer(data, kwargs)))
        if result.probabilities is not None:
            steps.append(lambda: self._add_probabilities(request, result))

        def announce() -> None:
            self._feeder = None
            labels = placed[0]
            self.viewer.layers.selection.active = labels
            self.state.prediction_added.emit(labels)
            self._refill_targets()
            info(
                f"Segmented '{request.image_name}' into '{labels.name}': {result.items} {result.unit} in "
                f"{result.timings.get('inference', 0.0):.1f} s ({result.rate:.1f} {result.unit}/s)"
            )

        if not steps:
            announce()
            return
        feeder = LayerFeeder(self.viewer, steps, batch=True, owner=self)
        feeder.done.connect(announce)
        feeder.failed.connect(lambda exc: setattr(self, "_feeder", None))
        self._feeder = feeder
        feeder.start()

    @property
    def busy(self) -> bool:
        """A segmentation runs, or its layers are still being added."""
        return self.job.busy or self._feeder is not None

    def _replaceable(self, request: SegmentRequest, outcome: SegmentOutcome) -> Labels | None:
        """The layer the run replaces, unless it was edited (then kept, renamed 'edited · ...')."""
        target = self._result_layer(request.target) if request.target != ADD else None
        if target is None:
            return None
        previous = result_info(target) or {}
        if outcome.target_edited or previous.get("edited"):
            previous["edited"] = True
            if not target.name.startswith(EDITED_PREFIX):
                target.name = EDITED_PREFIX + target.name
            info(f"Kept your edited mask '{target.name}'; the new result is a new layer")
            return None
        return target

    def _new_result_layer(self, data: Any, kwargs: dict[str, Any]) -> Labels:
        layer = self.viewer.add_labels(data, **kwargs)
        _flag_edits(layer)
        return layer

    def _add_probabilities(self, request: SegmentRequest, result: Any) -> Image:
        probabilities = result.probabilities.array
        # Binary models: the foreground class; multi-class: any foreground, 1 - P(background).
        foreground = probabilities[1] if probabilities.shape[0] == 2 else 1.0 - probabilities[0]
        return self.viewer.add_image(
            foreground,
            name=f"{request.image_name} · P(foreground) {request.entry.name}",
            colormap="magma",
            blending="additive",
            contrast_limits=(0.0, 1.0),
            opacity=0.6,
            metadata={GEOMETRY_KEY: geometry_metadata(
                result.labels, **{RESULT_KEY: {"kind": PROBABILITIES, "image": request.image_name,
                                               "created": time.time()}}
            )},
            **transform_kwargs(result.labels),
        )


def _quiet_depth_costs(card: Any, depths: list[int]) -> dict[int, Any]:
    """:func:`depth_costs`, with any failure giving no figures instead of a traceback (a card
    without them is common: the depth list then shows plain depths)."""
    try:
        return depth_costs(card, depths)
    except Exception:  # noqa: BLE001 - a nicety of the depth list, never worth a traceback
        return {}
