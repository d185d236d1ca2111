"""The local training set: corrected masks saved as an MSD / nnU-Net folder.

Layout (what nnU-Net v2 and :func:`cascadeseg.io.load_dataset` read)::

    <folder>/dataset.json
    <folder>/imagesTr/<case>_0000.nii.gz, <case>_0001.nii.gz, ...   one file per channel
    <folder>/labelsTr/<case>.nii.gz

``dataset.json`` holds nnU-Net v2's keys (``channel_names``, ``labels``, ``numTraining``,
``file_ending``) plus a ``napari_cascade`` block caching each case's annotated-slice count, so the
widget can show the totals without reading every mask, and recording each case's patient
(``patients``: a new version ``<case>_v2`` belongs to ``<case>``'s patient), which every patient
split reads so the versions of a scan never straddle training and validation.

Case ids are kept as given, only made safe as file names (characters other than letters, digits,
``-``, ``_`` and ``.`` become ``_``); an id too long for a file name is refused, never truncated
(two truncated ids could collide).

Safety, because this folder holds hours of a user's annotation work:

* An existing case is never replaced silently: a new version ``<case>_v2`` (``_v3``, ...) is
  written instead, unless ``overwrite=True``. The files of the scan being added are never
  replaced, ``overwrite`` or not (a set folder chosen inside the scan's own dataset).
* Every file of a case, and the ``dataset.json`` that lists it, is first written completely into a
  staging folder inside the set (same file system), then moved into place with ``os.replace``
  (atomic). A journal in the staging folder lists the moves; if the process dies half-way, the
  next :class:`TrainingSet` opened on the folder rolls the half-moved case back, so the folder
  holds the old case or the new one, never a torn file, a case with channels from two writes, or
  a case that ``dataset.json`` does not list.
* A read-only folder or a disk without room fails up front (or mid-write, cleaned up) with a
  :class:`~cascadeseg.errors.DatasetError` that names the folder.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import TEMP_PREFIX, clean_leftovers, fsync_dir, pid_alive, write_json
from .._home import home_dir
from ..errors import DatasetError, GeometryMismatchError, VolumeError
from ..io.dataset import PATIENTS_KEY, PROJECT_KEY, patient_id
from ..io.msd_layout import channel_names_from_json, label_values_from_json
from ..io.protect import input_files, refuse_input_overwrite
from ..io.volume import Volume

log = logging.getLogger("cascadeseg")

__all__ = ["TrainingSet", "AddedCase", "TrainingSetSummary", "case_id_from_source", "default_training_set_dir"]

FILE_ENDING = ".nii.gz"
DATASET_JSON = "dataset.json"
_CACHE_KEY = PROJECT_KEY
# The longest file name most file systems take is 255 bytes; "<case>_0000.nii.gz" adds 12.
MAX_CASE_ID_BYTES = 255 - len("_0000") - len(FILE_ENDING)
_STAGING_PREFIX = ".staging-"
_JOURNAL = "journal.json"
_BACKUP_DIR = "backup"


def default_training_set_dir() -> Path:
    """``training_set/`` in the home folder (``$CASCADESEG_HOME`` or the platform's user data
    folder): where the GUI collects corrected cases unless the user picks another folder."""
    return home_dir() / "training_set"


@dataclass(frozen=True)
class AddedCase:
    """What :meth:`TrainingSet.add_case` wrote."""

    case_id: str
    image_paths: tuple[Path, ...]
    label_path: Path
    annotated_slices: int
    requested_id: str  # differs from case_id when a new version was kept
    replaced: bool  # an existing case was overwritten on request

    @property
    def is_new_version(self) -> bool:
        return self.case_id != self.requested_id


@dataclass(frozen=True)
class TrainingSetSummary:
    """Counts the widget shows."""

    folder: Path
    num_cases: int
    annotated_slices: int | None  # None: not counted (cases added by hand, read_uncounted=False)
    channel_names: dict[str, str] = field(default_factory=dict)  # {"0": "FLAIR", ...}
    labels: dict[str, int] = field(default_factory=dict)  # {"background": 0, "tumour": 1}
    incomplete: tuple[str, ...] = ()  # case ids with missing channel or label files

    def describe(self) -> str:
        text = f"{self.num_cases} case(s)"
        if self.annotated_slices is not None:
            text += f", {self.annotated_slices} annotated slice(s)"
        if self.incomplete:
            text += f"; {len(self.incomplete)} incomplete: {', '.join(self.incomplete)}"
        return text


def case_id_from_source(source: str | os.PathLike[str] | None, fallback: str = "case") -> str:
    """A case id from a scan's path: the file name without extensions and without an MSD channel
    suffix (``BraTS_001_0000.nii.gz`` -> ``BraTS_001``), reduced to letters, digits, ``-``, ``_``
    and ``.`` so it is a safe file name everywhere."""
    if source is None:
        return fallback
    path = Path(source)
    name = path.name
    for ending in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm"):
        if name.lower().endswith(ending):
            name = name[: -len(ending)]
            break
    else:
        if path.is_dir() or not path.suffix:
            name = path.name
    return safe_case_id(re.sub(r"_\d{4}$", "", name)) or fallback


def safe_case_id(case_id: str) -> str:
    """``case_id`` as a safe file name: runs of characters other than letters, digits, ``-``, ``_``
    and ``.`` become one ``_``; leading and trailing dots and underscores go. Nothing else changes."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(case_id)).strip("._")


