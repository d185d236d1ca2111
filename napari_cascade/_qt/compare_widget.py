"""The Compare dock: cascade stages, every pruning depth and the attention maps, side by side.

One click runs the engine's predictor once, at full depth, for every pruning depth's map, the
cascade stages and the attention coefficient maps (a 2D model's gates a slab of slices at a time,
in a second pass, when all of them at once would not fit in memory); the time shown for a depth is
measured on a batch of the scan with the network really pruned to it. Everything that touches
whole volumes (predictions, difference maps, metrics, the attention stack) happens in the worker
thread.

The panels, in this fixed order, each under its title:

* the chosen ground truth (an outline): the reference the others are read against;
* ``stage1``, ``stage2`` and ``stage2 vs stage1`` for a cascade (its last stage is the full
  network: no ``full`` panel repeats it); ``L1`` .. ``L4`` and ``L4 vs L1`` for a pruned model.
  A difference shows in green what the later stage / deeper head adds, in red what it removes;
* ``attention``: the gate the dock's slider picks (every gate of the model, full resolution first,
  coefficients in [0, 1] stored as 0-255 in one stack).

The panels are tiles of three layers, not a layer each (:mod:`napari_cascade._montage`): the scan
under every tile with the titles; the ground truth's outline, the masks and the differences; the
attention map. napari spends 0.1-0.5 s of GUI time per layer it adds, shows or removes, so the
window stays responsive only with few layers, added and shown one per event-loop turn
(:mod:`napari_cascade._qt.feeding`). The user's own layers are hidden while the panels are shown
and shown again after. With a ground-truth labels layer, a table gives Dice, IoU, precision,
recall and HD95 (engine metrics) per stage and per depth, for any foreground and for each class of
the model, with each depth's time and speed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import napari
import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QSlider,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from cascadeseg.errors import CascadeSegError, VolumeError
from cascadeseg.inference.device import resolve_device

from .._layers import GEOMETRY_KEY, display_limits, geometry_metadata, transform_kwargs
from .._montage import Montage, TileLayout
from .._state import COMPARE, REFERENCE, RESULT_KEY, connect_while_alive, layer_role, newest, result_info
from . import collection
from .feeding import LayerFeeder, one_scene_update
from .layout import hbox, scrollable
from .model_picker import ModelChoiceDock, model_and_channel_boxes, model_info
from .notify import error, info
from .segment_widget import chosen_threshold, device_combo, show_card_threshold, threshold_box
from .workers import JobPanel

NO_GROUND_TRUTH = "(none)"
FOREGROUND = "any foreground"
METRIC_COLUMNS = ("Dice", "IoU", "precision", "recall", "HD95 (mm)", "time (s)", "speed")
DIFF_COLORS = {0: "transparent", 1: "#2ecc40", 2: "#ff4136", None: "transparent"}
# The attention maps of one 2D model run are computed a slab of slices at a time above this many
# bytes of float32 maps (20 gates of a 512x512x600 CT would take 12.6 GB at once).
ATTENTION_BYTES_AT_ONCE = 1 << 30
# Time between showing two panels: long enough for the paint (and shader compilation) of one.
REVEAL_PAUSE_MS = 60


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
    class_values: list[int] = field(default_factory=list)  # the label values the run can hold


@dataclass
class Comparison:
    """Everything the worker computed; turned into layers and a table on the GUI thread."""

    image_name: str
    reference: Any  # the label Volume carrying the scan's geometry
    scan: np.ndarray | None = None  # the first channel (a view of the input, no copy)
    truth: np.ndarray | None = None
    truth_name: str | None = None
    truth_values: list[int] = field(default_factory=list)
    stages: list[ComparisonRun] = field(default_factory=list)
    depths: list[ComparisonRun] = field(default_factory=list)
    # (later run, earlier run) -> difference map
    differences: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    # every gate, stacked (gates, Z, Y, X) as uint8 = round(255 * coefficient)
    attention: np.ndarray | None = None
    gates: list[str] = field(default_factory=list)
    # run name -> structure ("any foreground", each class) -> scores
    metrics: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    structures: list[str] = field(default_factory=list)
    class_colors: dict[int, str] = field(default_factory=dict)  # the card's colours, by class value
    foreground_threshold: float | None = None  # the run's, when asked for (two-class models)

    @property
    def runs(self) -> list[ComparisonRun]:
        return self.stages + self.depths

    def release_arrays(self) -> None:
        """Drop the volumes (the table's figures stay): they live on only in the panels."""
        for run in self.runs:
            run.labels = np.zeros((0, 0, 0), np.uint8)
        self.truth, self.attention, self.differences, self.scan = None, None, {}, None

    def attention_map(self, gate: str) -> np.ndarray:
        """One gate's coefficients in [0, 1] (float32), from the stack."""
        return self.attention[self.gates.index(gate)].astype(np.float32) / 255.0


def difference_map(earlier: np.ndarray, later: np.ndarray) -> np.ndarray:
    """1 where the later map adds foreground, 2 where it removes it (uint8)."""
    before, after = earlier > 0, later > 0
    diff = np.zeros(earlier.shape, dtype=np.uint8)
    diff[after & ~before] = 1
    diff[before & ~after] = 2
    return diff


def comparison_scores(pred: np.ndarray, truth: np.ndarray, spacing: Any,
                      classes: dict[str, int]) -> dict[str, dict[str, float]]:
    """The engine's metrics for any foreground (non-zero label vs non-zero label) and, when the
    model has several foreground classes, for each class (its label value in both maps)."""
    from cascadeseg.metrics import evaluate_case

    scores = {FOREGROUND: evaluate_case(
        (pred > 0).view(np.uint8), (truth > 0).view(np.uint8), spacing, regions={FOREGROUND: (1,)}
    )[FOREGROUND]}
    if len(classes) > 1:
        scores.update(evaluate_case(pred, truth, spacing, classes=classes))
    return scores


def present_values(labels: np.ndarray, slab: int = 16) -> list[int]:
    """The label values a map holds: a count per value, a slab of slices at a time (numpy's
    bincount keeps the interpreter lock: over a whole CT it froze the window for 0.2 s)."""
    if not (labels.dtype.itemsize <= 2 and labels.dtype.kind == "u"):
        return [int(v) for v in np.unique(labels)]
    seen = np.zeros(np.iinfo(labels.dtype).max + 1, dtype=bool)
    for start in range(0, labels.shape[0], slab):
        counts = np.bincount(labels[start:start + slab].ravel())
        seen[:counts.size] |= counts > 0
    return [int(v) for v in np.flatnonzero(seen)]


def _gate_order(gates: list[str]) -> list[str]:
    """The full-resolution row (``X0,*``) first: the gates a user reads first."""
    return sorted(gates, key=lambda gate: (not gate.startswith("X0,"), gate))


def _quantise(coefficients: np.ndarray, out: np.ndarray) -> None:
    np.multiply(coefficients, 255.0, out=coefficients)
    np.rint(coefficients, out=coefficients)
    out[...] = coefficients


class CompareWidget(QWidget, ModelChoiceDock):
    """Dock widget: compare the stages, depths and attention maps of one model on one scan."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._init_model_choice(napari_viewer)
        self.last_comparison: Comparison | None = None
        self._hidden_for_grid: list[Any] = []
        self._feeder: LayerFeeder | None = None

        self.ground_truth = QComboBox()
        self.ground_truth.setToolTip("The labels layer the others are scored against (none: no scores)")
        self.device = device_combo()
        self.threshold = threshold_box()
        self.grid = QCheckBox("show the panels side by side")
        self.grid.setToolTip("Your own layers are hidden while the panels are shown, and shown again after")
        self.grid.setChecked(True)
        self.compare_button = QPushButton("Compare")
        self.clear_button = QPushButton("Remove comparison layers")
        self.job = JobPanel()
        self.gate = QSlider(Qt.Horizontal)
        self.gate.setToolTip("Which attention gate the attention panel shows (full resolution first)")
        self.gate.setEnabled(False)
        self.gate_label = QLabel("no attention gates")
        self.structure = QComboBox()
        self.structure.setToolTip("Which structure the scores are for: any foreground, or one class of the model")
        self.table = QTableWidget(0, len(METRIC_COLUMNS))
        self.table.setHorizontalHeaderLabels(list(METRIC_COLUMNS))
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.setMinimumHeight(150)

        model_box, channel_box = model_and_channel_boxes(self.models, self.channels)
        form = QFormLayout()
        form.addRow("ground truth:", self.ground_truth)
        form.addRow("device:", self.device)
        form.addRow("foreground above:", self.threshold)
        form.addRow("", self.grid)
        buttons = hbox(self.compare_button, self.clear_button)
        layout = QVBoxLayout()
        layout.addWidget(model_box)
        layout.addWidget(channel_box)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.job)
        gate_row = hbox(self.gate, self.gate_label, grow=self.gate)
        scores = QFormLayout()
        scores.addRow("gate:", gate_row)
        scores.addRow("scores for:", self.structure)
        layout.addLayout(scores)
        layout.addWidget(self.table, 1)
        scrollable(self, layout)
        collection.hold_while_shown(self)  # napari's status thread collects on the GUI thread too

        self.models.changed.connect(self._model_changed)
        self.compare_button.clicked.connect(self.run)
        self.clear_button.clicked.connect(self.clear)
        self.grid.toggled.connect(self._set_grid)
        self.structure.currentIndexChanged.connect(self._structure_changed)
        self._truth_picked: str | None = None  # what the user chose, kept while it exists
        self.ground_truth.activated.connect(lambda *_: setattr(self, "_truth_picked", self.ground_truth.currentText()))
        self.job.finished.connect(lambda _: self.compare_button.setEnabled(True))
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._layers_changed)
        self.gate.valueChanged.connect(self._gate_changed)
        connect_while_alive(self.state.model_installed, self, self.show_model)
        self.destroyed.connect(lambda *_: self._closed())
        self._refill_ground_truth()
        self._model_changed()

    @property
    def busy(self) -> bool:
        """A comparison is running, or its panels are still being added."""
        return self.job.busy or self._feeder is not None

    def _closed(self) -> None:
        """The dock went away (its viewer closing, maybe): stop adding panels."""
        if self._feeder is not None:
            self._feeder.stop()

    # -- choices ---------------------------------------------------------------------------
    def _model_changed(self) -> None:
        entry = self.models.current_entry()
        self.channels.set_channels(entry.card.input_channels if entry else ["image"])
        if entry is not None:
            show_card_threshold(self.threshold, entry.card)

    def _layers_changed(self, event: Any = None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None and layer_role(layer) == COMPARE:
            return
        self._refill_ground_truth()

    def _refill_ground_truth(self, *_: Any) -> None:
        """Labels layers no dock made (opened from a file, painted by hand); by default the newest."""
        previous = self.ground_truth.currentText()
        references = self.state.labels_layers(REFERENCE)
        candidates = [layer.name for layer in references]
        self.ground_truth.blockSignals(True)
        self.ground_truth.clear()
        self.ground_truth.addItems([NO_GROUND_TRUTH, *candidates])
        picked = self._truth_picked
        if picked is not None and (picked == NO_GROUND_TRUTH or picked in candidates):
            self.ground_truth.setCurrentText(picked)
        elif previous in candidates:
            self.ground_truth.setCurrentText(previous)
        elif references:
            self.ground_truth.setCurrentText(newest(references).name)
        self.ground_truth.blockSignals(False)

    def _truth_array(self, shape: tuple[int, ...]) -> tuple[np.ndarray | None, str | None]:
        name = self.ground_truth.currentText()
        if name == NO_GROUND_TRUTH or name not in self.viewer.layers:
            return None, None
        data = np.asarray(self.viewer.layers[name].data)
        if data.shape != shape:
            raise VolumeError(
                f"ground truth '{name}' has shape {data.shape} but the scan has {shape}: "
                "expected a label map on the scan's grid (pick another, or '(none)')"
            )
        return data, name

    # -- running ---------------------------------------------------------------------------
    def run(self) -> bool:
        """Start the comparison in a worker; ``False`` (with a notification) if refused."""
        try:
            entry = self._chosen_model()
            image_name, volume = self._chosen_scan()
            truth, truth_name = self._truth_array(volume.spatial_shape)
            device = self.device.currentData()
            resolve_device(device)
        except CascadeSegError as exc:
            error(str(exc))
            return False
        job = self._job(entry, image_name, volume, truth, truth_name, device, chosen_threshold(self.threshold))
        started = self.job.start(job, self._show, "comparison")
        if started:
            self.compare_button.setEnabled(False)
        return started

    def _job(self, entry: Any, image_name: str, volume: Any, truth: np.ndarray | None,
             truth_name: str | None, device: str, threshold: float | None) -> Callable[..., Comparison]:
        def job(progress: Callable[[Any], None], cancel: threading.Event) -> Comparison:
            model, card = self.cache.load(entry.path)
            return compare_model(model, card, volume, image_name, truth, truth_name, device, progress, cancel,
                                 foreground_threshold=threshold)

        return job

    # -- results -> layers -----------------------------------------------------------------
    def clear(self) -> None:
        """Remove every layer the comparison added and show the user's layers again, a change per
        event-loop turn (the user's layers back, then each panel layer, then the camera), so that no
        turn holds the window for the whole removal: three removals in one scene update froze
        it for 220-300 ms on 2 cores. Each removed layer's volumes are let go in the turn after."""
        self._stop_feeding()
        owned = self._owned()
        if self.last_comparison is not None:
            self.last_comparison.release_arrays()

        def restore_user_layers() -> None:
            with one_scene_update(self.viewer):
                self._show_panels(False)

        def remove(layer: Any) -> None:
            if layer in self.viewer.layers:
                with one_scene_update(self.viewer):
                    self.viewer.layers.remove(layer)

        steps: list[Callable[[], Any]] = [restore_user_layers]
        for layer in owned:
            steps += [lambda layer=layer: remove(layer), lambda layer=layer: _shrink(layer)]
        steps.append(self._fit)
        # One step per turn (budget 0): a paint can come between any two of them.
        feeder = LayerFeeder(self.viewer, steps, budget_s=0.0, owner=self)
        feeder.done.connect(lambda: setattr(self, "_feeder", None))
        feeder.failed.connect(lambda exc: self._feed_failed(exc, "Removing the comparison layers"))
        self._feeder = feeder
        feeder.start()

    def _stop_feeding(self) -> None:
        if self._feeder is not None:
            self._feeder.stop()
            self._feeder = None

    def _show(self, comparison: Comparison) -> None:
        """Turn the worker's comparison into the panels without freezing the window.

        All panels are tiles of a few layers (:class:`~napari_cascade._montage.Montage`): the
        scan under every tile, the masks and differences, the ground truth's outline, the
        attention gates and the titles. napari rebuilds its scene on every layer change and
        compiles a layer's shaders on its first draw, so the layers are added hidden, a layer per
        event-loop turn inside one batch, then shown a layer per turn, a paint apart."""
        self.last_comparison = comparison
        self._fill_structures(comparison)
        self._fill_table(comparison)
        self._fill_gates(comparison)
        self._stop_feeding()
        scan = self.viewer.layers[comparison.image_name] if comparison.image_name in self.viewer.layers else None
        panels = self._panels(comparison)
        layout = TileLayout.for_tiles(len(panels), comparison.reference.spatial_shape)
        specs = self._layer_specs(comparison, scan, panels, layout)
        steps: list[Callable[[], Any]] = [lambda: self._show_panels(False, keep_others_hidden=True)]
        stale = [layer for layer in self._owned() if (result_info(layer) or {}).get("role") not in specs]
        if stale:
            steps.append(lambda: [self.viewer.layers.remove(layer) for layer in stale])
        steps += [lambda role=role, spec=spec: self._place(comparison, role, *spec) for role, spec in specs.items()]
        feeder = LayerFeeder(self.viewer, steps, batch=True, owner=self)
        feeder.done.connect(lambda: self._lay_out(comparison))
        feeder.failed.connect(self._feed_failed)
        self._feeder = feeder
        feeder.start()

    def _feed_failed(self, exc: BaseException, what: str = "Showing the comparison") -> None:
        self._feeder = None
        error(f"{what} failed: {exc}")

    def _lay_out(self, comparison: Comparison) -> None:
        """Show the panels a layer a turn. (The panels' scan view starts with the scan's
        contrast; it is not linked to it: linking redraws both layers' thumbnails on every change,
        and the scan is hidden while the panels are shown.)"""
        self._feeder = None
        if not self.grid.isChecked():
            self._announce(comparison)
            return
        with one_scene_update(self.viewer):
            self._hide_others()
        steps: list[Callable[[], Any]] = [lambda layer=layer: self._reveal(layer) for layer in self._owned()]
        reveal = LayerFeeder(self.viewer, steps, budget_s=0.0, pause_ms=REVEAL_PAUSE_MS, owner=self)
        reveal.done.connect(lambda: self._revealed(comparison))
        reveal.failed.connect(self._feed_failed)
        self._feeder = reveal
        reveal.start()

    def _reveal(self, layer: Any) -> None:
        with one_scene_update(self.viewer):
            layer.visible = True

    def _revealed(self, comparison: Comparison) -> None:
        self._feeder = None
        self._fit()
        self._announce(comparison)

    def _announce(self, comparison: Comparison) -> None:
        info(
            f"Compared {len(comparison.depths)} depth(s), {len(comparison.stages)} stage(s) and "
            f"{len(comparison.gates)} attention gate(s) of '{comparison.image_name}'"
            + (f" against '{comparison.truth_name}'" if comparison.truth_name else "")
            + (f", foreground above {comparison.foreground_threshold:.2f}"
               if comparison.foreground_threshold not in (None, 0.5) else "")
        )

    def _owned(self) -> list[Any]:
        return [layer for layer in self.viewer.layers if layer_role(layer) == COMPARE]

    def _owned_layer_role(self, role: str) -> Any | None:
        """The layer this widget made for ``role`` (never one of the user's layers)."""
        return next((layer for layer in self._owned() if (result_info(layer) or {}).get("role") == role), None)

    def panel_titles(self) -> list[str]:
        """The titles of the panels, in reading order (row by row)."""
        titles = self._owned_layer_role("scan")
        return [] if titles is None else titles.data.titles

    def _panels(self, comparison: Comparison) -> list[tuple[str, str, np.ndarray]]:
        """(title, kind, volume) per panel, in reading order (module docstring)."""
        panels: list[tuple[str, str, np.ndarray]] = []
        if comparison.truth is not None:  # the reference first (same array: no copy)
            panels.append((f"ground truth · {comparison.truth_name}", "truth", comparison.truth))
        for runs in (comparison.stages, comparison.depths):
            panels += [(run.name, "labels", run.labels) for run in runs]
            if len(runs) > 1 and (runs[-1].name, runs[0].name) in comparison.differences:
                later, earlier = runs[-1].name, runs[0].name
                panels.append((f"{later} vs {earlier}", "difference", comparison.differences[(later, earlier)]))
        if comparison.attention is not None:
            panels.append(("attention", "attention", comparison.attention))
        return panels

    def _layer_specs(self, comparison: Comparison, scan: Any, panels: list[tuple[str, str, np.ndarray]],
                     layout: TileLayout) -> dict[str, tuple[str, Any, dict[str, Any]]]:
        """role -> (layer type, data, keyword arguments) of every layer of the comparison."""
        stem = comparison.image_name
        geometry = transform_kwargs(comparison.reference)
        # The montage lies on the scan's voxel grid (spacing and origin; its tiles are not rotated
        # with an oblique scan, so that the titles stay on them).
        placed = {"scale": geometry["scale"], "translate": geometry["translate"]}
        kinds = [kind for _, kind, _ in panels]
        specs: dict[str, tuple[str, Any, dict[str, Any]]] = {}
        titles = [self._gate_title(comparison) if kind == "attention" else title for title, kind, _ in panels]
        if scan is not None:
            view, colormap, limits = scan.data, scan.colormap, scan.contrast_limits
        else:  # the scan's layer was deleted while the comparison ran: its voxels are still here
            view, colormap = comparison.scan, "gray"
            limits = display_limits(comparison.scan, comparison.reference.modality)
        specs["scan"] = ("image", Montage(layout, [view] * len(panels), view.dtype, titles=titles), {
            "name": f"compare · {stem}", "colormap": colormap, "contrast_limits": limits, **placed,
        })
        masks = [(volume if kind in ("truth", "labels", "difference") else None) for _, kind, volume in panels]
        if any(mask is not None for mask in masks):
            values = sorted({int(v) for run in comparison.runs for v in (run.class_values or [1])}
                            | set(comparison.truth_values))
            add, remove = max(values) + 1, max(values) + 2
            dtype = np.uint8 if remove < 256 else np.uint16
            difference_lut = np.array([0, add, remove], dtype=dtype)
            luts = [difference_lut if kind == "difference" else None for _, kind, _ in panels]
            specs["masks"] = ("labels", Montage(layout, masks, dtype, luts, outlines=[k == "truth" for k in kinds]), {
                "name": f"compare · masks · {stem}", "opacity": 0.7,
                "colormap": _mask_colormap(values, add, remove, comparison.class_colors), **placed,
            })
        if "attention" in kinds:
            tile = _tile(placed, layout, kinds.index("attention"))
            specs["attention"] = ("image", comparison.attention[self.gate.value()], {
                "name": f"compare · attention · {stem}", "colormap": "turbo", "contrast_limits": (0.0, 255.0),
                "opacity": 0.55, "blending": "translucent", **tile,
            })
        return specs

    def _place(self, comparison: Comparison, role: str, kind: str, data: Any, kwargs: dict[str, Any]) -> Any:
        """Add the layer for ``role`` hidden, or give the existing one its new data."""
        recorded = {"kind": COMPARE, "role": role, "image": comparison.image_name, "created": time.time(),
                    "foreground_threshold": comparison.foreground_threshold,
                    **({"gates": list(comparison.gates)} if role == "attention" else {})}
        metadata = {GEOMETRY_KEY: geometry_metadata(comparison.reference, **{RESULT_KEY: recorded})}
        layer = self._owned_layer_role(role)
        if layer is not None and np.ndim(layer.data) == np.ndim(data):  # a re-run: same layer, new data
            layer.visible = False
            layer.metadata = metadata
            layer.scale, layer.translate = kwargs["scale"], kwargs["translate"]
            layer.data = data
            layer.name = kwargs["name"]
            return layer
        if layer is not None:
            self.viewer.layers.remove(layer)
        layer = getattr(self.viewer, f"add_{kind}")(data, metadata=metadata, visible=False, **kwargs)
        if kind == "labels":
            layer.editable = False  # a comparison is read: correct masks in the Correct mask dock
        return layer

    def _attention_layer(self) -> Any | None:
        return self._owned_layer_role("attention")

    def _gate_changed(self, index: int) -> None:
        """Show gate ``index`` in the attention panel (a view of the stack: no copy), and name it
        in the panel's title and beside the slider."""
        comparison = self.last_comparison
        if comparison is None or comparison.attention is None or not comparison.gates:
            return
        index = int(np.clip(index, 0, len(comparison.gates) - 1))
        title = f"attention {comparison.gates[index]} ({index + 1}/{len(comparison.gates)})"
        self.gate_label.setText(title)
        layer, scan = self._attention_layer(), self._owned_layer_role("scan")
        if layer is not None and layer.data is not comparison.attention[index]:
            layer.data = comparison.attention[index]
        if scan is not None and isinstance(scan.data, Montage):
            titles = scan.data.titles
            at = next((i for i, t in enumerate(titles) if t.startswith("attention")), None)
            if at is not None and titles[at] != title:
                titles[at] = title
                scan.data.titles = titles
                scan.refresh()

    def _fill_gates(self, comparison: Comparison) -> None:
        self.gate.blockSignals(True)
        self.gate.setRange(0, max(0, len(comparison.gates) - 1))
        self.gate.setValue(min(self.gate.value(), max(0, len(comparison.gates) - 1)))
        self.gate.blockSignals(False)
        self.gate.setEnabled(bool(comparison.gates))
        self.gate_label.setText(self._gate_title(comparison) if comparison.gates else "no attention gates")

    def _gate_title(self, comparison: Comparison) -> str:
        index = self.gate.value()
        return f"attention {comparison.gates[index]} ({index + 1}/{len(comparison.gates)})"

    def _hide_others(self) -> None:
        """The user's own layers would lie over the first panel: hidden while the comparison is
        shown (the ground truth has its panel), shown again after."""
        owned = set(map(id, self._owned()))
        others = [layer for layer in self.viewer.layers if id(layer) not in owned and layer.visible]
        self._hidden_for_grid += others
        for layer in others:
            layer.visible = False

    def _set_grid(self, enabled: bool) -> None:
        """Checked: the panels side by side (the user's own layers hidden). Unchecked: the
        comparison hidden, the user's layers back; each panel layer one click away in the layer
        list. One scene update either way."""
        with one_scene_update(self.viewer):
            self._show_panels(enabled)
        self._fit()

    def _fit(self) -> None:
        """Fit the camera to what is shown: the panels, or the user's own layers (the panels'
        extent would otherwise leave the scan small in a corner)."""
        shown = [layer for layer in self.viewer.layers if layer.visible]
        if shown:
            self.viewer.fit_to_view(layers=shown)

    def _show_panels(self, enabled: bool, keep_others_hidden: bool = False) -> bool:
        """The layer changes of :meth:`_set_grid` (inside the caller's batch); whether shown."""
        owned = self._owned()
        enabled = enabled and bool(owned)
        for layer in owned:
            layer.visible = enabled
        if enabled:
            self._hide_others()
        elif not keep_others_hidden:
            for layer in self._hidden_for_grid:
                if layer in self.viewer.layers:
                    layer.visible = True
            self._hidden_for_grid = []
        return enabled

    # -- the table -------------------------------------------------------------------------
    def _fill_structures(self, comparison: Comparison) -> None:
        previous = self.structure.currentText()
        self.structure.blockSignals(True)
        self.structure.clear()
        self.structure.addItems(comparison.structures or [FOREGROUND])
        if previous in comparison.structures:
            self.structure.setCurrentText(previous)
        self.structure.blockSignals(False)
        self.structure.setEnabled(len(comparison.structures) > 1)

    def _structure_changed(self, *_: Any) -> None:
        if self.last_comparison is not None:
            self._fill_table(self.last_comparison)

    def _fill_table(self, comparison: Comparison) -> None:
        rows = comparison.runs
        structure = self.structure.currentText() or FOREGROUND
        self.table.setRowCount(len(rows))
        self.table.setVerticalHeaderLabels([run.name for run in rows])
        for row, run in enumerate(rows):
            scores = comparison.metrics.get(run.name, {}).get(structure, {})
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


def _tile(placed: dict[str, Any], layout: TileLayout, index: int) -> dict[str, Any]:
    """scale / translate of a (Z, Y, X) layer lying on tile ``index`` of the montage."""
    row, column = layout.origin(index)
    scale = tuple(placed["scale"])
    translate = tuple(placed["translate"])
    return {"scale": scale, "translate": (translate[0], translate[1] + row * scale[1], translate[2] + column * scale[2])}


def _mask_colormap(values: list[int], add: int, remove: int, class_colors: dict[int, str] | None = None) -> Any:
    """Class values in the card's colours (napari's label colours where it gives none); a
    difference's additions green, removals red."""
    from napari.utils.colormaps import DirectLabelColormap, label_colormap

    cyclic = label_colormap()
    colors: dict[Any, Any] = {0: "transparent", None: "transparent"}
    colors.update({value: (class_colors or {}).get(value) or cyclic.map(np.array([value]))[0] for value in values if value})
    colors.update({add: DIFF_COLORS[1], remove: DIFF_COLORS[2]})
    return DirectLabelColormap(color_dict=colors)


def _shrink(layer: Any) -> None:
    """Replace a removed layer's data by one voxel (a point), so its volumes are freed now."""
    layer.data = np.zeros((1,) * layer.ndim, dtype=layer.data.dtype)


def compare_model(model: Any, card: Any, volume: Any, image_name: str, truth: np.ndarray | None,
                  truth_name: str | None, device: str, progress: Callable[[Any], None],
                  cancel: threading.Event, foreground_threshold: float | None = None) -> Comparison:
    """Every depth, the stages and the attention gates of one model on one scan, their
    differences and, against ``truth``, their scores (worker thread).

    One pass of the full network gives every depth's map (a pruned network's output is its head,
    the same numbers; with the card's test-time mirroring, each head is mirrored as a run at that
    depth alone would be), the stages and the attention maps that fit in memory. Each depth's time
    is measured on a batch of the scan with the network really pruned to that depth, and scaled to
    the whole scan (:meth:`Predictor.estimate_seconds`). One run per depth plus one for the maps,
    as before, took Compare 145.6 s on a 200-slice 512x512 CT (``benchmarks/gui_freeze.py``), this
    137.1 s: the network is a small part; HD95 on the CT's large surfaces was most of the rest
    (faster since: :mod:`cascadeseg.metrics.surface`, 66.6 s in all)."""
    from cascadeseg.inference.predictor import PredictionRequest, Predictor

    predictor = Predictor(model, card, device=device)
    described = model_info(card)
    depths: list[int] = list(described.pruning_depths) if described and described.pruning_depths else []
    stages = bool(described and described.stages)
    attention = bool(described and described.attention)
    at_once = attention and _attention_fits(volume, card)
    # The gates shown are those of the network Segment runs by default (its recommended depth):
    # from the one pass when that is the full network, else from a pass of their own.
    full = max(depths) if depths else None
    shown_depth = predictor.resolve_depth(None) if depths else None
    gates_apart = attention and (not at_once or shown_depth != full)
    steps = 1 + (1 if gates_apart else 0)

    def step_progress(step: int, label: str) -> Callable[[Any], None]:
        def report(p: Any) -> None:
            progress(_StepProgress((step + p.fraction) / steps, p.done, p.total, p.rate, f"{p.unit} ({label})"))
        return report

    comparison = Comparison(image_name=image_name, reference=None, scan=volume.array[0], truth=truth,
                            truth_name=truth_name, class_colors=card.class_colors,
                            foreground_threshold=foreground_threshold)
    mode, axis = f"{card.dims}d", card.slice_axis
    prepared = predictor.prepare_checked(volume, mode, axis)
    # The run's foreground threshold (two-class models) applies to every depth and stage with the
    # final class count, as Segment applies it to the depth it runs.
    want = PredictionRequest(depths=bool(depths), stages=stages, attention=attention and not gates_apart,
                             foreground_threshold=foreground_threshold)
    label = "every depth" if depths else ("stages" if stages else "full")
    result = predictor.predict(volume, depth=full, want=want, progress=step_progress(0, label), cancel=cancel,
                               prepared=prepared)
    if attention and at_once and gates_apart:
        result.attention = predictor.predict(volume, depth=shown_depth, want=PredictionRequest(attention=True, mirror=False),
                                             progress=step_progress(1, "attention"), cancel=cancel,
                                             prepared=prepared).attention
    comparison.reference = result.labels
    for depth in depths:
        seconds = predictor.estimate_seconds(prepared, mode, axis, depth)
        comparison.depths.append(ComparisonRun(f"L{depth}", result.depth_labels[depth].array, seconds,
                                               result.items / seconds if seconds > 0 else None, result.unit))
    del prepared
    timing = (result.timings.get("inference"), result.rate, result.unit)
    if stages:
        comparison.stages = [ComparisonRun(name, v.array) for name, v in result.stage_labels.items()]
        # The last stage is the full network's output: the pass's time is its time.
        last = comparison.stages[-1]
        last.seconds, last.rate, last.unit = timing
    elif not depths:
        comparison.depths.append(ComparisonRun("full", result.labels.array, *timing))
    if attention:
        if at_once:  # from the one pass, or from the pass at the shown depth
            gates = _gate_order(list(result.attention))
            stack = np.empty((len(gates), *volume.spatial_shape), dtype=np.uint8)
            for index, gate in enumerate(gates):
                _quantise(result.attention.pop(gate).array, stack[index])
        else:
            gates, stack = _attention_by_slabs(model, card, volume, device, step_progress(1, "attention"), cancel)
        comparison.attention, comparison.gates = stack, gates
    for run in comparison.runs:
        run.class_values = present_values(run.labels)
    if truth is not None:
        comparison.truth_values = present_values(truth)
    for runs in (comparison.stages, comparison.depths):
        if len(runs) > 1:
            first, last = runs[0], runs[-1]
            comparison.differences[(last.name, first.name)] = difference_map(first.labels, last.labels)
    if truth is not None:
        classes = {name: value for name, value in zip(card.class_names, card.class_values) if value}
        for run in comparison.runs:
            comparison.metrics[run.name] = comparison_scores(run.labels, truth, volume.spacing, classes)
        comparison.structures = [FOREGROUND, *(classes if len(classes) > 1 else [])]
    return comparison


def _attention_fits(volume: Any, card: Any) -> bool:
    """Whether every gate's float32 map of ``volume`` fits :data:`ATTENTION_BYTES_AT_ONCE`
    (3D models always run at once: their sliding windows need the whole volume)."""
    if card.dims != 2:
        return True
    gates = 20  # the most gates a zoo model has (ANU-Net, 5 levels); a bound, not a count
    return gates * int(np.prod(volume.spatial_shape)) * 4 <= ATTENTION_BYTES_AT_ONCE


def _attention_by_slabs(model: Any, card: Any, volume: Any, device: str, progress: Callable[[Any], None],
                        cancel: threading.Event) -> tuple[list[str], np.ndarray]:
    """The attention gates of a 2D model, a slab of slices at a time, quantised into one uint8
    stack. The card's intensity normalisation is applied to the whole scan first (its statistics
    are the scan's, not the slab's), so every slice sees what a whole-volume run would show it."""
    from cascadeseg.inference.predictor import PredictionRequest, Predictor
    from cascadeseg.preprocessing import apply_channel_preprocessing

    axis = card.slice_axis
    normalised = np.stack([
        apply_channel_preprocessing(volume.array[c], channel.get("preprocessing") or {"type": "none"})
        for c, channel in enumerate(card.input_channels)
    ])
    plain = replace(card, input_channels=[{**c, "preprocessing": {"type": "none"}} for c in card.input_channels])
    predictor = Predictor(model, plain, device=device)
    shape = volume.spatial_shape
    per_slice = 20 * 4 * int(np.prod(shape)) // shape[axis]
    slab = max(1, ATTENTION_BYTES_AT_ONCE // max(per_slice, 1))
    stack: np.ndarray | None = None
    gates: list[str] = []
    # A 2.5D network reads k neighbours on either side of a slice: each slab carries them, so the
    # slices at its edges see what a whole-volume run shows them; only the slab's own are kept.
    context = int(card.context_slices)
    for start in range(0, shape[axis], slab):
        index = [slice(None)] * 4
        stop = min(start + slab, shape[axis])
        index[1 + axis] = slice(start, stop)
        low, high = max(0, start - context), min(shape[axis], stop + context)
        read = list(index)
        read[1 + axis] = slice(low, high)
        own = [slice(None)] * 3
        own[axis] = slice(start - low, stop - low)
        part = volume.with_array(normalised[tuple(read)])

        def report(p: Any, start: int = start, stop: int = stop) -> None:
            done = start + p.fraction * (stop - start)
            progress(_StepProgress(done / shape[axis], int(done), shape[axis], p.rate, p.unit))

        result = predictor.predict(part, axis=axis, want=PredictionRequest(attention=True), progress=report,
                                   cancel=cancel)
        if stack is None:
            gates = _gate_order(list(result.attention))
            stack = np.empty((len(gates), *shape), dtype=np.uint8)
        for g, gate in enumerate(gates):
            _quantise(result.attention.pop(gate).array[tuple(own)], stack[(g, *index[1:])])
    assert stack is not None
    return gates, stack


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    if np.isinf(value):
        return "∞"
    return f"{value:.{digits}f}"
