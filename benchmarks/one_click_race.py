"""The one-click race of issue 14: ``cascadeseg train DATA --minutes N`` against a tuned MONAI
``UNet`` (``benchmarks/monai_baseline.py``), side by side, one CPU core and N minutes each, both
scored on patients neither has seen.

The LGG set is split by patient (seeded): ``--holdout`` patients are set aside before either side
sees the data; the rest becomes the training folder both get. Ours gets nothing but the folder and
the budget. The two trainings run at the same time, each pinned to its own core
(``sched_setaffinity``) with ``OMP_NUM_THREADS=1``. Then both segment the held-out scans (ours
through ``cascadeseg predict`` with the run's model, the checkpoint its plan keeps, MONAI slice by
slice with its final weights) and both are
scored by ``cascadeseg.metrics`` (per-patient 3D Dice). Prints a table and writes it with the
per-patient values to ``benchmarks/results/one_click_race_<date>.md/.json``.

    python benchmarks/one_click_race.py --minutes 20 --holdout 16 --out runs/race
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import add_folder_arguments, one_thread_env, run_pinned_jobs, write_results  # noqa: E402


def make_split(data: Path, holdout: int, seed: int, out: Path) -> tuple[Path, list[str]]:
    from datasets import holdout_split

    return holdout_split(data, holdout, seed, out)


def score(pred_dir: Path, data: Path, cases: list[str]) -> dict[str, float]:
    from cascadeseg.io import load_labels, load_volume
    from cascadeseg.metrics import case_mean_dice

    out = {}
    for case in cases:
        ref = load_labels(data / "labelsTr" / f"{case}.nii.gz")
        pred = load_volume(pred_dir / f"{case}.nii.gz")
        pred_array = pred.array if pred.array.ndim == 3 else pred.array[0]
        out[case] = case_mean_dice(np.asarray(pred_array).astype(np.uint8), np.asarray(ref.array), [1])
    return out


def predict_and_score(model: Path, data: Path, cases: list[str], out: Path) -> dict[str, float]:
    """``model`` (a checkpoint folder) applied to ``cases`` of ``data`` by ``cascadeseg predict``
    (predictions in ``out``), per-patient Dice."""
    images = [str(data / "imagesTr" / f"{case}_0000.nii.gz") for case in cases]
    subprocess.run([sys.executable, "-m", "cascadeseg.cli.main", "predict", *images, "-o", str(out), "-c",
                    str(model), "--overwrite", "--no-progress"], check=True, capture_output=True)
    return score(out, data, cases)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "lgg-flair")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--holdout", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    add_folder_arguments(parser, "race")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    train_dir, held = make_split(args.data, args.holdout, args.seed, out)
    env = one_thread_env()
    load_before = os.getloadavg()
    runs = {
        "ours": [sys.executable, "-m", "cascadeseg.cli.main", "train", str(train_dir), "--minutes", str(args.minutes),
                 "--run-dir", str(out / "ours"), "--no-progress"],
        "monai": [sys.executable, str(ROOT / "benchmarks" / "monai_baseline.py"), "train", str(train_dir),
                  "--minutes", str(args.minutes), "--out", str(out / "monai")],
    }
    done = run_pinned_jobs(runs, lambda name: out / f"{name}.log", 2, env=env)
    walls = {name: job.wall_seconds for name, job in done.items()}
    load_after = os.getloadavg()
    images = [str(args.data / "imagesTr" / f"{c}_0000.nii.gz") for c in held]
    # Ours is the run's model (the checkpoint its plan keeps, result.json); the other checkpoint is
    # scored too, as information only: it is not what a user of `cascadeseg train` gets.
    result = json.loads((out / "ours" / "result.json").read_text())
    kept = result.get("keep", "best")
    other = "best" if kept == "last" else "last"
    for name, checkpoint in (("ours", kept), ("ours_other", other)):
        subprocess.run([sys.executable, "-m", "cascadeseg.cli.main", "predict", *images, "-o",
                        str(out / f"{name}_pred"), "-c", str(out / "ours" / checkpoint), "--overwrite"], env=env,
                       check=True)
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "monai_baseline.py"), "predict", str(out / "monai"),
                    *images, "-o", str(out / "monai_pred")], env=env, check=True)
    dice = {name: score(out / f"{name}_pred", args.data, held) for name in ("ours", "monai", "ours_other")}
    log = (out / "ours" / "log.csv").read_text().strip().splitlines()
    plan = json.loads((out / "ours" / "plan.json").read_text())
    ours_steps = int(log[-1].split(",")[1])
    monai_run = json.loads((out / "monai" / "run.json").read_text())
    rows = [
        (f"ours: `cascadeseg train DATA --minutes {args.minutes:g}`, the run's model (`{kept}`)", args.minutes * 60, walls["ours"], ours_steps,
         dice["ours"]),
        ("MONAI UNet (1.63 M, 128 px, DiceCE, batch 16), its final weights", args.minutes * 60, walls["monai"],
         monai_run["steps"], dice["monai"]),
        (f"(information) ours, its `{other}` checkpoint instead of the `{kept}` one the plan keeps", args.minutes * 60,
         walls["ours"], ours_steps, dice["ours_other"]),
    ]
    lines = [
        f"# One-click race: {args.minutes:g} minutes, one CPU core each, side by side",
        "",
        f"Made by `python benchmarks/one_click_race.py --minutes {args.minutes:g} --holdout {args.holdout} "
        f"--seed {args.seed}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average "
        f"{[round(v, 2) for v in load_before]} before, {[round(v, 2) for v in load_after]} after.",
        "",
        f"Training data: {len(list((train_dir / 'labelsTr').iterdir()))} LGG patients; scored on {len(held)} held-out "
        f"patients neither side saw (seeded patient split, seed {args.seed}), per-patient 3D Dice by "
        "`cascadeseg.metrics`, each scan on its own 256 x 256 grid.",
        "",
        "| run | budget s | wall s | steps | steps/s | Dice mean | median | min |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, budget, wall, steps, values in rows:
        v = np.array(list(values.values()))
        lines.append(f"| {name} | {budget:.0f} | {wall:.0f} | {steps} | {steps / wall:.2f} | {v.mean():.3f} | "
                     f"{np.median(v):.3f} | {v.min():.3f} |")
    margin = np.mean(list(dice["ours"].values())) - np.mean(list(dice["monai"].values()))
    lines += ["", f"Margin (ours - MONAI): **{margin:+.3f}** mean per-patient Dice.", "",
              "Our plan (`plan.json` of the run):", "", "```", _plan_text(plan), "```"]
    write_results(args.results, "one_click_race", "\n".join(lines) + "\n",
                  {"minutes": args.minutes, "walls": walls, "steps": {"ours": ours_steps, "monai": monai_run["steps"]},
                   "dice": dice, "keep": kept, "holdout": held, "plan": plan})


def _plan_text(plan: dict) -> str:
    from cascadeseg.training.planner import TrainPlan

    return TrainPlan.from_dict(plan).describe()


if __name__ == "__main__":
    main()
