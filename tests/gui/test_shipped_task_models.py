"""The shipped task models in the GUI, on patients they never trained on (the held-out cases their
cards name): the 3D hippocampus UNet++ picked by name in the Segment dock and run in 3D (sliding
window, in a worker), then compared by depth in 3D in the Compare dock with per-class scores; the
CHAOS ANU-Net's four organs named and coloured from the card. Screenshots go to test-artifacts/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gui_helpers import wait_for_job
from napari.layers import Labels

from cascadeseg.inference import load_checkpoint, resolve_checkpoint
from cascadeseg.metrics import evaluate_case
from napari_cascade._qt.compare_widget import FOREGROUND, CompareWidget
from napari_cascade._qt.segment_widget import SegmentWidget
from napari_cascade._state import PREDICTION, layer_role

PLUGIN = "napari-cascade"
HIPPOCAMPUS = "hippocampus_unet_plus_plus_3d"
CHAOS = "chaos_t2_anu_net_2d"


def _held_out(shared_data: Path, model: str, data: str) -> tuple:
    """The model's card, its pruning depths, and the scan and labels of its first held-out case."""
    network, card = load_checkpoint(resolve_checkpoint(model))
    case = card.validation["cases"][0]  # a patient the model never trained on
    folder = shared_data / data
    return (card, list(network.info.pruning_depths),
            folder / "imagesTr" / f"{case}_0000.nii.gz", folder / "labelsTr" / f"{case}.nii.gz")


def _segment(make_napari_viewer, qtbot, model: str, scan: Path) -> tuple:
    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment")
    (image,) = viewer.open(str(scan), plugin=PLUGIN)
    assert widget.models.select_name(model)
    assert widget.run()
    outcome = wait_for_job(qtbot, widget, 180_000)
    assert outcome.ok, outcome.error
    (labels,) = [layer for layer in viewer.layers if isinstance(layer, Labels) and layer_role(layer) == PREDICTION]
    assert labels.data.shape == image.data.shape
    np.testing.assert_allclose(labels.scale, image.scale)
    np.testing.assert_allclose(labels.translate, image.translate)
    return viewer, widget, image, labels


def _screenshot(viewer, path: Path) -> None:
    """A window large enough to read (the default test window crops the montage), for review."""
    viewer.window._qt_window.resize(1600, 1000)
    viewer.reset_view()
    viewer.window.screenshot(path=str(path), canvas_only=False)


def _assert_named_and_coloured(labels: Labels, card) -> None:
    assert dict(zip(labels.features["index"], labels.features["class"])) == dict(zip(card.class_values, card.class_names))
    assert len(card.class_colors) == card.num_classes - 1  # every organ has its colour on the card
    for value, color in card.class_colors.items():
        rgb = [int(color[i:i + 2], 16) / 255 for i in (1, 3, 5)]
        np.testing.assert_allclose(labels.colormap.map(np.array([value]))[0][:3], rgb, atol=1e-6)


def test_shipped_3d_model_segments_in_3d_with_named_coloured_classes(
    make_napari_viewer, qtbot, shared_data, artifacts_dir
) -> None:
    card, _, scan, truth_path = _held_out(shared_data, HIPPOCAMPUS, "hippocampus")
    viewer, widget, image, labels = _segment(make_napari_viewer, qtbot, HIPPOCAMPUS, scan)
    assert labels.metadata["cascadeseg"]["result"]["mode"] == "3d"  # a 3D network runs in 3D
    # The card's defaults reach the dock: its full depth and (chosen on validation) mirroring.
    assert widget.depth.currentData() == card.recommended_depth == 4
    assert widget.mirror.isChecked() == card.test_time_mirroring is True
    assert not widget.threshold.isEnabled()  # three classes: no single foreground to threshold
    assert labels.metadata["cascadeseg"]["result"]["foreground_threshold"] is None
    _assert_named_and_coloured(labels, card)
    (truth,) = viewer.open(str(truth_path), plugin=PLUGIN)
    scores = evaluate_case(np.asarray(labels.data), np.asarray(truth.data), image.scale, classes=[1, 2], surface=False)
    assert min(scores["1"]["dice"], scores["2"]["dice"]) > 0.7  # a real segmentation of both structures
    truth.visible = False
    viewer.dims.set_current_step(0, int(np.argmax((np.asarray(labels.data) > 0).sum(axis=(1, 2)))))
    _screenshot(viewer, artifacts_dir / "hippocampus_3d_segment.png")


