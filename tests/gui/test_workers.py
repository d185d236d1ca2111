"""The worker glue turns every way a job can end into an outcome (no viewer needed)."""

from __future__ import annotations

import sys
import threading

import pytest

from cascadeseg.errors import CancelledError, CheckpointError
from cascadeseg.inference.progress import Progress
from napari_cascade._qt.workers import format_progress, run_job


def test_every_ending_becomes_an_outcome() -> None:
    seen = []
    ok = run_job(lambda progress, cancel: progress(0.5) or 42, seen.append, threading.Event())
    assert ok.ok and ok.value == 42 and seen == [0.5]

    def cancelled(progress, cancel):
        raise CancelledError("prediction cancelled after 8 of 53 slices")

    assert run_job(cancelled, seen.append, threading.Event()).cancelled

    def user_error(progress, cancel):
        raise CheckpointError("/models/x: weights file model.safetensors is missing")

    outcome = run_job(user_error, seen.append, threading.Event())
    assert not outcome.ok and outcome.error == "/models/x: weights file model.safetensors is missing"

    def bug(progress, cancel):
        raise ZeroDivisionError("division by zero")

    outcome = run_job(bug, seen.append, threading.Event())
    assert outcome.error.startswith("unexpected ZeroDivisionError") and "log" in outcome.error

    # Cancel pressed after the last batch: the result is dropped as the user asked.
    event = threading.Event()
    event.set()
    assert run_job(lambda progress, cancel: 1, seen.append, event).cancelled


def test_progress_text_has_the_rate() -> None:
    assert format_progress(Progress(0.25, 8, 32, 12.34, "slices")) == "8/32 slices · 12.3 slices/s"
    assert format_progress(Progress(0.0, 0, 32, 0.0, "patches")) == "0/32 patches"
    assert format_progress(0.5) == "50%"


def test_closing_the_viewer_mid_job_and_after_one_prints_nothing(make_napari_viewer, qtbot, capfd, sample_crop,
                                                                  tiny_models) -> None:
    """Closing napari while a dock's job runs, or right after one finished and its layers were
    being added, used to print 'RuntimeError: Signal source has been deleted'. The job is
    cancelled and its result dropped quietly; nothing reaches stderr or the notifications."""
    from gui_helpers import add_volume
    from napari.utils.notifications import ErrorNotification, notification_manager

    from napari_cascade._qt.compare_widget import CompareWidget
    from napari_cascade._qt.segment_widget import SegmentWidget

    for close_while_running in (True, False):
        viewer = make_napari_viewer(show=True)
        add_volume(viewer, sample_crop[0], name="crop")
        segment = SegmentWidget(viewer)
        compare = CompareWidget(viewer)
        viewer.window.add_dock_widget(segment, name="Segment")
        viewer.window.add_dock_widget(compare, name="Compare", tabify=True)
        for widget in (segment, compare):
            widget.models.select_path(tiny_models["anu"])
        assert segment.run() and compare.run()
        if not close_while_running:
            qtbot.waitUntil(lambda: not compare.busy and not segment.busy, timeout=120_000)
        viewer.close()
        qtbot.wait(1500)  # the workers end, their signals arrive at deleted docks
    out, err = capfd.readouterr()
    assert "Signal source has been deleted" not in err and "Traceback" not in err, err[-2000:]
    assert not [r for r in notification_manager.records if isinstance(r, ErrorNotification)]


