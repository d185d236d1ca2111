"""Correct-mask dock in a real napari viewer on a real LGG scan: paint/erase, every correction
tool and its undo, autosave + restore after a "crash", save, and adding to the training set."""

from __future__ import annotations

import errno
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from gui_helpers import add_labels_volume, add_volume, notification_messages, wait_for_job
from scipy import ndimage

from cascadeseg.io import Volume, load_labels, load_volume
from napari_cascade._qt.correction_widget import CorrectionWidget

pytestmark = pytest.mark.gui

# This radiologist mask has a 78-voxel island beside the main tumour (29056 voxels).
CASE = "TCGA_DU_5855_19951217"


@pytest.fixture(scope="module")
def lgg(shared_data: Path) -> tuple[Volume, Volume]:
    image = load_volume(shared_data / "lgg-flair" / "imagesTr" / f"{CASE}_0000.nii.gz")
    labels = load_labels(shared_data / "lgg-flair" / "labelsTr" / f"{CASE}.nii.gz", image)
    return image, labels


def _open(viewer, lgg, tmp_path: Path) -> tuple[CorrectionWidget, object, object]:
    image, labels = lgg
    scan = add_volume(viewer, image)[0]
    prediction = add_labels_volume(viewer, labels, image, "prediction")
    widget = CorrectionWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Correct mask")
    widget.set_folder.setText(str(tmp_path / "training_set"))
    widget.scan_combo.setCurrentText(scan.name)
    widget.prediction_combo.setCurrentText(prediction.name)
    return widget, scan, prediction


