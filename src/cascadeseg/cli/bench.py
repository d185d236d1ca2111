"""``cascadeseg bench``: inference speed and memory of the model zoo on this machine.

A script that reports, not a timed test. It measures, on the device it finds (or ``--device``):

1. **2D throughput**: slices/s of every model at every pruning depth, 256x256, batch 1 and 16,
   with the peak memory of the forward and the GFLOPs of one slice (PyTorch's FLOP counter on one
   real forward), so that "slices/s x GFLOPs" — the arithmetic rate each model achieves — can be
   compared with the U-Net's: an architecture far below it is slow for a reason other than its
   arithmetic.
2. **3D throughput**: patches/s at 128^3 (``--quick``: 64^3), batch 1.
3. **Peers**: MONAI ``BasicUNet`` and ``UNet`` at the same widths, run in a plain loop.
4. **Engine overhead**: ``Predictor.predict`` on a real scan against a bare batched forward of
   the same model over the same preprocessed slices (target < 15 %).
5. **End to end** on a real scan from ``../shared/data`` (load, preprocess, predict, save) for the
   U-Net, for each pruned model at depth 1 and its full depth (target depth 1 >= 5x faster), and
   for the MONAI peers in a plain loop.
6. ``--memory``: a 512x512x600 int16 CT volume segmented in 2D in a fresh process; its peak
   resident memory (target < 4 GB).

Results go to ``benchmarks/results/inference_<device>_<date>.json`` and ``.md``, stamped with the
device, torch version and thread count. On two CPU cores the paper-width run takes hours: use
``--quick`` (width 8, 3D at 64^3, shorter timing), ``--models`` and ``--widths``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ..benchmarking.measure import _progress
from ..benchmarking.memory_probe import memory_in_subprocess
from ..benchmarking.report import _load_average, _meta, write_report
from ..benchmarking.sections import (
    PRUNED_FAMILY,
    Setup,
    bench_2d,
    bench_3d,
    bench_e2e,
    bench_overhead,
    bench_peers,
    check_targets,
)
from ..errors import CascadeSegError, InputFileError
from .main import command_parser

E2E_CASE_QUICK = "TCGA_CS_4941_19960909"  # 23 slices of 256x256
E2E_CASE_FULL = "TCGA_HT_A61A_20000127"  # 88 slices of 256x256, the largest LGG volume


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = command_parser(subparsers, "bench", __doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="reduced run for slow machines: width 8, 3D at 64^3, short timing, small e2e scan",
    )
    parser.add_argument("--models", nargs="+", default=None, metavar="MODEL", help="models to run (default: all)")
    parser.add_argument(
        "--widths",
        nargs="+",
        type=int,
        default=None,
        metavar="W",
        help="base widths (default: 32, the papers'; --quick: 8)",
    )
    parser.add_argument("--levels", type=int, default=5, help="U-Net levels (default: 5, the papers')")
    parser.add_argument("--device", default="auto", help="auto, cuda, mps or cpu (default: auto)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--min-time", type=float, default=None, help="seconds each timing repeats for (default: 2, --quick: 0.5)"
    )
    parser.add_argument(
        "--skip", nargs="+", default=[], choices=("2d", "3d", "peers", "overhead", "e2e"), help="sections to leave out"
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="also segment a 512x512x600 int16 CT volume in 2D in a fresh process and report its peak memory",
    )
    parser.add_argument(
        "--memory-width", type=int, default=None, help="U-Net width for --memory (default: 32 on a GPU, 8 on the CPU)"
    )
    parser.add_argument(
        "--memory-batches",
        type=int,
        default=None,
        help="stop the --memory run after this many batches (wide networks on a CPU); "
        "the volume-sized arrays are allocated before the first batch",
    )
    parser.add_argument(
        "--data", type=Path, default=None, help="the shared data folder (default: $CASCADESEG_DATA or ../shared/data)"
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("benchmarks/results"),
        help="where the JSON and Markdown go (default: benchmarks/results)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    import torch

    from ..inference.device import resolve_device
    from ..models import model_names

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    models = args.models or model_names()
    for name in models:
        if name not in model_names():
            raise CascadeSegError(f"--models: unknown model '{name}' (expected some of: {', '.join(model_names())})")
    widths = args.widths or ([8] if args.quick else [32])
    min_time = args.min_time if args.min_time is not None else (0.5 if args.quick else 2.0)
    data = _data_root(args.data) if "e2e" not in args.skip or "overhead" not in args.skip else None
    report: dict[str, Any] = {"meta": _meta(device, args, widths)}
    for width in widths:
        setup = Setup(device, width, args.levels, min_time, 64 if args.quick else 128, args.quick)
        section = report.setdefault("widths", {}).setdefault(str(width), {})
        if "2d" not in args.skip:
            section["2d"] = [row for name in models for row in bench_2d(name, setup)]
            if "unet" in models and any(m in PRUNED_FAMILY for m in models):
                section["2d_unet_levels"] = [
                    row for k in range(2, args.levels) for row in bench_2d("unet", setup, levels=k)
                ]
        if "3d" not in args.skip:
            section["3d"] = [row for name in models for row in bench_3d(name, setup)]
        if "peers" not in args.skip:
            section["peers"] = bench_peers(setup)
        case = E2E_CASE_QUICK if args.quick else E2E_CASE_FULL
        if "overhead" not in args.skip:
            section["overhead"] = bench_overhead(setup, _lgg_image(data, case))
        if "e2e" not in args.skip:
            section["e2e"] = bench_e2e(setup, models, _lgg_image(data, case), peers="peers" not in args.skip)
        section["targets"] = check_targets(section)
        _progress(f"width {width}: done")
    if args.memory:
        report["memory_512x512x600"] = memory_in_subprocess(
            args.memory_width or (32 if device.type == "cuda" else 8), str(device), args.memory_batches
        )
    report["meta"]["load_average_at_end"] = _load_average()
    json_path, md_path = write_report(report, args.output_dir)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    return 0


def _data_root(given: Path | None) -> Path:
    root = given or (
        Path(os.environ["CASCADESEG_DATA"])
        if os.environ.get("CASCADESEG_DATA")
        else Path.cwd().parent / "shared" / "data"
    )
    if not (root / "lgg-flair").is_dir():
        raise InputFileError(
            f"--data {root}: the shared data folder with lgg-flair/ was not found "
            f"(pass --data or set CASCADESEG_DATA, or --skip e2e overhead)"
        )
    return root


def _lgg_image(root: Path | None, case: str) -> Path:
    assert root is not None
    return root / "lgg-flair" / "imagesTr" / f"{case}_0000.nii.gz"
