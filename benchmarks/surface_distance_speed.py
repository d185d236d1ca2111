"""How long HD95's nearest-boundary queries take on large masks, by k-d tree settings.

The Compare view scores every depth against the ground truth with ``cascadeseg.metrics``; on the
GUI benchmark's scan (the real TotalSegmentator CT resampled onto 200 x 512 x 512 voxels,
``tests/gui/large_ct.py``) the masks' surfaces hold hundreds of thousands to millions of voxels,
and HD95 took most of Compare's time. This times both directed nearest-boundary queries of one HD95
(the shipped LGG ANU-Net's mask at L4 against the CT's organ map) with SciPy's default k-d tree,
with an unbalanced, uncompacted tree, and with that tree queried by one worker per core (what
``cascadeseg.metrics.surface`` does); it checks that all give the same distances. Median of
``--repeats``.

    python benchmarks/surface_distance_speed.py
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "gui"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import write_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--slices", type=int, default=200, help="slices of the 512 x 512 CT")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    from large_ct import large_ct
    from scipy.spatial import cKDTree

    from cascadeseg.inference.checkpoint import load_checkpoint, resolve_checkpoint
    from cascadeseg.inference.predictor import Predictor
    from cascadeseg.metrics.surface import _boundary, _union_box, surface_distances

    image, organs = large_ct(args.data, (args.slices, 512, 512))
    model, card = load_checkpoint(resolve_checkpoint("lgg_flair_anu_net_2d"))
    pred = Predictor(model, card).predict(image, depth=4).labels.array > 0
    ref = np.asarray(organs.array) > 0
    spacing = np.asarray(organs.spacing)
    box = _union_box(pred, ref)
    pred_points = np.argwhere(_boundary(pred[box])) * spacing
    ref_points = np.argwhere(_boundary(ref[box])) * spacing

    def scipy_tree(**tree_options: object) -> tuple[np.ndarray, np.ndarray]:
        def query(points: np.ndarray, queries: np.ndarray) -> np.ndarray:
            return cKDTree(points, **tree_options).query(queries)[0]

        return query(ref_points, pred_points), query(pred_points, ref_points)

    variants = {
        "SciPy defaults (before)": scipy_tree,
        "unbalanced, uncompacted tree, one worker": lambda: scipy_tree(balanced_tree=False, compact_nodes=False),
        "cascadeseg.metrics (unbalanced, a worker per core)": lambda: surface_distances(pred, ref, spacing),
    }
    reference = None
    rows = []
    for name, run in variants.items():
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            distances = run()
            seconds.append(time.perf_counter() - start)
        if reference is None:
            reference = distances
        same = all(np.allclose(a, b, rtol=0, atol=1e-9) for a, b in zip(distances, reference))
        rows.append({"variant": name, "seconds": round(statistics.median(seconds), 2), "same_distances": same})
        print(rows[-1], flush=True)
    base = rows[0]["seconds"]
    lines = [
        f"# HD95's nearest-boundary queries on a {args.slices} x 512 x 512 CT's masks",
        "",
        f"`python benchmarks/surface_distance_speed.py`; {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
        f"at the end {[round(v, 2) for v in os.getloadavg()]}. Boundary voxels: {len(pred_points):,} (the shipped "
        f"LGG ANU-Net's mask at L4) and {len(ref_points):,} (the organ map); median of {args.repeats}.",
        "",
        "| k-d tree | seconds (both directions) | speed-up | same distances |",
        "|---|---:|---:|---|",
        *[f"| {r['variant']} | {r['seconds']} | {base / r['seconds']:.1f}x | {r['same_distances']} |" for r in rows],
    ]
    write_results(args.results, "surface_distance_speed", "\n".join(lines) + "\n", rows)


if __name__ == "__main__":
    main()
