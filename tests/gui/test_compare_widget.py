"""Compare dock: stage, depth, difference and attention panels in a fixed order with titles, the
per-class metrics table, and no GUI freeze over 200 ms while the panels come and go."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from freeze_probe import FREEZE_BOUND_MS, allowed_ms, measure
from gui_helpers import add_labels_volume, add_volume, wait_for_job
from napari.layers import Image, Labels

from cascadeseg.metrics import evaluate_case
from napari_cascade._montage import outline
from napari_cascade._qt.compare_widget import FOREGROUND, METRIC_COLUMNS, CompareWidget, difference_map

PLUGIN = "napari-cascade"


def _compare_layers(viewer, role: str | None = None) -> list:
    found = []
    for layer in viewer.layers:
        info = layer.metadata.get("cascadeseg", {}).get("result") or {}
        if info.get("kind") == "compare" and (role is None or info.get("role") == role):
            found.append(layer)
    return found


def _role(viewer, role: str):
    (layer,) = _compare_layers(viewer, role)
    return layer


def _tile(widget, viewer, title: str, z: int, role: str = "masks") -> np.ndarray:
    """What the ``role`` layer shows in the panel called ``title`` on slice ``z``."""
    layer = _role(viewer, role)
    row, column = layer.data.layout.origin(widget.panel_titles().index(title))
    _, height, width = layer.data.layout.tile_shape
    return np.asarray(layer.data[z])[row:row + height, column:column + width]


def test_depths_attention_and_metrics_table(make_napari_viewer, qtbot, sample_crop, tiny_models) -> None:
    viewer = make_napari_viewer()
    widget = CompareWidget(viewer)
    qtbot.addWidget(widget)
    image_volume, truth_volume = sample_crop
    (image,) = add_volume(viewer, image_volume, name="crop")
    truth = add_labels_volume(viewer, truth_volume, image_volume, "crop ground truth")
    widget.models.select_path(tiny_models["anu"])
    assert widget.ground_truth.currentText() == "crop ground truth"  # the only reference layer
    assert widget.run()
    outcome = wait_for_job(qtbot, widget, 120_000)
    assert outcome.ok, outcome.error

    # Three layers whatever the number of panels: the scan under every panel (with the titles);
    # the ground truth's outline, the masks and the differences; the attention map.
    assert {(layer.metadata["cascadeseg"]["result"]["role"]) for layer in _compare_layers(viewer)} == {
        "scan", "masks", "attention"}
    comparison = widget.last_comparison
    gates = comparison.gates
    assert len(gates) == 4 and gates[0].startswith("X0,")  # the tiny ANU-Net's gates, full resolution first
    assert widget.panel_titles() == ["ground truth · crop ground truth", "L1", "L2", "L3", "L4", "L4 vs L1",
                                     f"attention {gates[0]} (1/4)"]
    np.testing.assert_allclose(_role(viewer, "attention").translate[1:],
                               np.asarray(image.translate[1:]) + np.asarray(_role(viewer, "scan").data.layout.origin(6))
                               * np.asarray(image.scale[1:]))
    # Every gate in one stack; the dock's slider picks the one the panel shows, and its title.
    attention = _role(viewer, "attention")
    assert comparison.attention.shape == (4, *image.data.shape) and attention.data.shape == image.data.shape
    widget.gate.setValue(3)
    assert widget.panel_titles()[-1] == f"attention {gates[3]} (4/4)" == widget.gate_label.text()
    np.testing.assert_array_equal(attention.data, comparison.attention[3])
    coefficients = comparison.attention_map(gates[3])
    assert 0.0 <= coefficients.min() and coefficients.max() <= 1.0 and coefficients.std() > 0
    # The panels lie on the scan's voxel grid, the first one exactly on the scan.
    scan_view = _role(viewer, "scan")
    np.testing.assert_allclose(scan_view.scale, image.scale)
    np.testing.assert_allclose(scan_view.translate, image.translate)
    assert scan_view.data.layout.origin(0) == (scan_view.data.layout.header, 0)
    np.testing.assert_array_equal(_tile(widget, viewer, "L2", 4, "scan"), np.asarray(image.data[4]))
    # The ground truth as an outline: its border voxels only.
    z = int(np.argmax(np.asarray(truth.data).reshape(len(truth.data), -1).sum(axis=1)))
    reference = np.asarray(truth.data[z])
    shown = _tile(widget, viewer, "ground truth · crop ground truth", z)
    assert 0 < np.count_nonzero(shown) < np.count_nonzero(reference)
    assert np.all(reference[shown > 0] == shown[shown > 0])
    np.testing.assert_array_equal(shown, outline(reference))
    # Each title is written in white in the band above its panel.
    header = scan_view.data.layout.header
    band = np.asarray(scan_view.data[4])[:header, :128]
    assert (band == np.iinfo(band.dtype).max).sum() > 20 and (band == 0).sum() > band.size // 2

    # Each panel shows its own run; the difference panel exactly what the deeper head added (green)
    # and removed (red).
    l1, l4 = (run.labels for run in (comparison.depths[0], comparison.depths[3]))
    for z in (0, 4):
        np.testing.assert_array_equal(_tile(widget, viewer, "L1", z), l1[z])
        np.testing.assert_array_equal(_tile(widget, viewer, "L4", z), l4[z])
        diff = _tile(widget, viewer, "L4 vs L1", z)
        colors = _role(viewer, "masks").colormap
        green = {int(v) for v in np.unique(diff[(l4[z] > 0) & (l1[z] == 0)])}
        red = {int(v) for v in np.unique(diff[(l1[z] > 0) & (l4[z] == 0)])}
        assert all(np.allclose(colors.map(np.array([v]))[0][:3], (0.180, 0.800, 0.251), atol=0.01) for v in green)
        assert all(np.allclose(colors.map(np.array([v]))[0][:3], (1.0, 0.255, 0.212), atol=0.01) for v in red)
        np.testing.assert_array_equal(diff > 0, (l4[z] > 0) != (l1[z] > 0))
    np.testing.assert_array_equal(comparison.differences[("L4", "L1")], difference_map(l1, l4))

    rows = widget.table_rows()
    assert list(rows) == ["L1", "L2", "L3", "L4"]
    assert widget.table.columnCount() == len(METRIC_COLUMNS)
    l2 = comparison.depths[1].labels
    expected = evaluate_case(l2, np.asarray(truth.data), image.scale, regions={"fg": (1,)})["fg"]
    assert rows["L2"][0] == f"{expected['dice']:.3f}"
    assert float(rows["L2"][5]) > 0  # each depth's own time
    assert rows["L1"][6].endswith("slices/s")
    # A binary model: the one structure is any foreground, nothing else to pick.
    assert widget.structure.currentText() == FOREGROUND and not widget.structure.isEnabled()

    assert not image.visible and not truth.visible  # the user's layers step aside
    widget.grid.setChecked(False)
    assert image.visible and truth.visible and not any(layer.visible for layer in _compare_layers(viewer))

    # A re-run without ground truth keeps the panel order and reuses the layers; a lower foreground
    # threshold (a two-class model: the box is on, at the card's 0.50) only adds voxels at every depth.
    widget.grid.setChecked(True)
    count = len(viewer.layers)
    assert widget.threshold.isEnabled() and widget.threshold.value() == 0.5
    at_half = {run.name: run.labels.copy() for run in comparison.depths}
    widget.threshold.setValue(0.2)
    widget.ground_truth.setCurrentText("(none)")
    assert widget.run() and wait_for_job(qtbot, widget, 120_000).ok
    assert widget.panel_titles()[:5] == ["L1", "L2", "L3", "L4", "L4 vs L1"]
    assert len(viewer.layers) == count  # the same three layers, new tiles
    lower = {run.name: run.labels for run in widget.last_comparison.depths}
    assert all(np.all(lower[name][at_half[name] > 0] > 0) for name in at_half)
    assert sum(int(np.count_nonzero(lower[n])) for n in lower) > sum(int(np.count_nonzero(at_half[n])) for n in at_half)
    assert _role(viewer, "masks").metadata["cascadeseg"]["result"]["foreground_threshold"] == 0.2


def test_cascade_stages_and_their_difference(make_napari_viewer, qtbot, sample_crop, tiny_models) -> None:
    viewer = make_napari_viewer()
    widget = CompareWidget(viewer)
    qtbot.addWidget(widget)
    add_volume(viewer, sample_crop[0], name="crop")
    widget.models.select_path(tiny_models["cascade"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert widget.run()
        assert wait_for_job(qtbot, widget, 120_000).ok
    assert not [w for w in caught if "viewer.grid" in str(w.message)]  # deprecated in napari 0.9
    assert widget.panel_titles() == ["stage1", "stage2", "stage2 vs stage1"]
    stage1, stage2 = (run.labels for run in widget.last_comparison.stages)
    np.testing.assert_array_equal(widget.last_comparison.differences[("stage2", "stage1")],
                                  difference_map(stage1, stage2))
    np.testing.assert_array_equal(_tile(widget, viewer, "stage2", 2), stage2[2])
    # No "full" row repeating stage 2: stage 2 is the full network, and carries its time.
    rows = widget.table_rows()
    assert list(rows) == ["stage1", "stage2"]
    assert rows["stage2"][0] == "—" and float(rows["stage2"][5]) > 0 and rows["stage1"][5] == "—"
    assert all(isinstance(layer, (Image, Labels)) for layer in _compare_layers(viewer))
    # A second run reuses the layers (no duplicates); "Remove" takes them all away.
    count = len(viewer.layers)
    assert widget.run() and wait_for_job(qtbot, widget, 120_000).ok
    assert len(viewer.layers) == count
    widget.clear_button.click()  # a layer per event-loop turn
    qtbot.waitUntil(lambda: not widget.busy, timeout=10_000)
    assert not _compare_layers(viewer) and viewer.layers["crop"].visible


def test_per_class_scores_of_a_multi_class_model(make_napari_viewer, qtbot, shared_data, tmp_path) -> None:
    """A 3-class CT model scored against TotalSegmentator's organ map: a row per run for any
    foreground and, picked in the 'scores for' box, for each class (its label value)."""
    import torch

    from cascadeseg.inference.checkpoint import ModelCard, save_checkpoint

    card = ModelCard(
        architecture="unet",
        model_options={"in_channels": 1, "num_classes": 3, "dims": 2, "base_width": 4, "levels": 3},
        dims=2,
        input_channels=[{"name": "CT", "preprocessing": {"type": "ct_window", "preset": "abdomen"}}],
        classes=[{"value": 0, "name": "background"}, {"value": 1, "name": "spleen"}, {"value": 5, "name": "liver"}],
        name="tiny-ct-3class",
    )
    torch.manual_seed(0)
    folder = save_checkpoint(card.create_model().eval(), card, tmp_path / "tiny-ct-3class")
    viewer = make_napari_viewer()
    widget = CompareWidget(viewer)
    qtbot.addWidget(widget)
    (ct,) = viewer.open(str(shared_data / "totalseg/example_ct_sm.nii.gz"), plugin=PLUGIN)
    (organs,) = viewer.open(str(shared_data / "totalseg/example_seg.nii.gz"), plugin=PLUGIN)
    widget.models.select_path(folder)
    assert widget.ground_truth.currentText() == organs.name
    assert widget.run() and wait_for_job(qtbot, widget, 120_000).ok
    comparison = widget.last_comparison
    assert comparison.structures == [FOREGROUND, "spleen", "liver"] and widget.structure.isEnabled()
    (run,) = comparison.runs
    widget.structure.setCurrentText("liver")
    expected = evaluate_case(run.labels, np.asarray(organs.data), ct.scale, classes={"liver": 5})["liver"]
    assert widget.table_rows()["full"][0] == f"{expected['dice']:.3f}"
    widget.structure.setCurrentText(FOREGROUND)
    any_fg = evaluate_case((run.labels > 0).astype(np.uint8), (np.asarray(organs.data) > 0).astype(np.uint8),
                           ct.scale)["1"]
    assert widget.table_rows()["full"][0] == f"{any_fg['dice']:.3f}"


def test_compare_and_remove_never_freeze_the_window(make_napari_viewer, qtbot) -> None:
    """The shipped ANU-Net on the bundled sample (every depth and all 20 attention gates, with its
    ground truth): Compare, which must add three layers, freezes the GUI no longer than 200 ms or
    than napari itself takes to add one layer when that is more (it was 8-62 s); Remove no longer
    than 200 ms (it was 20 s)."""
    viewer = make_napari_viewer(show=True)
    scan, truth = viewer.open_sample(PLUGIN, "sample_scan")
    widget = CompareWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Compare")
    assert widget.models.current_entry().card.architecture == "anu_net"
    bound = allowed_ms(viewer, "image", "labels")
    gap = measure(widget.run, lambda: not widget.busy, timeout_s=300)
    assert widget.job.last_outcome.ok, widget.job.last_outcome.error
    assert len(widget.panel_titles()) == 7  # truth, L1-L4, L4 vs L1, attention
    assert len(_compare_layers(viewer)) == 3
    # Its later layers go into a viewer that already holds the first ones, and one floor timed
    # before is noisy on a loaded machine (CI: 596 ms against 529): the slower of before and after.
    bound = max(bound, allowed_ms(viewer, "image", "labels"))
    assert gap <= bound, f"Compare froze the GUI for {gap:.0f} ms (bound {bound:.0f} ms)"
    gap = measure(widget.clear_button.click, lambda: not _compare_layers(viewer))
    assert gap <= FREEZE_BOUND_MS, f"Remove comparison layers froze the GUI for {gap:.0f} ms"
    assert scan.visible and truth.visible


@pytest.mark.parametrize("context", [0, 1])
def test_attention_by_slabs_equals_attention_at_once(sample_crop, tiny_models, monkeypatch, context: int) -> None:
    """A 2D model's gates over a volume too big for all of them at once (20 gates of a
    512x512x600 CT: 12.6 GB of float32) are computed a slab of slices at a time, the scan's own
    normalisation applied first: the same maps (to the 1/255 of the stored stack). A 2.5D model
    (context 1, random weights on every slice it reads) gets its neighbours at the slab edges."""
    import dataclasses
    import threading

    import torch

    from cascadeseg.inference.checkpoint import load_checkpoint
    from napari_cascade._qt import compare_widget

    model, card = load_checkpoint(tiny_models["anu"])
    if context:
        options = {**card.model_options, "in_channels": 2 * context + 1}
        card = dataclasses.replace(card, context_slices=context, model_options=options)
        torch.manual_seed(1)
        model = card.create_model().eval()
    image = sample_crop[0]

    def compare() -> object:
        return compare_widget.compare_model(model, card, image, "crop", None, None, "cpu", lambda p: None,
                                            threading.Event())

    at_once = compare()
    monkeypatch.setattr(compare_widget, "ATTENTION_BYTES_AT_ONCE", 20 * 4 * 128 * 128 * 3)  # 3 slices a slab
    by_slabs = compare()
    assert by_slabs.gates == at_once.gates and by_slabs.attention.shape == at_once.attention.shape
    difference = np.abs(by_slabs.attention.astype(int) - at_once.attention.astype(int))
    assert difference.max() <= 1, difference.max()


@pytest.mark.parametrize(("mirroring", "threshold"), [(False, None), (True, None), (False, 0.2)])
def test_every_depth_from_one_pass_is_what_that_depth_segments(sample_crop, tiny_models, mirroring: bool,
                                                              threshold: float | None) -> None:
    """Compare runs the network once, at full depth, and takes every depth's map from its heads:
    each must be what Segment (the predictor at that depth alone, really pruned) gives, with the
    card's test-time mirroring too (each head mirrored as a pruned run would be), and with a
    foreground threshold chosen for the run. Each depth keeps its own time, measured with the
    network pruned to it."""
    import dataclasses
    import threading

    from cascadeseg.inference.checkpoint import load_checkpoint
    from cascadeseg.inference.predictor import PredictionRequest, Predictor
    from napari_cascade._qt import compare_widget

    model, card = load_checkpoint(tiny_models["anu"])
    card = dataclasses.replace(card, test_time_mirroring=mirroring, mirror_axes=[0, 1])  # in-plane flips: 4 passes
    image = sample_crop[0]
    comparison = compare_widget.compare_model(model, card, image, "crop", None, None, "cpu", lambda p: None,
                                              threading.Event(), foreground_threshold=threshold)
    predictor = Predictor(model, card, device="cpu")
    assert [run.name for run in comparison.depths] == ["L1", "L2", "L3", "L4"]
    found = 0
    want = PredictionRequest(foreground_threshold=threshold)
    for run, depth in zip(comparison.depths, (1, 2, 3, 4)):
        alone = predictor.predict(image, depth=depth, want=want).labels.array
        found += np.count_nonzero(alone)
        assert np.count_nonzero(run.labels != alone) <= alone.size // 10_000, (depth, np.count_nonzero(run.labels != alone))
        assert run.seconds is not None and run.seconds > 0 and run.rate is not None and run.rate > 0
    assert found > 1000  # the check compares real masks (the tiny model's L1 finds nothing on this crop)
