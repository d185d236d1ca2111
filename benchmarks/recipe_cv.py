"""Choose a one-click training recipe by cross-validation inside a race's training folder.

The patients a race quotes (its held-out set) are never used: the race's training folder (64 LGG
patients for ``one_click_race.py --holdout 16``) is shuffled with ``--seed`` and cut into
``--folds`` disjoint validation folds. For one fold, the planned run and the variant run are
trained side by side for ``--minutes`` on the other patients (one pinned core, one thread each:
the race's conditions), each run's model is applied with ``cascadeseg predict`` to the fold's
validation patients, and per-patient Dice is printed with the paired difference and its standard
error. Results go to ``--out/<fold>/`` (``dice.json``, logs, predictions).

Usage (from the repository root)::

    python benchmarks/recipe_cv.py runs/race10/train_data --fold 0 --out runs/cv14 \\
        --variant --loss focal_tversky --loss-option alpha=0.3 --loss-option beta=0.7
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
from _common import one_thread_env, paired_standard_error, pinned, run_model_checkpoint
from datasets import link_cases
from one_click_race import score


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("train_folder", type=Path, help="a race's training folder (imagesTr/, labelsTr/)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/lgg-flair"),
                        help="the dataset the folder links to (its labels are scored)")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--fold", type=int, required=True)
    parser.add_argument("--seed", type=int, default=101, help="seed of the shuffle into folds")
    parser.add_argument("--minutes", default="20")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variant", nargs=argparse.REMAINDER, required=True,
                        help="cascadeseg train options of the variant (the rest of the command line)")
    args = parser.parse_args()
    training, validation = fold_cases(args.train_folder, args.folds, args.fold, args.seed)
    fold = args.out / f"fold{args.fold}"
    from cascadeseg.io import load_dataset

    link_cases([ref for ref in load_dataset(args.train_folder) if ref.case_id in training], fold / "train_data")
    json.dump({"seed": args.seed, "folds": args.folds, "fold": args.fold, "val": validation},
              open(fold / "val.json", "w"), indent=1)
    runs = {"planned": [], "variant": list(args.variant)}
    procs = {}
    for core, (name, extra) in enumerate(runs.items()):
        cmd = [sys.executable, "-m", "cascadeseg.cli.main", "train", str(fold / "train_data"), "--minutes",
               args.minutes, "--run-dir", str(fold / name), "--no-progress", "--seed", "0", *extra]
        procs[name] = subprocess.Popen(cmd, env=one_thread_env(), preexec_fn=pinned(core),
                                       stdout=open(fold / f"{name}.log", "w"), stderr=subprocess.STDOUT)
    for name, proc in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"{name} training failed: see {fold / f'{name}.log'}")
    images = [str(args.data / "imagesTr" / f"{case}_0000.nii.gz") for case in validation]
    dice = {}
    for name in runs:
        out = fold / f"{name}_pred"
        subprocess.run([sys.executable, "-m", "cascadeseg.cli.main", "predict", *images, "-o", str(out), "-c",
                        str(run_model_checkpoint(fold / name)), "--overwrite", "--no-progress"],
                       check=True, capture_output=True)
        dice[name] = score(out, args.data, validation)
    json.dump(dice, open(fold / "dice.json", "w"), indent=1)
    print(f"fold {args.fold} of {args.folds} (seed {args.seed}): {len(training)} training, "
          f"{len(validation)} validation patients; variant: {' '.join(args.variant)}")
    for name, values in dice.items():
        diffs = [values[c] - dice["planned"][c] for c in validation]
        print(f"{name:8s} mean {np.mean(list(values.values())):.3f} median {np.median(list(values.values())):.3f} "
              f"min {min(values.values()):.3f} | vs planned {np.mean(diffs):+.3f} ± {paired_standard_error(diffs):.3f}")


if __name__ == "__main__":
    main()
