"""Python's garbage collections run on the GUI thread while the plugin's own threads run Python.

CPython starts a collection in whichever thread happens to allocate when a generation is due. A
collection that frees a Qt object's Python wrapper caught in a reference cycle (a closed dock's
widgets, a removed layer's controls) destroys the object in that thread: ``~QObject`` takes Qt's
lock on the signal connections and then needs the interpreter lock for the wrapper, while the GUI
thread, holding the interpreter lock, waits for that same Qt lock in a ``connect``. The window
then hangs for good. A CI run of the GUI tests hung exactly so (gdb showed the two threads, a
worker in a collection and the GUI thread in ``QObject::connect``); a viewer hangs the same way
when a collection starts in a dock's worker after a dock or layer was closed.

pyqtgraph meets the same hazard by switching automatic collection off for the whole process and
collecting from a timer on the GUI thread. Here it is scoped: while a thread of the plugin runs
Python beside the GUI (a dock's job, the reader, the background imports, the training plot while
it draws), automatic collection is off (:func:`hold` / :func:`release`, counted; each hold ends
with its thread's work), and a timer on the GUI thread collects as CPython would have
(:func:`collect_due`: the same thresholds, and the same rule that a full collection waits until
the objects promoted since the last one exceed a quarter of the long-lived ones). When the last
hold is released, automatic collection is back, so nothing changes for a script that never starts
a job, nor for a test session's engine tests after its GUI tests. If the event loop is not running
while a hold lasts (a script that blocks the GUI thread on a job), cycles wait for the loop or the
release rather than being collected in another thread.

napari's own threads run Python too: its status thread, which follows the cursor, ran three
young-generation collections while a CT was being opened (``benchmarks/gui_freeze.py`` with a
stack per collection). So a window that shows a dock of the plugin is held while it is on screen
(:func:`hold_while_shown`): from the dock's first show until the window is hidden or closed,
which Qt reports at once (the window's ``visibleChanged``). Holding until the dock's end instead
did not work: a dock ends with Qt's deferred delete, and in the GUI tests closed viewers' docks
kept their holds for several tests, so automatic collection stayed off into the engine tests.
A viewer that is never shown (a script, most GUI tests) has no cursor for the status thread to
follow and is not held.

What this costs: a collection that was due runs up to :data:`TICK_MS` later, on the GUI thread.
It freezes the window no longer than before: a collection holds the interpreter lock in any
thread, so the GUI thread waited for it either way (``benchmarks/gui_freeze.py`` counts the
collections off the GUI thread per action).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QCoreApplication, QEvent, QObject, QThread, QTimer
from qtpy.QtWidgets import QWidget

# How often the GUI thread looks whether a collection is due while automatic ones are off.
# CPython's youngest generation is due every 700 net allocations, many times in 100 ms of busy
# work; one collection per tick collects the same objects, later and in fewer walks.
TICK_MS = 100

_lock = threading.Lock()
_holders = 0
_switched_off = False  # automatic collection was switched off here (never when the user had)
_timer: QTimer | None = None
# Objects in the oldest generation after the last full collection (CPython's long_lived_total,
# which Python does not expose): the base of the quarter rule. Counted again at the first due
# check after a full collection, ours or another's (napari calls gc.collect()), or after objects
# were frozen or thawed: CPython does not count thawed objects as promoted, and counting them
# would start a full collection over everything right after each gc.unfreeze. Counted then, not
# at the collection's end: a count walks the generation (25 ms per million objects), and done in
# a gc callback it made napari's own collections half as long again (Remove: 70 ms, 209 ms
# longest gap). What was promoted between the collection and the count is not counted, so full
# collections come somewhat less often than CPython's.
_long_lived = 0
_recount = True
_frozen_seen = -1


def on_gui_thread() -> bool:
    """Whether the caller runs on the thread of the Qt application (False without one)."""
    app = QCoreApplication.instance()
    return app is not None and QThread.currentThread() is app.thread()


def hold() -> None:
    """Before starting a thread that runs Python beside the GUI: automatic collection stays off,
    and the GUI thread collects, until each :func:`hold` has had its :func:`release`. Call it on
    the GUI thread; elsewhere (no Qt application, a test without one) it does nothing but count,
    so that its :func:`release` pairs."""
    global _holders, _switched_off
    gui = on_gui_thread()
    if gui:
        _start_timer()
    with _lock:
        _holders += 1
        if gui and not _switched_off and gc.isenabled():
            gc.disable()
            _switched_off = True


def release() -> None:
    """One :func:`hold` is over (any thread). The last one switches automatic collection back on."""
    global _holders, _switched_off
    with _lock:
        _holders = max(0, _holders - 1)
        if _holders == 0 and _switched_off:
            _switched_off = False
            gc.enable()


def held() -> bool:
    """Whether automatic collection is off because a thread of the plugin runs."""
    return _switched_off


def collections_happen() -> bool:
    """Whether garbage is being collected at all, automatically or from the GUI thread's timer
    (:func:`gc.isenabled` alone says False while a thread holds collection on the GUI thread)."""
    return gc.isenabled() or _switched_off


def releasing(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` that releases one hold when it returns or raises: :func:`hold` on the GUI
    thread, then run this in the thread."""

    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        finally:
            release()

    return run


