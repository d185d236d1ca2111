"""The Segment dock: image layers + model + depth + 2D/3D + device -> a labels layer.

All the work is the engine's :class:`cascadeseg.inference.Predictor`; this widget gathers the
choices, runs it in a thread worker (:mod:`napari_cascade._qt.workers`) and turns the result into
layers. Re-running on the same image follows the user's choice (replace or add); a result the user
has edited since it was produced is never replaced: it is kept and the new result comes beside it.
An edit is detected by a checksum of the layer's voxels taken when the widget wrote them, so it
catches painting, filling and the correction tools alike.
"""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import napari
import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from cascadeseg.errors import CascadeSegError
from cascadeseg.inference.checkpoint import CheckpointEntry, ModelCard, load_checkpoint
from cascadeseg.inference.device import DEVICE_CHOICES, resolve_device

from .._layers import (
    GEOMETRY_KEY,
    geometry_metadata,
    labels_layer,
    transform_kwargs,
    volume_from_image_layers,
)
from .model_picker import ChannelMapper, ModelPicker, depth_choices, depth_costs, pruning_depths
from .workers import JobPanel

AXES = (("axial (z)", 0), ("coronal (y)", 1), ("sagittal (x)", 2))
DEVICE_LABELS = {"auto": "auto (CUDA, MPS, CPU)", "cuda": "CUDA GPU", "mps": "Apple MPS", "cpu": "CPU"}
REPLACE, ADD = "replace", "add"
RESULT_KEY = "result"


def voxel_checksum(array: np.ndarray) -> int:
    """CRC32 of the voxels: cheap (about 1 GB/s) and enough to notice that a mask was edited."""
    data = np.ascontiguousarray(array)
    return zlib.crc32(memoryview(data).cast("B"))


def result_info(layer: Any) -> dict[str, Any] | None:
    """What the widget recorded about a result layer it made (``None`` for other layers)."""
    return (layer.metadata.get(GEOMETRY_KEY) or {}).get(RESULT_KEY)


def is_edited(layer: Labels) -> bool:
    info = result_info(layer)
    return info is not None and info.get("checksum") != voxel_checksum(layer.data)


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


class ModelCache:
    """Keeps the last loaded checkpoint so that a re-run does not reload the weights."""

    def __init__(self) -> None:
        self._key: tuple[str, float] | None = None
        self._value: tuple[Any, ModelCard] | None = None
        self._lock = threading.Lock()

    def load(self, folder: Path) -> tuple[Any, ModelCard]:
        weights = folder / "model.safetensors"
        key = (str(folder), weights.stat().st_mtime if weights.exists() else 0.0)
        with self._lock:
            if self._key != key or self._value is None:
                self._value = load_checkpoint(folder, device=None)
                self._key = key
            return self._value


