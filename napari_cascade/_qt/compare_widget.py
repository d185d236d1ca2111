"""The Compare dock: cascade stages, every pruning depth and the attention maps, side by side.

One click runs the engine's predictor once per pruning depth (each run really pruned, so the time
shown is the time that depth costs) and, for models that have them, once more for the cascade
stages and the attention coefficient maps. The results become layers:

* ``<scan> ground truth (compare)``: the chosen reference, as an outline (first panel);
* ``<scan> L1`` .. ``L4`` and ``<scan> stage1`` / ``stage2``: labels layers;
* ``<scan> stage2 vs stage1`` and ``<scan> L4 vs L1``: difference layers, 1 = added by the later
  stage / deeper head (green), 2 = removed (red);
* ``<scan> attention <gate>``: heat-map image layers in [0, 1] (the full-resolution gates).

Side by side uses napari's grid mode with stride -2: every panel is a pair (a view of the scan
sharing its voxels and contrast, then the overlay), counted from the top of the layer list so the
pairs stay aligned; the user's own layers are hidden while the grid is on and shown again after.
Re-running reuses the panels' layers (napari redraws everything on each add and remove).
All whole-volume work (predictions, differences, metrics) runs in the worker thread.
With a ground-truth labels layer, a table gives
Dice, IoU, precision, recall and HD95 (engine metrics, foreground vs background) per stage and per
depth, with each depth's time and speed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import napari
import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from cascadeseg.errors import CascadeSegError, VolumeError
from cascadeseg.inference.device import DEVICE_CHOICES, resolve_device

from .._layers import GEOMETRY_KEY, geometry_metadata, transform_kwargs, volume_from_image_layers
from .model_picker import ChannelMapper, ModelPicker, labels_layers, model_info
from .segment_widget import DEVICE_LABELS, RESULT_KEY, ModelCache, result_info
from .workers import JobPanel

NO_GROUND_TRUTH = "(none)"
METRIC_COLUMNS = ("Dice", "IoU", "precision", "recall", "HD95 (mm)", "time (s)", "speed")
DIFF_COLORS = {0: "transparent", 1: "#2ecc40", 2: "#ff4136", None: "transparent"}
MAX_GATE_PANELS = 4


@dataclass
class _StepProgress:
    """An engine Progress re-scaled to one step of several runs."""

    fraction: float
    done: int
    total: int
    rate: float
    unit: str


@dataclass
class ComparisonRun:
    """One output of the comparison: a label map and, for depths, its own timing."""

    name: str
    labels: np.ndarray
    seconds: float | None = None
    rate: float | None = None
    unit: str = "slices"


@dataclass
class Comparison:
    """Everything the worker computed; turned into layers and a table on the GUI thread."""

    image_name: str
    reference: Any  # the label Volume carrying the scan's geometry
    truth: np.ndarray | None = None
    # (later run, earlier run) -> difference map, computed in the worker (whole-volume work)
    differences: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    depths: list[ComparisonRun] = field(default_factory=list)
    stages: list[ComparisonRun] = field(default_factory=list)
    attention: dict[str, np.ndarray] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)


def difference_map(earlier: np.ndarray, later: np.ndarray) -> np.ndarray:
    """1 where the later map adds foreground, 2 where it removes it (uint8)."""
    before, after = earlier > 0, later > 0
    diff = np.zeros(earlier.shape, dtype=np.uint8)
    diff[after & ~before] = 1
    diff[before & ~after] = 2
    return diff


def foreground_scores(pred: np.ndarray, truth: np.ndarray, spacing: Any) -> dict[str, float]:
    """The engine's metrics for foreground (any non-zero label) vs background."""
    from cascadeseg.metrics import evaluate_case

    scores = evaluate_case(
        (pred > 0).view(np.uint8), (truth > 0).view(np.uint8), spacing, regions={"foreground": (1,)}
    )
    return scores["foreground"]


