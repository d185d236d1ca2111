"""Volume <-> napari layer data: the one place where geometry becomes layer transforms.

Conventions (docs/architecture.md): a :class:`~cascadeseg.io.Volume` holds ``(C, Z, Y, X)``
arrays with ``spacing`` in array order, ``origin`` (LPS, x-y-z) and an ITK ``direction``. napari
takes ``scale`` in array order, ``translate`` in array order and a ``rotate`` matrix; its layer
transform is ``world = rotate @ diag(scale) @ index + translate``, which is exactly
:meth:`Volume.affine_zyx`. So every layer keeps ``scale == spacing`` (measurements in mm), and
scans whose direction is not the identity (flipped axes, oblique DICOM) also get ``rotate``,
so stages, masks and the scan of one study overlay in physical space.

The full geometry also travels in ``layer.metadata["cascadeseg"]`` so that the writer can restore
the source file's orientation exactly and the segment widget can rebuild a Volume from layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cascadeseg.errors import VolumeError
from cascadeseg.io import Volume

GEOMETRY_KEY = "cascadeseg"
# ITK keeps axes x-y-z, napari z-y-x: this permutation is its own inverse.
_ZYX = [2, 1, 0]
# Used only when the engine does not provide a CT preset (it should: cascadeseg.preprocessing).
_FALLBACK_CT_WINDOW = (-200.0, 200.0)
MRI_PERCENTILES = (0.5, 99.5)

LayerDataTuple = tuple[Any, dict[str, Any], str]


def scan_stem(source: Path | str | None, default: str = "scan") -> str:
    """A short display name for a file or folder: no ``.nii.gz`` and no MSD channel suffix."""
    if source is None:
        return default
    name = Path(source).name
    for suffix in (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".dcm"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    stem, _, tail = name.rpartition("_")
    # MSD / nnU-Net channel files are <case>_0000: the case is what the user recognises.
    if stem and len(tail) == 4 and tail.isdigit():
        name = stem
    return name or default


def geometry_metadata(volume: Volume, **extra: Any) -> dict[str, Any]:
    """JSON-able geometry of ``volume`` for ``layer.metadata[GEOMETRY_KEY]``."""
    info: dict[str, Any] = {
        "spacing": [float(s) for s in volume.spacing],
        "origin": [float(o) for o in volume.origin],
        "direction": np.asarray(volume.direction, dtype=float).reshape(3, 3).tolist(),
        "shape": list(volume.spatial_shape),
        "modality": volume.modality,
        "source": str(volume.source) if volume.source is not None else None,
        "channel_names": list(volume.channel_names),
        "reader_meta": dict(volume.meta),
    }
    info.update(extra)
    return info


def transform_kwargs(volume: Volume) -> dict[str, Any]:
    """napari ``scale``/``translate`` (and ``rotate`` when the direction is not the identity)."""
    kwargs: dict[str, Any] = {
        "scale": tuple(float(s) for s in volume.spacing),
        "translate": tuple(float(o) for o in np.asarray(volume.origin, dtype=float)[_ZYX]),
    }
    direction = np.asarray(volume.direction, dtype=float).reshape(3, 3)
    if not np.allclose(direction, np.eye(3), atol=1e-6):
        kwargs["rotate"] = direction[np.ix_(_ZYX, _ZYX)]
    return kwargs


def ct_window() -> tuple[float, float]:
    """The engine's default CT display window (abdomen preset, HU)."""
    try:
        from cascadeseg.preprocessing import CT_WINDOWS
    except ImportError:
        return _FALLBACK_CT_WINDOW
    window = CT_WINDOWS.get("abdomen", _FALLBACK_CT_WINDOW)
    return float(window[0]), float(window[1])


