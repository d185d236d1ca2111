"""All four docks open in a 1366x768 and a 1920x1080 window: the window keeps its size (no dock
forces it taller than the screen), every dock scrolls instead of squashing, and no button of a
dock is cut off. Screenshots of both go to test-artifacts/ (docs/screenshots/ with
CASCADESEG_UPDATE_SCREENSHOTS=1)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from qtpy.QtWidgets import QAbstractButton, QScrollArea

PLUGIN = "napari-cascade"
DOCKS = ("Segment", "Compare stages and depths", "Correct mask", "Train")


def _open_all_docks(viewer) -> dict[str, object]:
    """Segment and Compare tabbed together, Correct mask and Train tabbed together, stacked in the
    right-hand column: the layout the README suggests."""
    docks = {}
    for index, name in enumerate(DOCKS):
        dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=index % 2 == 1)
        docks[name] = (dock, widget)
    return docks


def _clipped_buttons(widget) -> list[str]:
    """Buttons of ``widget`` that are shown but cut off by something other than a scroll area
    (what scrolls is reachable; what is squashed is not)."""
    clipped = []
    for button in widget.findChildren(QAbstractButton):
        if not button.isVisibleTo(widget) or button.objectName().startswith("qt_"):
            continue
        if button.height() < min(button.minimumSizeHint().height(), button.sizeHint().height()):
            clipped.append(button.text() or button.objectName())
    return clipped


@pytest.mark.parametrize("size", [(1366, 768), (1920, 1080)])
def test_four_docks_fit_the_screen(make_napari_viewer, qtbot, sample_crop, artifacts_dir, size) -> None:
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(*size)
    viewer.open_sample(PLUGIN, "sample_scan")
    docks = _open_all_docks(viewer)
    qtbot.wait(300)
    window.resize(*size)
    qtbot.wait(300)
    assert (window.width(), window.height()) == size, "a dock forced the window past the screen"
    for name, (_dock, widget) in docks.items():
        assert widget.findChild(QScrollArea, "cascade_scroll") is not None, name
        assert not _clipped_buttons(widget), (name, _clipped_buttons(widget))
    # Every dock of each tab pair is shown in turn and still fits.
    for name in ("Compare stages and depths", "Train"):
        docks[name][0].raise_()
    qtbot.wait(200)
    assert (window.width(), window.height()) == size
    pixels = viewer.screenshot(canvas_only=False, flash=False)
    assert pixels.shape[:2] == (size[1], size[0])
    from napari.utils.io import imsave

    name = f"all_docks_{size[0]}x{size[1]}.png"
    imsave(str(artifacts_dir / name), pixels)
    if os.environ.get("CASCADESEG_UPDATE_SCREENSHOTS") == "1":
        docs = Path(__file__).parents[2] / "docs" / "screenshots"
        imsave(str(docs / name), pixels)
