import sys
sys.path.insert(0, "/work/wt-gui/tests/gui")
from gui_helpers import add_volume, wait_for_job

def test_close(make_napari_viewer, qtbot, sample_crop, tiny_models, capfd):
    from napari_cascade._qt.segment_widget import SegmentWidget
    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w)
    add_volume(viewer, sample_crop[0], name="crop")
    w.models.select_path(tiny_models["anu"])
    assert w.run()
    wait_for_job(qtbot, w)
    assert w.run()
    wait_for_job(qtbot, w)
    viewer.close()
    qtbot.wait(500)
    out, err = capfd.readouterr()
    print("ERR:", err)
    assert "deleted" not in err
