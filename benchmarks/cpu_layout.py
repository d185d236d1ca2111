"""One-click training with the CPU layout it measures, against one process using every core.

For each dataset, two runs one after the other on the whole machine, each with the same budget:
``cascadeseg train DATA --minutes N --processes 1`` (one process, a thread per core: what
one-click training did before it measured) and ``cascadeseg train DATA --minutes N`` (it measures
threads against processes and starts the faster). Prints the layout chosen, the budget kept, the
optimiser steps and samples per second, and the validation Dice of each run's model.

    python benchmarks/cpu_layout.py --minutes 5 --datasets lgg-flair hippocampus
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import add_folder_arguments, write_results  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def run(data: Path, run_dir: Path, minutes: float, extra: list[str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    cmd = [sys.executable, "-m", "cascadeseg.cli.main", "train", str(data), "--minutes", str(minutes),
           "--run-dir", str(run_dir), "--no-progress", *extra]
    started = time.perf_counter()
    log = run_dir.with_suffix(".log")
    with open(log, "w") as out:
        subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, check=True)
    wall = time.perf_counter() - started
    result = json.loads((run_dir / "result.json").read_text())
    plan = json.loads((run_dir / "plan.json").read_text())
    lines = (run_dir / "log.csv").read_text().splitlines()
    header, rows = lines[0].split(","), [dict(zip(lines[0].split(","), r.split(","))) for r in lines[1:]]
    rates = [float(r["samples_per_second"]) for r in rows if r.get("samples_per_second")]
    return {
        "layout": f"{plan['device'].get('processes', 1)} x {plan['device']['threads']}",
        "wall": wall,
        "budget": minutes * 60,
        "steps": result["steps"],
        "samples_per_second": sum(rates) / len(rates) if rates else 0.0,
        "model_dice": result["model_dice"],
        "batch": plan["choices"]["batch_size"]["value"],
        "reason": plan["choices"].get("processes", {}).get("reason", ""),
        "columns": header,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--datasets", nargs="+", default=["lgg-flair", "hippocampus"])
    add_folder_arguments(parser, "cpu_layout")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows, payload = [], {}
    for name in args.datasets:
        threads = run(DATA / name, out / f"{name}-threads-{stamp}", args.minutes, ["--processes", "1"])
        measured = run(DATA / name, out / f"{name}-measured-{stamp}", args.minutes, [])
        payload[name] = {"threads": threads, "measured": measured}
        for label, r in (("one process, a thread per core", threads), ("measured layout", measured)):
            dice = "—" if r["model_dice"] is None else f"{r['model_dice']:.3f}"
            rows.append(f"| {name} | {label} | {r['layout']} | {r['batch']} | {r['wall']:.0f} / {r['budget']:.0f} | "
                        f"{r['steps']} | {r['samples_per_second']:.1f} | {dice} |")
        ratio = measured["samples_per_second"] / max(threads["samples_per_second"], 1e-9)
        rows.append(f"| {name} | ratio | | | | {measured['steps'] / max(threads['steps'], 1):.2f}x | {ratio:.2f}x | |")
    reasons = [f"- {name}: {payload[name]['measured']['reason']}" for name in args.datasets]
    lines = [
        f"# One-click training: the measured CPU layout against one process ({args.minutes:g} minutes, "
        f"{os.cpu_count()} cores)",
        "",
        f"Made by `python benchmarks/cpu_layout.py --minutes {args.minutes:g} --datasets {' '.join(args.datasets)}` "
        f"on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; the runs one after the other on the whole machine.",
        "Layout: processes x threads each; batch: per process (the planned batch is split over processes); "
        "samples/s: all processes together, mean over epochs; Dice: validation Dice of the run's model.",
        "",
        "| data | run | layout | batch | wall s / budget s | steps | samples/s | Dice |",
        "|---|---|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "What the measurement said:",
        *reasons,
    ]
    write_results(args.results, "cpu_layout", "\n".join(lines) + "\n", payload)


if __name__ == "__main__":
    main()
