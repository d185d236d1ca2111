"""Writing images and label maps: :func:`save_volume`, :func:`save_labels`.

A written file is in the source file's own orientation (``meta["source_orientation"]``), and a
NIfTI written from a NIfTI source reuses that file's sform/qform fields verbatim, so 3D Slicer and
ITK-SNAP overlay the label map on the image without a "geometry mismatch" prompt. Writes are atomic
(staged in a temporary folder beside the target, then renamed into place: :mod:`cascadeseg._atomic`)
and never overwrite without ``overwrite=True``. Even with it, a label map is never written over the
files of the scan it belongs to (:func:`cascadeseg.io.protect.refuse_input_overwrite`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cascadeseg._atomic import commit_file, staging_folder
from cascadeseg.errors import GeometryMismatchError, InputFileError, OutputExistsError, OutputWriteError, VolumeError
from cascadeseg.io.checks import as_label_array, check_same_grid
from cascadeseg.io.itk_files import ITK_SUFFIXES, write_itk_file
from cascadeseg.io.msd_layout import split_suffix
from cascadeseg.io.nifti import NIFTI_SUFFIXES, write_nifti
from cascadeseg.io.orientation import CANONICAL_ORIENTATION, reorient
from cascadeseg.io.protect import input_files, refuse_input_overwrite
from cascadeseg.io.reader import PathLike
from cascadeseg.io.volume import Volume

WRITABLE_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES
_MAX_NAME_BYTES = 255  # ext4, XFS, APFS, NTFS (in UTF-16 units there, close enough)


def _writable_array(array: np.ndarray, path: Path) -> np.ndarray:
    """Types every NIfTI/ITK reader accepts: bool -> uint8, 64-bit ints -> 32-bit when they fit."""
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype in (np.int64, np.uint64):
        target = np.int32 if array.dtype == np.int64 else np.uint32
        info = np.iinfo(target)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise VolumeError(f"{path}: values do not fit in {np.dtype(target).name}; expected 32-bit integers")
        return array.astype(target)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    return array


def check_file_name(path: Path) -> Path:
    """Refuse a file name longer than file systems allow (else a raw ``OSError`` comes from deep
    inside a write, or from ``Path.exists``)."""
    size = len(path.name.encode("utf-8"))
    if size > _MAX_NAME_BYTES:
        raise OutputWriteError(
            f"{path.parent / path.name[:40]}...: the file name is {size} bytes long; file systems allow "
            f"{_MAX_NAME_BYTES}: choose a shorter name"
        )
    return path


def _write(volume: Volume, path: PathLike, overwrite: bool, protect: tuple[Path, ...] = ()) -> Path:
    target = check_file_name(Path(path).expanduser())
    suffix = split_suffix(target)[1].lower()
    if suffix not in WRITABLE_SUFFIXES:
        raise InputFileError(f"{target}: cannot write this file type; expected one of {', '.join(WRITABLE_SUFFIXES)}")
    refuse_input_overwrite([target], protect)
    if target.exists() and not overwrite:
        raise OutputExistsError(
            f"{target}: already exists; choose another name or pass overwrite=True (--overwrite on the command line)"
        )
    if target.is_dir():
        raise OutputExistsError(f"{target}: is a folder; expected a file name")
    try:
        return _write_file(volume, target, suffix)
    except OSError as exc:
        raise OutputWriteError(
            f"{target}: cannot be written ({exc.strerror or exc}); expected a writable folder with free space"
        ) from exc


def _write_file(volume: Volume, target: Path, suffix: str) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)

    source_orientation = volume.meta.get("source_orientation", CANONICAL_ORIENTATION)
    array, spacing, origin, direction = reorient(
        _writable_array(volume.array, target), volume.spacing, volume.origin, volume.direction, source_orientation
    )
    with staging_folder(target.parent, target.name) as staging:
        staged = staging / target.name
        if suffix in NIFTI_SUFFIXES:
            write_nifti(array, spacing, origin, direction, staged, volume.meta.get("nifti"))
        else:
            write_itk_file(array, spacing, origin, direction, staged)
        # a .mhd/.nhdr header names its data file: move the data first, the header last
        for produced in sorted(staging.iterdir(), key=lambda p: p.name == target.name):
            commit_file(produced, target.parent / produced.name)
    return target


def save_volume(volume: Volume, path: PathLike, *, overwrite: bool = False) -> Path:
    """Write an image (``(C, Z, Y, X)``; C > 1 as a 4D NIfTI or vector MHA/NRRD) or a label Volume
    with its own geometry. Returns the path written. The file(s) ``volume`` was read from are never
    replaced, ``overwrite`` or not."""
    return _write(volume, path, overwrite, input_files(volume))


def save_labels(labels: np.ndarray | Volume, reference: Volume, path: PathLike, *, overwrite: bool = False) -> Path:
    """Write an integer label map ``(Z, Y, X)`` on ``reference``'s grid, in the reference file's
    orientation and (for a NIfTI reference) with its exact affine.

    ``labels`` is an array on the reference grid, or a label Volume which must lie on that grid.
    Values are stored in the smallest unsigned integer type (uint8 for < 256 labels). The files of
    the scan ``reference`` was read from are never replaced, ``overwrite`` or not.
    """
    if isinstance(labels, Volume):
        check_same_grid(labels, reference)
        array = labels.array
    else:
        array = np.asarray(labels)
    if array.shape != reference.spatial_shape:
        raise GeometryMismatchError(
            f"{path}: label array has shape {array.shape} but the reference image "
            f"{reference.source or ''} has {reference.spatial_shape} (z, y, x); expected the same grid"
        )
    label_array = as_label_array(array, str(path))
    return _write(
        reference.with_array(label_array, channel_names=[], modality=None), path, overwrite, input_files(reference)
    )
