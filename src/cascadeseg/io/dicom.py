"""DICOM series through SimpleITK/GDCM: a folder, or any file of the series.

Given a folder with several series, the error lists each one (UID, description, modality, number of
files) and ``series_uid=`` picks one. Given a single file, its own series is loaded, which is what
a user who double-clicks one slice expects. Slices are sorted by GDCM along the slice normal, and
the rescale slope/intercept is applied (CT comes out in HU). A series with missing or duplicated
slices is refused rather than stretched over one average spacing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cascadeseg.errors import InputFileError, VolumeError
from cascadeseg.io.itk_files import check_itk_size, volume_from_sitk
from cascadeseg.io.volume import Volume

# SimpleITK is imported where it is used: the docks import this module on the GUI thread, where
# its first import froze the window for about 50 ms (issue 18).
if TYPE_CHECKING:
    import SimpleITK as sitk

_TAG_MODALITY = "0008|0060"
_TAG_SERIES_DESCRIPTION = "0008|103e"
_TAG_STUDY_DATE = "0008|0020"
_TAG_IMAGE_POSITION = "0020|0032"
# gaps between slice positions may differ by this fraction of the typical gap (rounding in the
# headers); more means missing or duplicated slices, which ITK would silently average over
_GAP_TOLERANCE = 0.1
_TAG_PATIENT_ID = "0010|0020"


def is_dicom_file(path: Path) -> bool:
    """True when the file carries the DICOM Part 10 preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


@dataclass(frozen=True)
class DicomSeries:
    """One series found in a folder."""

    uid: str
    files: tuple[str, ...]
    description: str
    modality: str

    def summary(self) -> str:
        description = self.description or "(no description)"
        return f"series_uid={self.uid!r}: {description}, {self.modality or '?'}, {len(self.files)} files"


def _file_tags(filename: str) -> dict[str, str]:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(filename)
    reader.ReadImageInformation()
    return {key: reader.GetMetaData(key).strip() for key in reader.GetMetaDataKeys()}


def list_series(folder: Path) -> list[DicomSeries]:
    """Every DICOM series in ``folder`` (not recursive), with description and modality."""
    import SimpleITK as sitk

    try:
        uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as exc:
        raise InputFileError(f"{folder}: cannot scan for DICOM series ({exc})") from exc
    found = []
    for uid in uids:
        files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        if not files:
            continue
        tags = _file_tags(files[0])
        found.append(
            DicomSeries(
                uid=uid,
                files=files,
                description=tags.get(_TAG_SERIES_DESCRIPTION, ""),
                modality=tags.get(_TAG_MODALITY, ""),
            )
        )
    return found


def _pick_series(path: Path, series_uid: str | None) -> DicomSeries:
    folder = path if path.is_dir() else path.parent
    series = list_series(folder)
    if not series:
        raise InputFileError(
            f"{folder}: no DICOM images found; expected a folder holding one DICOM series "
            "(files with the DICM preamble) or a NIfTI/MHA/NRRD file"
        )
    if series_uid is not None:
        for candidate in series:
            if candidate.uid == series_uid:
                return candidate
        listing = "; ".join(s.summary() for s in series)
        raise InputFileError(f"{folder}: no DICOM series with series_uid={series_uid!r}; found: {listing}")
    if path.is_file():
        target = path.resolve()
        for candidate in series:
            if any(Path(name).resolve() == target for name in candidate.files):
                return candidate
    if len(series) > 1:
        listing = "; ".join(s.summary() for s in series)
        raise InputFileError(
            f"{folder}: holds {len(series)} DICOM series, expected one; "
            f"pick one with series_uid= (--series-uid UID on the command line): {listing}"
        )
    return series[0]


def _check_slice_gaps(reader: sitk.ImageSeriesReader, image: sitk.Image, path: Path) -> None:
    """Refuse a series whose slices are not evenly spaced (missing or duplicated files): ITK would
    give it one average spacing, placing every slice after the gap at the wrong position."""
    count = len(reader.GetFileNames())
    if count < 3 or image.GetDimension() != 3:
        return
    try:
        positions = np.array(
            [[float(v) for v in reader.GetMetaData(i, _TAG_IMAGE_POSITION).split("\\")] for i in range(count)]
        )
    except (RuntimeError, ValueError):
        return  # no usable Image Position (Patient): nothing to check against
    normal = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)[:, 2]
    gaps = np.diff(np.sort(positions @ normal))
    typical = float(np.median(gaps))
    if typical <= 0 or float(np.abs(gaps - typical).max()) > _GAP_TOLERANCE * typical:
        raise VolumeError(
            f"{path}: the {count} DICOM slices are not evenly spaced (gaps from {gaps.min():.3g} to "
            f"{gaps.max():.3g} mm, typically {typical:.3g} mm); expected a complete series without missing "
            "or duplicated slices"
        )


def read_dicom_series(path: Path, series_uid: str | None = None) -> Volume:
    """Read one DICOM series as ``(1, Z, Y, X)`` with its geometry, in the scanner's orientation."""
    import SimpleITK as sitk

    chosen = _pick_series(path, series_uid)
    first = sitk.ImageFileReader()
    first.SetFileName(chosen.files[0])
    try:
        first.ReadImageInformation()
    except RuntimeError as exc:
        raise InputFileError(
            f"{chosen.files[0]}: cannot be read as a DICOM image ({str(exc).strip().splitlines()[-1]})"
        ) from exc
    check_itk_size(first, path, slices=len(chosen.files))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(chosen.files))
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputFileError(
            f"{path}: DICOM series {chosen.uid!r} cannot be read ({str(exc).strip().splitlines()[-1]}); "
            "expected a complete series of image slices"
        ) from exc
    _check_slice_gaps(reader, image, path)
    tags = {key: reader.GetMetaData(0, key).strip() for key in reader.GetMetaDataKeys(0)}
    meta: dict[str, Any] = {
        "format": "dicom",
        "series_uid": chosen.uid,
        "series_description": chosen.description,
        "dicom_modality": chosen.modality,
        "num_files": len(chosen.files),
    }
    for key, name in ((_TAG_STUDY_DATE, "study_date"), (_TAG_PATIENT_ID, "patient_id")):
        if tags.get(key):
            meta[name] = tags[key]
    return volume_from_sitk(image, path, meta)