def display_limits(channel: np.ndarray, modality: str | None) -> tuple[float, float]:
    """Contrast limits: the CT window for CT, robust percentiles of the foreground otherwise.

    Percentiles are taken on a strided subsample (about 1M voxels) because display limits do not
    need every voxel and a 512x512x600 CT should open without a second pass over all of it.
    """
    if modality == "CT":
        return ct_window()
    step = max(1, int(round((channel.size / 1_000_000) ** (1 / 3))))
    sample = np.asarray(channel[::step, ::step, ::step], dtype=np.float32).ravel()
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 1.0
    lowest = float(sample.min())
    # MRI background is a large block of the minimum value; it would drag the low percentile down.
    foreground = sample[sample > lowest]
    values = foreground if foreground.size > 100 else sample
    lo, hi = (float(v) for v in np.percentile(values, MRI_PERCENTILES))
    if hi <= lo:
        lo, hi = lowest, float(sample.max())
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def channel_layer_name(volume: Volume, index: int, stem: str | None = None) -> str:
    file_stem = scan_stem(volume.source)
    stem = stem or file_stem
    names = volume.channel_names
    # A single channel named after its own file ("T1post [T1post]") says nothing twice.
    if volume.num_channels == 1 and (not names or names[0] in file_stem or file_stem in names[0]):
        return stem
    channel = names[index] if index < len(names) and names[index] else f"channel {index}"
    return f"{stem} [{channel}]"


def image_layers(volume: Volume, name: str | None = None) -> list[LayerDataTuple]:
    """One image layer per channel, named by modality / channel name, on the scan's grid."""
    if volume.is_label:
        raise VolumeError(
            f"{volume.source or 'volume'}: expected an image (C, Z, Y, X), got a label map of shape "
            f"{volume.array.shape}"
        )
    stem = name or scan_stem(volume.source)
    geometry = geometry_metadata(volume)
    layers: list[LayerDataTuple] = []
    for index in range(volume.num_channels):
        channel = volume.array[index]  # a view: no copy of the scan
        kwargs: dict[str, Any] = {
            "name": channel_layer_name(volume, index, stem),
            "contrast_limits": display_limits(channel, volume.modality),
            "colormap": "gray",
            # Channels of one scan lie on top of each other; show the first, let the user toggle.
            "visible": index == 0,
            "metadata": {GEOMETRY_KEY: {**geometry, "channel_index": index}},
            **transform_kwargs(volume),
        }
        layers.append((channel, kwargs, "image"))
    return layers


def labels_layer(
    labels: np.ndarray, reference: Volume, name: str, **extra_metadata: Any
) -> LayerDataTuple:
    """A labels layer on ``reference``'s grid, carrying its geometry for the writer."""
    if labels.shape != reference.spatial_shape:
        raise VolumeError(
            f"label map '{name}' has shape {labels.shape}, expected the image grid {reference.spatial_shape}"
        )
    metadata = {GEOMETRY_KEY: geometry_metadata(reference, **extra_metadata)}
    return labels, {"name": name, "metadata": metadata, **transform_kwargs(reference)}, "labels"


def _geometry_from_transform(scale: Any, translate: Any, rotate: Any) -> dict[str, Any]:
    """Geometry of a layer made inside napari (no metadata): read back from its transform."""
    rotate = np.asarray(rotate if rotate is not None else np.eye(3), dtype=float)[-3:, -3:]
    return {
        "spacing": np.asarray(scale, dtype=float)[-3:].tolist(),
        "origin": np.asarray(translate, dtype=float)[-3:][_ZYX].tolist(),
        "direction": rotate[np.ix_(_ZYX, _ZYX)].tolist(),
        "modality": None,
        "source": None,
        "channel_names": [],
        "reader_meta": {},
    }


def layer_geometry(layer: Any) -> dict[str, Any]:
    """The geometry a layer carries: from the reader's metadata, else from its transform."""
    stored = getattr(layer, "metadata", {}).get(GEOMETRY_KEY)
    if stored and "spacing" in stored:
        return dict(stored)
    return _geometry_from_transform(layer.scale, layer.translate, layer.rotate)


