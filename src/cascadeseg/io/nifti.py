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
import io
import math
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cascadeseg.errors import CascadeSegError, InputFileError
from cascadeseg.io.orientation import geometry_from_matrix, voxel_to_world
from cascadeseg.io.volume import Volume
from cascadeseg.memory import array_bytes, check_fits, describe_shape, format_bytes

# nibabel is imported where it is used: the docks import this module on the GUI thread, where its
# first import froze the window for about 30 ms (issue 18).
if TYPE_CHECKING:
    import nibabel as nib

# nibabel's world space is RAS; ITK's (and Volume's) is LPS.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

NIFTI_SUFFIXES = (".nii.gz", ".nii")
_NIFTI1_HEADER, _NIFTI2_HEADER = 348, 540


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


def _read_head(path: Path) -> tuple[bytes, bool]:
    """The first bytes of the (decompressed) file, enough for a NIfTI-1 or -2 header, and whether
    the file is gzipped. Reading them never decompresses more than the header."""
    with open(path, "rb") as handle:
        compressed = handle.read(2) == b"\x1f\x8b"  # a plain .nii merely named .nii.gz is read as it is
    with gzip.open(path, "rb") if compressed else open(path, "rb") as handle:
        return handle.read(_NIFTI2_HEADER), compressed


def _parse_header(head: bytes, path: Path) -> nib.Nifti1Header:
    import nibabel as nib

    if len(head) < 4:
        raise InputFileError(f"{path}: cannot be read as NIfTI (only {len(head)} bytes); expected a NIfTI header")
    header_size = int.from_bytes(head[:4], "little")
    if header_size not in (_NIFTI1_HEADER, _NIFTI2_HEADER):
        header_size = int.from_bytes(head[:4], "big")
    if header_size not in (_NIFTI1_HEADER, _NIFTI2_HEADER) or len(head) < header_size:
        raise InputFileError(
            f"{path}: cannot be read as NIfTI (no NIfTI-1/2 header at its start); expected a NIfTI image"
        )
    header_type = nib.Nifti1Header if header_size == _NIFTI1_HEADER else nib.Nifti2Header
    return header_type.from_fileobj(io.BytesIO(head[:header_size]), check=False)


def _check_header_size(header: nib.Nifti1Header, path: Path, compressed: bool) -> None:
    """Refuse, before reading the voxels, a volume that cannot fit in memory or that the file is
    too short to hold (a corrupt or hostile header claiming 10^12 voxels would otherwise end in a
    raw ``MemoryError`` after trying to allocate it)."""
    shape = tuple(int(s) for s in header.get_data_shape())
    if any(s < 0 for s in shape):
        raise InputFileError(f"{path}: the NIfTI header gives a negative size {shape}; expected a valid image header")
    stored = np.dtype(header.get_data_dtype())
    slope, inter = header.get_slope_inter()
    scaled = (slope not in (None, 1.0) and np.isfinite(slope)) or (inter not in (None, 0.0) and np.isfinite(inter))
    in_memory = np.dtype(np.float32) if scaled or stored.kind == "f" else stored
    data = array_bytes(shape, stored)
    offset = int(header.get_data_offset())
    # the decompressed file is held in memory next to the array read from it; scaling goes
    # through float64 in nibabel
    needed = (
        array_bytes(shape, in_memory)
        + (offset + data if compressed else 0)
        + (array_bytes(shape, np.float64) if scaled else 0)
    )
    check_fits(
        needed,
        f"{path}: the NIfTI header describes {describe_shape(shape)} voxels of {stored.name} "
        f"({format_bytes(data)} of voxel data); reading it",
        per_voxel=needed / max(math.prod(shape), 1),
        remedy="expected a volume that fits in memory (is the header corrupt? else crop or downsample the "
        "scan, or use a machine with more memory)",
    )
    if not compressed:
        size = path.stat().st_size
        if size < offset + data:
            raise InputFileError(
                f"{path}: cannot be read as NIfTI: its header describes {describe_shape(shape)} voxels of "
                f"{stored.name} ({data} bytes from byte {offset}) but the file has {size} bytes; expected a "
                "complete file (is it truncated, or its header corrupt?)"
            )


def check_nifti_size(path: Path) -> None:
    """The size checks of :func:`read_nifti` from the header alone (nothing else is read)."""
    import nibabel as nib

    try:
        head, compressed = _read_head(path)
        _check_header_size(_parse_header(head, path), path, compressed)
    except CascadeSegError:
        raise
    except (OSError, EOFError, zlib.error, ValueError, nib.spatialimages.HeaderDataError) as exc:
        raise InputFileError(f"{path}: cannot be read as NIfTI ({type(exc).__name__}: {exc})") from exc


# A .nii.gz is inflated this many compressed bytes at a time, into pieces of at most this many
# bytes: zlib releases the interpreter lock while it inflates, and holds it only to hand over a
# piece, so a GUI reading a 600 MB CT in a worker never waits on the reader for long.
_GZIP_READ_BYTES = 1 << 22
_GZIP_PIECE_BYTES = 1 << 23


