"""The local training set: MSD layout with geometry, versioning, dataset.json, and kill-safety."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import cascadeseg.io
from cascadeseg.editing import TrainingSet, case_id_from_source
from cascadeseg.editing import training_set as training_set_module
from cascadeseg.errors import DatasetError, GeometryMismatchError
from cascadeseg.io import Volume, load_dataset, load_labels, load_volume

CASE = "PGBM-003_19950329"  # TCIA glioblastoma study: 2 channels (T1c, FLAIR), 6.5 mm slices


@pytest.fixture(scope="module")
def scan(shared_data: Path) -> tuple[Volume, Volume]:
    image = load_volume(shared_data / "tcia-btp" / "imagesTr" / f"{CASE}_0000.nii.gz")
    labels = load_labels(shared_data / "tcia-btp" / "labelsTr" / f"{CASE}.nii.gz", image)
    return image, labels


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@dataclass(frozen=True)
class SavedSet:
    """A training set folder holding one case, and the digests of its files before the test."""

    folder: Path
    before: dict[str, str]


@pytest.fixture
def saved_set(tmp_path: Path, scan: tuple[Volume, Volume]) -> SavedSet:
    """The setup of the tests that check a failed write changes nothing: one case already saved."""
    image, labels = scan
    folder = tmp_path / "set"
    TrainingSet(folder).add_case(image, labels)
    return SavedSet(folder, _digests(folder))


def test_add_twice_keeps_both_versions_with_geometry(tmp_path: Path, scan: tuple[Volume, Volume]) -> None:
    image, labels = scan
    training_set = TrainingSet(tmp_path / "set")
    first = training_set.add_case(image, labels, label_names={1: "tumour"})
    second = training_set.add_case(image, labels.array)
    assert first.case_id == CASE and not first.is_new_version
    assert second.case_id == f"{CASE}_v2" and second.is_new_version and second.requested_id == CASE
    names = sorted(p.name for p in (tmp_path / "set" / "imagesTr").iterdir())
    assert names == [f"{CASE}_0000.nii.gz", f"{CASE}_0001.nii.gz", f"{CASE}_v2_0000.nii.gz", f"{CASE}_v2_0001.nii.gz"]
    assert sorted(p.name for p in (tmp_path / "set" / "labelsTr").iterdir()) == [f"{CASE}.nii.gz", f"{CASE}_v2.nii.gz"]
    assert sorted(p.name for p in (tmp_path / "set").iterdir()) == ["dataset.json", "imagesTr", "labelsTr"]

    meta = json.loads((tmp_path / "set" / "dataset.json").read_text())
    assert meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz"
    assert meta["labels"] == {"background": 0, "tumour": 1}
    assert meta["channel_names"] == {"0": image.channel_names[0], "1": image.channel_names[1]}

    slices = int(np.count_nonzero(labels.array.any(axis=(1, 2))))
    summary = training_set.summary()
    assert (summary.num_cases, summary.annotated_slices) == (2, 2 * slices)
    assert "2 case(s)" in summary.describe()

    # The project's own dataset reader sees both cases, voxel- and geometry-identical to the source.
    cases = load_dataset(tmp_path / "set")
    assert [c.case_id for c in cases] == [CASE, f"{CASE}_v2"]
    reread, relabels = cases[1].load()
    assert np.array_equal(reread.array, image.array) and np.array_equal(relabels.array, labels.array)
    assert np.allclose(reread.spacing, image.spacing) and np.allclose(reread.origin, image.origin)
    assert np.allclose(reread.direction, image.direction)


def test_overwrite_on_request_and_bad_input(tmp_path: Path, scan: tuple[Volume, Volume]) -> None:
    image, labels = scan
    training_set = TrainingSet(tmp_path)
    training_set.add_case(image, labels)
    edited = labels.array.copy()
    edited[edited.shape[0] // 2, :10, :10] = 1
    replaced = training_set.add_case(image, edited, overwrite=True)
    assert replaced.case_id == CASE and replaced.replaced
    assert training_set.summary().num_cases == 1
    assert np.array_equal(load_labels(replaced.label_path).array, edited)

    with pytest.raises(DatasetError, match="empty"):
        training_set.add_case(image, np.zeros_like(labels.array))
    with pytest.raises(GeometryMismatchError, match="do not match"):
        training_set.add_case(image, labels.array[:-1])
    one_channel = image.with_array(image.array[:1], channel_names=["T1c"])
    with pytest.raises(DatasetError, match="2 channel"):
        training_set.add_case(one_channel, labels)
    assert training_set.summary().num_cases == 1


def test_case_ids_are_safe_file_names() -> None:
    assert case_id_from_source("/x/BraTS_001_0000.nii.gz") == "BraTS_001"
    assert case_id_from_source("/x/my scan (1).nrrd") == "my_scan_1"
    assert case_id_from_source(None) == "case"


def test_hand_added_case_is_counted_from_its_mask(
    tmp_path: Path, scan: tuple[Volume, Volume], shared_data: Path
) -> None:
    image, labels = scan
    training_set = TrainingSet(tmp_path)
    training_set.add_case(image, labels, case_id="mine")
    for k in (0, 1):  # a user copies a second case in by hand
        src = shared_data / "tcia-btp" / "imagesTr" / f"{CASE}_000{k}.nii.gz"
        (tmp_path / "imagesTr" / f"copied_000{k}.nii.gz").write_bytes(src.read_bytes())
    (tmp_path / "imagesTr" / "orphan_0000.nii.gz").write_bytes(b"")  # no label: incomplete
    (tmp_path / "labelsTr" / "copied.nii.gz").write_bytes(
        (shared_data / "tcia-btp" / "labelsTr" / f"{CASE}.nii.gz").read_bytes()
    )
    summary = training_set.summary()
    slices = int(np.count_nonzero(labels.array.any(axis=(1, 2))))
    assert (summary.num_cases, summary.annotated_slices) == (2, 2 * slices)
    assert summary.incomplete == ("orphan",)
    # What the docks ask on the GUI thread: no mask is read, and a count it cannot give is None.
    quick = training_set.summary(read_uncounted=False)
    assert (quick.num_cases, quick.annotated_slices, quick.incomplete) == (2, None, ("orphan",))
    assert quick.describe().startswith("2 case(s); 1 incomplete") and "annotated" not in quick.describe()


def test_summary_of_an_msd_folder_reads_no_mask_when_asked_not_to(
    shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Train dock summarises the folder it will train on before its worker starts, on the GUI
    thread: for the 80 LGG patients that used to read every label map (0.6 s of frozen window)."""
    folder = TrainingSet(shared_data / "lgg-flair")

    def no_read(case_id: str) -> np.ndarray:
        raise AssertionError(f"read the mask of {case_id}")

    monkeypatch.setattr(folder, "_read_label_array", no_read)
    summary = folder.summary(read_uncounted=False)
    assert (summary.num_cases, summary.annotated_slices) == (80, None)
    assert summary.describe() == "80 case(s)"