def geometry_from_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Same as :func:`layer_geometry` for the ``meta`` dict napari hands to writers."""
    stored = (meta.get("metadata") or {}).get(GEOMETRY_KEY)
    if stored and "spacing" in stored:
        return dict(stored)
    return _geometry_from_transform(
        meta.get("scale", (1.0, 1.0, 1.0)), meta.get("translate", (0.0, 0.0, 0.0)), meta.get("rotate")
    )


def volume_from_geometry(array: np.ndarray, geometry: dict[str, Any]) -> Volume:
    source = geometry.get("source")
    return Volume(
        array=array,
        spacing=tuple(float(s) for s in geometry["spacing"]),  # type: ignore[arg-type]
        origin=tuple(float(o) for o in geometry["origin"]),  # type: ignore[arg-type]
        direction=np.asarray(geometry["direction"], dtype=float).reshape(3, 3),
        channel_names=list(geometry.get("channel_names") or []),
        modality=geometry.get("modality"),
        source=Path(source) if source else None,
        meta=dict(geometry.get("reader_meta") or {}),
    )


def volume_from_image_layers(layers: Sequence[Any]) -> Volume:
    """Stack image layers (one per channel, same grid) into one ``(C, Z, Y, X)`` Volume.

    The geometry is the first layer's; the others must share its grid, since a model reads the
    channels voxel by voxel.
    """
    if not layers:
        raise VolumeError("no image layer selected: pick the layer(s) holding the scan's channels")
    first = layers[0]
    for layer in layers:
        if np.asarray(layer.data).ndim != 3 or getattr(layer, "rgb", False):
            raise VolumeError(
                f"layer '{layer.name}' has shape {tuple(np.shape(layer.data))}: expected a 3D scan "
                "(Z, Y, X); 2D images and RGB pictures cannot be segmented as volumes"
            )
        if layer.data.shape != first.data.shape or not np.allclose(layer.scale[-3:], first.scale[-3:]):
            raise VolumeError(
                f"layer '{layer.name}' (shape {layer.data.shape}, spacing {tuple(layer.scale)}) is not on the "
                f"grid of '{first.name}' (shape {first.data.shape}, spacing {tuple(first.scale)}): "
                "channels of one scan must share one voxel grid"
            )
    geometry = layer_geometry(first)
    if len(layers) == 1:
        array = np.asarray(first.data)[None]  # a view, not a copy
    else:
        array = np.stack([np.asarray(layer.data) for layer in layers])
    names = [_channel_name(layer) for layer in layers]
    volume = volume_from_geometry(array, geometry)
    volume.channel_names = names
    return volume


def _channel_name(layer: Any) -> str:
    geometry = layer.metadata.get(GEOMETRY_KEY) or {}
    names = geometry.get("channel_names") or []
    index = geometry.get("channel_index", 0)
    return names[index] if index < len(names) else layer.name


def reference_volume(layer: Any) -> Volume:
    """A label-shaped Volume on ``layer``'s grid (no voxels copied): the reference for results."""
    shape = tuple(np.shape(layer.data)[-3:])
    return volume_from_geometry(np.broadcast_to(np.uint8(0), shape), layer_geometry(layer))


def class_style(class_values: Sequence[int], class_names: Sequence[str], class_colors: dict[int, str]) -> dict[str, Any]:
    """napari Labels keywords from a model card's classes: ``features`` name each value (napari's
    status bar shows the class under the cursor, and a saved layer keeps the table), and where the
    card gives colours a ``colormap`` paints the classes in them (values without one keep napari's
    own label colours)."""
    style: dict[str, Any] = {"features": {"index": list(class_values), "class": list(class_names)}}
    if class_colors:
        from napari.utils.colormaps import DirectLabelColormap, label_colormap

        cyclic = label_colormap()
        colors: dict[Any, Any] = {None: "transparent", 0: "transparent"}
        for value in class_values:
            if value:
                colors[value] = class_colors.get(value) or cyclic.map(np.array([value]))[0]
        style["colormap"] = DirectLabelColormap(color_dict=colors)
    return style
