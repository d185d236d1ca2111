"""How long the docks' warm-up, importing torch in a worker thread, keeps other threads waiting.

The docks and the background reader import the engine's libraries in a worker
(``napari_cascade._qt.workers.warm_imports``), so that the GUI thread does not; but Python holds
its interpreter lock while it loads an extension module, and ``import torch`` loads
``libtorch_cpu.so`` (mapping, relocation, static initialisers). Each run is a fresh process (torch
can be imported once per process) that imports napari-cascade's Qt glue (napari, Qt), then runs
the real warm-up in a thread while the main thread ticks every 5 ms: as Python imports torch
(``plain``: the unlocked load switched off) or with ``_load_torch_library_unlocked`` loading that
library first with the lock released (``unlocked``, the product); the two modes alternate.

    python benchmarks/import_lock.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

MODES = ("plain", "unlocked")


def one_run(mode: str) -> dict[str, float]:
    """In this (fresh) process: the warm-up in a thread, the main thread ticking meanwhile."""
    from reader_lock import timed_in_thread

    from napari_cascade._qt import workers

    assert "torch" not in sys.modules
    loaded: list[bool] = []
    unlocked = workers._load_torch_library_unlocked

    def load() -> bool:
        loaded.append(mode == "unlocked" and unlocked())
        return loaded[-1]

    workers._load_torch_library_unlocked = load
    seconds, longest_ms = timed_in_thread(workers.warm_imports)
    assert "torch" in sys.modules and loaded == [mode == "unlocked"], loaded
    return {"seconds": seconds, "longest_gap_ms": longest_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per mode")
    parser.add_argument("--label", default="")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)  # a child process's run
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args.one)))
        return
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for _ in range(args.repeats):
        for mode in MODES:
            out = subprocess.run([sys.executable, __file__, "--one", mode], check=True, capture_output=True,
                                 text=True, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"}).stdout
            runs[mode].append(json.loads(out.strip().splitlines()[-1]))
            print(mode, runs[mode][-1], flush=True)
    rows = []
    for mode in MODES:
        gaps = [r["longest_gap_ms"] for r in runs[mode]]
        rows.append({"mode": mode, "warm_up_s": round(statistics.median(r["seconds"] for r in runs[mode]), 3),
                     "gap_median_ms": round(statistics.median(gaps), 1), "gap_min_ms": round(min(gaps), 1),
                     "gap_max_ms": round(max(gaps), 1)})
    ratio = rows[0]["gap_median_ms"] / rows[1]["gap_median_ms"]
    lines = [
        "# The docks' warm-up (torch's import) in a worker thread: what the main thread waits",
        "",
        f"`python benchmarks/import_lock.py --repeats {args.repeats}`; {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
        f"at the end {[round(v, 2) for v in os.getloadavg()]}. One fresh process per run, the modes alternating; "
        "the main thread ticks every 5 ms.",
        "",
        "| mode | warm-up s (median) | longest main-thread gap ms: median / min / max |",
        "|---|---:|---:|",
        *[f"| {r['mode']} | {r['warm_up_s']} | {r['gap_median_ms']} / {r['gap_min_ms']} / {r['gap_max_ms']} |"
          for r in rows],
        "",
        f"Longest gap, plain / unlocked (medians): {ratio:.1f}x.",
    ]
    write_results(args.results, "import_lock" + (f"_{args.label}" if args.label else ""), "\n".join(lines) + "\n",
                  {"rows": rows, "runs": runs})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
