"""How long the GUI thread freezes when each dock is opened into an empty viewer.

Each dock is opened the way the Plugins menu opens it (``add_plugin_dock_widget``), in a fresh
process so that its modules are imported as a user's first opening imports them; the freeze
probe (``tests/gui/freeze_probe.py``) records the longest gap from the click to half a second
after (the dock's warm-up worker runs meanwhile).

    python benchmarks/dock_open.py            # every dock, 3 fresh processes each

Prints a Markdown table and writes it with a JSON of the figures under
``benchmarks/results/dock_open_<stamp>.{md,json}``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import write_results

ROOT = Path(__file__).resolve().parents[1]
DOCKS = ("Segment", "Compare stages and depths", "Correct mask", "Train")

_CHILD = """
import sys, time
sys.path.insert(0, {gui_tests!r})
import napari
from freeze_probe import measure, process_events_for
viewer = napari.Viewer(show=True)
viewer.window._qt_window.resize(1920, 1080)
process_events_for(1.0)
modules = len(sys.modules)
start = time.perf_counter()
gap = measure(lambda: viewer.window.add_plugin_dock_widget("napari-cascade", {dock!r}))
print("RESULT", round(gap, 1), round(time.perf_counter() - start, 2), len(sys.modules) - modules, flush=True)
viewer.close()
process_events_for(1.0)
"""


def open_once(dock: str) -> tuple[float, float, int]:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    command = [sys.executable, "-c", _CHILD.format(gui_tests=str(ROOT / "tests" / "gui"), dock=dock)]
    if not os.environ.get("DISPLAY"):
        command = ["xvfb-run", "-a", "-s", "-screen 0 1920x1080x24", *command]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT"):
            gap, wall, modules = line.split()[1:]
            return float(gap), float(wall), int(modules)
    raise SystemExit(f"opening {dock!r} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per dock")
    parser.add_argument("--label", default="", help="a word for the results file (e.g. 'before')")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    rows = []
    for dock in DOCKS:
        runs = [open_once(dock) for _ in range(args.repeats)]
        gaps = [r[0] for r in runs]
        rows.append({"dock": dock, "longest_gap_ms": gaps, "median_ms": statistics.median(gaps),
                     "wall_s": statistics.median(r[1] for r in runs), "modules_imported": runs[0][2]})
        print(f"{dock}: {gaps} ms", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    lines = [
        f"# Opening each dock: longest GUI gap (commit {commit}{', ' + args.label if args.label else ''})",
        "",
        f"`benchmarks/dock_open.py`: {args.repeats} fresh processes per dock, an empty 1920x1080 viewer under "
        f"Xvfb; {platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M:%S')}.",
        "",
        "| dock | longest gap per run (ms) | median (ms) | wall, median (s) | modules imported |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for row in rows:
        gaps = " / ".join(f"{g:.0f}" for g in row["longest_gap_ms"])
        lines.append(f"| {row['dock']} | {gaps} | {row['median_ms']:.0f} | {row['wall_s']:.1f} | {row['modules_imported']} |")
    table = "\n".join(lines) + "\n"
    # The shared writer: a label with a dot ("si0.001") no longer loses the stamp to with_suffix.
    md, _ = write_results(args.out, "dock_open" + ("_" + args.label if args.label else ""), table, {"rows": rows, "commit": commit})
    print(f"written: {md} / .json")


if __name__ == "__main__":
    main()
