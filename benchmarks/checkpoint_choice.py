"""Which checkpoint a run should keep: ``best/`` against ``last/``, on patients no run saw.

For each finished ``recipe_cv.py --holdout-seed`` split (``val.json`` and the runs ``planned/``
and ``variant/``), both checkpoints of both runs are applied to the split's held-out patients
with ``cascadeseg predict`` and scored per patient (predictions under
``<split>/checkpoint_choice/``). Printed: per run, and pooled ``best/ - last/`` per patient
(paired; a split's two runs are averaged per patient first, so the standard error counts
patients). A run whose best epoch is its last scores the same twice.

Usage (from the repository root)::

    python benchmarks/recipe_cv.py ../shared/data/lgg-flair --holdout-seed 94 --minutes 5 \\
        --out runs/bn5 --variant --seed 1
    python benchmarks/checkpoint_choice.py runs/bn5/split94 runs/bn5/split95 --name lgg_5min
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from _common import paired_standard_error, write_results
from one_click_race import predict_and_score


def score_split(split: Path, data: Path) -> list[dict]:
    cases = json.loads((split / "val.json").read_text())["val"]
    rows = []
    for run in ("planned", "variant"):
        best_epoch = json.loads((split / run / "result.json").read_text()).get("best_epoch")
        steps = (split / run / "log.csv").read_text().strip().splitlines()
        dice = {
            which: predict_and_score(split / run / which, data, cases, split / "checkpoint_choice" / f"{run}_{which}")
            for which in ("best", "last")
        }
        rows.append({"split": split.name, "run": run, "cases": cases, "best_epoch": best_epoch,
                     "epochs": len(steps) - 1, **dice})
        diff = [dice["best"][c] - dice["last"][c] for c in cases]
        print(f"{split.name}/{run}: last {np.mean(list(dice['last'].values())):.3f}, best "
              f"{np.mean(list(dice['best'].values())):.3f} ({np.mean(diff):+.3f} +- {paired_standard_error(diff):.3f})",
              flush=True)
    return rows


def table(rows: list[dict]) -> tuple[str, dict]:
    lines, pooled = [], []
    for split in dict.fromkeys(r["split"] for r in rows):
        runs = [r for r in rows if r["split"] == split]
        cases = runs[0]["cases"]
        pooled += np.mean([[r["best"][c] - r["last"][c] for c in cases] for r in runs], axis=0).tolist()
        for r in runs:
            diff = [r["best"][c] - r["last"][c] for c in cases]
            lines.append(  # result.json counts epochs from 1
                f"| {split} | {r['run']} | {r['best_epoch']} of {r['epochs']} | {np.mean(list(r['last'].values())):.3f} | "
                f"{np.mean(list(r['best'].values())):.3f} | {np.mean(diff):+.3f} +- {paired_standard_error(diff):.3f} |"
            )
    se = paired_standard_error(pooled)
    text = "\n".join([
        "# Which checkpoint to keep: best/ against last/ on held-out patients",
        "",
        "| split | run | best epoch of epochs | last/ | best/ | best/ - last/ (paired SE) |",
        "|---|---|---:|---:|---:|---:|",
        *lines,
        f"| pooled, {len(pooled)} patients (a split's runs averaged per patient) | | | | | **{np.mean(pooled):+.4f} "
        f"+- {se:.4f}** ({sum(d > 0 for d in pooled)} better, {sum(d < 0 for d in pooled)} worse) |",
        "",
    ])
    return text, {"pooled_mean": float(np.mean(pooled)), "pooled_se": se, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("splits", type=Path, nargs="*", help="finished recipe_cv.py --holdout-seed split folders")
    parser.add_argument("--table-only", type=Path, help="rebuild the table from an earlier results .json")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/lgg-flair"))
    parser.add_argument("--name", default="lgg")
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    if args.table_only:
        rows = json.loads(args.table_only.read_text())["rows"]
    elif args.splits:
        rows = [row for split in args.splits for row in score_split(split, args.data)]
    else:
        parser.error("give recipe_cv.py split folders or --table-only RESULTS.json")
    markdown, payload = table(rows)
    write_results(args.results, f"checkpoint_choice_{args.name}", markdown, payload)


if __name__ == "__main__":
    main()
