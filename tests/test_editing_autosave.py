"""Recovery files: written atomically and only on change, found by the scan path, restorable."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cascadeseg.editing import AutosaveSession, RecoveryStore, recovery_dir
from cascadeseg.errors import InputFileError, VolumeError
from cascadeseg.io import load_labels

SCAN = "lgg-flair/imagesTr/TCGA_CS_4941_19960909_0000.nii.gz"
MASK = "lgg-flair/labelsTr/TCGA_CS_4941_19960909.nii.gz"


@pytest.fixture
def labels(shared_data: Path) -> np.ndarray:
    return np.asarray(load_labels(shared_data / MASK).array).copy()


def test_round_trip_and_clear(tmp_path: Path, shared_data: Path, labels: np.ndarray) -> None:
    store = RecoveryStore(tmp_path / "recovery")
    scan = shared_data / SCAN
    assert store.find(scan) is None
    labels[3, 10:20, 10:20] = 1  # an edit
    path = store.save(scan, labels, layer_name="tumour (edited)")
    assert path.parent == tmp_path / "recovery" and path.name.startswith("TCGA_CS_4941_19960909")
    info = store.find(scan)
    assert info is not None and info.layer_name == "tumour (edited)" and info.shape == labels.shape
    assert "tumour (edited)" in info.describe()
    restored, _ = store.load(scan, expected_shape=labels.shape)
    assert np.array_equal(restored, labels) and restored.dtype == labels.dtype
    assert list((shared_data / "lgg-flair" / "imagesTr").glob("*.npz")) == []  # never beside the scan
    with pytest.raises(VolumeError, match="changed since"):
        store.load(scan, expected_shape=(1, 2, 3))
    assert store.clear(scan) and store.find(scan) is None and not store.clear(scan)
    with pytest.raises(InputFileError, match="no recovery file"):
        store.load(scan)


def test_session_writes_only_on_change(tmp_path: Path, shared_data: Path, labels: np.ndarray) -> None:
    session = AutosaveSession(shared_data / SCAN, RecoveryStore(tmp_path), layer_name="mask")
    session.mark_clean(labels)
    assert session.tick(labels) is None  # nothing changed since loading
    labels[0, 0, 0] = 1
    first = session.tick(labels)
    assert first is not None and first.is_file()
    assert session.tick(labels) is None
    labels[0, 0, 1] = 1
    assert session.tick(labels) == first  # same file, replaced
    assert np.array_equal(session.store.load(shared_data / SCAN)[0], labels)
    session.saved_cleanly(labels)
    assert session.store.find(shared_data / SCAN) is None


def test_snapshot_then_write_in_two_steps(tmp_path: Path, shared_data: Path, labels: np.ndarray) -> None:
    """The GUI snapshots on its thread and writes in a worker: later edits do not leak in."""
    session = AutosaveSession(shared_data / SCAN, RecoveryStore(tmp_path))
    session.mark_clean(labels)
    assert session.pending(labels) is None
    labels[1, 2, 3] = 1
    snapshot, checksum = session.pending(labels)
    labels[4, 5, 6] = 1  # the user keeps painting while the write runs
    session.write(snapshot, checksum)
    restored, _ = session.store.load(shared_data / SCAN)
    assert restored[1, 2, 3] == 1 and restored[4, 5, 6] == 0
    assert session.tick(labels) is not None  # the later edit is written on the next tick


def test_interrupted_write_keeps_previous_file(
    tmp_path: Path, shared_data: Path, labels: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RecoveryStore(tmp_path)
    scan = shared_data / SCAN
    store.save(scan, labels)

    def crash(*args: object) -> None:
        raise OSError("simulated crash during the rename")

    monkeypatch.setattr(os, "replace", crash)
    newer = labels.copy()
    newer[:] = 0
    with pytest.raises(OSError, match="simulated"):
        store.save(scan, newer)
    monkeypatch.undo()
    restored, _ = store.load(scan)
    assert np.array_equal(restored, labels)  # the previous recovery file is intact
    assert [p.name for p in tmp_path.iterdir()] == [store.path_for(scan).name]  # no temp left


def test_corrupt_file_is_reported(tmp_path: Path, shared_data: Path) -> None:
    store = RecoveryStore(tmp_path)
    scan = shared_data / SCAN
    store.path_for(scan).write_bytes(b"not a zip")
    with pytest.raises(InputFileError, match="unreadable"):
        store.find(scan)


def test_default_folder_follows_cascadeseg_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASCADESEG_HOME", str(tmp_path))
    assert recovery_dir() == tmp_path / "recovery"
    assert RecoveryStore().folder == tmp_path / "recovery"
