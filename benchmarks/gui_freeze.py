"""How long the GUI thread freezes during each dock action, on a 512x512x600 CT.

A 50 ms ``QTimer`` on the GUI thread (``tests/gui/freeze_probe.py``) records the longest gap
between its ticks while an action runs, until its result is on screen and half a second after
(canvas redraws count). Idle, the gap is about 70 ms; issue 18 promises no action above 200 ms.

The scan is the real TotalSegmentator abdomen CT resampled onto 600 x 512 x 512 voxels
(``tests/gui/large_ct.py``), written as NIfTI into a temporary folder and opened through the
plugin's reader; its organ label map (resampled the same way) is the ground truth for Compare and
the prediction the Correct-mask dock starts from. Segment and Compare run the shipped ANU-Net
(the FLAIR model: on a CT its output means nothing, but its layers are CT-sized, which is what
the GUI thread must cope with; Compare runs every pruning depth and asks for every attention map).

Usage (from the repository root; a virtual display is started when there is none)::

    python benchmarks/gui_freeze.py                 # every action
    python benchmarks/gui_freeze.py --shape 120 512 512 --skip compare

Prints a Markdown table (action, longest gap, wall time, longest garbage collection in any thread)
and writes it with a JSON of the figures under ``benchmarks/results/gui_freeze_<stamp>.{md,json}``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _common import write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "gui"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ACTIONS = ("open", "segment", "compare", "remove", "correct", "train")


def _display() -> Any:
    """A virtual X display when there is none (napari needs one to draw)."""
    if os.environ.get("DISPLAY"):
        return None
    from pyvirtualdisplay import Display

    display = Display(visible=False, size=(1920, 1080), color_depth=24)
    display.start()
    return display


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="the shared data folder")
    parser.add_argument("--shape", type=int, nargs=3, default=(600, 512, 512), metavar=("Z", "Y", "X"))
    parser.add_argument("--skip", nargs="*", default=[], choices=ACTIONS, help="actions to leave out")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the workers")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--label", default="", help="a word for the results file (e.g. 'before')")
    parser.add_argument("--docks-first", action="store_true",
                        help="open the Segment dock before the CT (a user who opens the plugin first): the open "
                        "then runs with the dock's window holding its garbage collections on the GUI thread")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds an action may take before the run stops (Compare on the full CT took "
                        "320-330 s on the 2-core machine, over 600 s on a slow day of the same VM)")
    args = parser.parse_args()
    display = _display()
    try:
        rows, context = run(args)
    finally:
        if display is not None:
            display.stop()
    table = render(rows, context)
    # The shared writer: a label with a dot ("si0.001") no longer loses the stamp to with_suffix.
    md, _ = write_results(args.out, "gui_freeze" + ("_" + args.label if args.label else ""), table, {"rows": rows, **context})
    print(f"written: {md} / .json")


def run(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import napari
    import numpy as np
    import torch
    from freeze_probe import last_collections_ms, last_collections_off_gui, measure, process_events_for
    from large_ct import large_ct
    from napari.layers import Labels

    from cascadeseg.io import save_volume

    torch.set_num_threads(args.threads)
    shape = tuple(args.shape)
    built = time.perf_counter()
    image, organs = large_ct(args.data, shape)
    built = time.perf_counter() - built
    rows: list[dict[str, Any]] = []

    def record(action: str, what: Callable[[], Any], until: Callable[[], bool] | None = None) -> None:
        start = time.perf_counter()
        gap = measure(what, until, timeout_s=args.timeout)
        # The longest garbage collection meanwhile, in any thread: it holds the interpreter lock,
        # so one longer than the bound explains a freeze that no GUI-thread code does.
        gc_longest, _ = last_collections_ms()
        # Collections on other threads: one that frees a Qt object there can deadlock the window.
        off_gui, off_gui_full = last_collections_off_gui()
        rows.append({"action": action, "longest_gap_ms": round(gap, 1),
                     "wall_s": round(time.perf_counter() - start, 2), "gc_longest_ms": round(gc_longest, 1),
                     "gc_off_gui": off_gui, "gc_off_gui_full": off_gui_full})
        print(f"{action}: longest gap {gap:.0f} ms ({rows[-1]['wall_s']:.1f} s)", flush=True)

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1920, 1080)
    process_events_for(1.0)
    record("idle (baseline)", lambda: None)
    # An action that fails or runs past the timeout still closes the viewer, so that the docks
    # cancel their workers instead of being torn down under them at exit.
    segment = None
    if args.docks_first:
        from napari_cascade._qt.segment_widget import SegmentWidget

        segment = SegmentWidget(viewer)
        viewer.window.add_dock_widget(segment, name="Segment")
        process_events_for(3.0)
        record("idle, the Segment dock open", lambda: None)
    with tempfile.TemporaryDirectory() as tmp, _closing(viewer):
        # Everything the docks write (the Correct dock's autosave recovery files, the Train runs and
        # models) goes to a home folder inside ``tmp``, never the user's.
        os.environ["CASCADESEG_HOME"] = str(Path(tmp) / "home")
        scan_path = save_volume(image, Path(tmp) / "large_ct.nii.gz")
        del image
        if "open" in args.skip:
            viewer.open(str(scan_path), plugin="napari-cascade")
        else:
            record(f"open {'x'.join(map(str, shape[::-1]))} CT (.nii.gz)", lambda: viewer.open(str(scan_path), plugin="napari-cascade"),
                   lambda: _scan(viewer) is not None)
        scan = _scan(viewer)
        from freeze_probe import napari_insertion_ms

        # The session's first labels layer pays for what napari builds lazily (the dock workers'
        # warm-up prepares it); the next one is napari's floor for any action that adds a layer.
        for which in ("the session's first labels layer", "one more labels layer"):
            floor = napari_insertion_ms(viewer)
            rows.append({"action": f"(napari itself: add {which}, for reference)",
                         "longest_gap_ms": round(floor, 1), "wall_s": None})
            print(f"napari's own insertion, {which}: {floor:.0f} ms", flush=True)
        from napari_cascade._layers import labels_layer

        data, kwargs, _ = labels_layer(np.asarray(organs.array), organs, "large_ct organs")
        truth = viewer.add_labels(data, **kwargs)
        from napari_cascade._qt.compare_widget import CompareWidget
        from napari_cascade._qt.correction_widget import CorrectionWidget
        from napari_cascade._qt.segment_widget import SegmentWidget

        if segment is None:
            segment = SegmentWidget(viewer)
            viewer.window.add_dock_widget(segment, name="Segment")
        process_events_for(3.0)  # a user clicks Run a few seconds after opening the dock
        if "segment" not in args.skip:
            segment.channels.combos[0].setCurrentText(scan.name)
            record("Segment (shipped ANU-Net, L4)", segment.run, _busy(segment))
            _check(segment)
        compare = CompareWidget(viewer)
        viewer.window.add_dock_widget(compare, name="Compare", tabify=True)
        process_events_for(3.0)
        if "compare" not in args.skip:
            compare.channels.combos[0].setCurrentText(scan.name)
            compare.ground_truth.setCurrentText(truth.name)
            record("Compare (every depth + attention, with ground truth)", compare.run, _busy(compare))
            _check(compare)
            if "remove" not in args.skip:
                record("Remove comparison layers", compare.clear_button.click,
                       lambda: not any(_is_compare(layer) for layer in viewer.layers))
        if "correct" not in args.skip:
            correct = CorrectionWidget(viewer)
            viewer.window.add_dock_widget(correct, name="Correct mask")
            process_events_for(3.0)
            correct.scan_combo.setCurrentText(scan.name)
            correct.prediction_combo.setCurrentText(truth.name)
            busy = _busy(correct)
            record("Correct: accept prediction as working mask", correct.accept_button.click, busy)
            correct.label_spin.setValue(5)  # the liver
            for name, button in (
                ("Correct: keep largest component (liver)", correct.largest_button),
                ("Correct: fill holes (3D)", correct.fill3d_button),
                ("Correct: fill holes (each slice)", correct.fill2d_button),
                ("Correct: remove islands < 100 voxels", correct.islands_button),
                ("Correct: interpolate between slices", correct.interpolate_button),
                ("Correct: undo", correct.undo_button),
                ("Correct: redo", correct.redo_button),
            ):
                if not button.isEnabled():
                    rows.append({"action": name, "longest_gap_ms": None, "wall_s": None, "note": "disabled"})
                    continue
                record(name, button.click, busy)
            correct._dirty = True  # what napari's paint events set (the timer's tick skips a clean mask)
            record("Correct: autosave", lambda: correct.autosave_now(background=True),
                   lambda: getattr(correct, "_autosave_worker", None) is None)
        if "train" not in args.skip:
            _train_actions(viewer, args.data / "lgg-flair", record)
        masks = [layer for layer in viewer.layers if isinstance(layer, Labels)]
    context = {
        "shape": list(shape),
        "build_ct_seconds": round(built, 1),
        "labels_layers_at_end": len(masks),
        "torch_threads": args.threads,
        "docks_first": args.docks_first,
        "commit": _commit(),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average_end": [round(v, 2) for v in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    return rows, context


@contextlib.contextmanager
def _closing(viewer: Any) -> Iterator[None]:
    try:
        yield
    finally:
        from freeze_probe import process_events_for

        viewer.close()
        process_events_for(1.5)  # the cancelled workers end and their last signals arrive


def _train_actions(viewer: Any, data: Path, record: Callable[..., None]) -> None:
    """The Train dock as a new user drives it: the LGG folder with every choice left to the
    planner, Train, the live plot over two epochs, Cancel; then a 1-minute run to its end, whose
    model the dock installs (into the temporary home folder :func:`run` sets)."""
    from freeze_probe import process_events_for

    from napari_cascade._qt.train_widget import SOURCE_FOLDER, TrainWidget

    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train, name="Train", tabify=True)
    process_events_for(3.0)
    train.source.setCurrentIndex(train.source.findData(SOURCE_FOLDER))
    train.folder.setText(str(data))
    train.minutes.setValue(3.0)
    train.model_name.setText("freeze-probe-cancelled")
    record("Train: start on the LGG folder (planning, until the first step is plotted)", train.start,
           lambda: len(train.plot.step_numbers) > 0)
    # Until epoch 2 is plotted, or the run ends first (on a slow machine the planner can fit a
    # single validated epoch into the 3 minutes).
    record("Train: training with the live plot (until epoch 2 is plotted or the run ends)", lambda: None,
           lambda: len(train.plot.epoch_numbers) >= 2 or not train.busy)
    record("Train: cancel (until the run has stopped)", train.cancel, _busy(train))
    train.discard_kept()
    train.minutes.setValue(1.0)
    train.model_name.setText("freeze-probe-finished")
    record("Train: a 1-minute run to its end (its model installed)", train.start, _busy(train))
    _check(train)


def _scan(viewer: Any) -> Any:
    from napari.layers import Image

    images = [layer for layer in viewer.layers if isinstance(layer, Image) and layer.data.ndim == 3]
    loaded = [layer for layer in images if layer.data.strides[-1] != 0]  # not a placeholder
    return loaded[0] if loaded else None


def _is_compare(layer: Any) -> bool:
    info = (layer.metadata.get("cascadeseg") or {}).get("result") or {}
    return info.get("kind") == "compare"


def _busy(widget: Any) -> Callable[[], bool]:
    """Done when the dock is idle: its job, and the layers or voxels it adds a turn at a time
    (``busy``, since issue 18; before, the job panel alone)."""
    return lambda: not getattr(widget, "busy", widget.job.busy)


def _check(widget: Any) -> None:
    outcome = widget.job.last_outcome
    if outcome is None or not outcome.ok:
        raise SystemExit(f"{type(widget).__name__} failed: {outcome and outcome.error}")


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def render(rows: list[dict[str, Any]], context: dict[str, Any]) -> str:
    lines = [
        f"# GUI freeze per action ({'x'.join(map(str, context['shape'][::-1]))} CT, commit {context['commit']})",
        "",
        f"Longest gap between ticks of a 50 ms timer on the GUI thread (`benchmarks/gui_freeze.py`); "
        f"{context['machine']}, torch threads {context['torch_threads']}, load average at the end "
        f"{context['load_average_end']}, {context['date']}"
        f"{'; the Segment dock opened before the CT' if context.get('docks_first') else ''}.",
        "",
        "| action | longest gap (ms) | wall (s) | longest garbage collection (ms) "
        "| collections off the GUI thread (all / full) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        gap = "—" if row["longest_gap_ms"] is None else f"{row['longest_gap_ms']:.0f}"
        wall = "—" if row["wall_s"] is None else f"{row['wall_s']:.1f}"
        collection = "—" if row.get("gc_longest_ms") is None else f"{row['gc_longest_ms']:.0f}"
        off_gui = "—" if row.get("gc_off_gui") is None else f"{row['gc_off_gui']} / {row['gc_off_gui_full']}"
        lines.append(f"| {row['action']} | {gap} | {wall} | {collection} | {off_gui} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
