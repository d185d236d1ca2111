"""How long reading a scan in a worker thread keeps every other thread waiting (the GUI's case).

napari-cascade reads files in a worker (File > Open, the docks' jobs), so the GUI thread keeps
drawing only if the reader lets go of Python's interpreter lock. This runs ``cascadeseg.io``'s
``load_volume`` in a thread while the main thread ticks every 5 ms, and reports per file the read
time and the longest gap between ticks (the longest the GUI would have been frozen), median over
``--repeats`` runs. Files: the real TotalSegmentator CT of ``../shared`` and the same CT resampled
onto 600 x 512 x 512 voxels (``tests/gui/large_ct.py``, the GUI benchmark's scan), both .nii.gz,
and one LGG FLAIR case.

    python benchmarks/reader_lock.py                 # the working tree's reader
    PYTHONPATH=<old checkout>/src python benchmarks/reader_lock.py --label before
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "gui"))
from _common import write_results  # noqa: E402

TICK_S = 0.005


def timed_read(path: Path) -> tuple[float, float]:
    """(seconds to read, longest gap in ms between the main thread's ticks meanwhile)."""
    from cascadeseg.io import load_volume

    return timed_in_thread(lambda: load_volume(path))


def timed_in_thread(function: Callable[[], object]) -> tuple[float, float]:
    """Run ``function`` in a thread: (its seconds, the longest gap in ms between the main thread's
    ticks meanwhile, i.e. the longest it kept the interpreter lock from the GUI thread)."""
    done = threading.Event()
    seconds: list[float] = []

    def run() -> None:
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
        done.set()

    worker = threading.Thread(target=run)
    last, longest = time.perf_counter(), 0.0
    worker.start()
    while not done.is_set():
        time.sleep(TICK_S)
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
    worker.join()
    return seconds[0], 1000 * longest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--label", default="", help="a word for the results file (e.g. 'before')")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    from large_ct import large_ct

    import cascadeseg
    from cascadeseg.io import save_volume

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        image, _ = large_ct(args.data, (600, 512, 512))
        large = save_volume(image, Path(tmp) / "ct_600x512x512.nii.gz")
        del image
        files = {
            "TotalSegmentator CT (example_ct.nii.gz)": args.data / "totalseg/example_ct.nii.gz",
            "the CT on 600 x 512 x 512 voxels (.nii.gz)": large,
            "LGG FLAIR case (256 x 256 x 36)": args.data / "lgg-flair/imagesTr/TCGA_CS_4941_19960909_0000.nii.gz",
        }
        for name, path in files.items():
            timed_read(path)  # the first read warms the page cache and imports
            runs = [timed_read(path) for _ in range(args.repeats)]
            read_s = statistics.median(r[0] for r in runs)
            gap_ms = statistics.median(r[1] for r in runs)
            worst_ms = max(r[1] for r in runs)
            rows.append({"file": name, "MB": round(path.stat().st_size / 1e6, 1), "read_s": round(read_s, 3),
                         "longest_gap_ms": round(gap_ms, 1), "worst_gap_ms": round(worst_ms, 1)})
            print(rows[-1], flush=True)
    lines = [
        f"# Reading in a worker thread: what the main thread waits ({args.label or 'current'})",
        "",
        f"`python benchmarks/reader_lock.py` with the reader of `{Path(cascadeseg.__file__).parent}`; "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average at the end "
        f"{[round(v, 2) for v in os.getloadavg()]}. Median of {args.repeats} reads after one warm-up read; "
        f"the main thread ticks every {1000 * TICK_S:.0f} ms.",
        "",
        "| file | MB on disk | read s | longest main-thread gap ms (median) | worst gap ms |",
        "|---|---:|---:|---:|---:|",
        *[f"| {r['file']} | {r['MB']} | {r['read_s']} | {r['longest_gap_ms']} | {r['worst_gap_ms']} |" for r in rows],
    ]
    name = "reader_lock" + (f"_{args.label}" if args.label else "")
    write_results(args.results, name, "\n".join(lines) + "\n", rows)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
