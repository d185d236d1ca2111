"""Add and remove many layers without freezing the window.

Three costs of napari (0.9) on the GUI thread decide how long a burst of layer changes freezes it
(measured on 2 CPU cores under Xvfb, see benchmarks/gui_freeze.py):

* every insertion builds the layer's controls and visual (about 0.1-0.2 s) and rebuilds the
  canvas scene graph. :class:`LayerFeeder` adds layers one event-loop turn each (a time budget
  per turn), so the timer, the mouse and the paint events get their turns between them; with
  ``batch=True`` it also holds napari's scene-graph updates (``LayerList.batched_update``) until
  the last layer;
* the first draw of a layer compiles its shaders: showing a dozen new layers in one paint takes
  seconds. Callers add layers hidden and show them a few per turn, a paint apart (``pause_ms``);
* every removal, and the end of every batch, runs a full ``gc.collect()`` (napari's guard against
  a Windows OpenGL driver bug): 0.3-0.9 s with napari, torch and a dozen layers alive, because the
  collector walks every live object. :func:`collection_paused` keeps the objects alive before a
  batch out of that walk (``gc.freeze`` / ``gc.unfreeze``): the removed layers are then collected
  by Python's next collection instead. napari itself cannot free them sooner (Qt still holds them
  until its deferred deletes), so nothing is lost but the pause. On Windows, where the driver bug
  lives, napari's collection is left as it is.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal

from .collection import collections_happen

LOG = logging.getLogger(__name__)

# GUI-thread time one turn of the event loop may spend adding layers; with the 50 ms freeze
# probe and one insertion costing up to ~100 ms, one layer per turn is what this usually allows.
TURN_BUDGET_S = 0.04

# The delay before a feeder's next turn: never 0. Qt runs a 0 ms single shot as a posted event,
# ahead of the timers that expired meanwhile, so steps chained with 0 ms run back to back and the
# window's timers (the freeze probe's too) wait for two or more of them (a chain of 120 ms steps:
# longest timer gap 240-283 ms with 0 ms, 168-170 ms with 1 ms).
NEXT_TURN_MS = 1


class LayerFeeder(QObject):
    """Run ``steps`` (each adds or updates a layer) a few per event-loop turn; emits ``done``.

    With ``batch``, napari's scene-graph update for all of them comes in a turn of its own after
    the last step (an insertion and its scene update are each 0.1-0.25 s on 2 cores). A step that
    raises stops the feed (logged, and passed to ``failed``); the viewer closing meanwhile too.
    """

    done = Signal()
    failed = Signal(object)

    def __init__(self, viewer: Any, steps: Sequence[Callable[[], Any]], batch: bool = False,
                 budget_s: float = TURN_BUDGET_S, pause_ms: int = NEXT_TURN_MS, owner: Any = None) -> None:
        super().__init__()
        self.stopped = False
        if owner is not None:  # a dock closed (its viewer closing) stops the feed, silently
            owner.destroyed.connect(lambda *_: self.stop())
        self.viewer = viewer
        self.steps = list(steps)
        self.batch = batch
        self.budget_s = budget_s
        self.pause_ms = max(pause_ms, NEXT_TURN_MS)
        self.results: list[Any] = []
        self._batching = False

    def start(self) -> None:
        from .workers import install_unit_registry

        install_unit_registry()  # before napari's first layer would build its own here
        if self.batch:
            self.viewer.layers.events.begin_batch()
            self._batching = True
        QTimer.singleShot(NEXT_TURN_MS, self._turn)

    def stop(self) -> None:
        """Drop the steps left; neither ``done`` nor ``failed`` will be emitted."""
        self.stopped = True
        self.steps.clear()

    def _run(self, count: int) -> None:
        for _ in range(count):
            if not self.steps:
                return
            self.results.append(self.steps.pop(0)())

    def _turn(self) -> None:
        if self.stopped:
            self._end_batch()
            return
        start = time.perf_counter()
        try:
            while self.steps:  # at least one step per turn, more while the budget lasts
                self._run(1)
                if time.perf_counter() - start >= self.budget_s:
                    break
        except RuntimeError as exc:  # the viewer (its Qt objects) went away meanwhile
            LOG.info("adding layers stopped: %s", exc)
            self.stop()
            self._end_batch()
            return
        except Exception as exc:
            LOG.exception("adding layers failed")
            self.steps.clear()
            self._end_batch()
            self.failed.emit(exc)
            return
        if self.stopped:
            self._end_batch()
            return
        if self.steps:
            QTimer.singleShot(self.pause_ms, self._turn)
            return
        if self._batching:  # napari's scene update for the whole batch: a turn of its own
            QTimer.singleShot(self.pause_ms, self._finish)
            return
        self.done.emit()

    def _finish(self) -> None:
        self._end_batch()
        if not self.stopped:
            self.done.emit()

    def _end_batch(self) -> None:
        if self._batching:
            self._batching = False
            try:
                with collection_paused():
                    self.viewer.layers.events.end_batch()
            except RuntimeError:  # the viewer closed while the batch was open: nothing left to notify
                pass


def dims_step(viewer: Any, layers: Sequence[tuple[Any, dict[str, Any], str]]) -> Callable[[], Any] | None:
    """A feeder step that gives an empty ``viewer`` the axes of the layers about to be added, before
    the first of them; ``None`` when it has them already or holds a layer (napari derives its axes
    from the layers it holds: more axes than those layers have breaks its view fitting).

    The viewer's first 3D layer costs napari a new dims slider, a canvas resize and the paints a
    resize forces, on top of the insertion: 235-306 ms of frozen window for a 600-slice CT on the
    2-core machine, against 137-146 ms for the same insertion into a viewer that is 3D already.
    Raised in a turn of its own (134-141 ms), the axes leave the insertion that follows 172-184 ms
    (stop 45, a throw-away probe around ``add_image``, two runs each; the whole open, with the
    warm-up's torch load, is in ``benchmarks/results/gui_freeze_open_final_*``). napari centres
    the sliders and resets the camera on the first layer either way, so the view is the same."""
    ndim = max((np.ndim(data) for data, _kwargs, _kind in layers), default=0)
    if len(viewer.layers) or ndim <= viewer.dims.ndim:
        return None

    def raise_dims() -> None:
        if not len(viewer.layers) and ndim > viewer.dims.ndim:  # still empty when its turn comes
            viewer.dims.ndim = ndim

    return raise_dims


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """Leave the objects alive now out of the garbage collections napari runs inside the block
    (module docstring); a no-op on Windows."""
    if sys.platform == "win32" or not collections_happen():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextlib.contextmanager
def kept_frozen() -> Iterator[None]:
    """For long work in a worker (imports, a training): the objects alive at its start are kept
    out of the collections the work starts, as :func:`collection_paused` does; but when the
    start-up objects are frozen already (no layer exists yet,
    :func:`napari_cascade._qt.workers.freeze_long_lived_objects`), they stay frozen afterwards,
    with what the work made, instead of being thawed.

    Imports: thawing the start-up objects at the end of the Train job's import let the trainer's
    next import start a full collection over every object of napari, Qt and torch: 421 ms with the
    interpreter lock held, the first Train's longest freeze (430-530 ms). A training: with a layer
    open the start-up objects are thawed (above), and a full collection started in the training
    would walk napari's and the scan's objects too; frozen, it walks what the training made
    (``benchmarks/gui_freeze.py`` with a 600-slice CT open: no collection over 5 ms during Train).
    The 97-209 ms collections the Train dock's test measured in a first epoch were over
    torch._dynamo's objects, which the first optimiser imported; the dock's warm-up imports it now
    (``FIRST_RUN_MODULES``). What is given up while the block runs is collecting reference cycles
    among the objects frozen at its start: a layer removed during a training is freed when the
    training ends (or at the next batch of layer changes, whose end thaws everything) rather than
    at once."""
    if sys.platform == "win32" or not collections_happen():
        yield
        return
    keep = gc.get_freeze_count() > 0
    gc.freeze()
    try:
        yield
    finally:
        if not keep:
            gc.unfreeze()


@contextlib.contextmanager
def one_scene_update(viewer: Any) -> Iterator[None]:
    """Layer changes inside the block cost one scene-graph update, without napari's full GC pause."""
    with collection_paused(), viewer.layers.batched_update():
        yield


# Voxels one event-loop turn writes through napari's data_setitem (about 0.1 s on 2 CPU cores:
# napari keeps the old values for its Ctrl+Z and refreshes the changed part of the slice).
VOXELS_PER_TURN = 1_000_000


class VoxelWriter(QObject):
    """Write an edit into a labels layer a chunk per event-loop turn; emits ``done(count)``.

    ``indices`` are flat C-order voxel indices, ``expected`` the values they must still hold
    (a voxel the user painted since the edit was computed keeps the paint), ``values`` what to
    write. All chunks form one step of napari's own undo history (``Labels.block_history``).
    """

    done = Signal(int)

    def __init__(self, layer: Any, indices: np.ndarray, expected: np.ndarray, values: np.ndarray,
                 per_turn: int = VOXELS_PER_TURN, owner: Any = None) -> None:
        super().__init__()
        self.stopped = False
        if owner is not None:  # the dock closed: stop writing, tell nobody
            owner.destroyed.connect(lambda *_: setattr(self, "stopped", True))
        self.layer = layer
        self.indices, self.expected, self.values = indices, expected, values
        self.per_turn = per_turn
        self.written = 0
        self._position = 0
        self._history: Any = None

    def start(self) -> None:
        self._history = self.layer.block_history()
        self._history.__enter__()
        QTimer.singleShot(NEXT_TURN_MS, self._turn)

    def run_now(self) -> int:
        """Write everything at once (small edits: one chunk)."""
        with self.layer.block_history():
            while self._position < self.indices.size:
                self._chunk()
        self.done.emit(self.written)
        return self.written

    def _chunk(self) -> None:
        stop = min(self._position + self.per_turn, self.indices.size)
        part = slice(self._position, stop)
        self._position = stop
        data = self.layer.data
        where = np.unravel_index(self.indices[part], data.shape)
        still = data[where] == self.expected[part]
        where = tuple(axis[still] for axis in where)
        if where[0].size:
            self.layer.data_setitem(where, self.values[part][still])
            self.written += int(where[0].size)

    def _turn(self) -> None:
        if self.stopped:
            self._position = self.indices.size
            history, self._history = self._history, None
            if history is not None:
                history.__exit__(None, None, None)
            return
        try:
            self._chunk()
        except RuntimeError:  # the layer's viewer closed meanwhile
            self._position = self.indices.size
        if self._position < self.indices.size:
            QTimer.singleShot(NEXT_TURN_MS, self._turn)
            return
        history, self._history = self._history, None
        if history is not None:
            history.__exit__(None, None, None)
        self.done.emit(self.written)