def test_unit_registry_built_in_a_worker_is_the_one_napari_uses() -> None:
    """pint's registry (about 0.3 s of parsing that napari does lazily on the GUI thread for the
    first layer) is built by the warm-up worker as a private object and handed to napari on the
    GUI thread before any layer exists; layers then convert units with it. A fresh interpreter,
    because the registry is process-wide and other tests have built it already."""
    import subprocess
    import sys

    script = """
import threading, pint
from pint.registry import LazyRegistry
from napari_cascade._qt import workers
assert isinstance(pint.get_application_registry().get(), LazyRegistry)
thread = threading.Thread(target=workers.warm_imports); thread.start(); thread.join()
assert isinstance(pint.get_application_registry().get(), LazyRegistry)  # built, not yet handed over
built = workers._prebuilt_units
workers.install_unit_registry()
assert pint.get_application_registry().get() is built and workers._prebuilt_units is None
from napari.layers import Image
import numpy as np
layer = Image(np.zeros((4, 5, 6), np.float32), scale=(2.0, 0.5, 0.5), units=("mm", "mm", "mm"))
assert str(layer.units[0]) == "millimeter" and (1 * layer.units[0]).to("m").magnitude == 0.001
workers.install_unit_registry()  # nothing left to install: a no-op
assert pint.get_application_registry().get() is built
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr


def test_warm_up_freezes_the_start_up_objects_out_of_full_collections() -> None:
    """After the warm-up, the objects napari, Qt and the engine built at start-up are frozen
    (gc.freeze): a full collection walks only what came later, so it no longer holds the
    interpreter lock for a quarter of a second during the first layer (benchmarks/gui_freeze.py:
    opening a 600-slice CT, 440 -> about 200 ms). New reference cycles are still collected, and
    nothing is frozen while a viewer holds a layer. A fresh interpreter: freezing is process-wide."""
    import subprocess
    import sys

    script = """
import gc, threading, time
import napari
from napari_cascade._qt import workers
assert gc.get_freeze_count() == 0
alive = len(gc.get_objects())
thread = threading.Thread(target=workers.warm_imports); thread.start(); thread.join()
frozen = gc.get_freeze_count()
assert frozen >= alive, (frozen, alive)
assert len(gc.get_objects()) < alive // 10, len(gc.get_objects())  # what a collection still walks
class Node:
    pass
a, b = Node(), Node()
a.other, b.other = b, a  # a cycle made after the freeze
probe = __import__("weakref").ref(a)
del a, b
gc.collect()
assert probe() is None  # collected as before
# The first batch of layer changes ends the freeze: what it removes must be collectable.
from napari_cascade._qt.feeding import collection_paused
with collection_paused():
    pass
