"""Read scans in a worker thread when napari asks from its event loop (File > Open, drag and drop).

napari runs a reader on the GUI thread and waits for its layers; decompressing a 512x512x600 CT
takes seconds, during which the window would freeze. :func:`read_in_background` starts the read in
a thread worker instead and adds the layers when it is done, one per event-loop turn
(:class:`~napari_cascade._qt.feeding.LayerFeeder`); the reader meanwhile returns napari's "no
layers" sentinel. A read that fails becomes an error notification naming the file.

napari calls the reader once per file, so opening a scan with its label map starts two reads. Their
layers are added together once the last of them is read, in the order the files were given:
whichever file is read first, the label map lands above its scan (an image added last would hide
it), and no read competes with the insertions for the two cores and the interpreter lock (a layer
inserted while a 600-slice CT was still being read froze the window 515 ms on CI against napari's
280 ms for one insertion).

Outside the event loop (scripts, tests calling ``viewer.open`` directly) nothing changes: the
reader reads at once and ``viewer.open`` returns the layers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)

# Reads started and not yet turned into layers (kept referenced: a worker dropped while its
# thread runs would lose its signals). Tests and scripts wait on it with wait_for_reads().
_PENDING: list[Any] = []


def _inside_event_loop() -> bool:
    from qtpy.QtCore import QThread

    from .collection import on_gui_thread

    return on_gui_thread() and QThread.currentThread().loopLevel() > 0


def read_in_background(paths: Sequence[Path], read: Callable[[Sequence[Path]], list[Any]]) -> bool:
    """Start ``read(paths)`` in a worker and add its layers to the current viewer when it is done;
    ``False`` (nothing started) outside the running event loop or without a viewer."""
    if not _inside_event_loop():
        return False
    import napari

    viewer = napari.current_viewer()
    if viewer is None:
        return False
    from napari.qt.threading import create_worker

    from .collection import hold_until_finished
    from .notify import error, info
    from .workers import share_the_interpreter_lock

    share_the_interpreter_lock()  # the read runs Python beside the GUI thread, as the docks' jobs do

    names = ", ".join(Path(p).name for p in paths)

    def read_and_warm(items: list[Path]) -> list[Any]:
        from .workers import warm_imports

        warm_imports()
        return read(items)

    worker = create_worker(read_and_warm, list(paths), _start_thread=False)
    hold_until_finished(worker)  # garbage is collected on the GUI thread while the read runs
    state: dict[str, Any] = {"worker": worker, "viewer": viewer, "layers": None}

    def returned(layers: list[Any]) -> None:
        state["layers"] = layers
        _feed_when_all_read()

    def failed(exc: BaseException) -> None:
        _finish(state)
        _feed_when_all_read()
        from cascadeseg.errors import CascadeSegError

        if isinstance(exc, CascadeSegError):
            error(str(exc))
        else:  # a bug or an unreadable file the engine did not name: keep the traceback in the log
            LOG.error("reading %s failed", names, exc_info=exc)
            error(f"Could not open {names}: {type(exc).__name__}: {exc}")

    worker.returned.connect(returned)
    worker.errored.connect(failed)
    _PENDING.append(state)
    info(f"Opening {names} in the background; its layers appear when it is read.")
    worker.start()
    return True


def _feed_when_all_read() -> None:
    """Once no read is running, add the layers of every read that is done, in the order the reads
    were started: one layer per event-loop turn, a paint apart."""
    waiting = [state for state in _PENDING if "feeder" not in state]
    if not waiting or any(state["layers"] is None for state in waiting):
        return
    from .feeding import LayerFeeder, dims_step

    viewer = waiting[0]["viewer"]
    arriving = [(state["viewer"], layer) for state in waiting for layer in state["layers"]]
    steps = [_adder(target, layer) for target, layer in arriving]
    raise_dims = dims_step(viewer, [layer for _, layer in arriving])  # an empty viewer's axes: a turn of their own
    if raise_dims is not None:
        steps.insert(0, raise_dims)
    # Each insertion and first draw is 0.1-0.3 s of GUI time: one per turn.
    feeder = LayerFeeder(viewer, steps, budget_s=0.0, pause_ms=60)
    for state in waiting:
        state["feeder"] = feeder
    feeder.done.connect(lambda: [_finish(state) for state in waiting])
    feeder.failed.connect(lambda _exc: [_finish(state) for state in waiting])
    feeder.start()


def _adder(viewer: Any, layer: tuple[Any, dict[str, Any], str]) -> Callable[[], Any]:
    data, kwargs, kind = layer

    def add() -> Any:
        return getattr(viewer, f"add_{kind}")(data, **kwargs)

    return add


def _finish(state: dict[str, Any]) -> None:
    if state in _PENDING:
        _PENDING.remove(state)


def pending_reads() -> int:
    """How many background reads have not delivered their layers yet."""
    return len(_PENDING)


def wait_for_reads(timeout_s: float = 120.0) -> bool:
    """Process events until every background read has added its layers (scripts, tests)."""
    import time

    from qtpy.QtWidgets import QApplication

    deadline = time.monotonic() + timeout_s
    while _PENDING and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.005)
    return not _PENDING
