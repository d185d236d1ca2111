"""Helpers shared by the GUI tests (imported as a module: tests/gui is on sys.path)."""

from __future__ import annotations

import numpy as np

from cascadeseg.io import Volume


def crop_volume(volume: Volume, z: slice, y: slice, x: slice) -> Volume:
    """A crop with its true geometry: the origin moves to the crop's first voxel."""
    index = np.array([z.start or 0, y.start or 0, x.start or 0, 1.0])
    world_zyx = volume.affine_zyx() @ index  # rows z, y, x of LPS
    origin_xyz = tuple(float(v) for v in world_zyx[:3][::-1])
    array = volume.array[..., z, y, x] if volume.is_label else volume.array[:, z, y, x]
    return volume.with_array(np.ascontiguousarray(array), origin=origin_xyz)


def add_volume(viewer, volume: Volume, name: str | None = None):
    """Add a Volume to the viewer through the plugin's own layer conversion."""
    from napari_cascade._layers import image_layers

    layers = []
    for data, kwargs, _ in image_layers(volume, name=name):
        kwargs["visible"] = True
        layers.append(viewer.add_image(data, **kwargs))
    return layers


def add_labels_volume(viewer, labels: Volume, reference: Volume, name: str):
    from napari_cascade._layers import labels_layer

    data, kwargs, _ = labels_layer(np.asarray(labels.array), reference, name)
    return viewer.add_labels(data, **kwargs)


def wait_for_job(qtbot, widget, timeout_ms: int = 60_000):
    """Block until the widget is idle (its job panel, and for docks that add their results a few
    layers per event-loop turn, that too); returns the job's last outcome."""
    qtbot.waitUntil(lambda: not getattr(widget, "busy", widget.job.busy), timeout=timeout_ms)
    return widget.job.last_outcome


def notification_messages() -> list[str]:
    from napari.utils.notifications import notification_manager

    return [str(record.message) for record in notification_manager.records]
