"""npe2 reader: NIfTI, MHA/MHD, NRRD, DICOM series folders, MSD / nnU-Net datasets, folders of scans.

All decoding is the engine's (:mod:`cascadeseg.io`), and so is the decision whether a file is a
label map (:func:`cascadeseg.io.label_maps.looks_like_label_map`); this module only decides what
a path is and turns the resulting Volumes into layers (:mod:`napari_cascade._layers`).

What a path opens as:

* a scan file -> one image layer per channel (an MSD ``imagesTr/<case>_0000.nii.gz`` brings all
  of the case's channels); a label file -> a labels layer;
* a DICOM series folder -> image layer(s), one per series;
* an MSD / nnU-Net dataset folder (``imagesTr/`` inside) -> its first case with its labels, and a
  notification saying how many cases the set holds (opening 80 patients at once helps nobody);
* any other folder of scan files (a BraTS case: ``*_t1.nii.gz``, ``*_fla.nii.gz``, ``seg.nii.gz``)
  -> each file, images first, then label maps on top.

Reading a scan takes 0.1-3 s (decompression, DICOM parsing, a 512x512x600 CT), and napari calls a
reader on its GUI thread. So when the reader is called from inside the running event loop (File >
Open, drag and drop), it hands the reading to a worker thread and returns napari's "no layers"
sentinel; the layers arrive when the worker is done (:mod:`napari_cascade._qt.background_read`).
Called outside the event loop (a script, before ``napari.run()``), it reads at once and returns
the layers, as ``viewer.open`` promises.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cascadeseg.errors import InputFileError
from cascadeseg.io import Volume

from ._layers import LayerDataTuple, image_layers, labels_layer, scan_stem

SCAN_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr", ".dcm", ".ima")
# Formats a folder of scans is made of (DICOM folders are series, read as such).
_VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")
# napari's "this reader handled the path and adds its layers itself" value.
NO_LAYERS: list[Any] = [(None,)]

ReaderFunction = Callable[[str | Sequence[str]], list[LayerDataTuple]]


def get_reader(path: str | Sequence[str]) -> ReaderFunction | None:
    """npe2 entry point: a reader for ``path``, or ``None`` when it is not ours."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths or not all(_is_ours(Path(p)) for p in paths):
        return None
    return read_paths


def _is_ours(path: Path) -> bool:
    if path.is_dir():
        return is_dataset_folder(path) or _looks_like_dicom_folder(path) or bool(scan_files(path))
    return path.name.lower().endswith(SCAN_SUFFIXES)


def is_dataset_folder(path: Path) -> bool:
    return (path / "imagesTr").is_dir()


def scan_files(folder: Path) -> list[Path]:
    """The NIfTI / MHA / NRRD files directly inside ``folder`` (sorted; hidden files skipped)."""
    return sorted(
        entry for entry in folder.iterdir()
        if entry.is_file() and not entry.name.startswith(".") and entry.name.lower().endswith(_VOLUME_SUFFIXES)
    )


def _looks_like_dicom_folder(path: Path) -> bool:
    """A folder with a DICOM file among its first entries (the engine checks the preamble)."""
    from cascadeseg.io.dicom import is_dicom_file

    return any(entry.is_file() and is_dicom_file(entry) for entry in sorted(path.iterdir())[:20])


def read_paths(path: str | Sequence[str]) -> list[Any]:
    """Read every path into layer data tuples; from inside the event loop, in the background
    (see the module docstring). Engine errors propagate: napari shows them."""
    paths = [Path(p) for p in ([path] if isinstance(path, (str, Path)) else path)]
    from ._qt.background_read import read_in_background

    if read_in_background(paths, read_now):
        return NO_LAYERS
    return read_now(paths)


def read_now(paths: Sequence[Path]) -> list[LayerDataTuple]:
    """Read every path at once, on the calling thread."""
    layers: list[LayerDataTuple] = []
    for item in paths:
        layers.extend(read_path(Path(item)))
    return layers


def read_path(path: Path) -> list[LayerDataTuple]:
    from cascadeseg.io import load_volume

    if path.is_dir() and is_dataset_folder(path):
        return read_dataset(path)
    if path.is_dir() and _looks_like_dicom_folder(path):
        return read_dicom_folder(path)
    if path.is_dir():
        return read_scan_folder(path)
    return read_file(path, load_volume(path))


def read_file(path: Path, volume: Volume) -> list[LayerDataTuple]:
    """One read file as an image layer per channel, or as a labels layer if it is a label map."""
    from cascadeseg.io.label_maps import looks_like_label_map

    if looks_like_label_map(volume, path):
        return [volume_as_labels(volume, name=scan_stem(path))]
    return image_layers(volume)


def read_scan_folder(folder: Path) -> list[LayerDataTuple]:
    """Every scan file of a plain folder (a BraTS case: one file per modality plus label maps):
    images first, label maps after, so the labels lie on top."""
    from cascadeseg.io import load_volume

    files = scan_files(folder)
    if not files:
        raise InputFileError(
            f"{folder}: holds no scan (expected NIfTI / MHA / NRRD files, a DICOM series or imagesTr/)"
        )
    images: list[LayerDataTuple] = []
    labels: list[LayerDataTuple] = []
    for path in files:
        for layer in read_file(path, load_volume(path, whole_case=False)):
            (labels if layer[2] == "labels" else images).append(layer)
    return images + labels


def read_dicom_folder(folder: Path) -> list[LayerDataTuple]:
    """Every series of a DICOM folder; several series open side by side, named by description
    (the engine's single-volume reader would ask which one, which a file dialog cannot answer)."""
    from cascadeseg.io import list_series, load_volume

    try:  # the common case, one series: a single scan of the folder
        return image_layers(load_volume(folder))
    except InputFileError:
        series = list_series(folder)
        if len(series) <= 1:
            raise
    layers: list[LayerDataTuple] = []
    for item in series:
        volume = load_volume(folder, series_uid=item.uid)
        if not item.description:  # the layer name must still tell the series apart
            volume.channel_names = [f"series ...{item.uid[-8:]}"]
        layers.extend(image_layers(volume, name=folder.name))
    return layers


def read_dataset(folder: Path) -> list[LayerDataTuple]:
    """The first case of an MSD / nnU-Net dataset, with its label map when there is one."""
    from cascadeseg.io import load_dataset

    cases = load_dataset(folder)
    if not cases:  # the engine should already have raised; keep the message ours either way
        raise InputFileError(f"{folder}: dataset folder holds no cases (expected imagesTr/<case>_0000.nii.gz)")
    image, labels = cases[0].load()
    stem = scan_stem(image.source)
    layers = image_layers(image, name=stem)
    if labels is not None:
        layers.append(labels_layer(np.asarray(labels.array), image, f"{stem} labels"))
    _notify_dataset(folder, len(cases), stem)
    return layers


def _notify_dataset(folder: Path, count: int, opened: str) -> None:
    if count > 1:
        try:
            from napari.utils.notifications import show_info
        except ImportError:  # reading without napari (scripts): nothing to tell
            return
        show_info(
            f"Opened '{opened}', the first of {count} cases of {folder.name}; "
            f"open imagesTr/<case>_0000.nii.gz for another case."
        )


def volume_as_labels(volume: Volume, name: str) -> LayerDataTuple:
    """A single-channel volume read from a label file, as a labels layer on its own grid."""
    from cascadeseg.io.checks import as_label_array

    array = as_label_array(np.asarray(volume.array[0]), name)
    return labels_layer(array, volume.with_array(array), name)
