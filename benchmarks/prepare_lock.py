"""How long preparing a scan for a model in a worker thread keeps every other thread waiting.

The docks' jobs run the predictor in a worker; before the network sees a slice, the scan is
preprocessed on its own grid and resampled to the card's working spacing (``prepare_scan``). This
runs that step for the shipped LGG ANU-Net (2D: in-plane resampling to its 2 mm working pixels, the slices kept)
and for the shipped CT liver model (3D: every axis resampled) on the real TotalSegmentator CT
resampled onto 600 x 512 x 512 voxels (``tests/gui/large_ct.py``, the GUI benchmark's scan), while
the main thread ticks every 5 ms; it reports the time and the longest gap between ticks (the longest
the GUI would have been frozen), median over ``--repeats``.

    python benchmarks/prepare_lock.py                 # the working tree's engine
    PYTHONPATH=<old checkout>/src python benchmarks/prepare_lock.py --label before
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "gui"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import write_results  # noqa: E402
from reader_lock import TICK_S, timed_in_thread  # noqa: E402

MODELS = ("lgg_flair_anu_net_2d", "ct_liver_unet_3d")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--label", default="", help="a word for the results file (e.g. 'before')")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    from large_ct import large_ct

    import cascadeseg
    from cascadeseg.inference import read_card
    from cascadeseg.inference.predictor import prepare_scan

    image, _ = large_ct(args.data, (600, 512, 512))
    rows = []
    for model in MODELS:
        card = read_card(ROOT / "resources" / "checkpoints" / model)
        specs = [channel.get("preprocessing") for channel in card.input_channels]
        axis = card.slice_axis if card.dims == 2 else None

        prepare = functools.partial(prepare_scan, image, specs, card.target_spacing, axis)
        shape = prepare().image.shape  # the first run warms imports and the page cache
        runs = [timed_in_thread(prepare) for _ in range(args.repeats)]
        rows.append({
            "model": model, "working grid": "x".join(map(str, shape[-3:])),
            "seconds": round(statistics.median(r[0] for r in runs), 2),
            "longest_gap_ms": round(statistics.median(r[1] for r in runs), 1),
            "worst_gap_ms": round(max(r[1] for r in runs), 1),
        })
        print(rows[-1], flush=True)
    lines = [
        f"# Preparing a 600 x 512 x 512 CT in a worker thread: what the main thread waits ({args.label or 'current'})",
        "",
        f"`python benchmarks/prepare_lock.py` with the engine of `{Path(cascadeseg.__file__).parent}`; "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average at the end "
        f"{[round(v, 2) for v in os.getloadavg()]}. Median of {args.repeats} runs after one warm-up run; "
        f"the main thread ticks every {1000 * TICK_S:.0f} ms.",
        "",
        "| model (card) | working grid | seconds | longest main-thread gap ms (median) | worst gap ms |",
        "|---|---|---:|---:|---:|",
        *[f"| {r['model']} | {r['working grid']} | {r['seconds']} | {r['longest_gap_ms']} | {r['worst_gap_ms']} |"
          for r in rows],
    ]
    name = "prepare_lock" + (f"_{args.label}" if args.label else "")
    write_results(args.results, name, "\n".join(lines) + "\n", rows)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