def hold_until_finished(worker: Any) -> None:
    """:func:`hold` for a napari worker about to start; released by its ``finished`` signal, which
    the worker emits as the last thing its thread does (after a result or an error)."""
    hold()
    released = threading.Event()

    def once(*_: Any) -> None:
        if not released.is_set():
            released.set()
            release()

    worker.finished.connect(once)


# The windows held by hold_while_shown (their QWindow handles), each released when it is hidden.
_shown_windows: set[int] = set()


class _ShowWatcher(QObject):
    """Event filter on a dock: its Show event holds the window it is shown in."""

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Show and isinstance(watched, QWidget):
            _hold_window(watched.window())
        return False


def hold_while_shown(dock: QWidget) -> None:
    """Hold collection on the GUI thread while the window ``dock`` is shown in is on screen (see
    the module docstring: napari's status thread). Call it once when the dock is built; the hold
    starts when the dock is first shown and ends when its window is hidden or closed, one hold per
    window however many docks it shows."""
    watcher = _ShowWatcher(dock)  # parented: it lives as long as the dock
    dock.installEventFilter(watcher)
    if dock.isVisible():
        _hold_window(dock.window())


def _hold_window(window: QWidget) -> None:
    handle = window.windowHandle()
    if handle is None or not handle.isVisible() or id(handle) in _shown_windows:
        return
    hold()
    _shown_windows.add(id(handle))

    def visibility(visible: bool) -> None:
        if not visible and id(handle) in _shown_windows:
            _shown_windows.discard(id(handle))
            handle.visibleChanged.disconnect(visibility)
            release()

    handle.visibleChanged.connect(visibility)


def collect_due() -> int | None:
    """Run the collection CPython would have started by now (GUI thread, while automatic ones are
    off); return the generation collected, or None when none was due."""
    global _long_lived, _recount, _frozen_seen
    threshold = gc.get_threshold()
    count = gc.get_count()
    if threshold[0] == 0 or count[0] <= threshold[0]:
        return None
    for generation in (2, 1, 0):
        if count[generation] <= threshold[generation]:
            continue
        if generation == 2:
            # Counting the oldest generation walks its list (a few ms for 400,000 objects), so
            # only when a full collection is otherwise due: at most every hundred ticks.
            oldest = len(gc.get_objects(generation=2))
            if _recount or gc.get_freeze_count() != _frozen_seen:
                _long_lived, _recount, _frozen_seen = oldest, False, gc.get_freeze_count()
            if oldest - _long_lived < _long_lived // 4:
                continue
            gc.collect(2)  # _note_full_collection asks for a new count
            return 2
        gc.collect(generation)
        return generation
    return None


def _tick() -> None:
    if _switched_off:
        collect_due()
    elif _timer is not None:
        _timer.stop()  # nothing held: no wake-ups until the next hold starts it again


def _note_full_collection(phase: str, info: dict[str, Any]) -> None:
    """(A gc callback, any thread.) After a full collection, the survivors are the new base of
    the quarter rule: counted at the next due check."""
    global _recount
    if phase == "stop" and info.get("generation") == 2:
        _recount = True


def _start_timer() -> None:
    global _timer
    if _timer is None:
        gc.callbacks.append(_note_full_collection)
        _timer = QTimer()
        _timer.setInterval(TICK_MS)
        _timer.timeout.connect(_tick)
    if not _timer.isActive():
        _timer.start()