def test_read_only_folder_is_a_clear_error(
    saved_set: SavedSet, scan: tuple[Volume, Volume], monkeypatch: pytest.MonkeyPatch
) -> None:
    image, labels = scan
    folder, before = saved_set.folder, saved_set.before

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EROFS, "Read-only file system")

    # Root ignores chmod, so the read-only mount is simulated where the probe creates its file.
    monkeypatch.setattr(training_set_module.tempfile, "mkstemp", refuse)
    with pytest.raises(DatasetError, match="read-only"):
        TrainingSet(folder).add_case(image, labels)
    monkeypatch.undo()
    if os.geteuid() != 0:  # a real read-only folder where permissions are enforced
        folder.chmod(0o555)
        try:
            with pytest.raises(DatasetError, match="read-only"):
                TrainingSet(folder).add_case(image, labels)
        finally:
            folder.chmod(0o755)
    assert _digests(folder) == before


def test_full_disk_is_a_clear_error_and_changes_nothing(
    saved_set: SavedSet, scan: tuple[Volume, Volume], monkeypatch: pytest.MonkeyPatch
) -> None:
    image, labels = scan
    folder, before = saved_set.folder, saved_set.before

    class Tiny:
        free = 1024

    monkeypatch.setattr(training_set_module.shutil, "disk_usage", lambda _: Tiny)
    with pytest.raises(DatasetError, match="MiB free"):
        TrainingSet(folder).add_case(image, labels)
    monkeypatch.undo()

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cascadeseg.io, "save_labels", disk_full)  # runs out while writing the label
    with pytest.raises(DatasetError, match="disk is full"):
        TrainingSet(folder).add_case(image, labels, overwrite=True)
    assert _digests(folder) == before  # no half case, no staging folder left