def test_paint_correct_and_undo_every_tool(make_napari_viewer, lgg, tmp_path: Path) -> None:
    viewer = make_napari_viewer()
    widget, scan, prediction = _open(viewer, lgg, tmp_path)
    truth = np.asarray(lgg[1].array)

    # Accept the prediction: a new working layer, the prediction itself untouched.
    mask = widget.accept_prediction(wait=True)
    assert mask.name == "edited · prediction" and widget.mask_layer() is mask
    assert np.array_equal(mask.data, truth) and mask.data is not prediction.data
    assert np.allclose(mask.scale, scan.scale) and np.allclose(mask.translate, scan.translate)

    # napari's own paint and erase on the working mask.
    z = int(np.argmax((truth == 1).sum(axis=(1, 2))))
    viewer.dims.set_current_step(0, z)
    mask.brush_size = 5
    mask.paint((z, 10, 10), 1)  # paint a blob far from the tumour
    assert mask.data[z, 10, 10] == 1
    inside = np.argwhere(ndimage.binary_erosion(truth[z] == 1, iterations=8))
    cy, cx = (int(v) for v in inside[len(inside) // 2])
    mask.paint((z, cy, cx), 0)  # erase a hole inside the tumour
    assert mask.data[z, cy, cx] == 0
    painted = np.array(mask.data)
    hole = (truth == 1) & (painted == 0)
    assert hole.sum() > 5

    # Keep largest component: removes the painted blob and the real 78-voxel island; undo/redo.
    widget.label_spin.setValue(1)
    removed = widget.keep_largest(wait=True)
    components, count = ndimage.label(mask.data == 1, structure=np.ones((3, 3, 3)))
    assert count == 1 and removed == int((painted != mask.data).sum()) >= 78 + 5
    assert widget.undo(wait=True) == "keep largest component"
    assert np.array_equal(mask.data, painted)
    assert widget.redo(wait=True) == "keep largest component"
    assert not np.array_equal(mask.data, painted)
    widget.undo(wait=True)

    # Remove islands below 100 voxels: the island and the small blob go, the tumour stays.
    widget.islands_spin.setValue(100)
    widget.remove_islands(wait=True)
    assert mask.data[z, 10, 10] == 0 and int((mask.data == 1).sum()) > 25000
    widget.undo(wait=True)
    assert np.array_equal(mask.data, painted)

    # Fill holes closes the erased hole, in 3D (tumour above and below) and slice by slice.
    for per_slice in (False, True):
        assert widget.fill_holes(per_slice=per_slice, wait=True) >= int(hole.sum())
        assert np.all(mask.data[hole] == 1)
        assert widget.undo(wait=True).startswith("fill holes")
        assert np.array_equal(mask.data, painted)

    # Interpolate between two hand-drawn slices.
    keys = np.flatnonzero((truth == 1).any(axis=(1, 2)))
    lo, hi = int(keys[2]), int(keys[2]) + 3
    cleared = mask.data.copy()
    cleared[lo + 1 : hi] = 0
    mask.data_setitem(np.nonzero(mask.data != cleared), 0)
    before = np.array(mask.data)
    assert widget.interpolate(wait=True) > 0
    assert all(mask.data[k].any() for k in range(lo + 1, hi))
    widget.undo(wait=True)
    assert np.array_equal(mask.data, before)

    # Undo of the accept step leaves an empty working mask; the buttons follow the history.
    assert "Undo" in widget.undo_button.text() and widget.undo_button.isEnabled()
    assert np.array_equal(prediction.data, truth)  # the prediction was never edited

    # Accepting again never overwrites the painted working mask: the copy goes to a new layer.
    kept = np.array(mask.data)
    second = widget.accept_prediction(wait=True)
    assert second is not mask and np.array_equal(mask.data, kept) and np.array_equal(second.data, truth)
    # The label value the tools edit follows napari's label picker.
    second.selected_label = 3
    assert widget.label_spin.value() == 3


def test_autosave_restore_save_and_training_set(
    make_napari_viewer, lgg, tmp_path: Path, qtbot, monkeypatch: pytest.MonkeyPatch, artifacts_dir: Path
) -> None:
    viewer = make_napari_viewer()
    widget, scan, _ = _open(viewer, lgg, tmp_path)
    mask = widget.accept_prediction(wait=True)
    recovery_file = widget.recovery.path_for(lgg[0].source)
    recovery_file.unlink(missing_ok=True)

    # The QTimer writes the recovery file once the mask changed.
    widget.autosave_spin.setValue(1)
    widget.keep_largest(wait=True)
    qtbot.waitUntil(recovery_file.is_file, timeout=5000)
    edited = np.array(mask.data)
    widget.close()
    viewer.close()  # "crash": the edits were never saved

    # Reopening the scan offers the recovery; restoring gives back exactly the edited mask.
    viewer = make_napari_viewer()
    widget = CorrectionWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Correct mask")
    widget.set_folder.setText(str(tmp_path / "training_set"))
    add_volume(viewer, lgg[0])
    assert widget.pending_recovery is not None and not widget.recovery_box.isHidden()
    assert "edited · prediction" in widget.recovery_label.text()
    restored = widget.restore_recovery()
    assert restored.name == "recovered · edited · prediction"
    assert np.array_equal(restored.data, edited) and widget.mask_layer() is restored

    # A clean save writes the mask with the scan's geometry and clears the recovery file.
    saved = widget.save_mask(tmp_path / "corrected.nii.gz", wait=True)
    assert saved is not None and not recovery_file.exists()
    reread = load_labels(saved, lgg[0])
    assert np.array_equal(reread.array, edited)

    # Add to the training set twice: the second is kept as a new version, never overwritten.
    assert widget.add_to_training_set()
    assert wait_for_job(qtbot, widget).ok
    assert widget.add_to_training_set()
    assert wait_for_job(qtbot, widget).ok
    assert widget.last_added.case_id == f"{CASE}_v2"
    folder = tmp_path / "training_set"
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == [f"{CASE}.nii.gz", f"{CASE}_v2.nii.gz"]
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz" and len(meta["channel_names"]) == 1
    slices = int(np.count_nonzero(edited.any(axis=(1, 2))))
    assert f"2 case(s), {2 * slices} annotated slice(s)" in widget.set_summary.text()

    # A read-only training-set folder: a clear message from the worker, the set and mask untouched.
    real_mkstemp = tempfile.mkstemp

    def read_only(*args: object, **kwargs: object):
        if Path(str(kwargs.get("dir", ""))) == folder:  # root ignores chmod: refuse like a ro mount
            raise PermissionError(errno.EROFS, "Read-only file system")
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    assert widget.add_to_training_set()
    outcome = wait_for_job(qtbot, widget)
    monkeypatch.undo()
    assert outcome.error is not None and "read-only" in outcome.error
    assert any("read-only" in m for m in notification_messages())
    assert len(list((folder / "labelsTr").iterdir())) == 2 and np.array_equal(restored.data, edited)

    screenshot = artifacts_dir / "correction_widget.png"
    viewer.window.screenshot(path=str(screenshot), canvas_only=False)
    print(f"screenshot of the Correct mask dock: {screenshot}")

    # Bad input: an empty mask is a notification, and nothing is written.
    restored.data_setitem(np.nonzero(restored.data), 0)
    assert widget.add_to_training_set()
    assert "is empty" in wait_for_job(qtbot, widget).error
    assert any("is empty" in m for m in notification_messages())
    assert len(list((folder / "labelsTr").iterdir())) == 2
    widget.close()


def test_the_training_set_names_classes_as_the_prediction_did(make_napari_viewer, lgg, tmp_path: Path, qtbot) -> None:
    """A Segment result names its classes (features, from its model card); the working mask made
    from it keeps them, and "Add to training set" writes them into dataset.json's labels, so that
    fine-tuning on the set trains the model's classes under their own names."""
    viewer = make_napari_viewer()
    widget, _, prediction = _open(viewer, lgg, tmp_path)
    prediction.features = {"index": [0, 1], "class": ["background", "FLAIR abnormality"]}
    mask = widget.accept_prediction(wait=True)
    assert list(mask.features["class"]) == ["background", "FLAIR abnormality"]
    assert widget.add_to_training_set()
    assert wait_for_job(qtbot, widget).ok
    meta = json.loads((tmp_path / "training_set" / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "FLAIR abnormality": 1}
    widget.close()


def test_defaults_newest_prediction_never_the_ground_truth(make_napari_viewer, qtbot, sample_crop, tiny_models) -> None:
    """With the ground truth open and two Segment results, the dock offers the newest result as
    the prediction and a new working mask made from it; its scan is the image it was made from."""
    from napari_cascade._qt.segment_widget import SegmentWidget

    viewer = make_napari_viewer()
    image_volume, truth_volume = sample_crop
    (scan,) = add_volume(viewer, image_volume, name="crop")
    truth = add_labels_volume(viewer, truth_volume, image_volume, "crop ground truth")
    segment = SegmentWidget(viewer)
    qtbot.addWidget(segment)
    segment.models.select_path(tiny_models["anu"])
    for depth in (4, 2):
        segment.depth.setCurrentIndex(segment.depth.findData(depth))
        assert segment.run() and wait_for_job(qtbot, segment).ok
    newest = next(layer for layer in viewer.layers if layer.name == "crop · tiny-anu L2")
    # A labels layer added after the predictions (a ground truth opened late) changes nothing.
    late = add_labels_volume(viewer, truth_volume, image_volume, "late ground truth")
    widget = CorrectionWidget(viewer)
    qtbot.addWidget(widget)
    assert widget.prediction_combo.currentText() == newest.name
    assert widget.mask_combo.currentText() not in (truth.name, late.name)
    assert widget.scan_combo.currentText() == scan.name
    mask = widget.accept_prediction(wait=True)
    assert mask.name == f"edited · {newest.name}" and np.array_equal(mask.data, newest.data)
    # A new dock (or a refresh) now picks that working mask, made from the newest prediction.
    again = CorrectionWidget(viewer)
    qtbot.addWidget(again)
    assert again.mask_combo.currentText() == mask.name and again.prediction_combo.currentText() == newest.name


def test_correct_tools_on_a_600_slice_ct_never_freeze(make_napari_viewer, qtbot, large_ct_file) -> None:
    """Open a 512x512x600 CT from the event loop (read in the background), accept its organ map
    as the working mask, keep the liver's largest component, fill holes, undo: no GUI gap over
    200 ms (each used to freeze the window for 0.6-11 s); opening and accepting, which add layers,
    no longer than napari itself takes to add one."""
    from freeze_probe import FREEZE_BOUND_MS, allowed_ms, last_collections_ms, measure

    from napari_cascade._qt.background_read import pending_reads

    scan_path, organs_path = large_ct_file
    viewer = make_napari_viewer(show=True)
    widget = CorrectionWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Correct mask")
    gaps, collections = {}, {}
    # Opening adds the viewer's first layers: held to what napari needs for one of them.
    first_layer = allowed_ms(viewer, "image", "labels")
    gaps["open"] = measure(lambda: viewer.open([str(scan_path), str(organs_path)], plugin="napari-cascade"),
                           lambda: pending_reads() == 0 and len(viewer.layers) == 2)
    collections["open"] = last_collections_ms()
    # The scan lies under its label map whichever file was read first.
    assert [layer.name for layer in viewer.layers] == ["large_ct", "large_ct_organs_seg"]
    scan = next(layer for layer in viewer.layers if layer.name == "large_ct")
    organs = next(layer for layer in viewer.layers if layer.name == "large_ct_organs_seg")
    assert scan.data.shape == (600, 512, 512) and organs.data.shape == (600, 512, 512)
    assert widget.prediction_combo.currentText() == organs.name and widget.scan_combo.currentText() == scan.name
    new_layer = allowed_ms(viewer)
    gaps["accept"] = measure(widget.accept_button.click, lambda: not widget.busy)
    collections["accept"] = last_collections_ms()
    mask = widget.mask_layer()
    assert mask is not organs and np.array_equal(mask.data[300], organs.data[300])
    widget.label_spin.setValue(5)  # the liver
    liver_before = int(np.count_nonzero(mask.data[::4] == 5))
    gaps["keep largest"] = measure(widget.largest_button.click, lambda: not widget.busy)
    gaps["fill holes"] = measure(widget.fill3d_button.click, lambda: not widget.busy)
    gaps["undo"] = measure(widget.undo_button.click, lambda: not widget.busy)
    assert int(np.count_nonzero(mask.data[::4] == 5)) <= liver_before
    # Adding a layer may take what napari itself needs for one (a bit more than 200 ms on a busy
    # 2-core machine); nothing the dock does may add to it; the tools stay under 200 ms. The open's
    # second layer goes into a viewer that already holds the first (what new_layer measures), and
    # one insertion timed before the open is a noisy floor on a loaded machine (CI: 547 ms against
    # 522): the open is held to the slower of the two.
    bounds = {"open": max(first_layer, new_layer), "accept": new_layer}
    print(f"GUI gaps (ms): { {a: round(g) for a, g in gaps.items()} }; floors: open {first_layer:.0f}, "
          f"accept {new_layer:.0f}; garbage collections meanwhile (longest, total ms): "
          f"{ {a: (round(c[0]), round(c[1])) for a, c in collections.items()} }")
    slow = {action: (round(gap), round(bounds.get(action, FREEZE_BOUND_MS)))
            for action, gap in gaps.items() if gap > bounds.get(action, FREEZE_BOUND_MS)}
    assert not slow, (f"GUI gaps over their bound (measured, bound in ms): {slow}; all gaps: {gaps}; "
                      f"garbage collections (longest, total ms): {collections}")
