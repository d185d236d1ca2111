"""The run folder: ``config.json``, ``split.json``, ``log.csv``, ``last/`` and ``best/``.

``last/`` and ``best/`` are checkpoint folders (``model.safetensors`` + ``model_card.json``) that
also hold ``training_state.pt``: optimiser, step counters, elapsed time and best score, so a
killed run resumes where its last checkpoint left it. The training state is saved with
``torch.save`` and read with ``torch.load(weights_only=True)`` (tensors, numbers and strings
only: nothing is unpickled).

A checkpoint is staged completely in a hidden sibling folder, then swapped in with two renames
(old -> ``.<name>.old``, staged -> ``<name>``). A kill between the renames leaves ``.<name>.old``,
which :func:`find_checkpoint` falls back to, so there is always a loadable checkpoint.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import CheckpointError, DatasetError, OutputExistsError
from ..inference.checkpoint import CARD_FILE, WEIGHTS_FILE, ModelCard, save_checkpoint
from .config import CONFIG_FILE

STATE_FILE = "training_state.pt"
LOG_FILE = "log.csv"


def prepare_run_dir(run_dir: Path, resume: bool) -> None:
    """Create a new run folder, or check that an existing one can be resumed. Never overwrites."""
    run_dir = Path(run_dir)
    if resume:
        if not (run_dir / CONFIG_FILE).is_file():
            raise DatasetError(
                f"run folder '{run_dir}' cannot be resumed: it has no {CONFIG_FILE} "
                f"(expected the folder of an earlier `cascadeseg train` run)"
            )
        return
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise OutputExistsError(
            f"run folder '{run_dir}' already exists; resume it with --resume (resume=True) "
            f"or choose a new folder (a run folder is never overwritten)"
        )
    run_dir.mkdir(parents=True, exist_ok=True)


def write_checkpoint(run_dir: Path, name: str, model: nn.Module, card: ModelCard, state: dict[str, Any]) -> Path:
    """Stage weights + card + training state, then swap them in as ``run_dir/name``."""
    run_dir = Path(run_dir)
    target = run_dir / name
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.staging.", dir=run_dir))
    try:
        staged = save_checkpoint(model, card, staging / name)
        tmp_state = staged / f".{STATE_FILE}.tmp"
        torch.save(state, tmp_state)
        os.replace(tmp_state, staged / STATE_FILE)
        old = run_dir / f".{name}.old"
        if old.exists():
            shutil.rmtree(old)
        if target.exists():
            os.replace(target, old)
        os.replace(staged, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


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
        raise CheckpointError(f"{path}: cannot read the training state to resume ({exc})") from exc


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
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)

    def append(self, row: dict[str, Any]) -> None:
        new = not self.path.is_file()
        with self.path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
            fh.flush()
            os.fsync(fh.fileno())
