"""Train/validation splits: by patient, or by slice blocks when there is only one patient.

Splitting by case would leak: two studies of one patient (TCIA's PGBM-001 has two) are nearly the
same image, and two versions of one case (the local training set keeps a re-added case as
``<case>_v2``) are the same scan. Cases are grouped by patient and whole patients go to one side.
A case's patient is the key recorded in the dataset's ``dataset.json`` when it has one
(:func:`cascadeseg.io.dataset.patient_keys`, written by the local training set), else its id
without a trailing version ``_vN`` and then without a trailing ``_YYYYMMDD`` study date (the
TCGA/TCIA naming).

With a single volume (the GUI's usual case: one annotated scan) the split is by blocks of slices
along the slicing axis, and ``gap`` slices are dropped on each side of every validation block, so
no validation slice is the immediate neighbour of a training slice (neighbouring slices are almost
identical and would make the validation Dice meaningless).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import write_json
from ..errors import DatasetError
from ..io.dataset import patient_id

__all__ = [
    "SPLIT_FILE",
    "Split",
    "SliceBlock",
    "patient_id",
    "patient_groups",
    "split_by_patient",
    "split_by_slice_blocks",
    "MIN_TRAINING_SHARE",
    "MIN_PATIENTS_FOR_A_PATIENT_SPLIT",
    "check_validation_unseen",
]

MIN_PATIENTS_FOR_A_PATIENT_SPLIT = 3
"""Fewer patients than this: validation is blocks of slices of the training volumes."""

SPLIT_FILE = "split.json"


def patient_groups(data: Any) -> dict[str, str]:
    """The patients recorded in the ``dataset.json`` of training data given as a dataset folder
    (``{}`` for file pairs, in-memory volumes, or a folder that records none)."""
    if not isinstance(data, (str, os.PathLike)):
        return {}
    from ..io.dataset import patient_keys

    return patient_keys(Path(data))


@dataclass
class SliceBlock:
    """A half-open range ``[start, stop)`` of slices along ``axis`` of case ``case_id``."""

    case_id: str
    axis: int
    start: int
    stop: int


@dataclass
class Split:
    """Which cases (or slice blocks of them) train and which validate."""

    kind: str  # "patient" or "slice_blocks"
    seed: int
    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    train_blocks: list[SliceBlock] = field(default_factory=list)
    val_blocks: list[SliceBlock] = field(default_factory=list)
    gap: int = 0

    def save(self, folder: Path) -> Path:
        path = Path(folder) / SPLIT_FILE
        write_json(path, asdict(self))
        return path

    @classmethod
    def load(cls, folder: Path) -> Split:
        from .config import read_run_json

        raw = read_run_json(Path(folder) / SPLIT_FILE, "split")
        raw["train_blocks"] = [SliceBlock(**b) for b in raw.get("train_blocks", [])]
        raw["val_blocks"] = [SliceBlock(**b) for b in raw.get("val_blocks", [])]
        return cls(**raw)


def split_by_patient(
    case_ids: Sequence[str],
    val_fraction: float,
    seed: int,
    force_val: Sequence[str] = (),
    groups: Mapping[str, str] | None = None,
) -> Split:
    """Seeded split of whole patients; ``force_val`` case ids (or patient ids) go to validation.

    ``groups`` maps case ids to patients (a dataset's recorded keys, :func:`patient_groups`);
    other cases get :func:`patient_id`. The number of validation patients is
    ``round(val_fraction * patients)``, at least one, and at least one patient must be left for
    training.
    """
    patients: dict[str, list[str]] = {}
    for case in case_ids:
        patients.setdefault(patient_id(case, groups), []).append(case)
    names = sorted(patients)
    if len(names) < 2:
        raise DatasetError(
            f"a patient split needs at least 2 patients, the data has {len(names)} "
            f"({', '.join(names) or 'none'}); give more cases, or one volume for a slice-block split"
        )
    forced: set[str] = set()
    for item in force_val:
        pid = patient_id(item, groups)
        if pid not in patients:
            raise DatasetError(f"validation case '{item}' is not in the data (cases: {', '.join(sorted(case_ids))})")
        forced.add(pid)
    n_val = max(1, int(round(val_fraction * len(names))), len(forced))
    if n_val >= len(names):
        raise DatasetError(
            f"the split needs {n_val} validation patient(s) and at least 1 training patient, "
            f"but the data has only {len(names)} patient(s); lower val_fraction or add cases"
        )
    rng = np.random.default_rng(seed)
    rest = [p for p in names if p not in forced]
    order = rng.permutation(len(rest))
    val_patients = sorted(forced | {rest[i] for i in order[: n_val - len(forced)]})
    val = sorted(c for p in val_patients for c in patients[p])
    train = sorted(c for p in names if p not in val_patients for c in patients[p])
    return Split(kind="patient", seed=seed, train=train, val=val)


def check_validation_unseen(
    split: Split, seen_train_cases: Sequence[str], source: str, groups: Mapping[str, str] | None = None
) -> None:
    """Refuse a patient split whose validation patients a starting checkpoint was trained on.

    Fine-tuning with another seed or ``val_fraction`` than the checkpoint's own run silently moves
    some of its training patients into validation, and the validation Dice (best epoch, recommended
    depth, the card's figures) becomes optimistic. Only patient splits are checked: a slice-block
    split (one volume) names blocks of a volume, and fine-tuning on the volume one has just
    annotated is the point of the GUI's training.
    """
    if split.kind != "patient":
        return
    seen = {patient_id(c, groups) for c in seen_train_cases}
    leaked = sorted(c for c in split.val if patient_id(c, groups) in seen)
    if leaked:
        raise DatasetError(
            f"validation case(s) {', '.join(leaked)} were training cases of {source}: its validation "
            f"Dice would be optimistic. Keep that checkpoint's split (the same seed and validation "
            f"fraction, or force its validation cases: --val-case), add patients it has not seen, or "
            f"start from scratch"
        )


# A slice-block split of few volumes keeps at least this share of the structure for training.
# Why: the first split of the four TCIA studies whose both sides merely showed the lesion (gap 3
# around a validation block on a lesion of 5-8 slices) left each 15-minute fine-tuning 1-2 of
# a study's lesion slices to learn from: it fitted them (28 of 29 voxels) and missed the rest.
MIN_TRAINING_SHARE = 0.5
# Validation draws tried at each block and gap before the gap shrinks (deterministic from the seed).
_SPLIT_DRAWS = 16


def split_by_slice_blocks(
    case_id: str,
    num_slices: int,
    axis: int,
    val_fraction: float,
    block: int,
    gap: int,
    seed: int,
    annotated: np.ndarray | None = None,
    foreground: np.ndarray | None = None,
) -> Split:
    """Seeded split of one volume into training and validation blocks of ``block`` slices.

    ``gap`` slices on each side of a validation block belong to neither side. ``annotated`` (bool
    per slice) restricts both sides to slices that carry labels, so a partially annotated volume
    (the GUI's case) validates on annotated slices only; blocks are then laid over annotated
    slices.

    ``foreground`` (per slice: how much of the structure it shows, voxel counts or bool) makes
    both sides show it, with at least :data:`MIN_TRAINING_SHARE` of it on the training side: the
    validation blocks are drawn from blocks that show the structure (up to ``_SPLIT_DRAWS`` draws
    from the seed), and where the structure is too short for ``block`` and ``gap`` (a
    glioblastoma over 5-8 slices of 6.5 mm) the block and then the gap shrink until a draw does
    it, keeping a gap of at least one slice (neighbouring slices are nearly the same image). A
    validation block of background only scores 0 for any false positive and 1 for none,
    which says nothing about the segmentation (such a study scored 0.000 at every epoch while its
    loss fell); a training side with a sliver of the structure learns only that sliver. When no
    draw keeps the share, the first split whose sides both show the structure is taken; when none
    shows it on both sides, the split ignores the structure.
    """

    def attempt(block: int, gap: int, foreground: np.ndarray | None, seed: int) -> Split:
        return _slice_blocks(case_id, num_slices, axis, val_fraction, block, gap, seed, annotated, foreground)

    if foreground is not None and np.asarray(foreground).any():
        amount = np.asarray(foreground, dtype=np.float64)
        total = float(amount.sum())

        def share(blocks: list[SliceBlock]) -> float:
            return sum(float(amount[b.start : b.stop].sum()) for b in blocks) / total

        both_sides: Split | None = None
        for try_gap in range(gap, -1, -1):
            try_block = block
            while try_block >= 1:
                for draw in range(_SPLIT_DRAWS):
                    try:
                        split = attempt(try_block, try_gap, amount, seed + draw)
                    except DatasetError:
                        break  # too few blocks show the structure: no draw changes that
                    val, train = share(split.val_blocks), share(split.train_blocks)
                    if val <= 0 or train <= 0:
                        continue
                    split.seed = seed  # the caller's seed, whichever draw gave the split
                    if train >= MIN_TRAINING_SHARE and try_gap >= min(gap, 1):
                        return split
                    both_sides = both_sides or split
                try_block //= 2
        if both_sides is not None:
            return both_sides
    return attempt(block, gap, None, seed)


def _slice_blocks(
    case_id: str, num_slices: int, axis: int, val_fraction: float, block: int, gap: int, seed: int,
    annotated: np.ndarray | None, foreground: np.ndarray | None,
) -> Split:  # fmt: skip
    slices = np.arange(num_slices) if annotated is None else np.flatnonzero(annotated)
    n_blocks = int(np.ceil(len(slices) / block))
    if n_blocks < 2 or len(slices) < 2 * block + gap:
        raise DatasetError(
            f"case '{case_id}': a slice-block split needs at least {2 * block + gap} "
            f"{'annotated ' if annotated is not None else ''}slices along axis {axis} "
            f"(2 blocks of {block} plus a gap of {gap}), the volume has {len(slices)}; "
            f"lower slice_block/slice_gap or annotate more slices"
        )
    n_val = min(n_blocks - 1, max(1, int(round(val_fraction * n_blocks))))
    candidates = np.arange(n_blocks)
    if foreground is not None:
        shows = np.array([bool(foreground[slices[b * block : (b + 1) * block]].any()) for b in range(n_blocks)])
        if shows.sum() < 2:
            raise DatasetError(f"case '{case_id}': fewer than two blocks of {block} slices show the structure")
        candidates = np.flatnonzero(shows)
        n_val = min(len(candidates) - 1, max(1, int(round(val_fraction * len(candidates)))))
    rng = np.random.default_rng(seed)
    # Blocks are contiguous in the list of usable slices.
    val_ids = set(int(i) for i in rng.choice(candidates, size=n_val, replace=False))
    is_val = np.zeros(num_slices, dtype=bool)
    usable = np.zeros(num_slices, dtype=bool)
    usable[slices] = True
    for b in val_ids:
        is_val[slices[b * block : (b + 1) * block]] = True
    # Drop `gap` usable slices on each side of every validation run.
    dropped = np.convolve(is_val.astype(np.int32), np.ones(2 * gap + 1, dtype=np.int32), mode="same") > 0
    is_train = usable & ~is_val & ~dropped
    if not is_train.any():
        raise DatasetError(
            f"case '{case_id}': no training slices are left after taking validation blocks and gaps "
            f"({len(slices)} usable slices, block {block}, gap {gap}); lower slice_gap or val_fraction"
        )
    return Split(
        kind="slice_blocks",
        seed=seed,
        train=[case_id],
        val=[case_id],
        train_blocks=_runs(case_id, axis, is_train),
        val_blocks=_runs(case_id, axis, is_val),
        gap=gap,
    )


def _runs(case_id: str, axis: int, mask: np.ndarray) -> list[SliceBlock]:
    """Contiguous runs of True in ``mask`` as slice blocks (vectorised edge detection)."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [SliceBlock(case_id, axis, int(a), int(b)) for a, b in zip(starts, stops)]


def slice_split_options(labels: np.ndarray, axis: int, annotated_only: bool) -> dict[str, int]:
    """Slice-block split options that fit the slices a user painted on one scan.

    One scan validates on blocks of its own slices (8 slices with a gap of 3 by default, which
    needs 19 annotated slices); a user who corrected 6 slices should still be able to train, so
    blocks and gap shrink with the number of annotated slices, keeping at least two blocks and
    some training slices."""
    other = tuple(a for a in range(3) if a != axis)
    counted = labels.any(axis=other) if annotated_only else np.ones(labels.shape[axis], bool)
    available = int(np.count_nonzero(counted))
    if available < 3:
        raise DatasetError(
            f"only {available} slice(s) along the training axis hold labels; paint at least 3 "
            "(some train the model, at least one validates it)"
        )
    block = max(1, min(8, available // 5))
    gap = max(0, min(3, (available - 2 * block) // 4))
    return {"slice_block": block, "slice_gap": gap}
