"""Threads or data-parallel processes on a CPU: which trains the planner's small models fastest?

For each case (LGG 2D U-Net and ANU-Net at the planner's CPU settings, the hippocampus 3D U-Net),
the real trainer runs a fixed number of steps three ways on the cores this process may use:
one process with all cores as threads, and N processes (``torchrun`` with Gloo) with one thread
each (twice the samples per step, the same optimiser steps). Reported: training samples per
second (all processes together, steps after the first 5), and the share of a step spent
drawing and augmenting the batch (data loading must not starve the step). Validation is kept out
of the timing (one tiny validation at the end).

    python benchmarks/cpu_parallelism.py --steps 40
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import write_results  # noqa: E402

DATA = ROOT.parent / "shared" / "data"

CASES = {
    "lgg 2D unet": {"data": str(DATA / "lgg-flair"), "model": "unet"},
    "lgg 2D anu_net": {"data": str(DATA / "lgg-flair"), "model": "anu_net"},
    "hippocampus 3D unet": {"data": str(DATA / "hippocampus"), "model": "unet"},
}

WORKER = textwrap.dedent("""
    import json, os, sys, time
    import torch
    from cascadeseg.training.config import TrainConfig
    from cascadeseg.training import trainer as T

    case, steps, out, threads = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    rank = int(os.environ.get("RANK", 0))
    load = {"seconds": 0.0}

    stamps = []

    class Clock:
        def on_step(self, info):
            stamps.append((info.step, time.perf_counter()))

    # Time spent waiting for batches: wrap the DataLoader iterator.
    import torch.utils.data.dataloader as dl
    real = dl._SingleProcessDataLoaderIter.__next__

    def timed(self):
        t0 = time.perf_counter()
        item = real(self)
        load["seconds"] += time.perf_counter() - t0
        return item

    dl._SingleProcessDataLoaderIter.__next__ = timed
    config = TrainConfig(data=case["data"], model=case["model"], model_options={"base_width": 8}, run_dir=out,
                         epochs=1, steps_per_epoch=steps,
                         val_max_cases=1, threads=threads, seed=0, minutes=None)
    t0 = time.perf_counter()
    result = T.train(config, callbacks=Clock())
    if rank == 0:
        first = [t for s, t in stamps if s == 5][0]
        last_step, last = stamps[-1]
        world = int(os.environ.get("WORLD_SIZE", 1))
        plan = json.load(open(os.path.join(out, "plan.json")))["choices"]
        batch = plan["batch_size"]["value"]
        print("RESULT", json.dumps({
            "samples_per_s": (last_step - 5) * batch * world / (last - first),
            "steps_per_s": (last_step - 5) / (last - first),
            "load_share": load["seconds"] / (time.perf_counter() - t0),
            "batch": batch, "patch": plan["patch_size"]["value"], "world": world, "threads": threads,
        }))
""")


def run(case: dict, steps: int, processes: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "worker.py"
        script.write_text(WORKER)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE", "CUDA_VISIBLE_DEVICES": ""}
        args = [json.dumps(case), str(steps), str(Path(tmp) / "run"), str(threads)]
        if processes == 1:
            cmd = [sys.executable, str(script), *args]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   str(script), *args]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")][-1]
        return json.loads(line.split(" ", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load = os.getloadavg()
    lines = [
        f"# Threads or processes for CPU training ({cores} cores)",
        "",
        f"Made by `python benchmarks/cpu_parallelism.py --steps {args.steps}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average {[round(v, 2) for v in load]} at the start.",
        "",
        "| case | layout | batch per process | samples/s | optimiser steps/s | batch loading share |",
        "|---|---|---:|---:|---:|---:|",
    ]
    results = {}
    for name in args.cases:
        for processes, threads in ((1, 1), (1, cores), (cores, 1)):
            if cores == 1 and processes > 1:
                continue
            r = run(CASES[name], args.steps, processes, threads)
            results[f"{name} {processes}x{threads}"] = r
            layout = f"{processes} process{'es' if processes > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}"
            lines.append(f"| {name} | {layout} | {r['batch']} | {r['samples_per_s']:.1f} | {r['steps_per_s']:.2f} | "
                         f"{100 * r['load_share']:.1f} % |")
            print(lines[-1], flush=True)
    write_results(args.results, "cpu_parallelism", "\n".join(lines) + "\n", results)


if __name__ == "__main__":
    main()
