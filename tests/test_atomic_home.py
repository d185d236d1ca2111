"""The one atomic write (files, folders, swaps, what a killed writer leaves) and the one home folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cascadeseg import _atomic
from cascadeseg._home import home_dir


def _dead_pid() -> int:
    """The id of a process that has just ended (so no live process has it, barring reuse)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_atomic_file_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    _atomic.write_json(target, {"a": 1})
    assert target.read_text() == '{\n  "a": 1\n}\n'
    with pytest.raises(RuntimeError, match="writer failed"):
        with _atomic.open_atomic(target, "w") as handle:
            handle.write("half a rep")
            raise RuntimeError("writer failed")
    assert target.read_text() == '{\n  "a": 1\n}\n'  # the old file, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temporary left
    with pytest.raises(ValueError, match="must write a new file"):
        with _atomic.open_atomic(target, "a"):
            pass


def test_swap_keeps_a_backup_only_while_swapping_and_a_lone_backup_is_restored(tmp_path: Path) -> None:
    target = tmp_path / "last"
    for version in ("1", "2"):
        with _atomic.staging_folder(tmp_path, "last") as staged:
            (staged / "weights").write_text(version)
            _atomic.swap_folder(staged, target)
    assert (target / "weights").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    # A kill between the two renames leaves only the backup: the next run puts it back.
    os.replace(target, tmp_path / ".last.old")
    notes = _atomic.clean_leftovers(tmp_path, swapped=("last",))
    assert (target / "weights").read_text() == "2" and not (tmp_path / ".last.old").exists()
    assert notes == ["restored last from .last.old (a kill fell between the two renames of its swap)"]


def test_leftovers_of_dead_writers_go_and_live_writers_and_user_files_stay(tmp_path: Path) -> None:
    dead = _dead_pid()
    (tmp_path / f"{_atomic.TEMP_PREFIX}{dead}-0badf00d-case.nii.gz").write_bytes(b"torn")
    (tmp_path / f"{_atomic.TEMP_PREFIX}{dead}-1badf00d-last").mkdir()
    live = tmp_path / f"{_atomic.TEMP_PREFIX}{os.getpid()}-2badf00d-other.nii.gz"
    live.write_bytes(b"being written")
    (tmp_path / ".cascadeseg-write-abc123").mkdir()  # an earlier version's staging folder
    (tmp_path / ".last.staging.k2j3h4g5").mkdir()
    for user_file in (".notes.tmp", ".best.old", "scan.nii.gz", ".hidden"):
        (tmp_path / user_file).write_text("mine")
    notes = _atomic.clean_leftovers(tmp_path)
    assert len(notes) == 4 and all(n.startswith("removed ") for n in notes)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, ".notes.tmp", ".best.old", "scan.nii.gz", ".hidden"])


def test_home_folder_expands_the_users_home_for_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cascadeseg.editing import default_training_set_dir, recovery_dir
    from cascadeseg.inference import user_models_dir

    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("CASCADESEG_HOME", "~/x")
    monkeypatch.chdir(tmp_path)
    expected = tmp_path / "user" / "x"
    assert home_dir() == expected
    assert user_models_dir() == expected / "models"
    assert default_training_set_dir() == expected / "training_set"
    assert recovery_dir() == expected / "recovery"
    from cascadeseg.editing.autosave import RecoveryStore

    RecoveryStore().save(tmp_path / "scan.nii.gz", np.zeros((2, 3, 4), np.uint8))
    assert [p.parent for p in expected.rglob("*.npz")] == [expected / "recovery"]
    assert not (tmp_path / "~").exists()  # never a literal "./~/x"
    # Unset: the platform's user data folder (platformdirs), unless an earlier ~/.cascadeseg exists.
    monkeypatch.delenv("CASCADESEG_HOME")
    import platformdirs

    assert home_dir() == Path(platformdirs.user_data_dir("cascadeseg", appauthor=False))
    (tmp_path / "user" / ".cascadeseg").mkdir()
    assert home_dir() == tmp_path / "user" / ".cascadeseg"
