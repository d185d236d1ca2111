"""Would ``torch.compile`` buy a CPU training more steps? One network's optimiser step, eager and compiled.

The step is the network's share of a training step only: forward, cross-entropy, backward and an
Adam update of the planned LGG network (``unet``, width 8, channels-last) on a random batch of the
planned size (8 x 1 x 96 x 96), one thread. The trainer's sampling, augmentation and deep-supervision
losses are not in it, so a whole training step gains less than this ratio. Each variant runs in its
own process with an empty inductor cache, first step timed apart: for the compiled one it is the
cold compilation, which a budgeted run pays out of its budget.

Usage (from the repository root)::

    python benchmarks/compile_step.py                    # unet, 40 timed steps
    python benchmarks/compile_step.py --model unet_plus_plus --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import one_thread_env, write_results


def one_variant(model: str, compiled: bool, steps: int, width: int, batch: int, size: int) -> dict[str, float]:
    """Time ``steps`` optimiser steps in this process (the child's side)."""
    import time

    import torch
    import torch.nn.functional as F

    from cascadeseg.models.output import LogitsOnly
    from cascadeseg.models.registry import create_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    network = create_model(model, in_channels=1, num_classes=2, dims=2, base_width=width)
    network = network.to(memory_format=torch.channels_last)
    optimiser = torch.optim.Adam(network.parameters(), 1e-3)
    forward = LogitsOnly(network)
    if compiled:
        forward = torch.compile(forward)
    images = torch.randn(batch, 1, size, size).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 2, (batch, size, size))

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        F.cross_entropy(forward(images), labels).backward()
        optimiser.step()

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    for _ in range(5):  # warm caches and allocator
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return {"first_step_s": first, "step_s": (time.perf_counter() - start) / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="unet")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--budget-minutes", type=float, default=20.0, help="the budget the step counts are for")
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--child", choices=("eager", "compiled"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = (args.model, args.steps, args.width, args.batch, args.size)
    if args.child:
        print(json.dumps(one_variant(args.model, args.child == "compiled", *shape[1:])))
        return
    rows = {}
    for variant in ("eager", "compiled"):
        cmd = [sys.executable, __file__, "--child", variant, "--model", args.model, "--steps", str(args.steps),
               "--width", str(args.width), "--batch", str(args.batch), "--size", str(args.size)]
        with tempfile.TemporaryDirectory() as cache:  # a cold compilation, as a first run pays it
            env = {**one_thread_env(), "TORCHINDUCTOR_CACHE_DIR": cache}
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        rows[variant] = json.loads(out.strip().splitlines()[-1])
    import torch

    budget_s = 60 * args.budget_minutes
    lines = [
        f"# torch.compile for a CPU training step ({args.model}, width {args.width}, batch {args.batch} x 1 x "
        f"{args.size} x {args.size}, one thread)",
        "",
        f"`python benchmarks/compile_step.py --model {args.model} --steps {args.steps}`; {platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} cores, torch {torch.__version__}. "
        "The network's forward, loss, backward and Adam update only (no sampling or augmentation).",
        "",
        f"| variant | first step (s) | s / step (mean of {args.steps}) | steps in {args.budget_minutes:g} minutes |",
        "|---|---:|---:|---:|",
    ]
    for variant, row in rows.items():
        steps = max(0.0, budget_s - row["first_step_s"]) / row["step_s"]
        lines.append(f"| {variant} | {row['first_step_s']:.1f} | {row['step_s']:.4f} | {steps:,.0f} |")
    ratio = rows["eager"]["step_s"] / rows["compiled"]["step_s"]
    lines += ["", f"Compiled step {ratio:.2f}x as fast as eager."]
    write_results(args.results, f"compile_step_{args.model}", "\n".join(lines) + "\n", {"args": {k: str(v) for k, v in vars(args).items()}, **rows})


if __name__ == "__main__":
    main()
