"""NIfTI (``.nii``, ``.nii.gz``) through nibabel, in the file's own orientation.

nibabel rather than SimpleITK because it reads the exact sform/qform the file holds (SimpleITK
refuses some non-orthonormal headers and re-derives the affine), and because keeping those header
fields lets the writer give a label map *byte-identical* affines to its source image, which is what
3D Slicer and ITK-SNAP check when they overlay a segmentation.

Reorientation to the canonical grid is not done here: :mod:`cascadeseg.io.orientation` does it for
every format.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from cascadeseg.errors import InputFileError
from cascadeseg.io.orientation import geometry_from_matrix, voxel_to_world
from cascadeseg.io.volume import Volume

# nibabel's world space is RAS; ITK's (and Volume's) is LPS.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def _header_fields(header: nib.Nifti1Header) -> dict[str, Any]:
    """The header fields that define the affine, JSON-able, so a writer can reproduce them exactly."""
    sform, sform_code = header.get_sform(coded=True)
    _, qform_code = header.get_qform(coded=True)
    return {
        "sform": None if sform is None else np.asarray(sform).tolist(),
        "sform_code": int(sform_code),
        "qform_code": int(qform_code),
        "quatern": [float(header["quatern_b"]), float(header["quatern_c"]), float(header["quatern_d"])],
        "qoffset": [float(header["qoffset_x"]), float(header["qoffset_y"]), float(header["qoffset_z"])],
        "pixdim": [float(v) for v in header["pixdim"][:4]],
        "xyzt_units": int(header["xyzt_units"]),
        "affine": np.asarray(header.get_best_affine()).tolist(),
    }


def _load_checked(path: Path) -> nib.Nifti1Image | nib.Nifti2Image:
    """nibabel image whose bytes are verified.

    A ``.nii.gz`` is decompressed in one go so the gzip CRC and length are checked: nibabel alone
    stops reading after the last voxel, before the checksum, and would return silently corrupted
    voxels from a damaged file.
    """
    if not path.name.lower().endswith(".gz"):
        return nib.load(str(path))
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic; a plain .nii merely named .nii.gz is read as it is
        raw = gzip.decompress(raw)
    if len(raw) < 4:
        raise InputFileError(f"{path}: cannot be read as NIfTI (only {len(raw)} bytes); expected a NIfTI header")
    header_size = int.from_bytes(raw[:4], "little")
    if header_size not in (348, 540):
        header_size = int.from_bytes(raw[:4], "big")
    if header_size not in (348, 540):
        raise InputFileError(f"{path}: cannot be read as NIfTI (no NIfTI-1/2 header at its start); expected a NIfTI image")
    image_type = nib.Nifti1Image if header_size == 348 else nib.Nifti2Image
    return image_type.from_bytes(raw)


def read_nifti(path: Path) -> Volume:
    """Read a NIfTI file: array ``(C, Z, Y, X)`` (3D gives C=1) in the file's own axis order.

    Trailing singleton dimensions beyond the third are dropped (ITK writes a vector image as
    ``(x, y, z, 1, c)``); what is left must be 3D or 4D, and the 4th axis is read as channels.
    The dimension checks themselves live in :mod:`cascadeseg.io.checks`.
    """
    try:
        image = _load_checked(path)
        data = np.asanyarray(image.dataobj)
        if data.dtype == np.float64 and image.get_data_dtype() != np.float64:
            # nibabel applies scl_slope/inter in float64; float32 holds any scanner's intensities
            # at half the memory
            data = data.astype(np.float32)
        affine = np.asarray(image.affine, dtype=float)
    except InputFileError:
        raise
    except (OSError, EOFError, zlib.error, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise InputFileError(
            f"{path}: cannot be read as NIfTI ({type(exc).__name__}: {exc}); "
            "expected a complete .nii or .nii.gz file (is it truncated, empty or not an image?)"
        ) from exc

    if data.ndim > 3:
        keep = [0, 1, 2] + [axis for axis in range(3, data.ndim) if data.shape[axis] != 1]
        data = data.reshape([data.shape[axis] for axis in keep])
    # nibabel: (x, y, z[, c]) -> (c, z, y, x); for Fortran-ordered file data this is a free view.
    # 2D and 5D data pass through reversed and are rejected by the shared dimension checks.
    array = data.T[None] if data.ndim == 3 else data.T

    try:
        spacing, origin, direction = geometry_from_matrix(_RAS_TO_LPS @ affine)
    except ValueError as exc:
        raise InputFileError(f"{path}: the NIfTI affine is singular ({affine.tolist()}); expected a valid sform/qform") from exc
    header = image.header
    meta: dict[str, Any] = {"format": "nifti", "nifti": _header_fields(header)}
    description = bytes(header.get("descrip", b"")).split(b"\0")[0].decode("latin-1").strip()
    if description:
        meta["description"] = description
    return Volume(array=array, spacing=spacing, origin=origin, direction=direction, source=path, meta=meta)


def write_nifti(
    array: np.ndarray,
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float],
    direction: np.ndarray,
    path: Path,
    header_fields: dict[str, Any] | None = None,
) -> None:
    """Write ``array`` (``(Z, Y, X)`` or ``(C, Z, Y, X)``, already in the target orientation).

    When ``header_fields`` (from the source file, see :func:`read_nifti`) describe this very grid,
    they are copied verbatim so nibabel/Slicer see the identical affine; otherwise (resampled data,
    a DICOM or MHA source) an sform and qform are built from the geometry, both with code 1
    (scanner), as ITK does.
    """
    data = array.T  # (Z, Y, X) -> (x, y, z); (C, Z, Y, X) -> (x, y, z, c)
    affine = _RAS_TO_LPS @ voxel_to_world(spacing, origin, direction)
    image = nib.Nifti1Image(data, affine)
    header = image.header
    if header_fields is not None and np.allclose(header_fields["affine"], affine, atol=1e-4, rtol=0):
        sform = header_fields["sform"]
        header.set_sform(None if sform is None else np.asarray(sform), int(header_fields["sform_code"]))
        header.set_qform(affine, int(header_fields["qform_code"]))
        # exact quaternion fields of the source, not nibabel's recomputation (float32 round-off)
        header["quatern_b"], header["quatern_c"], header["quatern_d"] = header_fields["quatern"]
        header["qoffset_x"], header["qoffset_y"], header["qoffset_z"] = header_fields["qoffset"]
        pixdim = header["pixdim"]
        pixdim[:4] = header_fields["pixdim"]
        header["pixdim"] = pixdim
        header["xyzt_units"] = header_fields["xyzt_units"]
    else:
        header.set_sform(affine, 1)
        header.set_qform(affine, 1)
        header.set_xyzt_units("mm", "sec")
    nib.save(image, str(path))
