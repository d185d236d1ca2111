"""A freeze probe: the longest time the GUI thread went without serving a 50 ms timer.

A ``QTimer`` on the GUI thread ticks every 50 ms while the event loop is free; whatever blocks the
GUI thread (array work in a slot, a layer insertion napari redraws for, a canvas paint) delays the
next tick. The longest gap between two ticks is what a user feels as a freeze. An idle viewer under
Xvfb on the 2-core CI machine shows about 70 ms (the 50 ms tick plus timer jitter); napari-cascade
promises no gap over 200 ms during any dock action (issue 18).

Used by the GUI tests (``with FreezeProbe() as probe: ...``; ``probe.longest_ms``) and by
``benchmarks/gui_freeze.py``, which prints the longest gap per action.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QEventLoop, QTimer

TICK_MS = 50
# The promise of issue 18: no GUI freeze over this during a dock action.
FREEZE_BOUND_MS = 200.0


class FreezeProbe:
    """Measure the longest gap between ticks of a ``tick_ms`` timer on the GUI thread.

    The gap from the last tick to :meth:`stop` counts too, so a synchronous action run between
    :meth:`start` and :meth:`stop` without a turn of the event loop is measured whole.

    It also times Python's garbage collections meanwhile (``gc_longest_ms``, ``gc_total_ms``): a
    full collection walks every live object, so after hundreds of tests one can take longer than
    the action itself; a failing bound prints them, to tell the two apart. And it counts the
    collections that ran on another thread than the GUI thread (``gc_off_gui``, full ones
    ``gc_off_gui_full``): one that frees a Qt object there can deadlock the window
    (:mod:`napari_cascade._qt.collection`).
    """

    def __init__(self, tick_ms: int = TICK_MS) -> None:
        self.tick_ms = tick_ms
        self.timer = QTimer()
        self.timer.setInterval(tick_ms)
        self.timer.timeout.connect(self._tick)
        self.longest_ms = 0.0
        self.ticks = 0
        self._last = 0.0
        self.gc_longest_ms = 0.0
        self.gc_total_ms = 0.0
        self._gc_started = 0.0
        self.gc_off_gui = self.gc_off_gui_full = 0
        self._gui_thread = threading.get_ident()

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            if threading.get_ident() != self._gui_thread:
                self.gc_off_gui += 1
                self.gc_off_gui_full += int(info.get("generation") == 2)
        elif self._gc_started:
            took = 1000.0 * (time.perf_counter() - self._gc_started)
            self.gc_longest_ms = max(self.gc_longest_ms, took)
            self.gc_total_ms += took

    def _tick(self) -> None:
        now = time.perf_counter()
        self.longest_ms = max(self.longest_ms, 1000.0 * (now - self._last))
        self._last = now
        self.ticks += 1

    def start(self) -> FreezeProbe:
        self.longest_ms, self.ticks = 0.0, 0
        self.gc_longest_ms = self.gc_total_ms = self._gc_started = 0.0
        self.gc_off_gui = self.gc_off_gui_full = 0
        self._gui_thread = threading.get_ident()
        gc.callbacks.append(self._on_collection)
        self._last = time.perf_counter()
        self.timer.start()
        return self

    def stop(self) -> float:
        self._tick()
        self.timer.stop()
        if self._on_collection in gc.callbacks:
            gc.callbacks.remove(self._on_collection)
        return self.longest_ms

    def __enter__(self) -> FreezeProbe:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def process_events_for(seconds: float) -> None:
    """Let the event loop run (timers, queued signals, canvas paints) for ``seconds``."""
    loop = QEventLoop()
    QTimer.singleShot(int(1000 * seconds), loop.quit)
    loop.exec()


def measure(action: Callable[[], Any], until: Callable[[], bool] | None = None, timeout_s: float = 600.0,
            settle_s: float = 0.5) -> float:
    """Longest GUI-thread gap (ms) while ``action()`` runs, until ``until()`` holds, and for
    ``settle_s`` after (the canvas redraws and queued slots an action leaves behind count too).

    The action is called from inside a running event loop, as a click or a menu command is: code
    that behaves differently there (the reader reads in the background) is measured as a user
    meets it. Raises ``TimeoutError`` when ``until`` does not hold within ``timeout_s``, and
    whatever ``action`` raised.
    """
    loop = QEventLoop()
    outcome: dict[str, Any] = {}

    def check() -> None:
        if until is None or until():
            QTimer.singleShot(int(1000 * settle_s), loop.quit)
        elif time.perf_counter() > outcome["deadline"]:
            outcome["error"] = TimeoutError(f"the action did not finish within {timeout_s:.0f} s")
            loop.quit()
        else:
            QTimer.singleShot(10, check)

    def run() -> None:
        try:
            action()
        except BaseException as exc:  # re-raised below, outside the event loop
            outcome["error"] = exc
            loop.quit()
            return
        outcome["deadline"] = time.perf_counter() + timeout_s
        check()

    probe = FreezeProbe()
    _LAST[0] = probe
    with probe:
        QTimer.singleShot(100, run)
        loop.exec()
    if "error" in outcome:
        raise outcome["error"]
    return probe.longest_ms


_LAST: list[FreezeProbe | None] = [None]


def last_collections_ms() -> tuple[float, float]:
    """The longest and the total time (ms) Python's garbage collector ran during the last
    :func:`measure`."""
    probe = _LAST[0]
    return (probe.gc_longest_ms, probe.gc_total_ms) if probe is not None else (0.0, 0.0)


def last_collections_off_gui() -> tuple[int, int]:
    """How many garbage collections (all, full) ran on other threads than the GUI thread during
    the last :func:`measure`."""
    probe = _LAST[0]
    return (probe.gc_off_gui, probe.gc_off_gui_full) if probe is not None else (0, 0)


def napari_insertion_ms(viewer: Any, kind: str = "labels") -> float:
    """The longest GUI gap napari itself needs to add one ``kind`` layer ("labels" or "image") to
    ``viewer`` as it is now (8x8x8: the cost does not depend on the voxels), its first draw
    included; the layer is removed again. Actions that must add a layer are held to this floor
    when it exceeds :data:`FREEZE_BOUND_MS` (napari's own controls, visuals and scene update:
    0.2-0.4 s on a loaded 2-core machine), and to nothing more."""
    import numpy as np

    added: list[Any] = []
    data = np.zeros((8, 8, 8), np.uint8)
    gap = measure(lambda: added.append(getattr(viewer, f"add_{kind}")(data, name="freeze probe")))
    viewer.layers.remove(added[0])
    process_events_for(0.3)
    return gap


# Timer jitter and a busy machine: a measured floor is held with this margin.
FLOOR_MARGIN = 1.5


# One insertion timed on a loaded machine can come out at half its usual cost (CI: a 348 ms floor
# against a 547 ms open): the floor is the slowest of this many.
FLOOR_SAMPLES = 2


def allowed_ms(viewer: Any, *kinds: str) -> float:
    """The bound for an action that adds layers of ``kinds`` (default labels): 200 ms, or napari's
    own insertion time of the slowest of them (the slowest of :data:`FLOOR_SAMPLES` insertions each,
    with :data:`FLOOR_MARGIN`)."""
    floor = max(napari_insertion_ms(viewer, kind) for kind in (kinds or ("labels",)) for _ in range(FLOOR_SAMPLES))
    return max(FREEZE_BOUND_MS, FLOOR_MARGIN * floor)


def napari_dock_ms(viewer: Any, make_widget: Any = None) -> float:
    """The bound for an action that adds a dock widget (the Train dock's plot at the first run):
    200 ms, or what napari and Qt themselves need to dock a new ``make_widget()`` (default: an
    empty widget) into ``viewer``'s window as it is now, lay the window out again and paint it
    (the slowest of :data:`FLOOR_SAMPLES`, with :data:`FLOOR_MARGIN`); the dock is removed again."""
    from qtpy.QtWidgets import QWidget

    make = make_widget or QWidget

    def one() -> float:
        docks: list[Any] = []
        gap = measure(lambda: docks.append(viewer.window.add_dock_widget(make(), name="freeze probe dock")))
        viewer.window.remove_dock_widget(docks[0])
        process_events_for(0.3)
        return gap

    floor = max(one() for _ in range(FLOOR_SAMPLES))
    return max(FREEZE_BOUND_MS, FLOOR_MARGIN * floor)
