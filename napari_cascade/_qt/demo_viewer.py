"""The GUI half of ``cascadeseg demo``: napari with the sample, both widgets docked and running.

:func:`setup_demo` works on any viewer (the tests pass theirs); :func:`run_demo_viewer` makes the
window and enters napari's event loop.
"""

from __future__ import annotations

from typing import Any

import napari

from cascadeseg.cli.demo import DemoModels

from .compare_widget import CompareWidget
from .segment_widget import SegmentWidget

PLUGIN = "napari-cascade"
# The manifest's sample keys of cascadeseg.shipped.SAMPLES.
SAMPLE_KEYS = {"brain": "sample_scan", "abdomen": "sample_abdominal_mri", "ct": "sample_ct"}


def setup_demo(viewer: napari.Viewer, models: DemoModels, depth: int | None = None,
               device: str = "auto", sample: str = "brain") -> tuple[SegmentWidget, CompareWidget]:
    """Open a bundled sample, dock Segment and Compare, run the segmentation, then the comparison
    (one after the other: on a small CPU two jobs at once would only slow each other down)."""
    scan, truth = viewer.open_sample(PLUGIN, SAMPLE_KEYS[sample])
    _, segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    # Tabbed: the compare dock needs the height for its metrics table.
    compare_dock, compare = viewer.window.add_plugin_dock_widget(PLUGIN, "Compare stages and depths", tabify=True)
    for widget in (segment, compare):
        widget.models.select_path(models.main)
        widget.device.setCurrentIndex(max(widget.device.findData(device), 0))
    if depth is not None:
        segment.depth.setCurrentIndex(max(segment.depth.findData(depth), 0))
    compare.ground_truth.setCurrentText(truth.name)
    viewer.dims.set_point(0, _lesion_slice_position(scan, truth))
    viewer.reset_view()

    def compare_after_segment(outcome: Any) -> None:
        segment.job.finished.disconnect(compare_after_segment)
        if outcome.ok:
            compare_dock.raise_()
            compare.run()

    segment.job.finished.connect(compare_after_segment)
    segment.run()
    return segment, compare


def _lesion_slice_position(scan: Any, truth: Any) -> float:
    """World z of the slice with the most ground truth: where there is something to compare."""
    import numpy as np

    area = np.asarray(truth.data).reshape(truth.data.shape[0], -1).astype(bool).sum(axis=1)
    return float(scan.data_to_world((int(area.argmax()), 0, 0))[0])


def run_demo_viewer(models: DemoModels, depth: int | None = None, device: str = "auto", sample: str = "brain") -> int:
    viewer = napari.Viewer(title="napari-cascade demo")
    setup_demo(viewer, models, depth=depth, device=device, sample=sample)
    napari.run()
    return 0
