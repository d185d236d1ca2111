"""Crash recovery for label edits: one recovery file per scan, written atomically.

The GUI calls :meth:`AutosaveSession.tick` from a timer every few seconds; only when the labels
changed since the last write is a new recovery file written (a CRC of the array bytes decides,
which costs milliseconds and needs no hook into every paint event). Reopening the scan asks
:meth:`RecoveryStore.find` whether a recovery file exists and offers to restore it; a clean save
of the mask calls :meth:`RecoveryStore.clear`.

Files live in ``recovery/`` of the home folder (:func:`cascadeseg._home.home_dir`), named by a hash
of the scan's resolved path, never next to the user's scan. The format is a compressed ``.npz``
holding the label array and a JSON header, read with ``allow_pickle=False`` (nothing is ever
unpickled). Writes are atomic (:mod:`cascadeseg._atomic`), so a crash during the write leaves the
previous recovery file intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import clean_leftovers, open_atomic
from .._home import home_dir
from ..errors import InputFileError, VolumeError

__all__ = ["recovery_dir", "RecoveryInfo", "RecoveryStore", "AutosaveSession", "DEFAULT_INTERVAL_S"]

DEFAULT_INTERVAL_S = 30.0
_FORMAT_VERSION = 1


def recovery_dir() -> Path:
    """``recovery/`` in the home folder (``$CASCADESEG_HOME`` or the platform's user data folder)."""
    return home_dir() / "recovery"


def _source_key(source: str | os.PathLike[str]) -> str:
    resolved = str(Path(source).expanduser().resolve())
    return hashlib.sha256(resolved.encode("utf-8")).hexdigest()[:20]


@dataclass(frozen=True)
class RecoveryInfo:
    """What a recovery file holds, without loading its voxels."""

    path: Path
    source: str
    layer_name: str
    shape: tuple[int, ...]
    dtype: str
    saved_at: float  # UNIX time of the write

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.saved_at))
        return f"unsaved edits of '{self.layer_name}' from {when}"


class RecoveryStore:
    """Reads, writes and clears recovery files, one per scan source path."""

    def __init__(self, folder: str | os.PathLike[str] | None = None) -> None:
        self.folder = Path(folder) if folder is not None else recovery_dir()
        clean_leftovers(self.folder)  # a recovery write a crash cut short (the old file is intact)

    def path_for(self, source: str | os.PathLike[str]) -> Path:
        stem = Path(source).name.split(".")[0][:40] or "scan"
        return self.folder / f"{stem}-{_source_key(source)}.npz"

    def save(self, source: str | os.PathLike[str], labels: np.ndarray, layer_name: str = "labels") -> Path:
        """Write (atomically) the recovery file for ``source``; returns its path."""
        labels = np.asarray(labels)
        if labels.ndim != 3:
            raise VolumeError(f"autosave of '{layer_name}': expected a 3D label map, got shape {labels.shape}")
        self.folder.mkdir(parents=True, exist_ok=True)
        header = {
            "format": _FORMAT_VERSION,
            "source": str(Path(source).expanduser().resolve()),
            "layer_name": layer_name,
            "saved_at": time.time(),
            # Shape and dtype in the header let find() describe the file without reading voxels.
            "shape": list(labels.shape),
            "dtype": str(labels.dtype),
        }
        target = self.path_for(source)
        with open_atomic(target, "wb") as handle:
            np.savez_compressed(handle, labels=labels, header=np.array(json.dumps(header)))
        return target

    def find(self, source: str | os.PathLike[str]) -> RecoveryInfo | None:
        """The recovery file for ``source``, or ``None``; an unreadable one is reported, not hidden."""
        path = self.path_for(source)
        if not path.is_file():
            return None
        header, _ = self._read(path, load_voxels=False)
        return RecoveryInfo(
            path=path,
            source=header["source"],
            layer_name=header.get("layer_name", "labels"),
            shape=tuple(header["shape"]),
            dtype=str(header["dtype"]),
            saved_at=float(header.get("saved_at", path.stat().st_mtime)),
        )

    def load(
        self, source: str | os.PathLike[str], expected_shape: tuple[int, ...] | None = None
    ) -> tuple[np.ndarray, RecoveryInfo]:
        """The recovered labels of ``source``; checks the shape against the scan when given."""
        info = self.find(source)
        if info is None:
            raise InputFileError(f"no recovery file for '{source}' in {self.folder}")
        _, labels = self._read(info.path, load_voxels=True)
        assert labels is not None  # load_voxels=True reads them (or raises)
        if expected_shape is not None and tuple(labels.shape) != tuple(expected_shape):
            raise VolumeError(
                f"recovery file {info.path}: labels have shape {tuple(labels.shape)} but the scan "
                f"'{source}' has {tuple(expected_shape)}; the scan changed since the autosave"
            )
        return labels, info

    def clear(self, source: str | os.PathLike[str]) -> bool:
        """Delete the recovery file of ``source`` (after a clean save); True when one existed."""
        path = self.path_for(source)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    @staticmethod
    def _read(path: Path, *, load_voxels: bool) -> tuple[dict[str, Any], np.ndarray | None]:
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(str(data["header"]))
                labels = data["labels"] if load_voxels else None
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            raise InputFileError(
                f"recovery file {path} is unreadable ({exc}); delete it or restore from your last save"
            ) from exc
        if header.get("format") != _FORMAT_VERSION:
            raise InputFileError(f"recovery file {path} has format {header.get('format')}, expected {_FORMAT_VERSION}")
        return header, labels