assert gc.get_freeze_count() == 0
# Once a viewer holds a layer, nothing is frozen: a removed scan must be collectable.
import numpy as np
viewer = napari.Viewer(show=False)
viewer.add_image(np.zeros((4, 8, 8), np.float32))
assert workers.freeze_long_lived_objects() is False and gc.get_freeze_count() == 0
viewer.layers.clear()
assert workers.freeze_long_lived_objects() is True and gc.get_freeze_count() > 0
viewer.close()
print("ok", frozen)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().startswith("ok"), proc.stdout + proc.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the unlocked load is Linux's dlopen")
def test_warm_up_loads_torchs_core_library_before_importing_torch() -> None:
    """``import torch`` loads libtorch_cpu.so with the interpreter lock held (150-230 ms of frozen
    window while a worker warms up; ``benchmarks/import_lock.py``); the warm-up loads that library
    first through ``dlopen``, which runs with the lock released, and the import then uses the
    loaded library: torch works. A fresh interpreter, because torch is imported once per process."""
    import subprocess

    script = """
import sys, threading
from napari_cascade._qt import workers
assert "torch" not in sys.modules
loaded = []
original = workers._load_torch_library_unlocked
def recording():
    done = original()
    loaded.append((done, "torch" in sys.modules, "libtorch_cpu.so" in open("/proc/self/maps").read()))
    return done
workers._load_torch_library_unlocked = recording
thread = threading.Thread(target=workers.warm_imports); thread.start(); thread.join()
assert loaded == [(True, False, True)], loaded
import torch
assert not original()  # torch is imported: nothing left to load
x = torch.nn.functional.conv2d(torch.ones(1, 1, 8, 8), torch.ones(1, 1, 3, 3))
assert float(x.sum()) == 9 * 36
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr


def test_warm_up_leaves_the_first_labels_layer_nothing_to_import_or_compute() -> None:
    """What napari builds lazily for the first labels layer of a session (scikit-image's colour
    conversions for its colormap, vispy's dash patterns for its polygon and brush overlays: about
    0.12 s of the first Segment result's insertion) is prepared by the warm-up worker, so the GUI
    thread finds it ready: adding that layer to a viewer imports no module and computes no dash
    pattern. A fresh interpreter, because both are process-wide."""
    import subprocess
    import sys

    script = """
import sys, threading
import numpy as np
import napari
from vispy.visuals.line.dash_atlas import _make_pattern
from napari_cascade._qt import workers
viewer = napari.Viewer(show=False)
viewer.add_image(np.zeros((4, 8, 8), np.float32))
assert "skimage.color.colorconv" not in sys.modules and _make_pattern.cache_info().currsize == 0
thread = threading.Thread(target=workers.warm_imports); thread.start(); thread.join()
before, misses = set(sys.modules), _make_pattern.cache_info().misses
viewer.add_labels(np.zeros((4, 8, 8), np.uint8))
new = sorted(set(sys.modules) - before)
assert not new, new
assert _make_pattern.cache_info().misses == misses, _make_pattern.cache_info()
viewer.close()
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr


def test_no_full_collection_during_the_warm_up_walks_the_start_up_objects() -> None:
    """The warm-up's own work (imports, pint's parsing) allocates enough to start full garbage
    collections; each must find the start-up objects already frozen, or it walks them all with the
    interpreter lock held (0.3 s of frozen window in the GUI tests while the Train dock started a
    run). Full collections are made frequent here so that some happen during the warm-up. A fresh
    interpreter: freezing is process-wide."""
    import subprocess
    import sys

    script = """
import gc, threading
import napari
from napari_cascade._qt import workers
frozen_at_full = []
def record(phase, info):
    if phase == "start" and info["generation"] == 2:
        frozen_at_full.append(gc.get_freeze_count())
gc.callbacks.append(record)
gc.set_threshold(200, 2, 2)
thread = threading.Thread(target=workers.warm_imports); thread.start(); thread.join()
gc.callbacks.remove(record)
assert frozen_at_full, "no full collection ran during the warm-up"
assert min(frozen_at_full) > 100_000, frozen_at_full
print("ok", len(frozen_at_full))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().startswith("ok"), proc.stdout + proc.stderr


def test_opening_the_docks_imports_no_torch_on_the_gui_thread() -> None:
    """Opening a dock froze the window for 1.2-2.3 s, most of it importing torch on the GUI thread
    (the docks' modules and constructors reached it through the device list, the model and loss
    listings, the trainer), and about 0.15 s more importing SimpleITK, nibabel and scipy.ndimage
    (the engine's I/O and label modules, and reading a card's preprocessing). The docks now open
    without any of them, and their warm-up worker imports them in the background, so that the first
    Run or Train finds them ready. A fresh interpreter: imports are process-wide."""
    import subprocess
    import sys

    script = """
import builtins, sys, threading, time
import napari
from napari_cascade._qt import workers
viewer = napari.Viewer(show=False)
main, original, on_gui_thread = threading.main_thread(), builtins.__import__, []
HEAVY = ("torch", "SimpleITK", "nibabel", "scipy.ndimage")
assert not [m for m in HEAVY if m in sys.modules], [m for m in HEAVY if m in sys.modules]
def watch(name, globals=None, locals=None, fromlist=(), level=0):
    wanted = [name] + [f"{name}.{item}" for item in (fromlist or ())]
    for module in HEAVY:
        if module not in sys.modules and threading.current_thread() is main and any(
                w == module or w.startswith(module + ".") for w in wanted):
            on_gui_thread.append(module)
    return original(name, globals, locals, fromlist, level)
builtins.__import__ = watch
for dock in ("Segment", "Compare stages and depths", "Correct mask", "Train"):
    viewer.window.add_plugin_dock_widget("napari-cascade", dock)
builtins.__import__ = original
assert not on_gui_thread, on_gui_thread
deadline = time.monotonic() + 60
while not workers.warm_up_finished() and time.monotonic() < deadline:
    time.sleep(0.05)
assert all(m in sys.modules for m in HEAVY), "the warm-up did not import them all"
viewer.close()
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and "ok" in proc.stdout.split(), proc.stdout + proc.stderr[-3000:]


def test_closing_napari_right_after_opening_the_docks_prints_nothing() -> None:
    """Each dock starts background work as it opens (the engine's imports, the trainer's, the
    Segment depth list's figures). Closing napari within a second used to delete those workers'
    Qt signal objects while their threads still ran, and their end printed superqt's
    "RuntimeError: Signal source has been deleted" traceback (Segment and Train). One plain Python
    thread runs that work now: the exit waits for it and prints nothing (and does not crash: three
    threads importing torch at once did, 2 exits in 5). A fresh interpreter, so that the imports are
    still running when the viewer closes."""
    import subprocess
    import sys

    script = """
import threading

import pytest
import napari
viewer = napari.Viewer(show=False)
for dock in ("Segment", "Compare stages and depths", "Correct mask", "Train"):
    viewer.window.add_plugin_dock_widget("napari-cascade", dock)
running = [t.name for t in threading.enumerate() if t.name.startswith("napari-cascade")]
viewer.close()
print("closed with", len(running), "threads running")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and "closed with" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    # The work was still running when napari closed, so the test tried what it says.
    assert int(proc.stdout.split("closed with")[1].split()[0]) >= 1, proc.stdout
    assert "Signal source has been deleted" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_layer_feeder_lets_the_window_timers_run_between_its_steps(qapp) -> None:
    """A feed of slow steps (200 ms each, an insertion on a loaded machine) freezes the window for
    one step at a time: Qt's timers run between two steps. (Chained with 0 ms single shots, Qt ran
    the next step ahead of the expired timers: two or more steps per gap.)"""
    import time

    from freeze_probe import measure

    from napari_cascade._qt.feeding import LayerFeeder

    def slow_step() -> None:
        end = time.perf_counter() + 0.2
        while time.perf_counter() < end:  # busy on the GUI thread, as an insertion is
            continue

    feeder = LayerFeeder(None, [slow_step] * 5)
    ended: list[bool] = []
    feeder.done.connect(lambda: ended.append(True))
    gap = measure(feeder.start, lambda: bool(ended), timeout_s=30)
    assert ended and not feeder.steps
    assert gap < 2 * 200 - 50, f"two steps ran without a timer between them ({gap:.0f} ms)"


def test_a_training_start_imports_nothing_the_train_dock_did_not_warm(shared_data) -> None:
    """After the docks' warm-ups (:func:`workers.warm_imports`, the Train dock's
    :func:`import_for_first_run`), a real training run on two LGG patients imports no module: an
    import in the run's worker is read by PySide's import hook with the interpreter lock held (55
    modules: the lock on the run folder, the checkpoint format, losses, preprocessing and the
    architectures; Train's start froze the window 329 ms with a CT open). A fresh interpreter,
    because imports are process-wide; the command line's own modules are left out."""
    import subprocess
    import sys

    data = shared_data / "lgg-flair"
    cases = ("TCGA_CS_4941_19960909", "TCGA_CS_4943_20000902")
    pairs = [str(p) for case in cases for p in (data / "imagesTr" / f"{case}_0000.nii.gz", data / "labelsTr" / f"{case}.nii.gz")]
    script = f"""
import sys, tempfile
import PySide6.QtWidgets
from napari_cascade._qt import train_widget, workers
workers.warm_imports()
train_widget.import_for_first_run()
from cascadeseg.cli.main import main
before = set(sys.modules)
code = main(["train", "--pairs", *{pairs!r}, "--base-width", "4", "--levels", "3", "--inplane-size", "64",
             "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--val-fraction", "0.5", "--threads", "1",
             "--run-dir", tempfile.mkdtemp() + "/run", "--no-progress"])
assert code == 0, code
new = sorted(m for m in set(sys.modules) - before if not m.startswith("cascadeseg.cli"))
assert not new, new
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-2000:] + proc.stderr[-3000:]


def test_opening_a_dock_shares_the_interpreter_lock_more_often(qapp) -> None:
    """A dock's job panel lowers Python's switch interval to 1 ms for the session, so the GUI
    thread waits less for the lock behind its workers' Python (Train's start with a CT open:
    321-392 ms longest gap at 5 ms, 205-235 ms at 1 ms, benchmarks/gui_freeze.py); a lower
    interval someone set is kept."""
    import sys

    from napari_cascade._qt.workers import GUI_SWITCH_INTERVAL_S, JobPanel

    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        panel = JobPanel()
        assert sys.getswitchinterval() == pytest.approx(GUI_SWITCH_INTERVAL_S)
        sys.setswitchinterval(0.0002)
        panel.close()
        JobPanel().close()
        assert sys.getswitchinterval() == pytest.approx(0.0002)
    finally:
        sys.setswitchinterval(before)


def test_garbage_a_job_leaves_is_collected_on_the_gui_thread(qtbot, sample_crop, tiny_models) -> None:
    """A collection that destroys a Qt object in a worker thread can deadlock the window
    (``~QObject`` holds Qt's connection lock and waits for the interpreter lock, which the GUI
    thread holds while it waits for that lock in ``connect``; a CI run hung so). While a dock's
    job runs, collections happen on the GUI thread only: a Qt object left in a reference cycle by a
    job that segments a real scan dies there, and automatic collection is back after the job."""
    import gc
    import time
    import weakref

    from qtpy.QtCore import QObject

    from cascadeseg.inference import Predictor, load_checkpoint
    from napari_cascade._qt import collection
    from napari_cascade._qt.workers import JobPanel

    gui_thread = threading.get_ident()
    died_on: list[int] = []
    seen: dict[str, object] = {}

    def job(progress, cancel):
        model, card = load_checkpoint(tiny_models["anu"])
        mask = Predictor(model, card, device="cpu").predict(sample_crop[0], mode="2d").labels.array
        seen["automatic_during_job"] = gc.isenabled()
        orphan = QObject()
        orphan.itself = orphan  # a reference cycle only the cyclic collector can free
        weakref.finalize(orphan, lambda: died_on.append(threading.get_ident()))
        del orphan
        # More new objects than CPython's youngest generation holds: a collection is now due.
        seen["kept"] = [[] for _ in range(3 * gc.get_threshold()[0])]
        deadline = time.monotonic() + 10.0
        while not died_on and time.monotonic() < deadline:
            time.sleep(0.02)
        return int(mask.sum())

    panel = JobPanel()
    qtbot.addWidget(panel)
    results: list[int] = []
    assert panel.start(job, results.append, "segment")
    qtbot.waitUntil(lambda: panel.last_outcome is not None, timeout=120_000)
    assert panel.last_outcome.ok, panel.last_outcome
    assert results and seen["automatic_during_job"] is False
    assert died_on == [gui_thread], (died_on, gui_thread)
    # Holds pair with releases: with the job and the docks' background work over, CPython
    # collects automatically again.
    qtbot.waitUntil(lambda: gc.isenabled() and not collection.held(), timeout=60_000)


def test_a_shown_window_with_a_dock_collects_napari_threads_garbage_on_the_gui_thread(
    make_napari_viewer, qtbot
) -> None:
    """napari's status thread runs Python beside the GUI whenever the cursor moves, with no job
    of ours running. While a window shows a dock of the plugin, a Qt object that a thread other
    than ours leaves in a reference cycle dies on the GUI thread; the window's close gives
    automatic collection back at once, and a viewer never shown holds nothing."""
    import gc
    import time
    import weakref

    from qtpy.QtCore import QObject

    from napari_cascade._qt import collection

    hidden = make_napari_viewer()
    hidden.window.add_plugin_dock_widget("napari-cascade", "Segment")
    # Its background listing holds while it runs, and only that: then automatic collection is back.
    qtbot.waitUntil(lambda: not collection.held(), timeout=30_000)

    viewer = make_napari_viewer(show=True)
    viewer.window.add_plugin_dock_widget("napari-cascade", "Segment")
    viewer.window.add_plugin_dock_widget("napari-cascade", "Correct mask")
    qtbot.waitUntil(collection.held, timeout=5_000)
    gui_thread = threading.get_ident()
    died_on: list[int] = []

    def napari_like_thread() -> None:
        orphan = QObject()
        orphan.itself = orphan  # a reference cycle only the cyclic collector can free
        weakref.finalize(orphan, lambda: died_on.append(threading.get_ident()))
        del orphan
        kept = [[] for _ in range(3 * gc.get_threshold()[0])]  # a collection is now due
        deadline = time.monotonic() + 5.0
        while not died_on and time.monotonic() < deadline:
            time.sleep(0.02)
        del kept

    thread = threading.Thread(target=napari_like_thread)
    thread.start()
    qtbot.waitUntil(lambda: bool(died_on), timeout=10_000)
    thread.join()
    assert died_on == [gui_thread], (died_on, gui_thread)
    assert len(collection._shown_windows) == 1  # two docks, one window: one hold
    viewer.close()
    assert not collection._shown_windows  # released as the window goes, not at the docks' deletion
    qtbot.waitUntil(lambda: gc.isenabled() and not collection.held(), timeout=30_000)


def test_collections_on_the_gui_thread_follow_cpythons_rules() -> None:
    """While a hold lasts, the GUI thread's timer collects what CPython would have: the youngest
    generation when more than its threshold of new objects exist, and a full collection only when
    the objects promoted to the oldest generation since the last full one exceed a quarter of the
    long-lived ones (hand-counted below with 40,000 long-lived objects). A fresh interpreter:
    collection switches are process-wide."""
    import subprocess
    import sys

    script = """