def test_interrupted_overwrite_keeps_the_old_case(
    saved_set: SavedSet, scan: tuple[Volume, Volume], monkeypatch: pytest.MonkeyPatch
) -> None:
    image, labels = scan
    folder, before = saved_set.folder, saved_set.before
    real_replace = os.replace
    swapped: list[object] = []

    def fail_midway(src: object, dst: object) -> None:
        if Path(str(dst)).parent.name == "imagesTr":
            swapped.append(dst)
            if len(swapped) == 2:  # channel 0 is already new: a torn case unless rolled back
                raise OSError(errno.EIO, "simulated I/O error")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_midway)
    edited = labels.array.copy()
    edited[0, :5, :5] = 1
    with pytest.raises(DatasetError, match="simulated"):
        TrainingSet(folder).add_case(image, edited, overwrite=True)
    monkeypatch.undo()
    assert len(swapped) >= 2  # the failure hit mid-commit (later entries are the roll-back)
    assert _digests(folder) == before


_KILLED_WRITER = """
import os, sys
import numpy as np
from cascadeseg.editing import TrainingSet
from cascadeseg.io import load_labels, load_volume

folder, image_path, label_path = sys.argv[1:4]
image = load_volume(image_path)
labels = load_labels(label_path, image).array.copy()
labels[0, :5, :5] = 1
real_replace = os.replace
moved = []

def die_after_first_move(src, dst):
    real_replace(src, dst)
    if "imagesTr" in str(dst):
        moved.append(dst)
        if len(moved) == 1:
            os._exit(9)  # like SIGKILL: no exception handler, no cleanup runs

os.replace = die_after_first_move
TrainingSet(folder).add_case(image, labels, overwrite=True)
"""


def test_killed_writer_is_rolled_back_on_next_open(
    saved_set: SavedSet, scan: tuple[Volume, Volume], shared_data: Path
) -> None:
    image, labels = scan
    folder, before = saved_set.folder, saved_set.before
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _KILLED_WRITER,
            str(folder),
            str(shared_data / "tcia-btp" / "imagesTr" / f"{CASE}_0000.nii.gz"),
            str(shared_data / "tcia-btp" / "labelsTr" / f"{CASE}.nii.gz"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 9, proc.stderr
    assert _digests(folder) != before  # the kill left a half-swapped case and a staging folder
    reopened = TrainingSet(folder)  # opening the set rolls the interrupted write back
    assert _digests(folder) == before
    assert reopened.summary().num_cases == 1
    image_again, labels_again = load_dataset(folder)[0].load()
    assert np.array_equal(labels_again.array, labels.array)


def test_msd_v1_dataset_json_is_understood(tmp_path: Path, scan: tuple[Volume, Volume]) -> None:
    image, labels = scan
    (tmp_path / "dataset.json").write_text(json.dumps({
        "name": "BrainTumour", "modality": {"0": "T1c", "1": "FLAIR"},
        "labels": {"0": "background", "1": "tumour"}, "numTraining": 0,
    }))
    training_set = TrainingSet(tmp_path)
    assert training_set.summary().labels == {"background": 0, "tumour": 1}
    assert training_set.summary().channel_names == {"0": "T1c", "1": "FLAIR"}
    with_two = labels.array.copy()
    with_two[with_two.shape[0] // 2, :3, :3] = 2
    training_set.add_case(image, with_two, case_id="study")
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "tumour": 1, "label_2": 2}
    assert meta["numTraining"] == 1 and meta["modality"] == {"0": "T1c", "1": "FLAIR"}
    assert meta["channel_names"] == {"0": "T1c", "1": "FLAIR"}
