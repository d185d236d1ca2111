"""One-click training on every dataset of ``../shared/data``: budget kept, speed, validation Dice.

For each dataset and budget, runs ``cascadeseg train DATA --minutes M`` with no other option
(``--pairs`` for the TotalSegmentator and BraTS-style files, which are not MSD folders), one CPU
core per run (``sched_setaffinity``, ``OMP_NUM_THREADS=1``), ``--parallel`` runs at a time, and
reports the planned budget against the measured wall time of the whole process, the optimiser
steps per second, and the run's own validation Dice (the predictor's path, its validation
patients or slice blocks). Writes ``benchmarks/results/one_click_table_<date>.md/.json``.

    python benchmarks/one_click_table.py --minutes 5 20 --parallel 2 --out runs/table

The rows are also printed as JSON lines as each run ends; ``--from-logs FILE...`` rebuilds the
table from such output (e.g. the 5- and 20-minute rows measured in separate sittings).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import JobResult, add_folder_arguments, run_pinned_jobs, write_results  # noqa: E402

DATA = ROOT.parent / "shared" / "data"

DATASETS: dict[str, list[str]] = {
    "lgg-flair": [str(DATA / "lgg-flair")],
    "tcia-btp": [str(DATA / "tcia-btp")],
    "hippocampus": [str(DATA / "hippocampus")],
    "chaos-t2": [str(DATA / "chaos-t2")],
    "lits-crop": [str(DATA / "lits-crop")],
    "totalseg-ct": ["--pairs", str(DATA / "totalseg" / "example_ct.nii.gz"),
                    str(DATA / "totalseg" / "example_seg_fast_force_split.nii.gz")],
    "totalseg-mr": ["--pairs", str(DATA / "totalseg" / "example_mr_sm.nii.gz"),
                    str(DATA / "totalseg" / "example_seg_mr.nii.gz")],
    "brats-like": ["--pairs", str(DATA / "brats-like" / "TCGA-DU-7294" / "TCGA-DU-7294_fla_bet.nii.gz"),
                   str(DATA / "brats-like" / "TCGA-DU-7294" / "simple.nii.gz")],
}



def _row(name: str, minutes: float, run: Path, wall: float, code: int) -> dict:
    row = {"dataset": name, "minutes": minutes, "budget_s": minutes * 60, "wall_s": round(wall, 1), "exit": code}
    if code != 0:
        return row
    plan = json.loads((run / "plan.json").read_text())
    choices = {k: v["value"] for k, v in plan["choices"].items()}
    with open(run / "log.csv", newline="") as fh:
        log = list(csv.DictReader(fh))
    last = log[-1]
    result = json.loads((run / "result.json").read_text())
    dice = [float(v) for k, v in last.items() if k.startswith("dice_depth") and v not in ("", None)]
    row.update({
        "dims": choices.get("dims"), "model": choices.get("model"), "init": str(choices["init_checkpoint"])
        if choices.get("init_checkpoint") else "", "target_spacing": choices.get("target_spacing"),
        "patch": choices.get("patch_size"), "batch": choices.get("batch_size"), "classes": len(choices.get("class_values", [])),
        "steps": int(last["step"]), "steps_per_s": round(int(last["step"]) / wall, 2),
        "startup_s": plan["schedule"].get("startup_seconds"), "validations": len(log),
        "validation_cases": plan["schedule"].get("validation_cases"),
        "last_dice": round(max(dice), 4) if dice else None, "best_dice": float(last["best_dice"]),
        "kept_pct": round(100 * wall / (minutes * 60), 1), "elapsed_s": result["elapsed_seconds"],
        "stopped": result["stopped"],
    })
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[5.0, 20.0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--parallel", type=int, default=2)
    add_folder_arguments(parser, "table")
    parser.add_argument("--from-logs", type=Path, nargs="+", default=None, metavar="FILE",
                        help="no runs: the table from the JSON rows this script printed before")
    args = parser.parse_args()
    if args.from_logs:
        rows = [json.loads(line) for path in args.from_logs for line in path.read_text().splitlines()
                if line.startswith("{")]
        made = (f"Rows printed by `python benchmarks/one_click_table.py` (collected from {len(args.from_logs)} "
                f"log(s) on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}): `cascadeseg train DATA --minutes M` "
                "and nothing else, one CPU core per run, two runs at a time.")
        report(rows, made, args.results)
        return
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    jobs = {f"{name}-{m:g}min": (name, m) for m in args.minutes for name in args.datasets}
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    rows = []

    def done(job: str, result: JobResult) -> None:
        name, minutes = jobs[job]
        rows.append(_row(name, minutes, out / job, result.wall_seconds, result.returncode))
        print(json.dumps(rows[-1]), flush=True)

    commands = {job: [sys.executable, "-m", "cascadeseg.cli.main", "train", *DATASETS[name], "--minutes", str(minutes),
                      "--run-dir", str(out / job), "--no-progress"] for job, (name, minutes) in jobs.items()}
    # A failed run is a row of the table (its exit status), not the end of the benchmark.
    run_pinned_jobs(commands, lambda job: out / f"{job}.log", args.parallel, check=False, on_done=done)
    made = (
        f"Made by `python benchmarks/one_click_table.py --minutes {' '.join(f'{m:g}' for m in args.minutes)} "
        f"--parallel {args.parallel}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: `cascadeseg train DATA "
        "--minutes M` and nothing else, one CPU core per run; load average "
        f"{[round(v, 2) for v in load_before]} at the start, {[round(v, 2) for v in os.getloadavg()]} at the end; "
        f"{(time.perf_counter() - t0) / 60:.0f} minutes in all."
    )
    report(rows, made, args.results)


def report(rows: list[dict], made: str, results: Path) -> None:
    rows = sorted(rows, key=lambda r: (r["minutes"], r["dataset"]))
    lines = [
        "# One-click training on every dataset: budget, speed, validation Dice",
        "",
        made,
        "",
        "`wall s` is the whole process (interpreter start-up, data loading, planning, training, validation, "
        "checkpoints, exit) timed from outside; `elapsed s` the run's own clock (from the process start to its "
        "last checkpoint, `result.json`); `kept` is wall / budget. `Dice` is the run's own last and best validation (per-case 3D Dice through "
        "the predictor, mean over the foreground classes present; its validation patients, or slice blocks of "
        "a single volume).",
        "",
        "| dataset | budget s | wall s | elapsed s | kept | D | model (init) | spacing | patch x batch | classes | steps | steps/s | "
        "start-up s | validations (cases) | last Dice | best Dice |",
        "|---|---:|---:|---:|---:|---|---|---|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        if r["exit"] != 0:
            lines.append(f"| {r['dataset']} | {r['budget_s']:.0f} | {r['wall_s']} | failed (exit {r['exit']}) |" + " |" * 12)
            continue
        model = r["model"] + (f" ({r['init']})" if r["init"] else "")
        lines.append(
            f"| {r['dataset']} | {r['budget_s']:.0f} | {r['wall_s']:.0f} | {r['elapsed_s']:.0f} | {r['kept_pct']:.0f} % | "
            f"{r['dims']}D | {model} | "
            f"{r['target_spacing']} | {r['patch']} x {r['batch']} | {r['classes']} | {r['steps']} | {r['steps_per_s']} | "
            f"{r['startup_s']} | {r['validations']} ({r['validation_cases']}) | {r['last_dice']} | {r['best_dice']:.3f} |")
    write_results(results, "one_click_table", "\n".join(lines) + "\n", rows)


if __name__ == "__main__":
    main()
