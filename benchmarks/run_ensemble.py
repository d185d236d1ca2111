"""Averaging the class probabilities of several trained runs against each run alone, on their
shared validation patients.

The races (docs/one_click_training.md) show two runs of one recipe on one split landing 0.09 apart
on their validation patients, and the patients a run misses entirely decide its race. Whether an
average of runs (nnU-Net ensembles its five folds) evens that out is measured here before anything
is built on it: each run's model checkpoint segments the validation patients the runs share
(``split.json``'s ``val``; never held-out patients) through the real predictor with the
probabilities kept; each run alone and every average of two or more runs is the arg-max of its
(mean) probabilities, with no post-processing, scored per patient by ``cascadeseg.metrics``.

    python benchmarks/run_ensemble.py runs/race8/train_data runs/race8/w8 runs/race8/fg0

Prints a table (mean per-patient Dice, the paired difference to the first run, patients missed
entirely) and writes it under ``benchmarks/results/run_ensemble_<stamp>.{md,json}``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import paired_standard_error, run_model_checkpoint, write_results  # noqa: E402

MISSED = 0.05  # a patient scored below this has had its lesion missed


def main() -> None:
    import torch

    from cascadeseg.inference.predictor import PredictionRequest, Predictor
    from cascadeseg.io import load_dataset
    from cascadeseg.metrics import evaluate_case, mean_dice

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="the dataset folder the runs trained and validated on")
    parser.add_argument("runs", type=Path, nargs="+", help="run folders that share their validation patients")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--tag", default="", help="a name for the results file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if len(args.runs) < 2:
        raise SystemExit("give two or more run folders")
    splits = [set(json.loads((run / "split.json").read_text())["val"]) for run in args.runs]
    cases = sorted(set.intersection(*splits))
    if not cases:
        raise SystemExit("the runs share no validation patient")
    refs = {r.case_id: r for r in load_dataset(args.data)}
    predictors = [Predictor.from_checkpoint(run_model_checkpoint(run), device="cpu") for run in args.runs]
    values = np.asarray(predictors[0].card.class_values)
    for run, predictor in zip(args.runs, predictors):
        if list(predictor.card.class_values) != list(values):
            raise SystemExit(f"{run}: classes {predictor.card.class_values} differ from {list(values)}")
    foreground = [int(v) for v in values if v != 0]
    names = [run.name for run in args.runs]
    combos = [c for k in range(2, len(names) + 1) for c in itertools.combinations(range(len(names)), k)]
    variants = names + [" + ".join(names[i] for i in combo) for combo in combos]
    dice: dict[str, dict[str, float]] = {name: {} for name in variants}
    t0 = time.perf_counter()
    for case in cases:
        image, labels = refs[case].load()
        probabilities = []
        for predictor in predictors:
            result = predictor.predict(image, want=PredictionRequest(probabilities=True))
            probabilities.append(np.asarray(result.probabilities.array, dtype=np.float32))
        for name, members in [(n, (i,)) for i, n in enumerate(names)] + list(zip(variants[len(names):], combos)):
            mean = sum(probabilities[i] for i in members) / len(members)
            predicted = values[np.argmax(mean, axis=0)]
            row = evaluate_case(predicted, labels.array, labels.spacing, classes=foreground)
            dice[name][case] = mean_dice(row, [str(k) for k in foreground])
        print(case, " ".join(f"{dice[n][case]:.3f}" for n in variants), flush=True)
    base = dice[names[0]]
    lines = [
        "# Averaging runs' probabilities against each run alone",
        "",
        f"Made by `python benchmarks/run_ensemble.py {args.data} {' '.join(map(str, args.runs))}`: the "
        f"{len(cases)} validation patients the runs share, each run's model checkpoint, arg-max without "
        f"post-processing, one thread ({time.perf_counter() - t0:.0f} s).",
        "",
        f"| model | mean Dice | median | minus {names[0]} (mean +- s.e.) | better / worse | missed (< {MISSED}) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    summary = {}
    for name in variants:
        scores = np.array([dice[name][c] for c in cases])
        diff = scores - np.array([base[c] for c in cases])
        se = paired_standard_error(diff)
        better, worse = int((diff > 0.001).sum()), int((diff < -0.001).sum())
        summary[name] = {"mean": float(scores.mean()), "median": float(np.median(scores)),
                         "diff": float(diff.mean()), "se": se, "missed": int((scores < MISSED).sum())}
        lines.append(f"| {name} | {scores.mean():.4f} | {np.median(scores):.4f} | {diff.mean():+.4f} +- {se:.4f} "
                     f"| {better} / {worse} | {summary[name]['missed']} |")
    text = "\n".join(lines) + "\n"
    payload = {"runs": [str(r) for r in args.runs], "cases": cases, "dice": dice, "summary": summary}
    write_results(args.out, f"run_ensemble{'_' + args.tag if args.tag else ''}", text, payload)


if __name__ == "__main__":
    main()