class CompareWidget(QWidget):
    """Dock widget: compare the stages, depths and attention maps of one model on one scan."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.cache = ModelCache()
        self.last_comparison: Comparison | None = None
        self._hidden_for_grid: list[Any] = []

        self.models = ModelPicker()
        self.channels = ChannelMapper(napari_viewer)
        self.ground_truth = QComboBox()
        self.device = QComboBox()
        for name in DEVICE_CHOICES:
            self.device.addItem(DEVICE_LABELS.get(name, name), name)
        self.grid = QCheckBox("side by side (napari grid)")
        self.grid.setChecked(True)
        self.compare_button = QPushButton("Compare")
        self.clear_button = QPushButton("Remove comparison layers")
        self.job = JobPanel()
        self.table = QTableWidget(0, len(METRIC_COLUMNS))
        self.table.setHorizontalHeaderLabels(list(METRIC_COLUMNS))
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)

        model_box = QGroupBox("Model")
        QVBoxLayout(model_box).addWidget(self.models)
        channel_box = QGroupBox("Image layer per model channel")
        QVBoxLayout(channel_box).addWidget(self.channels)
        form = QFormLayout()
        form.addRow("ground truth:", self.ground_truth)
        form.addRow("device:", self.device)
        form.addRow("", self.grid)
        buttons = QHBoxLayout()
        buttons.addWidget(self.compare_button)
        buttons.addWidget(self.clear_button)
        layout = QVBoxLayout(self)
        layout.addWidget(model_box)
        layout.addWidget(channel_box)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.job)
        layout.addWidget(self.table, 1)

        self.models.changed.connect(self._model_changed)
        self.compare_button.clicked.connect(self.run)
        self.clear_button.clicked.connect(self.clear)
        self.grid.toggled.connect(self._set_grid)
        self.job.finished.connect(lambda _: self.compare_button.setEnabled(True))
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._refill_ground_truth)
        self._refill_ground_truth()
        self._model_changed()

    # -- choices ---------------------------------------------------------------------------
    def refresh_models(self) -> None:
        self.models.refresh()

    def _model_changed(self) -> None:
        entry = self.models.current_entry()
        self.channels.set_channels(entry.card.channel_names if entry else ["image"])

    def _refill_ground_truth(self, *_: Any) -> None:
        previous = self.ground_truth.currentText()
        candidates = [
            layer.name for layer in labels_layers(self.viewer)
            if (result_info(layer) or {}).get("kind") != "compare"
        ]
        self.ground_truth.blockSignals(True)
        self.ground_truth.clear()
        self.ground_truth.addItems([NO_GROUND_TRUTH, *candidates])
        if previous in candidates:
            self.ground_truth.setCurrentText(previous)
        self.ground_truth.blockSignals(False)

    def _truth_array(self, shape: tuple[int, ...]) -> np.ndarray | None:
        name = self.ground_truth.currentText()
        if name == NO_GROUND_TRUTH or name not in self.viewer.layers:
            return None
        data = np.asarray(self.viewer.layers[name].data)
        if data.shape != shape:
            raise VolumeError(
                f"ground truth '{name}' has shape {data.shape} but the scan has {shape}: "
                "expected a label map on the scan's grid"
            )
        return data

    # -- running ---------------------------------------------------------------------------
    def run(self) -> bool:
        """Start the comparison in a worker; ``False`` (with a notification) if refused."""
        try:
            entry = self.models.current_entry()
            if entry is None:
                raise CascadeSegError(
                    "no model selected: pick one of the shipped models or browse to a checkpoint folder"
                )
            layers = self.channels.selected_layers()
            volume = volume_from_image_layers(layers)
            truth = self._truth_array(volume.spatial_shape)
            device = self.device.currentData()
            resolve_device(device)
        except CascadeSegError as exc:
            show_error(f"napari-cascade: {exc}")
            return False
        job = self._job(entry, layers[0].name, volume, truth, device)
        started = self.job.start(job, self._show, "comparison")
        if started:
            self.compare_button.setEnabled(False)
        return started

    def _job(self, entry: Any, image_name: str, volume: Any, truth: np.ndarray | None,
             device: str) -> Callable[..., Comparison]:
        from cascadeseg.inference.predictor import PredictionRequest, Predictor

        def job(progress: Callable[[Any], None], cancel: threading.Event) -> Comparison:
            model, card = self.cache.load(entry.path)
            predictor = Predictor(model, card, device=device)
            info = model_info(card)
            depths: list[int | None] = list(info.pruning_depths) if info and info.pruning_depths else [None]
            extras = PredictionRequest(stages=bool(info and info.stages), attention=bool(info and info.attention))
            steps = len(depths) + (1 if extras.stages or extras.attention else 0)

            def step_progress(step: int, label: str) -> Callable[[Any], None]:
                def report(p: Any) -> None:
                    progress(_StepProgress((step + p.fraction) / steps, p.done, p.total, p.rate,
                                           f"{p.unit} ({label})"))
                return report

            comparison = Comparison(image_name=image_name, reference=None, truth=truth)
            for step, depth in enumerate(depths):
                label = f"L{depth}" if depth is not None else "full"
                result = predictor.predict(volume, depth=depth, progress=step_progress(step, label), cancel=cancel)
                comparison.reference = result.labels
                comparison.depths.append(ComparisonRun(label, result.labels.array,
                                                       result.timings.get("inference"), result.rate, result.unit))
            if extras.stages or extras.attention:
                result = predictor.predict(volume, want=extras, progress=step_progress(steps - 1, "stages"),
                                           cancel=cancel)
                comparison.stages = [ComparisonRun(name, v.array) for name, v in result.stage_labels.items()]
                comparison.attention = {gate: v.array for gate, v in result.attention.items()}
            for runs in (comparison.stages, comparison.depths):
                if len(runs) > 1:
                    first, last = runs[0], runs[-1]
                    comparison.differences[(last.name, first.name)] = difference_map(first.labels, last.labels)
            if truth is not None:
                for run in comparison.stages + comparison.depths:
                    comparison.metrics[run.name] = foreground_scores(run.labels, truth, volume.spacing)
            return comparison

        return job

    # -- results -> layers -----------------------------------------------------------------
    def clear(self) -> None:
        """Remove every layer the comparison added and leave grid mode."""
        # Grid first: with the grid on, every removal would lay all the panels out again.
        self._set_grid(False)
        for layer in self._owned():
            self.viewer.layers.remove(layer)

    def _show(self, comparison: Comparison) -> None:
        self.last_comparison = comparison
        scan = self.viewer.layers[comparison.image_name] if comparison.image_name in self.viewer.layers else None
        panels = self._panels(comparison)
        wanted = {name for name, *_ in panels} | {f"{name} (scan)" for name, *_ in panels}
        stale = [layer for layer in self._owned() if layer.name not in wanted]
        self.viewer.grid.enabled = False
        for layer in stale:
            self.viewer.layers.remove(layer)
        # Appended in reverse so the first panel is the top pair of the layer list: grid cell (0, 0).
        backdrops = []
        for name, kind, data, kwargs in reversed(panels):
            if scan is not None:
                backdrops.append(self._backdrop(scan, name))
            self._overlay(comparison, name, kind, data, kwargs)
        if scan is not None:
            from napari.experimental import link_layers

            link_layers([scan, *backdrops], ("contrast_limits", "gamma", "colormap"))
        self._fill_table(comparison)
        self._set_grid(self.grid.isChecked())
        show_info(
            f"napari-cascade: comparison of {len(comparison.depths)} depth(s), {len(comparison.stages)} stage(s), "
            f"{len(comparison.attention)} attention map(s) added"
        )

    def _owned(self) -> list[Any]:
        return [layer for layer in self.viewer.layers if (result_info(layer) or {}).get("kind") == "compare"]

    def _owned_layer(self, name: str) -> Any | None:
        """A layer this widget made, by name (never one of the user's layers of the same name)."""
        return next((layer for layer in self._owned() if layer.name == name), None)

    def _panels(self, comparison: Comparison) -> list[tuple[str, str, np.ndarray, dict[str, Any]]]:
        """(name, kind, data, extra kwargs) per panel, in reading order.

        The ground truth (when chosen) comes first, as the reference the others are read against.
        Differences: stage 2 against stage 1, and the deepest head against the shallowest (one
        panel: the consecutive ones add little and every layer costs napari a full redraw).
        Attention: the gates of the full-resolution row (``X0,*``) first, at most four; the
        deeper gates are coarse and their maps are in ``Comparison.attention`` for scripts.
        """
        stem = comparison.image_name
        panels: list[tuple[str, str, np.ndarray, dict[str, Any]]] = []
        if comparison.truth is not None:  # the reference first (same array: no copy)
            # Drawn as an outline so that it cannot be mistaken for a prediction.
            panels.append((f"{stem} ground truth (compare)", "labels", comparison.truth, {"contour": 2}))
        for runs in (comparison.stages, comparison.depths):
            panels += [(f"{stem} {run.name}", "labels", run.labels, {}) for run in runs]
            if len(runs) > 1 and (runs[-1].name, runs[0].name) in comparison.differences:
                later, earlier = runs[-1].name, runs[0].name
                panels.append((f"{stem} {later} vs {earlier}", "difference",
                               comparison.differences[(later, earlier)], {}))
        gates = sorted(comparison.attention, key=lambda g: (not g.startswith("X0,"), g))[:MAX_GATE_PANELS]
        panels += [(f"{stem} attention {gate}", "attention", comparison.attention[gate], {}) for gate in gates]
        return panels

    def _metadata(self, comparison: Comparison, role: str, name: str) -> dict[str, Any]:
        info = {"kind": "compare", "role": role, "image": comparison.image_name, "panel": name}
        return {GEOMETRY_KEY: geometry_metadata(comparison.reference, **{RESULT_KEY: info})}

    def _backdrop(self, scan: Any, name: str) -> Any:
        """A second view of the scan (same array, no copy) under one panel's overlay."""
        backdrop_name = f"{name} (scan)"
        layer = self._owned_layer(backdrop_name)
        if layer is not None:  # a re-run: napari redraws on every add/remove
            if layer.data is scan.data:
                return layer
            self.viewer.layers.remove(layer)
        return self.viewer.add_image(
            scan.data,
            name=backdrop_name,
            colormap=scan.colormap,
            contrast_limits=scan.contrast_limits,
            metadata={GEOMETRY_KEY: {**scan.metadata.get(GEOMETRY_KEY, {}),
                                     RESULT_KEY: {"kind": "compare", "role": "backdrop", "panel": name}}},
            scale=scan.scale, translate=scan.translate, rotate=scan.rotate,
        )

    def _overlay(self, comparison: Comparison, name: str, kind: str, data: np.ndarray,
                 extra: dict[str, Any]) -> Any:
        metadata = self._metadata(comparison, kind, name)
        layer = self._owned_layer(name)
        if layer is not None:  # a re-run: new voxels in the same layer
            layer.data = data
            layer.metadata = metadata
            return layer
        geometry = transform_kwargs(comparison.reference)
        if kind == "attention":
            return self.viewer.add_image(
                data, name=name, colormap="turbo", contrast_limits=(0.0, 1.0), opacity=0.55,
                blending="translucent", metadata=metadata, **geometry, **extra,
            )
        if kind == "difference":
            return self.viewer.add_labels(
                data, name=name, metadata=metadata, opacity=0.9,
                colormap=napari.utils.colormaps.DirectLabelColormap(color_dict=DIFF_COLORS), **geometry, **extra,
            )
        contour = extra.pop("contour", 0)
        layer = self.viewer.add_labels(data, name=name, metadata=metadata, opacity=0.6, **geometry, **extra)
        layer.contour = contour  # not an add_labels argument in napari 0.9
        return layer

    def _set_grid(self, enabled: bool) -> None:
        """Grid on: every panel (scan view + overlay) side by side. Grid off: the comparison is
        hidden, so the scan and the user's own layers are what the canvas shows; each panel is one
        visibility click away in the layer list."""
        owned = self._owned()
        self.viewer.grid.enabled = False  # lay the panels out once, not once per change
        enabled = enabled and bool(owned)
        for layer in owned:
            layer.visible = enabled
        # The user's own layers would fill grid cells of their own, out of the panels' pairing:
        # hidden while the grid is on (the ground truth has its panel), shown again after.
        if enabled:
            others = [layer for layer in self.viewer.layers if layer not in owned and layer.visible]
            self._hidden_for_grid += others
            for layer in others:
                layer.visible = False
        else:
            for layer in self._hidden_for_grid:
                if layer in self.viewer.layers:
                    layer.visible = True
            self._hidden_for_grid = []
        if not owned:
            return
        self.viewer.grid.stride = -2
        self.viewer.grid.enabled = enabled
        # Fit the camera once the canvas has laid out the grid's view boxes (next event loop turn).
        QTimer.singleShot(50, self.viewer.reset_view)

    def _fill_table(self, comparison: Comparison) -> None:
        rows = comparison.stages + comparison.depths
        self.table.setRowCount(len(rows))
        self.table.setVerticalHeaderLabels([run.name for run in rows])
        for row, run in enumerate(rows):
            scores = comparison.metrics.get(run.name, {})
            values = [
                _fmt(scores.get("dice")), _fmt(scores.get("iou")), _fmt(scores.get("precision")),
                _fmt(scores.get("recall")), _fmt(scores.get("hd95"), 1),
                _fmt(run.seconds, 2), f"{run.rate:.1f} {run.unit}/s" if run.rate else "—",
            ]
            for column, text in enumerate(values):
                self.table.setItem(row, column, QTableWidgetItem(text))
        self.table.resizeColumnsToContents()

    def table_rows(self) -> dict[str, list[str]]:
        """The metrics table as text (row name -> cells), for tests and export."""
        return {
            self.table.verticalHeaderItem(row).text(): [
                self.table.item(row, column).text() for column in range(self.table.columnCount())
            ]
            for row in range(self.table.rowCount())
        }


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    if np.isinf(value):
        return "∞"
    return f"{value:.{digits}f}"
