"""Run an engine call in a napari thread worker, with a progress bar, a rate and a Cancel button.

The engine reports progress through a callback (:class:`cascadeseg.inference.progress.Progress`)
and stops at the next batch when a cancel token is set (raising ``CancelledError``). This module
is the glue: :class:`JobPanel` owns the progress bar, the status line and the Cancel button, and
:meth:`JobPanel.start` runs ``job(progress, cancel)`` in ``napari.qt.threading.create_worker``.

Errors never reach napari's traceback machinery: the job runs inside a ``try`` in the worker
thread and its outcome (value, user error, cancellation, or an unexpected exception) comes back
as a :class:`JobOutcome`. A :class:`~cascadeseg.errors.CascadeSegError` is shown as its one-line
message; a cancellation as an info; anything else is a bug, logged with its traceback and shown
as a short error, so the viewer stays usable in every case. A job that ends after its dock was
closed (the viewer closing mid-run) is dropped quietly: there is nothing left to show it in.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import importlib
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from napari.qt.threading import create_worker
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from cascadeseg.errors import CancelledError, CascadeSegError

from . import collection
from .layout import hbox
from .notify import error, info

LOG = logging.getLogger(__name__)

ProgressCallback = Callable[[Any], None]
Job = Callable[[ProgressCallback, threading.Event], Any]


@dataclass
class JobOutcome:
    """What a finished job left: its value, or why it has none."""

    value: Any = None
    error: str | None = None
    cancelled: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and not self.cancelled


def run_job(job: Job, progress: ProgressCallback, cancel: threading.Event) -> JobOutcome:
    """Call ``job`` and turn every way it can end into a :class:`JobOutcome` (worker thread)."""
    start = time.perf_counter()
    try:
        value = job(progress, cancel)
    except CancelledError as exc:
        return JobOutcome(cancelled=True, error=None, seconds=time.perf_counter() - start, value=str(exc))
    except CascadeSegError as exc:
        return JobOutcome(error=str(exc), seconds=time.perf_counter() - start)
    except Exception as exc:  # a bug: keep the viewer alive, keep the traceback in the log
        LOG.exception("napari-cascade job failed")
        return JobOutcome(error=f"unexpected {type(exc).__name__}: {exc} (see the log for details)",
                          seconds=time.perf_counter() - start)
    if cancel.is_set():  # cancelled after the last batch: the result is still dropped, as asked
        return JobOutcome(cancelled=True, seconds=time.perf_counter() - start)
    return JobOutcome(value=value, seconds=time.perf_counter() - start)


def format_progress(progress: Any) -> str:
    """``"12/23 slices · 8.4 slices/s"`` from an engine Progress (or a plain fraction)."""
    if isinstance(progress, (int, float)):
        return f"{100 * float(progress):.0f}%"
    unit = getattr(progress, "unit", "items")
    text = f"{progress.done}/{progress.total} {unit}"
    rate = getattr(progress, "rate", 0.0)
    if rate:
        text += f" · {rate:.1f} {unit}/s"
    return text


# Modules napari and PyOpenGL import on the GUI thread when the first layers of a session arrive
# (found by listing sys.modules before and after opening a CT): pandas for a labels layer's
# features (0.2-0.5 s), the histogram model of an image layer, PyOpenGL's array handlers for the
# first texture upload, and scikit-image's colour conversions (with scipy.linalg: 65 ms) for the
# first labels layer's colormap (found by profiling the GUI thread while it inserted that layer).
# Importing them in a worker first leaves the GUI thread a dictionary look-up.
LAZY_FIRST_LAYER_IMPORTS = (
    "pandas",
    "napari.components.histogram",
    "skimage.color.colorconv",
    "OpenGL.arrays.ctypesarrays",
    "OpenGL.arrays.ctypespointers",
    "OpenGL.arrays.nones",
    "OpenGL.arrays.strings",
)
# What the docks' engine calls need first (a device check, a model, the trainer, a file, a mask
# tool): torch, SimpleITK, nibabel and scipy.ndimage, which the docks no longer import as they
# open (torch: 0.9-1.4 s of frozen window; the other three about 0.15 s together); imported here
# instead, in the background, torch leaves the GUI thread gaps of about 0.2 s, or about 0.05 s
# with its core library loaded first with the lock released (_load_torch_library_unlocked).
ENGINE_IMPORTS = ("torch", "SimpleITK", "nibabel", "scipy.ndimage")
_WARM = threading.Lock()
_WARM_DONE = threading.Event()
_WARM_STARTED = threading.Event()
_warmed = False
_prebuilt_units: Any = None


def warm_imports() -> None:
    """Prepare, off the GUI thread, what napari otherwise builds lazily on it when the first layers
    of a session arrive: the modules of :data:`LAZY_FIRST_LAYER_IMPORTS` (and torch, for the
    docks' first engine call: :data:`ENGINE_IMPORTS`), vispy's dash patterns
    for the first labels layer's overlays, and pint's default unit registry (parsed for the first
    layer's units, about 0.3 s). The registry is built privately
    here, a new object no other thread can see (napari's own lazy one is not safe to build from a
    worker while napari may touch it); :func:`install_unit_registry` hands it to napari on the GUI
    thread. First and last, the objects alive by then are frozen out of full
    garbage collections when no layer exists yet (:func:`freeze_long_lived_objects`). Never raises."""
    global _warmed, _prebuilt_units
    with _WARM:
        if _warmed:
            return
        _warmed = True
        # Freeze first as well: the imports and pint's parsing below allocate enough to start a
        # full collection, which would walk every start-up object with the lock held (0.3 s of
        # frozen window in the GUI tests, while the Train dock started its run). Once a layer
        # exists, the freeze lasts only for this work (collection_paused thaws it).
        from .feeding import collection_paused

        frozen = freeze_long_lived_objects()
        with contextlib.nullcontext() if frozen else collection_paused():
            _load_torch_library_unlocked()
            for module in LAZY_FIRST_LAYER_IMPORTS + ENGINE_IMPORTS:
                try:
                    importlib.import_module(module)
                except ImportError:  # napari would fail on its own terms; nothing to warm
                    LOG.debug("%s is not importable; nothing to warm", module)
            _warm_dash_patterns()
            if _units_still_lazy():
                try:
                    import pint

                    # What pint's lazy application registry builds on first use, exactly.
                    _prebuilt_units = pint.UnitRegistry(on_redefinition="raise")
                except Exception:  # noqa: BLE001 - napari then builds its own, as before
                    LOG.debug("could not prepare pint's unit registry", exc_info=True)
        freeze_long_lived_objects()
        _WARM_DONE.set()


def warm_up_finished() -> bool:
    """Whether :func:`warm_imports` has run to its end in this process. Until then an engine call
    on the GUI thread that needs torch (a dock's device check at Run or Train, within a second or
    so of the first dock opening) waits for the worker's import of it."""
    return _WARM_DONE.is_set()


def _load_torch_library_unlocked() -> bool:
    """Load torch's core shared library (``libtorch_cpu.so``) with the interpreter lock released;
    whether it was loaded here. Linux only, once, before torch is imported; never raises.

    Python imports an extension module with its lock held, and ``import torch`` loads
    ``libtorch_cpu.so`` on the way: the dynamic linker maps and relocates it and runs its static
    initialisers (torch's operator registry) for 150-230 ms, during which no other thread runs
    Python. A GUI thread waiting for the lock that long is a frozen window (stop 45: the longest
    gap of opening the 600-slice CT was this, inside the read worker's warm-up). ``dlopen`` called
    through ctypes runs with the lock released; the import that follows finds the library loaded
    (the same object: it is a dependency by name) and holds the lock for 40-70 ms at most
    (``benchmarks/import_lock.py``: the warm-up's longest hold 166 -> 69 ms). ``RTLD_LOCAL``, as
    Python's own import would load it: its symbols do not become visible to later libraries.
    Nothing touches Python from those initialisers (libtorch_cpu knows nothing of Python; the
    Python bindings, which do, are left to the import)."""
    if "torch" in sys.modules or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        import importlib.util
        import os
        from pathlib import Path

        spec = importlib.util.find_spec("torch")
        if spec is None or not spec.submodule_search_locations:
            return False
        library = Path(next(iter(spec.submodule_search_locations))) / "lib" / "libtorch_cpu.so"
        if not library.is_file():
            return False
        dlopen = ctypes.CDLL(None).dlopen  # a foreign call: ctypes releases the lock around it
        dlopen.restype = ctypes.c_void_p
        dlopen.argtypes = (ctypes.c_char_p, ctypes.c_int)
        # The handle is kept on purpose (never dlclose): torch keeps the library for the process.
        return bool(dlopen(os.fsencode(library), os.RTLD_NOW | os.RTLD_LOCAL))
    except Exception:  # noqa: BLE001 - torch then loads it under the lock, as before
        LOG.debug("could not load torch's library ahead of its import", exc_info=True)
        return False


def _warm_dash_patterns() -> None:
    """Fill vispy's cache of line dash patterns, which the first labels layer's polygon and brush
    overlays otherwise compute on the GUI thread (13 patterns, about 55 ms of numpy; cached for
    the process by ``functools.lru_cache``, which is thread-safe). Pure numpy, no GL."""
    try:
        from vispy.visuals.line.dash_atlas import DashAtlas

        DashAtlas()
    except Exception:  # noqa: BLE001 - vispy then computes them where it always did
        LOG.debug("could not prepare vispy's dash patterns", exc_info=True)


def freeze_long_lived_objects() -> bool:
    """Move every object alive now out of the garbage collector's reach (:func:`gc.freeze`), if
    no napari viewer holds a layer yet; return whether it did.

    By the time a dock or a scan is opened, napari, Qt, the engine and their imports have built
    some 400,000 objects that live as long as the process. A full collection walks them all while
    holding the interpreter lock: 0.24 s of frozen window, measured as the longest freeze of opening
    a 600-slice CT (CPython starts a full collection whenever the objects that survived younger
    collections since the last one exceed a quarter of the long-lived ones). Frozen, later
    collections walk only the objects that came after. Objects are still freed by reference
    counting as before; what is given up is collecting a reference cycle among the frozen ones.
    Start-up state (modules, classes, registries) forms none that matter, but a layer does (napari
    collects removed layers for that reason), so nothing is frozen once a layer exists: a removed
    scan must not stay in memory. The freeze lasts until the first batch of layer changes a dock
    makes (:func:`napari_cascade._qt.feeding.collection_paused` ends it with ``gc.unfreeze``, which
    thaws every frozen object, so that removed layers are collected): it spares the opening of the
    first scans, where the full collection was measured. Keeping it for good instead (no unfreeze
    in that block) let later full collections walk everything the docks and tests had built since
    and froze Compare for 0.43 s in the GUI tests.
    """
    if not _no_layers_anywhere():
        return False
    gc.freeze()
    return True


def _no_layers_anywhere() -> bool:
    """Whether no napari viewer of this process holds a layer (``Viewer._instances``, napari's
    own registry of open viewers; if it moves, nothing is frozen rather than a layer)."""
    try:
        from napari import Viewer
    except ImportError:
        return True
    viewers = getattr(Viewer, "_instances", None)
    if viewers is None:
        return False
    return all(len(viewer.layers) == 0 for viewer in list(viewers))


def _units_still_lazy() -> bool:
    """Whether pint's application registry is still the lazy one nobody has used yet."""
    try:
        import pint
        from pint.registry import LazyRegistry
    except ImportError:
        return False
    return isinstance(pint.get_application_registry().get(), LazyRegistry)


def install_unit_registry() -> None:
    """GUI thread, before layers are added: give napari the unit registry a worker built, unless
    something already built the lazy one (then units of it may exist, and it stays)."""
    global _prebuilt_units
    registry, _prebuilt_units = _prebuilt_units, None
    if registry is not None and _units_still_lazy():
        import pint

        pint.set_application_registry(registry)


# The longest a thread running Python keeps the interpreter lock once another thread asks for it
# (Python's default: 5 ms). The docks' workers run Python (the planner, imports, the live plot's
# layout) while the GUI thread needs the lock for every slot it runs and again after every OpenGL
# call of a paint (ctypes lets the lock go around each), so each of those waits could cost it up to
# the interval. benchmarks/gui_freeze.py, Train's start with a 600-slice CT open, the same hour:
# longest gap 321-392 ms at 5 ms, 205-235 ms at 1 ms, with as many training steps (349-414 against
# 332-359 before the Cancel).
GUI_SWITCH_INTERVAL_S = 0.001


def share_the_interpreter_lock() -> None:
    """Lower the interpreter's switch interval to :data:`GUI_SWITCH_INTERVAL_S` for this napari
    session (never raise one set lower)."""
    if sys.getswitchinterval() > GUI_SWITCH_INTERVAL_S:
        sys.setswitchinterval(GUI_SWITCH_INTERVAL_S)


def warm_up_soon() -> None:
    """Start :func:`warm_imports` in a thread now, while a dock is being opened: importing a
    C extension holds the interpreter lock, so done during a later action it would still freeze
    the window for a moment, even from a worker. Nothing waits for it: the docks check
    :func:`warm_up_finished`. The interpreter lock is shared more often from now on
    (:func:`share_the_interpreter_lock`), as the docks' workers start."""
    share_the_interpreter_lock()
    if not _warmed and not _WARM_STARTED.is_set():
        _WARM_STARTED.set()
        queue_background_task(warm_imports, name="napari-cascade warm-up")


class _ResultRelay(QObject):
    """Carries background tasks' results to the GUI thread: one object for the process, made on the
    GUI thread (so the signal is queued there) and never deleted before the interpreter ends. A
    relay per task, dropped by the thread that emitted it, was deleted with its delivery still
    queued, and the GUI thread crashed on the event (a segmentation fault in the GUI tests)."""

    delivered = Signal(object)

    def __init__(self) -> None:
        super().__init__()
        self.delivered.connect(self._deliver)

    @staticmethod
    def _deliver(item: tuple[Callable[[Any], None], Any]) -> None:
        on_result, result = item
        on_result(result)


# What the docks prepare as they open, run in order by one plain thread (queue_background_task).
_TASKS: collections.deque[Callable[[], None]] = collections.deque()
_TASKS_LOCK = threading.Lock()
_runner: threading.Thread | None = None
_relay: _ResultRelay | None = None


def queue_background_task(function: Callable[..., Any], *args: Any, on_result: Callable[[Any], None] | None = None,
                          name: str = "napari-cascade background") -> None:
    """Run ``function(*args)`` off the GUI thread, after what the docks queued before it; for work a
    dock starts as it opens (imports, the figures of a list). ``on_result`` gets the return value on
    the GUI thread (it must cope with its dock being closed meanwhile). A failure is logged with its
    traceback, never raised into the GUI. Call it on the GUI thread.

    Not napari workers, for what happens when napari is closed within a second of opening a dock:
    a worker's signal object was deleted with the application while its thread still ran
    (importing torch), and its end printed superqt's "Signal source has been deleted" traceback.
    One plain, non-daemon Python thread runs the tasks in order and ends when none is left; Python
    joins it before it tears anything down, so the exit waits for the work (a second or two) and
    stays quiet. (Waiting on napari's thread pool at exit instead crashed under load.) One thread,
    not one per task: the work is mostly imports, which hold the interpreter lock, and one thread
    leaves the other core to the GUI.
    """
    global _runner, _relay
    if on_result is not None and _relay is None:
        _relay = _ResultRelay()
    relay = _relay

    def task() -> None:
        try:
            result = function(*args)
        except Exception:  # noqa: BLE001 - a nicety done ahead of time; the action redoes it
            LOG.exception("%s failed", name)
            return
        if on_result is None or relay is None:
            return
        try:
            relay.delivered.emit((on_result, result))
        except RuntimeError:  # the application is gone: nobody to deliver to
            LOG.debug("%s: result not delivered (the application closed)", name)

    with _TASKS_LOCK:
        _TASKS.append(task)
        if _runner is None:
            # Collections wait for the GUI thread while the runner works (collection.py).
            collection.hold()
            _runner = threading.Thread(target=collection.releasing(_run_tasks), name="napari-cascade background",
                                       daemon=False)
            _runner.start()


def _run_tasks() -> None:
    global _runner
    while True:
        with _TASKS_LOCK:
            if not _TASKS:
                _runner = None  # under the lock: a task queued from now on starts a new thread
                return
            task = _TASKS.popleft()
        task()


def _run_and_flag(job: Job, progress: ProgressCallback, cancel: threading.Event,
                  done: threading.Event) -> JobOutcome:
    """:func:`run_job`, then flag the worker thread's end (what :meth:`JobPanel.wait` waits for;
    the ``returned`` signal cannot be waited on from the GUI thread that would deliver it)."""
    try:
        warm_imports()
        return run_job(job, progress, cancel)
    finally:
        done.set()


class _ProgressRelay(QObject):
    """Carries progress from the worker thread to the GUI thread (queued signal)."""

    progressed = Signal(object)


class JobPanel(QWidget):
    """Progress bar + status line + Cancel; runs one job at a time.

    ``finished`` is emitted on the GUI thread with the :class:`JobOutcome` after the panel has
    shown the notification for errors and cancellations.
    """

    finished = Signal(object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setTextVisible(True)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        row = hbox(self.progress_bar, self.cancel_button, grow=self.progress_bar)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.status)
        self._relay = _ProgressRelay()
        self._relay.progressed.connect(self._show_progress)
        warm_up_soon()
        self._cancel = threading.Event()
        self._thread_done = threading.Event()
        self._thread_done.set()
        self._worker: Any = None
        self._label = ""
        self._on_result: Callable[[Any], None] | None = None
        self.last_outcome: JobOutcome | None = None
        self._closed = False
        # Closing the dock (or the viewer) stops the engine at its next batch instead of letting
        # it run on for nobody, and drops its result (the widgets that would show it are gone).
        self.destroyed.connect(lambda *_: self._on_destroyed())

    def _on_destroyed(self) -> None:
        self._closed = True
        self._cancel.set()

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def start(self, job: Job, on_result: Callable[[Any], None], label: str) -> bool:
        """Run ``job`` in a thread worker; ``on_result(value)`` runs on the GUI thread on success.

        Returns ``False`` (and tells the user) when a job is already running.
        """
        if self.busy:
            error(f"{self._label.capitalize()} is still running; wait for it or press Cancel")
            return False
        self._cancel = threading.Event()
        self._thread_done = threading.Event()
        self._label = label
        self._on_result = on_result
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat(f"{label}: %p%")
        self.status.setText(f"{label}: starting…")
        self.cancel_button.setEnabled(True)
        worker = create_worker(
            _run_and_flag, job, self._relay.progressed.emit, self._cancel, self._thread_done,
            _start_thread=False
        )
        worker.returned.connect(self._done)
        self._worker = worker
        collection.hold_until_finished(worker)  # collections run on the GUI thread meanwhile
        worker.start()
        return True

    def cancel(self) -> None:
        """Ask the running job to stop at its next batch (the engine checks between batches)."""
        if self.busy:
            self._cancel.set()
            self.cancel_button.setEnabled(False)
            self.status.setText(f"{self._label}: cancelling…")

    def wait(self, timeout: float = 60.0) -> bool:
        """Block until the running job's thread has ended (docks call it when they close, after
        asking the job to stop). Returns ``False`` if it was still running after ``timeout`` s."""
        return self._thread_done.wait(timeout)

    def _show_progress(self, progress: Any) -> None:
        fraction = progress if isinstance(progress, (int, float)) else getattr(progress, "fraction", 0.0)
        self.progress_bar.setValue(int(1000 * float(fraction)))
        self.status.setText(f"{self._label}: {format_progress(progress)}")

    def _done(self, outcome: JobOutcome) -> None:
        self._worker = None
        self.last_outcome = outcome
        if self._closed:
            return
        try:
            self._show_outcome(outcome)
        except RuntimeError as exc:  # the panel's Qt objects were deleted meanwhile (viewer closed)
            if "already deleted" not in str(exc) and "has been deleted" not in str(exc):
                raise
            self._closed = True
            return
        self.finished.emit(outcome)

    def _show_outcome(self, outcome: JobOutcome) -> None:
        self.cancel_button.setEnabled(False)
        if outcome.cancelled:
            self.progress_bar.setValue(0)
            self.status.setText(f"{self._label}: cancelled, nothing added")
            info(f"{self._label.capitalize()} cancelled; nothing was added")
        elif outcome.error is not None:
            self.progress_bar.setValue(0)
            self.status.setText(f"{self._label} failed: {outcome.error}")
            error(outcome.error)
        else:
            self.progress_bar.setValue(1000)
            self.status.setText(f"{self._label}: done in {outcome.seconds:.1f} s")
            callback = self._on_result
            try:
                if callback is not None:
                    callback(outcome.value)
            except CascadeSegError as exc:  # e.g. the image layer was deleted meanwhile
                outcome.error = str(exc)
                error(str(exc))
            except Exception as exc:  # a bug turning results into layers: viewer stays usable
                LOG.exception("napari-cascade: showing the result failed")
                outcome.error = f"unexpected {type(exc).__name__}: {exc} (see the log for details)"
                error(outcome.error)
