"""The local training set: corrected masks saved as an MSD / nnU-Net folder.

Layout (what nnU-Net v2 and :func:`cascadeseg.io.load_dataset` read)::

    <folder>/dataset.json
    <folder>/imagesTr/<case>_0000.nii.gz, <case>_0001.nii.gz, ...   one file per channel
    <folder>/labelsTr/<case>.nii.gz

``dataset.json`` holds nnU-Net v2's keys (``channel_names``, ``labels``, ``numTraining``,
``file_ending``) plus a ``napari_cascade`` block caching each case's annotated-slice count, so the
widget can show the totals without reading every mask.

Safety, because this folder holds hours of a user's annotation work:

* An existing case is never replaced silently: a new version ``<case>_v2`` (``_v3``, ...) is
  written instead, unless ``overwrite=True``.
* Every file of a case is first written completely into a staging folder inside the set (same
  file system), then moved into place with ``os.replace`` (atomic). A journal in the staging
  folder lists the moves; if the process dies half-way, the next :class:`TrainingSet` opened on
  the folder rolls the half-moved case back, so the folder holds the old case or the new one,
  never a torn file or a case with channels from two writes.
* A read-only folder or a disk without room fails up front (or mid-write, cleaned up) with a
  :class:`~cascadeseg.errors.DatasetError` that names the folder.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import DatasetError, GeometryMismatchError, VolumeError
from ..io.msd_layout import channel_names_from_json
from ..io.volume import Volume

__all__ = ["TrainingSet", "AddedCase", "TrainingSetSummary", "case_id_from_source", "default_training_set_dir"]

FILE_ENDING = ".nii.gz"
DATASET_JSON = "dataset.json"
_CACHE_KEY = "napari_cascade"
_STAGING_PREFIX = ".staging-"
_JOURNAL = "journal.json"
_BACKUP_DIR = "backup"


def default_training_set_dir() -> Path:
    """``$CASCADESEG_HOME/training_set`` (default ``~/.cascadeseg/training_set``): where the GUI
    collects corrected cases unless the user picks another folder."""
    home = os.environ.get("CASCADESEG_HOME")
    return (Path(home) if home else Path.home() / ".cascadeseg") / "training_set"


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
    annotated_slices: int
    channel_names: dict[str, str] = field(default_factory=dict)  # {"0": "FLAIR", ...}
    labels: dict[str, int] = field(default_factory=dict)  # {"background": 0, "tumour": 1}
    incomplete: tuple[str, ...] = ()  # case ids with missing channel or label files

    def describe(self) -> str:
        text = f"{self.num_cases} case(s), {self.annotated_slices} annotated slice(s)"
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
    name = re.sub(r"_\d{4}$", "", name)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return name or fallback


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


def _write_json_atomic(path: Path, payload: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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

    @staticmethod
    def _labels_by_name(meta: Mapping[str, Any]) -> dict[str, int]:
        """``{name: value}`` from nnU-Net v2 (``{"tumour": 1}``) or MSD / nnU-Net v1
        (``{"1": "tumour"}``) ``labels``; nnU-Net v2 region entries (lists) are skipped."""
        table = meta.get("labels") or {}
        out: dict[str, int] = {}
        for key, value in table.items():
            if isinstance(value, int) and not isinstance(value, bool):
                out[str(key)] = value
            elif isinstance(value, str) and str(key).isdigit():
                out[value] = int(key)
        return out

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
        complete, incomplete = [], []
        for case_id in sorted(ids):
            files = [*self._image_paths(case_id, num_channels), self._label_path(case_id)]
            (complete if all(p.is_file() for p in files) else incomplete).append(case_id)
        return complete, incomplete

    def summary(self) -> TrainingSetSummary:
        """Number of complete cases and of annotated slices (along axis 0) over all of them."""
        meta = self.metadata()
        complete, incomplete = self.case_ids()
        cached = meta.get(_CACHE_KEY, {}).get("annotated_slices", {})
        total = 0
        for case_id in complete:
            if case_id in cached:
                total += int(cached[case_id])
            else:  # a case copied in by hand: count it from its mask
                total += _count_annotated_slices(self._read_label_array(case_id))
        return TrainingSetSummary(
            folder=self.folder,
            num_cases=len(complete),
            annotated_slices=total,
            channel_names={str(k): n for k, n in enumerate(channel_names_from_json(meta) or [])},
            labels=self._labels_by_name(meta),
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
    ) -> AddedCase:
        """Write ``image`` (every channel) and ``labels`` as a case and update ``dataset.json``.

        ``case_id`` defaults to the image's file name. If that case exists, a new version
        ``<case>_v2`` is written unless ``overwrite=True``. ``label_names`` names label values
        (``{1: "tumour"}``); values without a name become ``label_<value>``. The mask must have
        the image's grid, at least one labelled voxel, and the set's channel count.
        """
        label_array = self._check_case(image, labels)
        requested = case_id_from_source(image.source) if case_id is None else case_id_from_source(case_id)
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
        replaced = overwrite and self._label_path(final_id).exists()
        image_paths = self._image_paths(final_id, image.num_channels)
        label_path = self._label_path(final_id)
        try:
            self.images_dir.mkdir(parents=True, exist_ok=True)
            self.labels_dir.mkdir(parents=True, exist_ok=True)
            self._write_case(image, label_array, image_paths, label_path)
        except OSError as exc:
            raise _disk_error(self.folder, exc, f"write case '{final_id}'") from exc

        slices = _count_annotated_slices(label_array)
        self._update_metadata(image, label_array, final_id, slices, label_names)
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
            fd, probe = tempfile.mkstemp(dir=self.folder, prefix=".write-probe-")
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
        self, image: Volume, label_array: np.ndarray, image_paths: list[Path], label_path: Path
    ) -> None:
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
            moves.append((staged_label, label_path))  # the label last: it marks the case complete
            _commit_moves(staging, moves)
        except BaseException:
            _roll_back(staging)
            shutil.rmtree(staging, ignore_errors=True)
            raise
        shutil.rmtree(staging, ignore_errors=True)

    def _update_metadata(
        self,
        image: Volume,
        label_array: np.ndarray,
        case_id: str,
        slices: int,
        label_names: Mapping[int, str] | None,
    ) -> None:
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
        labels: dict[str, Any] = {**(self._labels_by_name(meta) or {"background": 0}), **regions}
        known_values = {v for v in labels.values() if isinstance(v, int)}
        names = dict(label_names or {})
        for value in np.unique(label_array).tolist():
            if int(value) not in known_values:
                labels[names.get(int(value), f"label_{int(value)}")] = int(value)
        meta["labels"] = dict(sorted(labels.items(), key=lambda kv: kv[1] if isinstance(kv[1], int) else 10**9))
        meta["file_ending"] = FILE_ENDING
        cache = meta.setdefault(_CACHE_KEY, {}).setdefault("annotated_slices", {})
        cache[case_id] = int(slices)
        meta["numTraining"] = len(self.case_ids()[0])
        try:
            _write_json_atomic(self.dataset_json, meta)
        except OSError as exc:
            raise _disk_error(self.folder, exc, "update dataset.json") from exc

    # -- recovery ------------------------------------------------------------------------------
    def _recover_interrupted_writes(self) -> None:
        """Roll back cases whose write was killed half-way (see the module docstring)."""
        stale = [p for p in self.folder.glob(f"{_STAGING_PREFIX}*") if p.is_dir() and not _writer_alive(p)]
        for staging in stale:
            _roll_back(staging)
            shutil.rmtree(staging, ignore_errors=True)
        if stale and self.dataset_json.is_file():
            meta = self.metadata()
            meta["numTraining"] = len(self.case_ids()[0])
            _write_json_atomic(self.dataset_json, meta)


def _count_annotated_slices(label_array: np.ndarray, axis: int = 0) -> int:
    other = tuple(a for a in range(label_array.ndim) if a != axis)
    return int(np.count_nonzero(np.asarray(label_array).any(axis=other)))


def _writer_alive(staging: Path) -> bool:
    match = re.match(rf"{re.escape(_STAGING_PREFIX)}(\d+)-", staging.name)
    if not match:
        return False
    pid = int(match.group(1))
    if pid == os.getpid():
        return True  # another thread of this process is writing (failed writes clean up at once)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _commit_moves(staging: Path, moves: list[tuple[Path, Path]]) -> None:
    """Move staged files into place; an existing target is first moved into the staging backup,
    and the journal written before the first move lets a later run undo a half-done commit."""
    backup_dir = staging / _BACKUP_DIR
    backup_dir.mkdir()
    journal = [
        {"staged": str(staged), "final": str(final), "backup": str(backup_dir / f"{i}-{final.name}")}
        for i, (staged, final) in enumerate(moves)
    ]
    _write_json_atomic(staging / _JOURNAL, journal)
    for entry in journal:
        final = Path(entry["final"])
        if final.exists():
            os.replace(final, entry["backup"])
        os.replace(entry["staged"], final)
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
