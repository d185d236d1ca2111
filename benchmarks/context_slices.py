"""One slice or 2.5D: the same one-click training with and without neighbouring slices as input.

For each seed, ``cascadeseg train DATA --minutes M --seed S`` runs twice side by side, one core
each: as planned (one slice per sample) and with ``--context-slices K`` (each slice with its K
neighbours on either side as input channels). Both runs draw the same patient split (the seed
decides it), so they are scored, paired, on the same validation patients: each run's model (the
checkpoint its plan keeps) segments every validation patient through the predictor, per-patient
3D Dice by ``cascadeseg.metrics``. Neither run trained on those patients; the runs' own
post-processing choice was made on them (the same rule for both), so read the table as a paired
comparison of the two recipes, not as an estimate for new patients.

    python benchmarks/context_slices.py --minutes 20 --seeds 11 12 --context 1

Runs that already finished under ``--out`` are scored again, not retrained. Prints a Markdown
table and writes it with a JSON of the figures under ``benchmarks/results/context_slices_*``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from _common import (
    add_folder_arguments,
    paired_standard_error,
    run_model_checkpoint,
    run_pinned_jobs,
    write_results,
)

ROOT = Path(__file__).resolve().parents[1]


def train_pair(data: Path, out: Path, minutes: float, seed: int, context: int) -> dict[str, float]:
    """Both variants of one seed, side by side on two cores; wall seconds per run."""
    runs = {
        f"s{seed}_k0": [],
        f"s{seed}_k{context}": ["--context-slices", str(context)],
    }
    commands = {
        name: [sys.executable, "-m", "cascadeseg.cli.main", "train", str(data), "--minutes", str(minutes),
               "--seed", str(seed), "--threads", "1", "--processes", "1", "--run-dir", str(out / name),
               "--no-progress", *extra]
        for name, extra in runs.items()
        if not (out / name / "result.json").is_file()
    }
    done = run_pinned_jobs(commands, lambda name: out / f"{name}.log", 2)
    return {name: job.wall_seconds for name, job in done.items()}


def score_run(run: Path, data: Path) -> dict[str, float]:
    """The run's model on each of its validation patients, through the predictor."""
    import torch

    from cascadeseg.inference.predictor import Predictor
    from cascadeseg.io import load_labels, load_volume
    from cascadeseg.metrics import case_mean_dice

    torch.set_num_threads(1)
    cases = json.loads((run / "split.json").read_text())["val"]
    predictor = Predictor.from_checkpoint(run_model_checkpoint(run), device="cpu")
    foreground = [v for v in predictor.card.class_values if v != 0]
    out = {}
    for case in cases:
        image = load_volume(data / "imagesTr" / f"{case}_0000.nii.gz")
        ref = load_labels(data / "labelsTr" / f"{case}.nii.gz", reference=image)
        labels = predictor.predict(image).labels.array
        out[case] = case_mean_dice(np.asarray(labels), np.asarray(ref.array), foreground)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "lgg-flair")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 12])
    parser.add_argument("--context", type=int, default=1, help="neighbours on either side for the 2.5D runs")
    add_folder_arguments(parser, "ctx")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    rows, payload = [], {"minutes": args.minutes, "context": args.context, "seeds": {}}
    all_diffs = []
    for seed in args.seeds:
        walls = train_pair(args.data, out, args.minutes, seed, args.context)
        names = (f"s{seed}_k0", f"s{seed}_k{args.context}")
        dice = {name: score_run(out / name, args.data) for name in names}
        steps = {name: json.loads((out / name / "result.json").read_text())["steps"] for name in names}
        one, wide = (np.array([dice[n][c] for c in dice[names[0]]]) for n in names)
        diff = wide - one
        all_diffs.extend(diff.tolist())
        payload["seeds"][seed] = {"dice": dice, "steps": steps, "walls": walls}
        rows.append(
            f"| {seed} | {len(diff)} | {one.mean():.3f} ({steps[names[0]]}) | {wide.mean():.3f} ({steps[names[1]]}) | "
            f"{diff.mean():+.3f} +- {paired_standard_error(diff):.3f} | {int((diff > 0).sum())} / "
            f"{int((diff < 0).sum())} |"
        )
    d = np.array(all_diffs)
    lines = [
        f"# One slice or 2.5D (`--context-slices {args.context}`): {args.minutes:g}-minute one-click runs, one core each",
        "",
        f"`python benchmarks/context_slices.py --minutes {args.minutes:g} --seeds {' '.join(map(str, args.seeds))} "
        f"--context {args.context}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; data {args.data.name}; "
        f"load average {[round(v, 2) for v in load_before]} before, {[round(v, 2) for v in os.getloadavg()]} after.",
        "",
        "Per seed: the two runs' models on the same validation patients (paired), mean per-patient Dice "
        "(optimiser steps in brackets); difference = 2.5D - one slice, mean +- standard error; "
        "patients better / worse with 2.5D.",
        "",
        "| seed | patients | one slice | 2.5D | difference | better / worse |",
        "|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"All seeds: **{d.mean():+.3f} +- {paired_standard_error(d):.3f}** over {len(d)} paired patients.",
    ]
    write_results(args.results, "context_slices", "\n".join(lines) + "\n", payload)


if __name__ == "__main__":
    main()