def _inflate_gzip(path: Path, expected: int) -> np.ndarray:
    """The decompressed bytes of a gzip file (all of its members) as a ``uint8`` array.

    zlib checks every member's CRC and length (``wbits=31``: the gzip wrapper), so a damaged
    file raises ``zlib.error`` instead of giving corrupted voxels; a file that ends inside a
    member raises ``EOFError``. ``expected``: the size the NIfTI header gives (header, extensions
    and voxels); bytes beyond it are checked and dropped, as nibabel drops them; fewer are
    returned as they are (the caller refuses a short file).

    Why not ``gzip.decompress``: it joins the whole output into one ``bytes`` and nibabel then
    copies that into a ``bytearray``, two copies of the volume made while holding the interpreter
    lock (0.3-0.4 s each for a 630 MB CT on the 2-core development machine, the GUI frozen
    meanwhile) and three copies of the volume in memory at once.
    """
    out = np.empty(expected, np.uint8)
    filled = 0
    inflater: Any = None
    with open(path, "rb") as handle:
        pending = b""
        while True:
            if not pending:
                pending = handle.read(_GZIP_READ_BYTES)
                if not pending:
                    break
            if inflater is None:
                inflater = zlib.decompressobj(wbits=31)
            piece = inflater.decompress(pending, _GZIP_PIECE_BYTES)
            pending = inflater.unconsumed_tail
            filled = _append(out, filled, piece)
            if inflater.eof:  # a member ended: what follows is the next member, if anything
                pending, inflater = inflater.unused_data, None
        while inflater is not None and not inflater.eof:
            piece = inflater.decompress(b"", _GZIP_PIECE_BYTES)  # output zlib still holds
            if not piece:
                raise EOFError("Compressed file ended before the end-of-stream marker was reached")
            filled = _append(out, filled, piece)
    return out[:filled]


def _append(out: np.ndarray, filled: int, piece: bytes) -> int:
    room = min(len(piece), len(out) - filled)
    if room > 0:
        out[filled : filled + room] = np.frombuffer(piece, np.uint8, count=room)
    return filled + room


def _load_checked(path: Path) -> tuple[np.ndarray, nib.Nifti1Header, np.ndarray]:
    """The voxels (scaled as nibabel scales them), header and affine of a NIfTI file, read only
    after its header's size was checked.

    A ``.nii.gz`` is decompressed to its end so that the gzip CRC and length are checked: nibabel
    alone stops reading after the last voxel, before the checksum, and would return silently
    corrupted voxels from a damaged file. Its voxels are a view of the decompressed bytes (no
    copy); nibabel's own header, affine and read scaling give them their meaning.
    """
    import nibabel as nib

    head, compressed = _read_head(path)
    header = _parse_header(head, path)
    _check_header_size(header, path, compressed)
    if not compressed:
        # nibabel picks its opener by the name: a plain .nii merely named .nii.gz is read from its bytes
        image: Any = (
            nib.load(str(path))
            if not path.name.lower().endswith(".gz")
            else (nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image).from_bytes(
                path.read_bytes()
            )
        )
        return np.asanyarray(image.dataobj), image.header, np.asarray(image.affine, dtype=float)
    shape = tuple(int(s) for s in header.get_data_shape())
    dtype = np.dtype(header.get_data_dtype())
    offset = int(header.get_data_offset())
    voxel_bytes = math.prod(shape) * dtype.itemsize
    raw = _inflate_gzip(path, offset + voxel_bytes)
    if raw.size < offset + voxel_bytes:
        raise InputFileError(
            f"{path}: cannot be read as NIfTI: its header describes {describe_shape(shape)} voxels of "
            f"{dtype.name} ({format_bytes(voxel_bytes)}) but the decompressed file holds {format_bytes(raw.size)}; "
            "expected a complete .nii.gz file (is it truncated?)"
        )
    voxels = raw[offset : offset + voxel_bytes].view(dtype).reshape(shape, order="F")
    # nibabel's ArrayProxy (__init__ and _get_scaled): an unset slope / intercept reads as 1 / 0,
    # the intercept takes the slope's dtype, and 1 / 0 leave the voxels as stored
    slope, inter = header.get_slope_inter()
    scl_slope: Any = np.asanyarray(1.0 if slope is None else slope)
    scl_inter: Any = np.asanyarray(0.0 if inter is None else inter)
    if np.can_cast(scl_inter, scl_slope.dtype):
        scl_inter = scl_inter.astype(scl_slope.dtype)
    data = nib.volumeutils.apply_read_scaling(voxels, scl_slope, scl_inter)
    return data, header, np.asarray(header.get_best_affine(), dtype=float)


def read_nifti(path: Path) -> Volume:
    """Read a NIfTI file: array ``(C, Z, Y, X)`` (3D gives C=1) in the file's own axis order.

    Trailing singleton dimensions beyond the third are dropped (ITK writes a vector image as
    ``(x, y, z, 1, c)``); what is left must be 3D or 4D, and the 4th axis is read as channels.
    The dimension checks themselves live in :mod:`cascadeseg.io.checks`.
    """
    import nibabel as nib

    try:
        data, header, affine = _load_checked(path)
        if data.dtype == np.float64 and header.get_data_dtype() != np.float64:
            # nibabel applies scl_slope/inter in float64; float32 holds any scanner's intensities
            # at half the memory
            data = data.astype(np.float32)
    except CascadeSegError:
        raise
    except (
        OSError,
        EOFError,
        zlib.error,
        ValueError,
        nib.filebasedimages.ImageFileError,
        nib.spatialimages.HeaderDataError,
    ) as exc:
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
        raise InputFileError(
            f"{path}: the NIfTI affine is singular ({affine.tolist()}); expected a valid sform/qform"
        ) from exc
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
    import nibabel as nib

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
