"""The run folder: ``config.json``, ``split.json``, ``log.csv``, ``last/`` and ``best/``.

``last/`` and ``best/`` are checkpoint folders (``model.safetensors`` + ``model_card.json``) that
also hold ``training_state.pt``: optimiser, step counters, elapsed time and best score, so a
killed run resumes where its last checkpoint left it. The training state is saved with
``torch.save`` and read with ``torch.load(weights_only=True)`` (tensors, numbers and strings
only: nothing is unpickled).

A checkpoint is staged completely in a hidden sibling folder, then swapped in with two renames
(old -> ``.<name>.old``, staged -> ``<name>``; :func:`cascadeseg._atomic.swap_folder`). A kill
between the renames leaves ``.<name>.old``, which :func:`find_checkpoint` falls back to, and which
the next run in the folder renames back to ``<name>``.

One run per folder. :func:`claim_run_folder` takes the folder at the very start of a run, before
the data load, with an operating-system lock (``filelock``) on ``.cascadeseg-run.lock``: the kernel
drops it when the process dies, so a crash never leaves a folder locked, and a second training or
resume into the folder is refused at once naming the holder (``.cascadeseg-run.owner.json``: its
process id, machine, start time and command). Claiming also finishes what a kill left (staging
folders removed, ``last/`` restored from ``.last.old``), saying so.

A run has *started* once both ``config.json`` and ``split.json`` are in place. A folder killed
before that (during the data load, or between the two files) holds no training: a fresh run
reuses it, discarding the partial start with a note, and ``--resume`` refuses it with the remedy.
"""

from __future__ import annotations

import csv
import getpass
import json
import logging
import os
import pickle
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._atomic import clean_leftovers, open_atomic, pid_alive, staging_folder, swap_folder, write_json
from ..errors import CheckpointError, DatasetError, OutputExistsError, RunFolderBusyError
from ..inference.checkpoint import CARD_FILE, WEIGHTS_FILE, ModelCard, save_checkpoint
from .config import CONFIG_FILE
from .split import SPLIT_FILE

STATE_FILE = "training_state.pt"
LOG_FILE = "log.csv"
LOCK_FILE = ".cascadeseg-run.lock"
OWNER_FILE = ".cascadeseg-run.owner.json"
CHECKPOINTS = ("last", "best")
_START_FILES = (CONFIG_FILE, SPLIT_FILE)
_CLAIM_FILES = (LOCK_FILE, OWNER_FILE)

log = logging.getLogger("cascadeseg")


@dataclass
class RunFolderClaim:
    """This process's hold on a run folder; :meth:`release` (or leaving a ``with`` block) lets go.
    ``notes``: what claiming did to the folder (leftovers cleaned, a stale claim taken over)."""

    run_dir: Path
    lock: Any
    notes: list[str] = field(default_factory=list)

    def release(self) -> None:
        if self.lock.is_locked:
            (self.run_dir / OWNER_FILE).unlink(missing_ok=True)
            self.lock.release()

    def __enter__(self) -> RunFolderClaim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def run_started(run_dir: Path) -> bool:
    """Whether the run in ``run_dir`` got as far as writing its ``config.json`` and ``split.json``."""
    return all((Path(run_dir) / name).is_file() for name in _START_FILES)