class SegmentWidget(QWidget):
    """Dock widget: segment the chosen image layer(s) with the chosen model."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.cache = ModelCache()
        self.last_result: Any = None
        self._cost_workers: list[Any] = []

        self.models = ModelPicker()
        self.channels = ChannelMapper(napari_viewer)
        self.depth = QComboBox()
        self.mode_2d = QRadioButton("2D, slice by slice along")
        self.mode_3d = QRadioButton("3D (sliding window)")
        self.mode_group = QButtonGroup(self)
        self.mode_group.addButton(self.mode_2d)
        self.mode_group.addButton(self.mode_3d)
        self.axis = QComboBox()
        for label, value in AXES:
            self.axis.addItem(label, value)
        self.device = QComboBox()
        for name in DEVICE_CHOICES:
            self.device.addItem(DEVICE_LABELS.get(name, name), name)
        self.probabilities = QCheckBox("also add the probability map")
        self.mirror = QCheckBox("test-time mirroring (more accurate, 4x / 8x slower)")
        self.mirror.setToolTip("Average the prediction over the image and its mirror images, as nnU-Net does")
        self.rerun = QComboBox()
        self.rerun.addItem("replace my previous result (edited masks are kept)", REPLACE)
        self.rerun.addItem("add a new layer", ADD)
        self.run_button = QPushButton("Run")
        self.job = JobPanel()

        model_box = QGroupBox("Model")
        QVBoxLayout(model_box).addWidget(self.models)
        channel_box = QGroupBox("Image layer per model channel")
        QVBoxLayout(channel_box).addWidget(self.channels)
        options = QFormLayout()
        options.addRow("pruning depth:", self.depth)
        mode_row = QHBoxLayout()
        mode_row.addWidget(self.mode_2d)
        mode_row.addWidget(self.axis)
        options.addRow("mode:", mode_row)
        options.addRow("", self.mode_3d)
        options.addRow("device:", self.device)
        options.addRow("output:", self.probabilities)
        options.addRow("", self.mirror)
        options.addRow("re-run:", self.rerun)
        layout = QVBoxLayout(self)
        layout.addWidget(model_box)
        layout.addWidget(channel_box)
        layout.addLayout(options)
        layout.addWidget(self.run_button)
        layout.addWidget(self.job)
        layout.addStretch(1)

        self.models.changed.connect(self._model_changed)
        self.run_button.clicked.connect(self.run)
        self.job.finished.connect(lambda _: self.run_button.setEnabled(True))
        self._model_changed()

    # -- model list ------------------------------------------------------------------------
    def refresh_models(self) -> None:
        """Re-list the checkpoints (the Train widget calls this after training a model)."""
        self.models.refresh()

    def _model_changed(self) -> None:
        entry = self.models.current_entry()
        self.depth.clear()
        if entry is None:
            self.channels.set_channels(["image"])
            self.depth.addItem("(pick a model)", None)
            return
        card = entry.card
        self.channels.set_channels(card.channel_names)
        for depth, label in depth_choices(card):
            self.depth.addItem(label, depth)
        size = card.slice_size if card.dims == 2 else card.patch_size
        self.depth.setToolTip(
            "validation Dice from the model card; parameters that run at this depth; GFLOPs per "
            + ("x".join(map(str, size)) + " input" if size else "input") + " (speed scales with it)"
        )
        self._measure_depths(entry)
        if card.recommended_depth is not None:
            index = self.depth.findData(card.recommended_depth)
            if index >= 0:
                self.depth.setCurrentIndex(index)
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

    def _measure_depths(self, entry: CheckpointEntry) -> None:
        """Fill in parameters and GFLOPs per depth from a worker (building the model on the meta
        device takes a moment; the list is usable at once with the card's Dice)."""
        depths = pruning_depths(entry.card)
        if not depths:
            return

        def show(costs: dict[int, Any]) -> None:
            current = self.models.current_entry()
            if current is None or current.path != entry.path or not costs:
                return  # the user picked another model meanwhile
            try:
                for index, (depth, label) in enumerate(depth_choices(entry.card, costs)):
                    if self.depth.itemData(index) == depth:
                        self.depth.setItemText(index, label)
            except RuntimeError:  # the widget was closed while the worker ran
                return

        worker = create_worker(depth_costs, entry.card, depths, _start_thread=False)
        worker.returned.connect(show)
        # Keep finished workers referenced until a later start: dropping the last reference from
        # one of its own signals would delete it while its thread is still emitting.
        self._cost_workers = [w for w in self._cost_workers if w.is_running] + [worker]
        worker.start()

    # -- running ---------------------------------------------------------------------------
    def gather(self) -> SegmentRequest:
        """Read the choices and check them; user mistakes raise :class:`CascadeSegError`."""
        entry = self.models.current_entry()
        if entry is None:
            raise CascadeSegError(
                "no model selected: pick one of the shipped models or browse to a checkpoint folder"
            )
        layers = self.channels.selected_layers()
        volume = volume_from_image_layers(layers)
        device = self.device.currentData()
        resolve_device(device)  # a missing GPU is reported now, not after loading the model
        return SegmentRequest(
            entry=entry,
            image_name=layers[0].name,
            volume=volume,
            mode="2d" if entry.card.dims == 2 else "3d",
            axis=int(self.axis.currentData()),
            depth=self.depth.currentData(),
            device=device,
            probabilities=self.probabilities.isChecked(),
            mirror=self.mirror.isChecked(),
        )

    def run(self) -> bool:
        """Start a segmentation in a worker thread; ``False`` (with a notification) if refused."""
        try:
            request = self.gather()
        except CascadeSegError as exc:
            show_error(f"napari-cascade: {exc}")
            return False
        started = self.job.start(
            self._job(request), lambda result: self._add_result(request, result), "segmentation"
        )
        if started:
            self.run_button.setEnabled(False)
        return started

    def _job(self, request: SegmentRequest) -> Callable[..., Any]:
        from cascadeseg.inference.predictor import PredictionRequest, Predictor

        def job(progress: Callable[[Any], None], cancel: threading.Event) -> Any:
            model, card = self.cache.load(request.entry.path)
            predictor = Predictor(model, card, device=request.device)
            return predictor.predict(
                request.volume,
                mode=request.mode,
                axis=request.axis if request.mode == "2d" else None,
                depth=request.depth,
                want=PredictionRequest(probabilities=request.probabilities, mirror=request.mirror),
                progress=progress,
                cancel=cancel,
            )

        return job

    # -- results ---------------------------------------------------------------------------
    def _add_result(self, request: SegmentRequest, result: Any) -> None:
        self.last_result = result
        card = request.entry.card
        depth_text = f" L{result.depth}" if request.depth is not None else ""
        name = f"{request.image_name} segmentation ({request.entry.name}{depth_text})"
        info = {
            "kind": "segmentation",
            "image": request.image_name,
            "model": request.entry.name,
            "model_path": str(request.entry.path),
            "depth": result.depth,
            "mode": result.mode,
            "device": result.device,
            "classes": dict(zip(map(str, card.class_values), card.class_names)),
            "seconds": round(float(result.timings.get("total", 0.0)), 3),
            "rate": round(float(result.rate), 2),
            "unit": result.unit,
            "checksum": voxel_checksum(result.labels.array),
        }
        labels = self._place_labels(name, result, info)
        if result.probabilities is not None:
            self._add_probabilities(request, result)
        self.viewer.layers.selection.active = labels
        show_info(
            f"napari-cascade: {labels.name}: {result.items} {result.unit} in "
            f"{result.timings.get('inference', 0.0):.1f} s ({result.rate:.1f} {result.unit}/s)"
        )

    def previous_results(self, image_name: str) -> list[Labels]:
        return [
            layer for layer in self.viewer.layers
            if isinstance(layer, Labels)
            and (result_info(layer) or {}).get("kind") == "segmentation"
            and (result_info(layer) or {}).get("image") == image_name
        ]

    def _place_labels(self, name: str, result: Any, info: dict[str, Any]) -> Labels:
        data, kwargs, _ = labels_layer(result.labels.array, result.labels, name, **{RESULT_KEY: info})
        if self.rerun.currentData() == REPLACE:
            previous = self.previous_results(info["image"])
            unedited = [layer for layer in previous if not is_edited(layer)]
            for layer in previous:
                if is_edited(layer) and not layer.name.endswith("(edited)"):
                    layer.name = f"{layer.name} (edited)"
                    show_info(f"napari-cascade: kept your edited mask '{layer.name}'; the new result is added beside it")
            if unedited:
                target = unedited[-1]
                target.data = data
                target.metadata = kwargs["metadata"]
                target.name = name
                return target
        return self.viewer.add_labels(data, **kwargs)

    def _add_probabilities(self, request: SegmentRequest, result: Any) -> Image:
        probabilities = result.probabilities.array
        # Binary models: the foreground class; multi-class: any foreground, 1 - P(background).
        foreground = probabilities[1] if probabilities.shape[0] == 2 else 1.0 - probabilities[0]
        return self.viewer.add_image(
            foreground,
            name=f"{request.image_name} P(foreground) ({request.entry.name})",
            colormap="magma",
            blending="additive",
            contrast_limits=(0.0, 1.0),
            opacity=0.6,
            metadata={GEOMETRY_KEY: geometry_metadata(
                result.labels, **{RESULT_KEY: {"kind": "probabilities", "image": request.image_name}}
            )},
            **transform_kwargs(result.labels),
        )