import gc
from qtpy.QtCore import QCoreApplication
from napari_cascade._qt import collection
app = QCoreApplication([])
gc.collect()
gc.freeze()  # what the interpreter built at start-up is out of the count, as after the warm-up
long_lived = [[] for _ in range(40_000)]
gc.collect()  # the 40,000 lists now make the oldest generation
collection.hold()
assert not gc.isenabled() and collection.held() and collection.collections_happen()
assert collection.collect_due() is None  # nothing new yet
gc.set_threshold(100, 1, 1)
kept = [[[] for _ in range(150)]]
assert collection.collect_due() == 0  # 150 > 100 new objects: the youngest generation
full = []
gc.callbacks.append(lambda phase, info: phase == "start" and info["generation"] == 2 and full.append(1))
def promote(n):
    kept.append([[] for _ in range(n)])
    gc.collect(1)  # into the oldest generation
def due_checks(times):
    for _ in range(times):
        batch = [[] for _ in range(400)]  # a collection is due again (and the oldest generation's count)
        generation = collection.collect_due()
        del batch
        if generation == 2:
            return
due_checks(20)  # the oldest generation falls due: its 40,000 objects are counted as the base
assert not full, full
promote(6_000)  # under a quarter of 40,000: no full collection, however often one is due
due_checks(20)
assert not full, full
promote(6_000)  # 12,000 > 10,000: the next time the oldest generation is due, it is collected
due_checks(20)
assert full == [1], full
collection.release()
assert gc.isenabled() and not collection.held()
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr
