"""Bad input in the GUI: a clear napari notification, no traceback dialog, no new layer, and the
viewer still works afterwards."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from gui_helpers import add_volume, notification_messages, wait_for_job
from napari.utils.notifications import NotificationSeverity, notification_manager

from napari_cascade._qt.compare_widget import CompareWidget
from napari_cascade._qt.segment_widget import SegmentWidget


@pytest.fixture
def segment(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    qtbot.addWidget(widget)
    return viewer, widget


def _last_error() -> str:
    errors = [r for r in notification_manager.records if r.severity == NotificationSeverity.ERROR]
    assert errors, "expected an error notification"
    return str(errors[-1].message)


def _no_traceback_notifications() -> None:
    # An uncaught exception would reach napari as a notification carrying the exception itself.
    from napari.utils.notifications import ErrorNotification

    assert not [r for r in notification_manager.records if isinstance(r, ErrorNotification)]


def test_no_model_selected(segment, sample_crop) -> None:
    viewer, widget = segment
    add_volume(viewer, sample_crop[0], name="crop")
    widget.models.combo.setCurrentIndex(0)
    count = len(viewer.layers)
    assert not widget.run()
    assert "no model selected" in _last_error()
    assert len(viewer.layers) == count
    _no_traceback_notifications()


def test_2d_image_is_refused(segment, tiny_models, sample_crop) -> None:
    viewer, widget = segment
    widget.models.select_path(tiny_models["anu"])
    viewer.add_image(np.asarray(sample_crop[0].array[0, 4]), name="one slice")
    assert not widget.run()
    message = _last_error()
    assert "one slice" in message and "3D scan" in message
    _no_traceback_notifications()


def test_wrong_number_of_channels(segment, tiny_models, sample_crop) -> None:
    viewer, widget = segment
    add_volume(viewer, sample_crop[0], name="crop")  # one channel; the model wants T1c + FLAIR
    widget.models.select_path(tiny_models["two_channel"])
    assert not widget.run()
    message = _last_error()
    assert "expects 2 different channels" in message and "T1c" in message and "FLAIR" in message
    # A 4D (multi-channel in one layer) image opened without the plugin is named as such.
    widget.models.select_path(tiny_models["anu"])
    viewer.add_image(np.stack([sample_crop[0].array[0]] * 2), name="stacked")
    widget.channels.combos[0].setCurrentText("stacked")
    assert not widget.run()
    assert "multi-channel layer" in _last_error()
    _no_traceback_notifications()


def test_checkpoint_that_fails_to_load(segment, qtbot, tiny_models, sample_crop, tmp_path: Path) -> None:
    viewer, widget = segment
    add_volume(viewer, sample_crop[0], name="crop")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_models["anu"], broken)
    (broken / "model.safetensors").write_bytes(b"this is not a safetensors file")
    widget.models.select_path(broken)
    count = len(viewer.layers)
    assert widget.run()  # the card reads fine; the weights fail in the worker
    outcome = wait_for_job(qtbot, widget)
    assert outcome.error and "broken" in outcome.error
    assert "safetensors" in _last_error()
    assert len(viewer.layers) == count
    # A folder that is not a checkpoint at all is refused when browsing.
    (tmp_path / "not_a_model").mkdir()
    assert widget.models.select_path(tmp_path / "not_a_model") is None
    assert "model_card.json" in _last_error()
    # A folder of checkpoints (a training run, a models folder) lists every checkpoint inside.
    chosen = widget.models.select_path(tiny_models["anu"].parent)
    assert chosen is not None and widget.models.combo.count() >= 1 + 3
    # The viewer and the widget still work.
    widget.models.select_path(tiny_models["anu"])
    assert widget.run() and wait_for_job(qtbot, widget).ok
    _no_traceback_notifications()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: nothing is missing")
def test_missing_gpu(segment, tiny_models, sample_crop, make_napari_viewer, qtbot) -> None:
    viewer, widget = segment
    add_volume(viewer, sample_crop[0], name="crop")
    widget.models.select_path(tiny_models["anu"])
    widget.device.setCurrentIndex(widget.device.findData("cuda"))
    assert not widget.run()
    assert "CUDA is not available" in _last_error()
    compare = CompareWidget(viewer)
    qtbot.addWidget(compare)
    compare.models.select_path(tiny_models["anu"])
    compare.device.setCurrentIndex(compare.device.findData("cuda"))
    assert not compare.run()
    assert "CUDA is not available" in _last_error()
    assert not any("Traceback" in message for message in notification_messages())
