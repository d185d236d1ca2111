"""The one entry point that opens scans and label maps: :func:`load_volume`, :func:`load_labels`,
:func:`load_channels`.

Every format goes through the same finishing step (:func:`_finish`): dimension checks, the single
canonical reorientation, non-finite handling, modality and channel names. Input files are only ever
opened for reading.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cascadeseg.errors import DatasetError, InputFileError, VolumeError
from cascadeseg.io.checks import (
    NAN_POLICIES,
    as_label_array,
    check_dimensions,
    check_label_map,
    check_same_grid,
    handle_non_finite,
)
from cascadeseg.io.dicom import is_dicom_file, read_dicom_series
from cascadeseg.io.itk_files import ITK_SUFFIXES, check_itk_file_size, read_itk_file
from cascadeseg.io.modality import infer_modality, modality_from_text
from cascadeseg.io.msd_layout import case_channel_files, channel_names_from_json, channel_of, split_suffix
from cascadeseg.io.nifti import NIFTI_SUFFIXES, check_nifti_size, read_nifti
from cascadeseg.io.orientation import orientation_code, reorient
from cascadeseg.io.stacking import stack_channels
from cascadeseg.io.volume import Volume

PathLike = str | os.PathLike

SUPPORTED_FORMATS = (
    "NIfTI (.nii, .nii.gz; 3D or 4D multi-channel), MetaImage (.mha, .mhd), NRRD (.nrrd, .nhdr), "
    "a DICOM series (a folder or any file in it)"
)


def _existing_path(path: PathLike) -> Path:
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise InputFileError(f"{resolved}: does not exist; expected an image file or a DICOM folder")
    if resolved.is_file() and resolved.stat().st_size == 0:
        raise InputFileError(f"{resolved}: is an empty file (0 bytes); expected an image")
    return resolved


def _read_raw(path: Path, series_uid: str | None) -> Volume:
    """One file or DICOM series in its own orientation (no checks yet)."""
    if path.is_dir():
        if (path / "imagesTr").is_dir():
            raise DatasetError(
                f"{path}: is a dataset folder (it has imagesTr/); open it with load_dataset(), "
                "or pass one case file imagesTr/<case>_0000.nii.gz to load_volume()"
            )
        return read_dicom_series(path, series_uid)
    suffix = split_suffix(path)[1].lower()
    if suffix in NIFTI_SUFFIXES:
        return read_nifti(path)
    if suffix in ITK_SUFFIXES:
        return read_itk_file(path)
    if path.suffix.lower() in (".dcm", ".ima") or is_dicom_file(path):
        return read_dicom_series(path, series_uid)
    raise InputFileError(f"{path}: is not a supported image file; expected {SUPPORTED_FORMATS}")


def check_volume_size(path: PathLike) -> None:
    """Refuse, from its header alone, a NIfTI/MHA/NRRD file (with the other channel files of its
    MSD case) whose voxels cannot fit in memory: the check :func:`load_volume` makes before
    reading, for a caller that wants to know before starting long work. Other inputs (DICOM
    folders) pass; :func:`load_volume` checks them when it reads them."""
    source = _existing_path(path)
    if not source.is_file():
        return
    for file in case_channel_files(source) or [source]:
        suffix = split_suffix(file)[1].lower()
        if suffix in NIFTI_SUFFIXES:
            check_nifti_size(file)
        elif suffix in ITK_SUFFIXES:
            check_itk_file_size(file)


def _to_canonical(raw: Volume) -> Volume:
    """The single place a read grid is reoriented (to ``CANONICAL_ORIENTATION``)."""
    source_orientation = orientation_code(raw.direction)
    array, spacing, origin, direction = reorient(raw.array, raw.spacing, raw.origin, raw.direction)
    meta = {**raw.meta, "source_orientation": source_orientation}
    return Volume(
        array=np.ascontiguousarray(array),
        spacing=spacing,
        origin=origin,
        direction=direction,
        source=raw.source,
        meta=meta,
    )


def _default_channel_names(volume: Volume) -> list[str]:
    meta = volume.meta
    if meta.get("format") == "dicom":
        base = meta.get("series_description") or meta.get("dicom_modality") or "DICOM"
    else:
        base = split_suffix(volume.source)[0] if volume.source is not None else "image"
    if volume.num_channels == 1:
        return [base]
    return [f"{base}_c{index}" for index in range(volume.num_channels)]


def _finish(raw: Volume, nan_policy: str) -> Volume:
    check_dimensions(raw)
    volume = handle_non_finite(_to_canonical(raw), nan_policy)
    names = _default_channel_names(volume)
    header_hint = volume.meta.get("dicom_modality") or volume.meta.get("header_modality")
    modality = infer_modality(volume.array, header_hint, *names)
    if modality is None and volume.source is not None:
        modality = modality_from_text(split_suffix(volume.source)[0])
    volume.channel_names = names
    volume.modality = modality
    return volume


def _dataset_channel_names(case_file: Path, count: int) -> list[str] | None:
    """Channel names from ``dataset.json`` next to ``imagesTr/`` (nnU-Net v2 ``channel_names`` or
    MSD ``modality``), when it exists and names this many channels."""
    dataset_json = case_file.parent.parent / "dataset.json"
    if not dataset_json.is_file():
        return None
    try:
        names = channel_names_from_json(json.loads(dataset_json.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # a broken dataset.json must not stop opening one scan; load_dataset reports it
    return names if names and len(names) == count else None


def load_volume(
    path: PathLike,
    *,
    series_uid: str | None = None,
    nan_policy: str = "raise",
    whole_case: bool = True,
) -> Volume:
    """Open a scan as a channel-first ``(C, Z, Y, X)`` :class:`Volume` in canonical (LPS) orientation.

    Formats: NIfTI (3D, 4D = channels), MHA/MHD, NRRD, a DICOM series (folder or any file of it;
    several series in the folder: error listing them, ``series_uid`` picks one). An MSD/nnU-Net case
    file ``<case>_0000.nii.gz`` loads all channels ``_0000, _0001, ...`` of the case unless
    ``whole_case=False``. NaN/Inf voxels raise unless ``nan_policy`` is ``"zero"`` or ``"min"``.
    """
    if nan_policy not in NAN_POLICIES:
        raise VolumeError(f"nan_policy={nan_policy!r} is not known; expected one of {NAN_POLICIES}")
    source = _existing_path(path)
    if whole_case and source.is_file():
        channel_files = case_channel_files(source)
        if channel_files is not None:
            names = _dataset_channel_names(source, len(channel_files))
            return load_channels(channel_files, names, nan_policy=nan_policy)
    return _finish(_read_raw(source, series_uid), nan_policy)


def load_channels(
    paths: Sequence[PathLike], names: Sequence[str] | None = None, *, nan_policy: str = "raise"
) -> Volume:
    """Stack single-channel files of one case (e.g. BraTS ``t1, t1c, t2, flair``) into one Volume.

    Every file must lie on the first file's voxel grid. ``names`` default to the channel suffix
    (``"0000"``) for nnU-Net files, else the file names. ``source`` is the first file and
    ``meta["channel_files"]`` lists all of them.
    """
    if not paths:
        raise InputFileError("load_channels: no files given; expected one file per channel")
    if names is not None and len(names) != len(paths):
        raise InputFileError(
            f"load_channels: {len(paths)} files but {len(names)} channel names; expected one name per file"
        )
    channels = [load_volume(p, nan_policy=nan_policy, whole_case=False) for p in paths]
    for channel in channels:
        if channel.num_channels != 1:
            raise VolumeError(f"{channel.source}: has {channel.num_channels} channels; expected one channel per file")
    if names is None:
        parsed = [channel_of(Path(p)) for p in paths]
        names = [f"{found[1]:04d}" if found else split_suffix(Path(p))[0] for found, p in zip(parsed, paths)]
    stacked = stack_channels(channels, names)
    stacked.meta["channel_files"] = [str(Path(p)) for p in paths]
    return stacked


def load_labels(path: PathLike, reference: Volume | None = None, *, series_uid: str | None = None) -> Volume:
    """Open an integer label map ``(Z, Y, X)`` (smallest unsigned dtype) in canonical orientation.

    Values must be whole, finite and non-negative, and the file must look like a label map, not a
    scan (:func:`~cascadeseg.io.checks.check_label_map`). With ``reference`` (the image it belongs to) the
    map must lie on the same voxel grid, else :class:`GeometryMismatchError`; a map stored in a
    different axis order (RAS vs LPS) of the same grid is fine, it is reoriented like the image.
    """
    source = _existing_path(path)
    raw = _read_raw(source, series_uid)
    check_dimensions(raw)
    volume = _to_canonical(raw)
    if volume.num_channels != 1:
        raise VolumeError(f"{source}: label file has {volume.num_channels} channels; expected a single 3D label map")
    labels = volume.with_array(as_label_array(volume.array[0], str(source)), channel_names=[], modality=None)
    check_label_map(labels.array, str(source))
    if reference is not None:
        check_same_grid(labels, reference)
    return labels
