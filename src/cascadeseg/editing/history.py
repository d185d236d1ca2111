"""Undo/redo of label edits stored as compact diffs.

A correction on a 256 x 256 x 88 mask typically changes a few thousand voxels; storing the whole
volume per step would cost megabytes each. An :class:`LabelEdit` keeps only the flat indices of
the voxels that changed and their old and new values, and the stack is bounded by a byte budget
as well as a step count, dropping the oldest steps first.

Undo only restores voxels that still hold the value the edit wrote: when the user painted over
some of them with napari's brush afterwards, that later paint is kept instead of being silently
reverted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import VolumeError

__all__ = ["LabelEdit", "EditHistory", "VoxelWriter"]

# Writes values at a tuple of index arrays. The default assigns into the array; the GUI passes
# napari's ``Labels.data_setitem`` so that an edit also lands in napari's own Ctrl+Z history and
# only the changed part of the display is refreshed.
VoxelWriter = Callable[[tuple[np.ndarray, ...], np.ndarray], None]


@dataclass(frozen=True)
class LabelEdit:
    """One undoable step: where voxels changed, from what, to what."""

    name: str
    shape: tuple[int, ...]
    indices: np.ndarray  # flat C-order indices, smallest sufficient unsigned dtype
    old_values: np.ndarray
    new_values: np.ndarray

    @property
    def num_voxels(self) -> int:
        return int(self.indices.size)

    @property
    def nbytes(self) -> int:
        return int(self.indices.nbytes + self.old_values.nbytes + self.new_values.nbytes)

    @classmethod
    def between(cls, before: np.ndarray, after: np.ndarray, name: str) -> LabelEdit:
        """The diff that turns ``before`` into ``after`` (same shape)."""
        if before.shape != after.shape:
            raise VolumeError(
                f"edit '{name}': before and after must have the same shape, got {before.shape} and {after.shape}"
            )
        changed = np.flatnonzero(before != after)
        index_dtype = np.uint32 if before.size < 2**32 else np.uint64
        return cls(
            name=name,
            shape=tuple(before.shape),
            indices=changed.astype(index_dtype),
            old_values=before.ravel()[changed],
            new_values=after.ravel()[changed],
        )


class EditHistory:
    """A bounded undo/redo stack of :class:`LabelEdit` steps for one label array."""

    def __init__(self, max_steps: int = 50, max_bytes: int = 256 * 2**20) -> None:
        self.max_steps = int(max_steps)
        self.max_bytes = int(max_bytes)
        self._undo: list[LabelEdit] = []
        self._redo: list[LabelEdit] = []

    # -- queries -------------------------------------------------------------------------------
    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    @property
    def undo_name(self) -> str | None:
        return self._undo[-1].name if self._undo else None

    @property
    def redo_name(self) -> str | None:
        return self._redo[-1].name if self._redo else None

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._undo) + sum(e.nbytes for e in self._redo)

    def __len__(self) -> int:
        return len(self._undo)

    # -- editing -------------------------------------------------------------------------------
    def apply(
        self, target: np.ndarray, result: np.ndarray, name: str, writer: VoxelWriter | None = None
    ) -> LabelEdit | None:
        """Write ``result`` into ``target`` in place and record the step; ``None`` (and nothing
        recorded) when the operation changed no voxel, so a no-op does not fill the stack."""
        edit = LabelEdit.between(target, result, name)
        if edit.num_voxels == 0:
            return None
        # Index by coordinates rather than ravel(): ravel() of a non-contiguous view is a copy.
        where = np.unravel_index(edit.indices, target.shape)
        (writer or _assign(target))(where, edit.new_values)
        self.push(edit)
        return edit

    def push(self, edit: LabelEdit) -> None:
        """Record an edit that was already applied (clears the redo stack, as any editor does)."""
        self._undo.append(edit)
        self._redo.clear()
        self._trim()

    def undo(self, target: np.ndarray, writer: VoxelWriter | None = None) -> LabelEdit | None:
        """Revert the last step on ``target`` in place; ``None`` when there is nothing to undo."""
        return self._step(self._undo, self._redo, target, writer, back=True)

    def redo(self, target: np.ndarray, writer: VoxelWriter | None = None) -> LabelEdit | None:
        """Re-apply the last undone step; ``None`` when there is nothing to redo."""
        return self._step(self._redo, self._undo, target, writer, back=False)

    def clear(self) -> None:
        self._undo.clear()
        self._redo.clear()

    # -- internals -----------------------------------------------------------------------------
    def _step(
        self,
        source: list[LabelEdit],
        dest: list[LabelEdit],
        target: np.ndarray,
        writer: VoxelWriter | None,
        back: bool,
    ) -> LabelEdit | None:
        """Undo (``back``) or redo the newest edit of ``source`` on ``target``, then move it to
        ``dest``: the two are mirror images, an undo writes the old values over the new ones."""
        if not source:
            return None
        edit = source[-1]
        expected, values = (edit.new_values, edit.old_values) if back else (edit.old_values, edit.new_values)
        self._write(target, edit, expected, values, writer)
        dest.append(source.pop())
        return edit

    @staticmethod
    def _write(
        target: np.ndarray,
        edit: LabelEdit,
        expected: np.ndarray,
        values: np.ndarray,
        writer: VoxelWriter | None,
    ) -> None:
        if tuple(target.shape) != edit.shape:
            raise VolumeError(
                f"undo of '{edit.name}': the label layer now has shape {tuple(target.shape)}, "
                f"the edit was recorded on {edit.shape}"
            )
        where = np.unravel_index(edit.indices, edit.shape)
        still_ours = target[where] == expected
        (writer or _assign(target))(tuple(axis[still_ours] for axis in where), values[still_ours])

    def _trim(self) -> None:
        while len(self._undo) > self.max_steps:
            self._undo.pop(0)
        while len(self._undo) > 1 and self.nbytes > self.max_bytes:
            self._undo.pop(0)


def _assign(target: np.ndarray) -> VoxelWriter:
    def write(where: tuple[np.ndarray, ...], values: np.ndarray) -> None:
        target[where] = values

    return write
