"""Compare widget: stage, depth, difference and attention layers, and the metrics table."""

from __future__ import annotations

import numpy as np
from gui_helpers import add_labels_volume, add_volume, wait_for_job
from napari.layers import Image, Labels

from cascadeseg.metrics import evaluate_case
from napari_cascade._qt.compare_widget import METRIC_COLUMNS, CompareWidget, difference_map


def _compare_layers(viewer, role: str | None = None) -> list:
    found = []
    for layer in viewer.layers:
        info = layer.metadata.get("cascadeseg", {}).get("result") or {}
        if info.get("kind") == "compare" and (role is None or info.get("role") == role):
            found.append(layer)
    return found


def test_depths_attention_and_metrics_table(make_napari_viewer, qtbot, sample_crop, tiny_models) -> None:
    viewer = make_napari_viewer()
    widget = CompareWidget(viewer)
    qtbot.addWidget(widget)
    image_volume, truth_volume = sample_crop
    (image,) = add_volume(viewer, image_volume, name="crop")
    truth = add_labels_volume(viewer, truth_volume, image_volume, "crop ground truth")
    widget.models.select_path(tiny_models["anu"])
    widget.ground_truth.setCurrentText("crop ground truth")
    assert widget.run()
    outcome = wait_for_job(qtbot, widget, 120_000)
    assert outcome.ok, outcome.error

    names = {layer.name for layer in _compare_layers(viewer)}
    for depth in (1, 2, 3, 4):
        assert f"crop L{depth}" in names
    assert "crop L4 vs L1" in names
    attention = [layer for layer in _compare_layers(viewer, "attention") if isinstance(layer, Image)]
    assert attention and all(layer.data.shape == image.data.shape for layer in attention)
    assert all(0.0 <= float(layer.data.min()) and float(layer.data.max()) <= 1.0 for layer in attention)
    assert viewer.grid.enabled and viewer.grid.stride == -2
    # Every overlay lies on the scan's grid.
    for layer in _compare_layers(viewer):
        np.testing.assert_allclose(layer.scale, image.scale)
        np.testing.assert_allclose(layer.translate, image.translate)

    # The difference layer says exactly what the deeper head added (1) and removed (2).
    l1, l2, l4 = (np.asarray(viewer.layers[f"crop L{d}"].data) for d in (1, 2, 4))
    diff = np.asarray(viewer.layers["crop L4 vs L1"].data)
    np.testing.assert_array_equal(diff == 1, (l4 > 0) & (l1 == 0))
    np.testing.assert_array_equal(diff == 2, (l1 > 0) & (l4 == 0))

    rows = widget.table_rows()
    assert list(rows) == ["L1", "L2", "L3", "L4"]
    assert widget.table.columnCount() == len(METRIC_COLUMNS)
    expected = evaluate_case(l2, np.asarray(truth.data), image.scale, regions={"fg": (1,)})["fg"]
    assert rows["L2"][0] == f"{expected['dice']:.3f}"
    assert float(rows["L2"][5]) > 0  # each depth's own time
    assert rows["L1"][6].endswith("slices/s")

    assert "crop ground truth (compare)" in names  # the reference panel
    assert not image.visible and not truth.visible  # the user's layers step aside in the grid
    widget.grid.setChecked(False)
    assert not viewer.grid.enabled
    assert image.visible and truth.visible




def test_cascade_stages_and_their_difference(make_napari_viewer, qtbot, sample_crop, tiny_models) -> None:
    viewer = make_napari_viewer()
    widget = CompareWidget(viewer)
    qtbot.addWidget(widget)
    add_volume(viewer, sample_crop[0], name="crop")
    widget.models.select_path(tiny_models["cascade"])
    assert widget.run()
    assert wait_for_job(qtbot, widget, 120_000).ok
    names = {layer.name for layer in _compare_layers(viewer)}
    assert {"crop stage1", "crop stage2", "crop stage2 vs stage1", "crop full"} <= names
    stage1, stage2 = (np.asarray(viewer.layers[f"crop {s}"].data) for s in ("stage1", "stage2"))
    np.testing.assert_array_equal(viewer.layers["crop stage2 vs stage1"].data, difference_map(stage1, stage2))
    assert list(widget.table_rows()) == ["stage1", "stage2", "full"]
    # Without ground truth the quality cells are empty but the time is there.
    assert widget.table_rows()["full"][0] == "—" and float(widget.table_rows()["full"][5]) > 0
    assert all(isinstance(layer, (Image, Labels)) for layer in _compare_layers(viewer))
    # A second run reuses the layers (no duplicates); "Remove" takes them all away.
    count = len(viewer.layers)
    assert widget.run() and wait_for_job(qtbot, widget, 120_000).ok
    assert len(viewer.layers) == count
    widget.clear_button.click()
    assert not _compare_layers(viewer) and not viewer.grid.enabled