def test_shipped_3d_model_compares_depths_in_3d_per_class(make_napari_viewer, qtbot, shared_data, artifacts_dir) -> None:
    _, depths, scan, truth_path = _held_out(shared_data, HIPPOCAMPUS, "hippocampus")
    viewer = make_napari_viewer()
    widget = CompareWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Compare")
    (image,) = viewer.open(str(scan), plugin=PLUGIN)
    (truth,) = viewer.open(str(truth_path), plugin=PLUGIN)
    assert widget.models.select_name(HIPPOCAMPUS)
    assert widget.ground_truth.currentText() == truth.name
    assert widget.run()
    outcome = wait_for_job(qtbot, widget, 180_000)
    assert outcome.ok, outcome.error
    comparison = widget.last_comparison
    assert len(depths) > 1  # a nested network: one model, several depths
    assert [run.name for run in comparison.depths] == [f"L{d}" for d in depths]
    assert comparison.structures == [FOREGROUND, "anterior hippocampus", "posterior hippocampus"]
    widget.structure.setCurrentText("posterior hippocampus")
    deepest = comparison.depths[-1]
    expected = evaluate_case(deepest.labels, np.asarray(truth.data), image.scale, classes={"posterior": 2})
    rows = widget.table_rows()
    assert rows[deepest.name][0] == f"{expected['posterior']['dice']:.3f}"
    assert float(rows[deepest.name][0]) > 0.7
    _screenshot(viewer, artifacts_dir / "hippocampus_3d_compare.png")


def test_shipped_abdominal_model_names_and_colours_four_organs(
    make_napari_viewer, qtbot, shared_data, artifacts_dir
) -> None:
    card, _, scan, truth_path = _held_out(shared_data, CHAOS, "chaos-t2")
    viewer, _, image, labels = _segment(make_napari_viewer, qtbot, CHAOS, scan)
    _assert_named_and_coloured(labels, card)
    assert card.class_names == ["background", "liver", "right kidney", "left kidney", "spleen"]
    (truth,) = viewer.open(str(truth_path), plugin=PLUGIN)
    liver = evaluate_case(np.asarray(labels.data), np.asarray(truth.data), image.scale, classes=[1], surface=False)
    assert liver["1"]["dice"] > 0.8
    truth.visible = False
    viewer.dims.set_current_step(0, int(np.argmax((np.asarray(labels.data) > 0).sum(axis=(1, 2)))))
    _screenshot(viewer, artifacts_dir / "chaos_organs_segment.png")


def test_abdominal_and_ct_samples_open_with_their_models_class_names_and_colours(make_napari_viewer) -> None:
    """File > Open Sample: the abdominal MRI and the CT each open as a scan and its reference
    labels on the scan's grid, the labels named and coloured as the shipped model for the task
    names and colours its predictions."""
    viewer = make_napari_viewer()
    for key, model, structures in (("sample_abdominal_mri", CHAOS, {1, 2, 3, 4}), ("sample_ct", "ct_liver_unet_3d", {1})):
        image, truth = viewer.open_sample(PLUGIN, key)
        assert isinstance(truth, Labels) and truth.data.shape == image.data.shape
        np.testing.assert_allclose(truth.scale, image.scale)
        assert set(np.unique(np.asarray(truth.data)).tolist()) == {0, *structures}
        _, card = load_checkpoint(resolve_checkpoint(model))
        _assert_named_and_coloured(truth, card)