def check_resumable(run_dir: Path) -> None:
    """Refuse ``--resume`` of a folder that holds no started run, saying what to do instead. Called
    before the run's stored config is read, so the message is this one, not a missing file."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DatasetError(
            f"run folder '{run_dir}' cannot be resumed: it does not exist (expected the folder of an earlier "
            f"`cascadeseg train` run)"
        )
    if run_started(run_dir):
        return
    if _only_start_files(run_dir) and any((run_dir / name).exists() for name in _START_FILES + _CLAIM_FILES):
        has = _listing(run_dir)
        written = (
            f"only {has} was written" if has != "nothing" else f"neither {CONFIG_FILE} nor {SPLIT_FILE} was written"
        )
        raise DatasetError(
            f"run folder '{run_dir}' holds a run that was stopped before it started ({written}): no epoch was "
            f"trained, so there is nothing to resume; start it again with the same command without --resume "
            f"(the folder is reused)"
        )
    raise DatasetError(
        f"run folder '{run_dir}' cannot be resumed: it has no {CONFIG_FILE} and {SPLIT_FILE} "
        f"(expected the folder of an earlier `cascadeseg train` run)"
    )


def claim_run_folder(run_dir: Path, resume: bool) -> RunFolderClaim:
    """Take ``run_dir`` for this process's run (see the module docstring); refuse a folder another
    live process holds, a started run without ``resume`` (never overwritten), and a folder that is
    no resumable run with ``resume``."""
    from filelock import FileLock, Timeout

    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputExistsError(f"run folder '{run_dir}' exists and is not a folder; choose another --run-dir")
    if resume:
        check_resumable(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunFolderBusyError(
            f"run folder '{run_dir}' is in use by {_describe_owner(run_dir)}; one run per folder: wait for it to "
            f"finish (or stop it), or choose another --run-dir"
        ) from None
    claim = RunFolderClaim(run_dir, lock)
    try:
        previous = _read_owner(run_dir)
        if previous:
            claim.notes.append(
                f"took over the run folder from {_owner_text(previous)}, which ended without releasing it (killed?)"
            )
            log.warning("%s: %s", run_dir, claim.notes[-1])
        claim.notes += clean_leftovers(run_dir, swapped=CHECKPOINTS)  # logs what it does
        if resume:
            check_resumable(run_dir)  # again: the folder may have changed while it was held
        elif (
            run_started(run_dir)
            or (run_dir / LOG_FILE).exists()
            or any((run_dir / name).exists() for name in CHECKPOINTS)
        ):
            raise OutputExistsError(
                f"run folder '{run_dir}' already exists; resume it with --resume (resume=True) "
                f"or choose a new folder (a run folder is never overwritten)"
            )
        elif not _only_start_files(run_dir):
            raise OutputExistsError(
                f"run folder '{run_dir}' already exists and holds other files ({_listing(run_dir)}); "
                f"choose a new or empty folder (a folder is never overwritten)"
            )
        else:
            partial = [name for name in _START_FILES if (run_dir / name).exists()]
            for name in partial:
                (run_dir / name).unlink()
            if partial:
                claim.notes.append(
                    f"discarded {' and '.join(partial)} of a run that was stopped before it started (no epoch "
                    f"was trained); starting it again"
                )
                log.warning("%s: %s", run_dir, claim.notes[-1])
        write_json(run_dir / OWNER_FILE, _owner_record())
    except BaseException:
        lock.release()
        raise
    return claim


def _only_start_files(run_dir: Path) -> bool:
    """Nothing in ``run_dir`` but the files of a run's start and of a claim."""
    return all(p.name in _START_FILES + _CLAIM_FILES for p in run_dir.iterdir())


def _listing(run_dir: Path, few: int = 5) -> str:
    names = sorted(p.name for p in run_dir.iterdir() if p.name not in _CLAIM_FILES)
    return ", ".join(names[:few]) + (", ..." if len(names) > few else "") if names else "nothing"


def _owner_record() -> dict[str, Any]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name in some containers
        user = ""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "user": user,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv),
    }


def _read_owner(run_dir: Path) -> dict[str, Any] | None:
    try:
        owner = json.loads((run_dir / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _owner_text(owner: dict[str, Any]) -> str:
    text = f"process {owner.get('pid', '?')} on {owner.get('host', '?')}"
    if owner.get("started"):
        text += f" (started {owner['started']}"
        text += f": {owner['command']})" if owner.get("command") else ")"
    return text


def _describe_owner(run_dir: Path) -> str:
    owner = _read_owner(run_dir)
    if owner is None:
        return "another process (it is still starting)"
    alive = owner.get("host") != socket.gethostname() or pid_alive(int(owner.get("pid", -1)))
    return _owner_text(owner) + ("" if alive else ", which holds the lock although its record looks stale")


def write_checkpoint(run_dir: Path, name: str, model: nn.Module, card: ModelCard, state: dict[str, Any]) -> Path:
    """Stage weights + card + training state, then swap them in as ``run_dir/name``."""
    run_dir = Path(run_dir)
    with staging_folder(run_dir, name) as staging:
        staged = save_checkpoint(model, card, staging / name)
        with open_atomic(staged / STATE_FILE, "wb") as handle:
            torch.save(state, handle)
        return swap_folder(staged, run_dir / name)


def find_checkpoint(run_dir: Path, name: str) -> Path | None:
    """``run_dir/name`` if complete, else the previous one a kill left as ``.<name>.old``."""
    for folder in (Path(run_dir) / name, Path(run_dir) / f".{name}.old"):
        if (folder / CARD_FILE).is_file() and (folder / WEIGHTS_FILE).is_file() and (folder / STATE_FILE).is_file():
            return folder
    return None


def read_training_state(folder: Path) -> dict[str, Any]:
    path = Path(folder) / STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any read/format failure means this state cannot be trusted
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, pickle.UnpicklingError):
            first = f"it holds Python objects other than tensors and numbers, which are never unpickled: {first}"
        raise CheckpointError(
            f"{path}: cannot read the training state to resume ({first}); expected the file `cascadeseg train` "
            f"wrote: resume from an intact run folder or start a new run"
        ) from exc


class CsvLog:
    """``log.csv``: one row per epoch, appended and flushed (a kill loses at most the current row).

    On resume, rows of epochs after the checkpoint's epoch (run again after the kill) are dropped
    first so the log has each epoch once."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = Path(path)
        self.columns = list(columns)

    def truncate_after(self, epoch: int) -> None:
        if not self.path.is_file():
            return
        with self.path.open(newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) <= epoch]
        with open_atomic(self.path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def append(self, row: dict[str, Any]) -> None:
        new = not self.path.is_file()
        with self.path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
            fh.flush()
            os.fsync(fh.fileno())
