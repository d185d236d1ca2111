"""Undo/redo of label edits as compact diffs, on a real LGG mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cascadeseg.editing import EditHistory, LabelEdit, fill_holes, keep_largest_component, remove_islands
from cascadeseg.errors import VolumeError
from cascadeseg.io import load_labels


@pytest.fixture
def labels(shared_data: Path) -> np.ndarray:
    path = shared_data / "lgg-flair" / "labelsTr" / "TCGA_DU_5855_19951217.nii.gz"
    return np.asarray(load_labels(path).array).copy()


def test_diff_is_compact_and_undo_redo_exact(labels: np.ndarray) -> None:
    original = labels.copy()
    history = EditHistory()
    edit = history.apply(labels, keep_largest_component(labels), "keep largest")
    assert edit is not None and edit.num_voxels == 78  # the island this mask has
    assert edit.nbytes < labels.nbytes / 1000  # a diff, not a copy of the volume
    after = labels.copy()
    assert history.undo_name == "keep largest"
    assert history.undo(labels) is edit
    assert np.array_equal(labels, original)
    assert history.redo_name == "keep largest"
    history.redo(labels)
    assert np.array_equal(labels, after)


def test_no_op_is_not_recorded_and_new_edit_clears_redo(labels: np.ndarray) -> None:
    history = EditHistory()
    assert history.apply(labels, fill_holes(labels, slice_axis=0), "fill holes") is None
    assert not history.can_undo
    history.apply(labels, remove_islands(labels, 100), "remove islands")
    history.undo(labels)
    assert history.can_redo
    painted = labels.copy()
    painted[0, :4, :4] = 1
    history.apply(labels, painted, "paint")
    assert not history.can_redo and len(history) == 1


def test_undo_keeps_later_paint_on_the_same_voxels(labels: np.ndarray) -> None:
    history = EditHistory()
    edit = history.apply(labels, keep_largest_component(labels), "keep largest")
    assert edit is not None
    # The user repaints two of the removed voxels with another label after the operation.
    where = np.unravel_index(edit.indices[:2], labels.shape)
    labels[where] = 3
    history.undo(labels)
    assert np.all(labels[where] == 3)  # later paint survives
    rest = np.unravel_index(edit.indices[2:], labels.shape)
    assert np.all(labels[rest] == 1)  # everything else is restored


def test_bounded_by_steps_and_bytes_and_shape_checked(labels: np.ndarray) -> None:
    history = EditHistory(max_steps=3)
    for value in range(1, 6):
        changed = labels.copy()
        changed[value, 0, 0] = 7
        history.apply(labels, changed, f"edit {value}")
    assert len(history) == 3 and history.undo_name == "edit 5"
    small = EditHistory(max_bytes=1)
    for value in range(2):
        changed = labels.copy()
        changed[value, 1, 1] = 9
        small.apply(labels, changed, f"edit {value}")
    assert len(small) == 1  # the newest step is always kept
    with pytest.raises(VolumeError, match="shape"):
        history.undo(labels[:-1])
    with pytest.raises(VolumeError, match="same shape"):
        LabelEdit.between(labels, labels[:-1], "bad")


def test_works_on_a_non_contiguous_view(labels: np.ndarray) -> None:
    view = labels[:, ::2, ::2]
    original = view.copy()
    history = EditHistory()
    changed = view.copy()
    changed[0] = 5
    history.apply(view, changed, "fill slice")
    assert np.all(labels[0, ::2, ::2] == 5)
    history.undo(view)
    assert np.array_equal(view, original)