def _check_case_id(case_id: str, given: str) -> str:
    if not case_id:
        raise DatasetError(f"case id {given!r}: has no letters or digits; expected a name such as 'patient_001'")
    size = len(case_id.encode("utf-8"))
    if size > MAX_CASE_ID_BYTES:
        raise DatasetError(
            f"case id '{case_id[:40]}...' is {size} characters long; file names allow at most "
            f"{MAX_CASE_ID_BYTES} for a case id (with '_0000{FILE_ENDING}'); choose a shorter name"
        )
    return case_id


def _disk_error(folder: Path, exc: OSError, doing: str) -> DatasetError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        why = "the disk is full"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        why = "the folder is read-only"
    else:
        why = str(exc)
    return DatasetError(
        f"training set {folder}: cannot {doing} ({why}); choose a writable folder with free space. "
        "Nothing in the set was changed."
    )


class TrainingSet:
    """An MSD / nnU-Net folder that corrected masks are added to (created on first use)."""

    def __init__(self, folder: str | os.PathLike[str], *, name: str = "napari-cascade local training set") -> None:
        self.folder = Path(folder).expanduser()
        self.name = name
        if self.folder.exists() and not self.folder.is_dir():
            raise DatasetError(f"training set {self.folder}: exists and is not a folder")
        if self.folder.is_dir():
            self._recover_interrupted_writes()

    @property
    def images_dir(self) -> Path:
        return self.folder / "imagesTr"

    @property
    def labels_dir(self) -> Path:
        return self.folder / "labelsTr"

    @property
    def dataset_json(self) -> Path:
        return self.folder / DATASET_JSON

    # -- reading -------------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        """``dataset.json`` as a dict (empty when the set has none yet)."""
        if not self.dataset_json.is_file():
            return {}
        try:
            data = json.loads(self.dataset_json.read_text())
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{self.dataset_json}: unreadable dataset.json ({exc})") from exc
        if not isinstance(data, dict):
            raise DatasetError(f"{self.dataset_json}: expected a JSON object")
        return data

    def _channel_count(self, meta: Mapping[str, Any]) -> int | None:
        names = meta.get("channel_names") or meta.get("modality")
        return len(names) if names else None

    def _image_paths(self, case_id: str, num_channels: int) -> list[Path]:
        return [self.images_dir / f"{case_id}_{k:04d}{FILE_ENDING}" for k in range(num_channels)]

    def _label_path(self, case_id: str) -> Path:
        return self.labels_dir / f"{case_id}{FILE_ENDING}"

    def case_ids(self) -> tuple[list[str], list[str]]:
        """``(complete, incomplete)`` case ids: a complete case has its label and every channel."""
        meta = self.metadata()
        ids = set()
        if self.labels_dir.is_dir():
            ids |= {p.name[: -len(FILE_ENDING)] for p in self.labels_dir.glob(f"*{FILE_ENDING}")}
        if self.images_dir.is_dir():
            ids |= {
                re.sub(r"_\d{4}$", "", p.name[: -len(FILE_ENDING)])
                for p in self.images_dir.glob(f"*_[0-9][0-9][0-9][0-9]{FILE_ENDING}")
            }
        num_channels = self._channel_count(meta) or 1
        complete: list[str] = []
        incomplete: list[str] = []
        for case_id in sorted(ids):
            files = [*self._image_paths(case_id, num_channels), self._label_path(case_id)]
            (complete if all(p.is_file() for p in files) else incomplete).append(case_id)
        return complete, incomplete

    def summary(self, read_uncounted: bool = True) -> TrainingSetSummary:
        """Number of complete cases and of annotated slices (along axis 0) over all of them.

        Cases this class wrote have their slice count in ``dataset.json``; a case copied in by hand
        (or a whole MSD folder) is counted from its mask, which reads every such label map: with
        ``read_uncounted=False`` (what the docks ask on the GUI thread: 0.6 s for the 80 LGG
        patients) nothing is read and the count is ``None`` when any case lacks one."""
        meta = self.metadata()
        complete, incomplete = self.case_ids()
        cached = meta.get(_CACHE_KEY, {}).get("annotated_slices", {})
        total, counted = 0, True
        for case_id in complete:
            if case_id in cached:
                total += int(cached[case_id])
            elif read_uncounted:  # a case copied in by hand: count it from its mask
                total += _count_annotated_slices(self._read_label_array(case_id))
            else:  # counting it would read its mask
                counted = False
                break
        return TrainingSetSummary(
            folder=self.folder,
            num_cases=len(complete),
            annotated_slices=total if counted else None,
            channel_names={str(k): n for k, n in enumerate(channel_names_from_json(meta) or [])},
            labels=label_values_from_json(meta),
            incomplete=tuple(incomplete),
        )

    def _read_label_array(self, case_id: str) -> np.ndarray:
        from ..io import load_labels  # lazily: the I/O stack is only needed for hand-added cases

        return np.asarray(load_labels(self._label_path(case_id)).array)

    # -- writing -------------------------------------------------------------------------------
    def add_case(
        self,
        image: Volume,
        labels: Volume | np.ndarray,
        case_id: str | None = None,
        *,
        overwrite: bool = False,
        label_names: Mapping[int, str] | None = None,
        patient: str | None = None,
    ) -> AddedCase:
        """Write ``image`` (every channel) and ``labels`` as a case and update ``dataset.json``.

        ``case_id`` defaults to the image's file name (without an MSD channel suffix); a given id
        is kept as it is, made safe as a file name (:func:`safe_case_id`). If that case exists, a
        new version ``<case>_v2`` is written unless ``overwrite=True``. ``label_names`` names label
        values (``{1: "tumour"}``); values without a name become ``label_<value>``. ``patient``
        (default: a DICOM scan's patient id, else the case id without its study date) is recorded
        in ``dataset.json``; a new version always belongs to the patient of the case it versions.
        The mask must have the image's grid, at least one labelled voxel, and the set's channel
        count.
        """
        label_array = self._check_case(image, labels)
        if case_id is None:
            requested = _check_case_id(case_id_from_source(image.source), str(image.source))
        else:
            requested = _check_case_id(safe_case_id(case_id), str(case_id))
        meta = self.metadata()
        expected_channels = self._channel_count(meta)
        if expected_channels is not None and expected_channels != image.num_channels:
            raise DatasetError(
                f"training set {self.folder}: its cases have {expected_channels} channel(s) "
                f"({meta.get('channel_names')}), this image has {image.num_channels}; "
                "use another training set folder for scans with other channels"
            )
        self._check_writable(image.array.nbytes + label_array.nbytes)

        final_id = requested if overwrite else self._free_case_id(requested, image.num_channels)
        _check_case_id(final_id, final_id)  # "_v2" may push a long id over the limit
        replaced = overwrite and self._label_path(final_id).exists()
        image_paths = self._image_paths(final_id, image.num_channels)
        label_path = self._label_path(final_id)
        refuse_input_overwrite(
            [*image_paths, label_path],
            input_files(image),
            option="case name (or keep the case as a new version: overwrite off)",
        )
        recorded = meta.get(_CACHE_KEY, {}).get(PATIENTS_KEY, {})
        if final_id != requested:
            patient = recorded.get(requested) or patient_id(requested)
        else:
            patient = patient or image.meta.get("patient_id") or recorded.get(final_id) or patient_id(requested)
        slices = _count_annotated_slices(label_array)
        new_meta = self._new_metadata(image, label_array, final_id, slices, label_names, str(patient))
        try:
            self.images_dir.mkdir(parents=True, exist_ok=True)
            self.labels_dir.mkdir(parents=True, exist_ok=True)
            self._write_case(image, label_array, image_paths, label_path, new_meta)
        except OSError as exc:
            raise _disk_error(self.folder, exc, f"write case '{final_id}'") from exc
        return AddedCase(
            case_id=final_id,
            image_paths=tuple(image_paths),
            label_path=label_path,
            annotated_slices=slices,
            requested_id=requested,
            replaced=replaced,
        )

    def _check_case(self, image: Volume, labels: Volume | np.ndarray) -> np.ndarray:
        if image.is_label:
            raise VolumeError(f"image '{image.source}': expected an image (C, Z, Y, X), got a label map")
        array = np.asarray(labels.array if isinstance(labels, Volume) else labels)
        if array.ndim != 3:
            raise VolumeError(f"labels: expected a 3D label map (Z, Y, X), got shape {array.shape}")
        if tuple(array.shape) != image.spatial_shape:
            raise GeometryMismatchError(
                f"labels of shape {tuple(array.shape)} do not match the image "
                f"'{image.source}' of shape {image.spatial_shape}; paint the mask on the image's grid"
            )
        if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
            raise VolumeError(f"labels: expected integer label values, got dtype {array.dtype}")
        if array.size and array.min() < 0:
            raise VolumeError(f"labels: negative label value {int(array.min())}; labels are 0 (background) or positive")
        if not array.any():
            raise DatasetError(
                "labels: the mask is empty; paint the structure on at least one slice before adding "
                "the scan to the training set"
            )
        # Smallest unsigned type that holds the values: what nnU-Net writes and reads fastest.
        return array.astype(np.min_scalar_type(int(array.max())), copy=False)

    def _check_writable(self, needed_bytes: int) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            # A real probe: os.access is wrong on read-only mounts and always True for root.
            fd, probe = tempfile.mkstemp(dir=self.folder, prefix=f"{TEMP_PREFIX}{os.getpid()}-write-probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise _disk_error(self.folder, exc, "write to it") from exc
        free = shutil.disk_usage(self.folder).free
        # The uncompressed size bounds what the compressed files and the staging copy need.
        if free < needed_bytes:
            raise DatasetError(
                f"training set {self.folder}: the disk has {free / 2**20:.1f} MiB free, the case "
                f"needs up to {needed_bytes / 2**20:.1f} MiB; free some space or choose another folder. "
                "Nothing in the set was changed."
            )

    def _free_case_id(self, requested: str, num_channels: int) -> str:
        def taken(case_id: str) -> bool:
            return self._label_path(case_id).exists() or any(
                p.exists() for p in self._image_paths(case_id, num_channels)
            )

        if not taken(requested):
            return requested
        version = 2
        while taken(f"{requested}_v{version}"):
            version += 1
        return f"{requested}_v{version}"

    def _write_case(
        self,
        image: Volume,
        label_array: np.ndarray,
        image_paths: list[Path],
        label_path: Path,
        meta: dict[str, Any],
    ) -> None:
        """Stage every file of the case and the new ``dataset.json``, then move them in as one
        journaled commit: a kill leaves the old set or the new one, never a case that
        ``dataset.json`` does not know."""
        from ..io import save_labels, save_volume

        staging = self.folder / f"{_STAGING_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            moves: list[tuple[Path, Path]] = []
            names = list(image.channel_names)
            names += [f"channel{k}" for k in range(len(names), image.num_channels)]
            for k, final in enumerate(image_paths):
                channel = image.with_array(image.array[k : k + 1], channel_names=[names[k]])
                staged = staging / final.name
                save_volume(channel, staged)
                moves.append((staged, final))
            staged_label = staging / f"label-{label_path.name}"
            save_labels(label_array, image, staged_label)
            moves.append((staged_label, label_path))  # the label marks the case complete
            staged_json = staging / DATASET_JSON
            write_json(staged_json, meta)
            moves.append((staged_json, self.dataset_json))
            _commit_moves(staging, moves)
        except BaseException:
            _roll_back(staging)
            shutil.rmtree(staging, ignore_errors=True)
            raise
        shutil.rmtree(staging, ignore_errors=True)

    def _new_metadata(
        self,
        image: Volume,
        label_array: np.ndarray,
        case_id: str,
        slices: int,
        label_names: Mapping[int, str] | None,
        patient: str,
    ) -> dict[str, Any]:
        """``dataset.json`` as it must read once the case is in."""
        meta = self.metadata()
        meta.setdefault("name", self.name)
        if not meta.get("channel_names"):
            names = (
                channel_names_from_json(meta)  # an MSD / nnU-Net v1 folder names them in "modality"
                or list(image.channel_names)
                or [image.modality or "image"] * image.num_channels
            )
            meta["channel_names"] = {str(k): str(n) for k, n in enumerate(names)}
        regions = {k: v for k, v in (meta.get("labels") or {}).items() if isinstance(v, list)}
        labels: dict[str, Any] = {**(label_values_from_json(meta) or {"background": 0}), **regions}
        known_values = {v for v in labels.values() if isinstance(v, int)}
        value_names = dict(label_names or {})
        for value in np.unique(label_array).tolist():
            if int(value) not in known_values:
                labels[value_names.get(int(value), f"label_{int(value)}")] = int(value)
        meta["labels"] = dict(sorted(labels.items(), key=lambda kv: kv[1] if isinstance(kv[1], int) else 10**9))
        meta["file_ending"] = FILE_ENDING
        block = meta.setdefault(_CACHE_KEY, {})
        block.setdefault("annotated_slices", {})[case_id] = int(slices)
        block.setdefault(PATIENTS_KEY, {})[case_id] = patient
        meta["numTraining"] = len(set(self.case_ids()[0]) | {case_id})
        return meta

    # -- recovery ------------------------------------------------------------------------------
    def _recover_interrupted_writes(self) -> None:
        """Roll back cases whose write was killed half-way (see the module docstring), and remove
        the temporaries of killed writers (a ``dataset.json`` being replaced, say)."""
        stale = [p for p in self.folder.glob(f"{_STAGING_PREFIX}*") if p.is_dir() and not _writer_alive(p)]
        for staging in stale:
            _roll_back(staging)
            shutil.rmtree(staging, ignore_errors=True)
            log.warning(
                "training set %s: rolled back %s (a case write that was killed half-way)", self.folder, staging.name
            )
        for sub in (self.folder, self.images_dir, self.labels_dir):
            clean_leftovers(sub)
        if stale and self.dataset_json.is_file():
            meta = self.metadata()
            meta["numTraining"] = len(self.case_ids()[0])
            write_json(self.dataset_json, meta)


def _count_annotated_slices(label_array: np.ndarray, axis: int = 0) -> int:
    other = tuple(a for a in range(label_array.ndim) if a != axis)
    return int(np.count_nonzero(np.asarray(label_array).any(axis=other)))


def _writer_alive(staging: Path) -> bool:
    match = re.match(rf"{re.escape(_STAGING_PREFIX)}(\d+)-", staging.name)
    if not match:
        return False
    # this process counts as alive: another of its threads is writing (failed writes clean up at once)
    return pid_alive(int(match.group(1)))


def _commit_moves(staging: Path, moves: list[tuple[Path, Path]]) -> None:
    """Move staged files into place; an existing target is first moved into the staging backup,
    and the journal written before the first move lets a later run undo a half-done commit."""
    backup_dir = staging / _BACKUP_DIR
    backup_dir.mkdir()
    journal = [
        {"staged": str(staged), "final": str(final), "backup": str(backup_dir / f"{i}-{final.name}")}
        for i, (staged, final) in enumerate(moves)
    ]
    write_json(staging / _JOURNAL, journal)
    for entry in journal:
        final = Path(entry["final"])
        if final.exists():
            os.replace(final, entry["backup"])
        os.replace(entry["staged"], final)
    for folder in {Path(entry["final"]).parent for entry in journal}:
        fsync_dir(folder)  # the renames are durable before the journal that could undo them goes
    (staging / _JOURNAL).unlink()  # committed: nothing to roll back any more


def _roll_back(staging: Path) -> None:
    """Undo the moves a journal lists: restore backups, remove new files that replaced nothing."""
    journal_path = staging / _JOURNAL
    if not journal_path.is_file():
        return  # killed while writing staged files: the set itself was never touched
    try:
        journal = json.loads(journal_path.read_text())
    except ValueError:
        return  # the journal write itself was torn (it is atomic, so this means never written)
    for entry in reversed(journal):
        staged, final, backup = Path(entry["staged"]), Path(entry["final"]), Path(entry["backup"])
        if backup.exists():
            os.replace(backup, final)
        elif not staged.exists() and final.exists():
            final.unlink()  # the new file was moved in and there was no old one to restore
    journal_path.unlink()
