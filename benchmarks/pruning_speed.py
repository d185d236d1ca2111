"""Forward time per pruning depth of the nested family (UNet++, ANU-Net, UNet#) on the CPU.

Issue 3 asks that depth 1 run at least 5x faster than depth 4 at 256x256, batch 16, eval mode.
Usage (from the repository root)::

    python benchmarks/pruning_speed.py                      # paper width 32, batch 16, 256x256
    python benchmarks/pruning_speed.py --batch 4 --repeats 5 --models unet_sharp
    python benchmarks/pruning_speed.py --models anu_net anu_net:merge=sum   # a model option (JSON value)

Each repeat times depths 1..max in turn (interleaved, so a change in machine load hits every depth
alike); the table shows the fastest and the median repeat per depth and the ratio of the full
depth's time to each depth's (fastest times: the least disturbed by other processes).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from cascadeseg.models import create_model

NESTED = ["unet_plus_plus", "anu_net", "unet_sharp"]


def parse_model(spec: str) -> tuple[str, dict]:
    """``"anu_net:merge=sum,levels=5"`` -> ``("anu_net", {"merge": "sum", "levels": 5})``."""
    name, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value  # a bare word: a string option
    return name, options


def time_depths(spec: str, batch: int, size: int, repeats: int, base_width: int) -> dict[int, list[float]]:
    torch.manual_seed(0)
    name, options = parse_model(spec)
    model = create_model(name, in_channels=1, num_classes=2, dims=2, base_width=base_width, **options).eval()
    x = torch.randn(batch, 1, size, size)
    depths = list(range(1, model.max_depth + 1))
    times: dict[int, list[float]] = {k: [] for k in depths}
    with torch.inference_mode():
        for k in depths:  # warm-up: allocator and oneDNN primitive caches
            model(x, depth=k)
        for _ in range(repeats):
            for k in depths:
                start = time.perf_counter()
                model(x, depth=k)
                times[k].append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=NESTED)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--base-width", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; input {args.batch}x1x{args.size}x{args.size}, "
          f"base width {args.base_width}, eval, {args.repeats} repeats\n")
    print("| model | depth | fastest (s) | median (s) | full depth / this depth |")
    print("|---|---|---:|---:|---:|")
    for name in args.models:
        times = time_depths(name, args.batch, args.size, args.repeats, args.base_width)
        full = min(times[max(times)])
        for k, values in times.items():
            print(f"| {name} | L{k} | {min(values):.3f} | {statistics.median(values):.3f} | {full / min(values):.1f}x |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
