"""MetaImage (``.mha``/``.mhd``) and NRRD (``.nrrd``/``.nhdr``) through SimpleITK.

Also the conversion between a SimpleITK image and the ``(C, Z, Y, X)`` array + geometry used
everywhere else, shared with the DICOM reader. Orientation is left as in the file; the canonical
reorientation happens in :mod:`cascadeseg.io.orientation`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cascadeseg.errors import InputFileError
from cascadeseg.io.volume import Volume
from cascadeseg.memory import array_bytes, check_fits, describe_shape, format_bytes

# SimpleITK is imported where it is used: the docks import this module on the GUI thread, where
# its first import froze the window for about 50 ms (issue 18).
if TYPE_CHECKING:
    import SimpleITK as sitk

ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
_BITS = re.compile(r"(\d+)-bit")


def _component_bytes(pixel_id: int) -> int:
    """Bytes per component from SimpleITK's pixel type name ("vector of 16-bit signed integer")."""
    import SimpleITK as sitk

    name = sitk.GetPixelIDValueAsString(pixel_id)
    match = _BITS.search(name)
    size = int(match.group(1)) // 8 if match else 8
    return 2 * size if name.startswith("complex") else size


def volume_from_sitk(image: sitk.Image, path: Path, meta: dict[str, Any]) -> Volume:
    """Array ``(C, Z, Y, X)`` + geometry from a 2D, 3D or 4D, scalar or vector SimpleITK image.

    A 4th dimension or a vector pixel is read as channels. 2D images come back with a 2D array so
    the shared dimension checks can name the problem.
    """
    import SimpleITK as sitk

    dimension = image.GetDimension()
    array = sitk.GetArrayFromImage(image)
    components = image.GetNumberOfComponentsPerPixel()
    if components > 1:
        array = np.moveaxis(array, -1, 0)  # (..., C) -> (C, ...)
    elif dimension == 3:
        array = array[None]
    if dimension < 3:
        return Volume(array=array, spacing=(1.0, 1.0, 1.0), source=path, meta=meta)
    spacing = tuple(float(s) for s in image.GetSpacing()[:3][::-1])
    origin = tuple(float(o) for o in image.GetOrigin()[:3])
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(dimension, dimension)[:3, :3]
    return Volume(array=array, spacing=spacing, origin=origin, direction=direction, source=path, meta=meta)  # type: ignore[arg-type]


def sitk_from_array(
    array: np.ndarray,
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float],
    direction: np.ndarray,
) -> sitk.Image:
    """SimpleITK image from ``(Z, Y, X)`` (scalar) or ``(C, Z, Y, X)`` (C > 1: vector pixels)."""
    import SimpleITK as sitk

    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 4:
        image = sitk.GetImageFromArray(np.moveaxis(array, 0, -1), isVector=True)
    else:
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing([float(s) for s in spacing[::-1]])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection([float(v) for v in np.asarray(direction, dtype=float).reshape(-1)])
    return image


def check_itk_size(reader: sitk.ImageFileReader, path: Path, slices: int = 1) -> None:
    """Refuse, from the header alone (``ReadImageInformation`` done), an image that cannot fit in
    memory: SimpleITK's buffer plus the NumPy copy made of it. ``slices``: files of a DICOM
    series, each one slice of the size the reader reports."""
    shape = [int(s) for s in reader.GetSize()][::-1]
    if slices > 1:
        shape = [slices, *shape[-2:]]
    components = int(reader.GetNumberOfComponents())
    item = _component_bytes(reader.GetPixelID())
    data = array_bytes(shape, np.uint8) * components * item
    voxels = math.prod(shape)
    what = f"{describe_shape(shape)} voxels" + (f" of {components} components" if components > 1 else "")
    check_fits(
        2 * data,
        f"{path}: the header describes {what} ({format_bytes(data)}); reading it",
        per_voxel=2 * data / max(voxels, 1),
    )


def check_itk_file_size(path: Path) -> None:
    """The size check of :func:`read_itk_file` from the header alone."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputFileError(
            f"{path}: cannot be read as {path.suffix} image ({str(exc).strip().splitlines()[-1]})"
        ) from exc
    check_itk_size(reader, path)


def read_itk_file(path: Path) -> Volume:
    """Read a MetaImage or NRRD file (scalar or vector, 2D-4D) in its own orientation."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        check_itk_size(reader, path)
        image = reader.Execute()
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise InputFileError(
            f"{path}: cannot be read as {path.suffix} image ({first_line}); expected a complete MetaImage or NRRD file"
        ) from exc
    meta: dict[str, Any] = {"format": path.suffix.lstrip(".").lower()}
    modality = reader.GetMetaData("Modality") if reader.HasMetaDataKey("Modality") else ""
    if modality:
        meta["header_modality"] = modality  # MetaImage writes e.g. MET_MOD_CT
    return volume_from_sitk(image, path, meta)


def write_itk_file(
    array: np.ndarray,
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float],
    direction: np.ndarray,
    path: Path,
) -> None:
    """Write MHA/MHD/NRRD with compression (labels compress ~50x)."""
    import SimpleITK as sitk

    image = sitk_from_array(array, spacing, origin, direction)
    sitk.WriteImage(image, str(path), useCompression=True)