class AutosaveSession:
    """Autosave state of one labels array for one scan: writes only when the labels changed."""

    def __init__(
        self,
        source: str | os.PathLike[str],
        store: RecoveryStore | None = None,
        layer_name: str = "labels",
    ) -> None:
        self.source = Path(source)
        self.store = store or RecoveryStore()
        self.layer_name = layer_name
        self._last_crc: int | None = None

    @staticmethod
    def _checksum(labels: np.ndarray) -> int:
        layout = zlib.crc32(f"{labels.shape}{labels.dtype}".encode())
        # crc32 reads the array's own buffer and releases the GIL while it does; a ``tobytes()``
        # copy held the GIL for its whole copy and froze the GUI for 0.1-0.7 s on a 512x512x600
        # mask (this runs in a worker right after every accept and autosave tick).
        return zlib.crc32(np.ascontiguousarray(labels).view(np.uint8).reshape(-1).data, layout)

    def mark_clean(self, labels: np.ndarray) -> None:
        """The current labels are saved (or freshly loaded): nothing to recover until they change."""
        self._last_crc = self._checksum(labels)

    def pending(self, labels: np.ndarray) -> tuple[np.ndarray, int] | None:
        """A snapshot to write and its checksum when ``labels`` changed since the last write or
        clean mark, else ``None``. Split from :meth:`write` so that a GUI can take the (fast)
        snapshot on its own thread and compress and write it (slow for a large CT) elsewhere."""
        crc = self._checksum(labels)
        if crc == self._last_crc:
            return None
        return np.array(labels, copy=True), crc

    def write(self, snapshot: np.ndarray, checksum: int) -> Path:
        """Write a snapshot from :meth:`pending`; later ticks skip it while it stays unchanged."""
        path = self.store.save(self.source, snapshot, self.layer_name)
        self._last_crc = checksum
        return path

    def tick(self, labels: np.ndarray) -> Path | None:
        """Write a recovery file now if ``labels`` changed since the last write or clean mark."""
        pending = self.pending(labels)
        return None if pending is None else self.write(*pending)

    def saved_cleanly(self, labels: np.ndarray) -> None:
        """The user saved the mask: the recovery file is obsolete."""
        self.store.clear(self.source)
        self.mark_clean(labels)
