"""npe2 reader: NIfTI, MHA/MHD, NRRD, DICOM series folders and MSD / nnU-Net datasets.

All decoding is the engine's (:mod:`cascadeseg.io`); this module only decides what a path is
and turns the resulting Volumes into layers (:mod:`napari_cascade._layers`).

What a path opens as:

* a scan file -> one image layer per channel (an MSD ``imagesTr/<case>_0000.nii.gz`` brings all
  of the case's channels);
* a label file -> a labels layer. A file is a label map when its folder or name says so
  (``labelsTr/``, ``*seg*``, ``*label*``, ``*mask*``) or when it holds integers with few distinct
  values: the BraTS fusion files (``simple.nii.gz``) say nothing in their name;
* a DICOM series folder -> image layer(s);
* an MSD / nnU-Net dataset folder (``imagesTr/`` inside) -> its first case with its labels, and a
  notification saying how many cases the set holds (opening 80 patients at once helps nobody).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cascadeseg.errors import InputFileError
from cascadeseg.io import Volume

from ._layers import LayerDataTuple, image_layers, labels_layer, scan_stem

SCAN_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr", ".dcm", ".ima")
_LABEL_NAME = re.compile(r"(^|[^a-z])(seg|segmentation|label|labels|mask|gt)([^a-z]|$)", re.IGNORECASE)
# More distinct integer values than this and it is an image (uint8 MRI has ~256, CT thousands);
# TotalSegmentator's 117 organ classes are recognised by their file name instead.
MAX_LABEL_VALUES = 64

ReaderFunction = Callable[[str | Sequence[str]], list[LayerDataTuple]]


def get_reader(path: str | Sequence[str]) -> ReaderFunction | None:
    """npe2 entry point: a reader for ``path``, or ``None`` when it is not ours."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths or not all(_is_ours(Path(p)) for p in paths):
        return None
    return read_paths


def _is_ours(path: Path) -> bool:
    if path.is_dir():
        return is_dataset_folder(path) or _looks_like_dicom_folder(path)
    return path.name.lower().endswith(SCAN_SUFFIXES)


def is_dataset_folder(path: Path) -> bool:
    return (path / "imagesTr").is_dir()


def _looks_like_dicom_folder(path: Path) -> bool:
    """A folder with a DICOM file among its first entries (the engine checks the preamble)."""
    from cascadeseg.io.dicom import is_dicom_file

    return any(entry.is_file() and is_dicom_file(entry) for entry in sorted(path.iterdir())[:20])


def read_paths(path: str | Sequence[str]) -> list[LayerDataTuple]:
    """Read every path into layer data tuples (engine errors propagate: napari shows them)."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    layers: list[LayerDataTuple] = []
    for item in paths:
        layers.extend(read_path(Path(item)))
    return layers


def read_path(path: Path) -> list[LayerDataTuple]:
    from cascadeseg.io import load_volume

    if path.is_dir() and is_dataset_folder(path):
        return read_dataset(path)
    if path.is_dir():
        return read_dicom_folder(path)
    volume = load_volume(path)
    if is_label_file(path, volume):
        return [volume_as_labels(volume, name=scan_stem(path))]
    return image_layers(volume)


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
            f"{folder.name}: dataset with {count} cases; opened '{opened}'. "
            f"Open imagesTr/<case>_0000.nii.gz for another case."
        )


def is_label_file(path: Path, volume: Volume) -> bool:
    """Whether a single-channel file is a label map (see the module docstring)."""
    if volume.num_channels != 1:
        return False
    in_label_folder = path.parent.name.lower().startswith("label")
    named_label = bool(_LABEL_NAME.search(scan_stem(path)))
    array = volume.array[0]
    if not _integral(array):
        return False
    if in_label_folder or named_label:
        return True
    return _few_values(array)


def _integral(array: np.ndarray) -> bool:
    if np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
        return True
    if not np.issubdtype(array.dtype, np.floating):
        return False
    # Label maps are sometimes stored as float: integral, non-negative values are still labels.
    step = max(1, array.size // 1_000_000)
    sample = array.reshape(-1)[::step]
    return bool(np.all(sample >= 0) and np.all(np.mod(sample, 1) == 0))


def _few_values(array: np.ndarray) -> bool:
    step = max(1, array.size // 1_000_000)
    sample = array.reshape(-1)[::step]
    if sample.min() < 0 or np.unique(sample).size > MAX_LABEL_VALUES:
        return False
    return np.unique(array).size <= MAX_LABEL_VALUES


def volume_as_labels(volume: Volume, name: str) -> LayerDataTuple:
    """A single-channel volume read from a label file, as a labels layer on its own grid."""
    array = np.asarray(volume.array[0])
    if not np.issubdtype(array.dtype, np.integer):
        array = array.astype(_smallest_label_dtype(int(array.max())))
    return labels_layer(array, volume.with_array(array), name)


def _smallest_label_dtype(max_value: int) -> type:
    for dtype in (np.uint8, np.uint16, np.int32):
        if max_value <= np.iinfo(dtype).max:
            return dtype
    return np.int64
