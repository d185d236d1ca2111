"""Choose a one-click training recipe: the planned run against a variant, side by side, scored on
patients neither run saw.

Two ways to pick those patients:

* ``--fold K``: the positional folder is a race's training folder (64 LGG patients for
  ``one_click_race.py --holdout 16``); it is shuffled with ``--seed`` and cut into ``--folds``
  disjoint validation folds, so the patients the race quotes are never used.
* ``--holdout-seed S``: the positional folder is the whole dataset; ``--holdout`` patients drawn
  with seed S (``benchmarks/datasets.py holdout_split``, the race's own split) are held out. A
  fresh seed gives a fresh split for a decision rule written before it is scored.

For one fold or split, the planned run and the variant run are trained side by side for
``--minutes`` on the other patients (one pinned core, one thread each: the race's conditions);
each run's model is applied with ``cascadeseg predict`` to the held-out patients, and per-patient
Dice is printed with the paired difference and its standard error. Results go to ``--out/<fold>/``
(``dice.json``, logs, predictions); ``--score DIR`` scores a folder whose two runs are
already trained. ``--pool DIR...`` pools finished folds or splits into one table
(per split and pooled paired differences) and writes it to ``--results``.

Usage (from the repository root)::

    python benchmarks/recipe_cv.py runs/race10/train_data --fold 0 --out runs/cv14 \\
        --variant --loss focal_tversky --loss-option alpha=0.3 --loss-option beta=0.7
    python benchmarks/recipe_cv.py ../shared/data/lgg-flair --holdout-seed 41 --out runs/lr \\
        --variant --lr 3e-3
    python benchmarks/recipe_cv.py --pool runs/lr/split41 runs/lr/split42 runs/lr/split43 --name lr3e-3
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
from _common import paired_standard_error, run_model_checkpoint, run_pinned_jobs, write_results
from datasets import holdout_split, link_cases
from one_click_race import predict_and_score

from cascadeseg._atomic import write_json


def fold_cases(train_folder: Path, folds: int, fold: int, seed: int) -> tuple[list[str], list[str]]:
    """(training, validation) patients of ``fold``: the folder's cases shuffled with ``seed``,
    cut into ``folds`` parts of equal size."""
    cases = sorted(p.name.removesuffix("_0000.nii.gz") for p in (train_folder / "imagesTr").glob("*_0000.nii.gz"))
    if not cases:
        raise SystemExit(f"{train_folder}: no imagesTr/*_0000.nii.gz cases")
    order = cases[:]
    random.Random(seed).shuffle(order)
    size = len(order) // folds
    validation = sorted(order[size * fold : size * (fold + 1)])
    return [c for c in cases if c not in validation], validation


def pooled_table(folders: list[Path]) -> tuple[str, dict]:
    """Markdown of finished folds or splits (each ``dice.json`` with ``planned`` and ``variant``):
    per folder and pooled, the means, minima and the paired variant - planned difference."""
    variant_line = ""
    rows, pooled = [], []
    for folder in folders:
        dice = json.loads((folder / "dice.json").read_text())
        meta = json.loads((folder / "val.json").read_text())
        variant_line = " ".join(meta.get("variant", []))
        cases = sorted(dice["planned"])
        diff = [dice["variant"][c] - dice["planned"][c] for c in cases]
        pooled += diff
        steps = {name: meta.get(f"{name}_steps", "?") for name in ("planned", "variant")}
        rows.append(
            f"| {folder.name} | {np.mean([dice['planned'][c] for c in cases]):.3f} / "
            f"{min(dice['planned'].values()):.3f} | {np.mean([dice['variant'][c] for c in cases]):.3f} / "
            f"{min(dice['variant'].values()):.3f} | {np.mean(diff):+.3f} +- {paired_standard_error(diff):.3f} | "
            f"{sum(d > 0 for d in diff)} of {len(diff)} | {steps['planned']} / {steps['variant']} |"
        )
    se = paired_standard_error(pooled)
    lines = [
        f"# Recipe check: planned run against `{variant_line}`",
        "",
        "| fold or split | planned: mean / min | variant: mean / min | variant - planned (paired SE) | variant better on | steps (planned / variant) |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        f"| pooled, {len(pooled)} patients | | | **{np.mean(pooled):+.4f} +- {se:.4f}** | "
        f"{sum(d > 0 for d in pooled)} of {len(pooled)} | |",
        "",
    ]
    return "\n".join(lines), {"folders": [str(f) for f in folders], "pooled_mean": float(np.mean(pooled)),
                              "pooled_se": se, "differences": pooled}


def score_runs(fold: Path, data: Path, validation: list[str], meta: dict) -> dict[str, dict[str, float]]:
    """Apply the kept model of ``fold/planned`` and ``fold/variant`` to the held-out patients with
    ``cascadeseg predict``, score them, and write ``dice.json`` and ``val.json`` (with the step counts)."""
    dice = {}
    for name in ("planned", "variant"):
        dice[name] = predict_and_score(run_model_checkpoint(fold / name), data, validation, fold / f"{name}_pred")
        log = (fold / name / "log.csv").read_text().strip().splitlines()
        meta[f"{name}_steps"] = int(log[-1].split(",")[1])
    write_json(fold / "val.json", meta)
    write_json(fold / "dice.json", dice)
    print(f"{fold.name}: {len(validation)} held-out patients; variant: {' '.join(meta.get('variant', []))}")
    for name, values in dice.items():
        diffs = [values[c] - dice["planned"][c] for c in validation]
        print(f"{name:8s} mean {np.mean(list(values.values())):.3f} median {np.median(list(values.values())):.3f} "
              f"min {min(values.values()):.3f} | vs planned {np.mean(diffs):+.3f} ± {paired_standard_error(diffs):.3f}")
    return dice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, nargs="?",
                        help="a race's training folder (--fold) or the whole dataset (--holdout-seed)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/lgg-flair"),
                        help="the dataset the folder links to (its labels are scored)")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--fold", type=int)
    parser.add_argument("--seed", type=int, default=101, help="seed of the shuffle into folds")
    parser.add_argument("--holdout-seed", type=int, help="hold out --holdout patients of the dataset with this seed")
    parser.add_argument("--holdout", type=int, default=16)
    parser.add_argument("--minutes", default="20")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--pool", type=Path, nargs="+", help="finished fold or split folders to pool")
    parser.add_argument("--score", type=Path,
                        help="only score this fold or split folder, whose planned/ and variant/ runs are trained")
    parser.add_argument("--name", default="variant", help="--pool: the results file's name")
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--variant", nargs=argparse.REMAINDER,
                        help="cascadeseg train options of the variant (the rest of the command line)")
    args = parser.parse_args()
    if args.pool:
        markdown, payload = pooled_table(args.pool)
        write_results(args.results, f"recipe_cv_{args.name}", markdown, payload)
        return
    if args.score:  # the held-out patients and the variant were recorded before training
        meta = json.loads((args.score / "val.json").read_text())
        score_runs(args.score, args.data, meta["val"], meta)
        return
    if args.folder is None or args.out is None or args.variant is None or (args.fold is None) == (args.holdout_seed is None):
        parser.error("give FOLDER, --out, --variant and exactly one of --fold and --holdout-seed (or --pool)")
    if args.holdout_seed is not None:
        fold = args.out / f"split{args.holdout_seed}"
        train_data, validation = holdout_split(args.folder, args.holdout, args.holdout_seed, fold)
        meta: dict = {"holdout_seed": args.holdout_seed, "val": validation}
    else:
        training, validation = fold_cases(args.folder, args.folds, args.fold, args.seed)
        fold = args.out / f"fold{args.fold}"
        from cascadeseg.io import load_dataset

        train_data = fold / "train_data"
        link_cases([ref for ref in load_dataset(args.folder) if ref.case_id in training], train_data)
        meta = {"seed": args.seed, "folds": args.folds, "fold": args.fold, "val": validation}
    meta["variant"] = list(args.variant)
    write_json(fold / "val.json", meta)  # so that --score can finish an interrupted fold
    runs = {"planned": [], "variant": list(args.variant)}
    commands = {
        name: [sys.executable, "-m", "cascadeseg.cli.main", "train", str(train_data), "--minutes", args.minutes,
               "--run-dir", str(fold / name), "--no-progress", "--seed", "0", *extra]
        for name, extra in runs.items()
    }
    run_pinned_jobs(commands, lambda name: fold / f"{name}.log", 2)
    score_runs(fold, args.data, validation, meta)


if __name__ == "__main__":
    main()
