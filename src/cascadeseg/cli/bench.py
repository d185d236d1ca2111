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
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._atomic import write_text
from ..errors import CancelledError, CascadeSegError, InputFileError
from .main import command_parser
from .markdown import markdown_table

PRUNED_FAMILY = ("unet_plus_plus", "anu_net", "unet_sharp")
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


@dataclass(frozen=True)
class Setup:
    device: Any
    width: int
    levels: int
    min_time: float
    size3d: int
    quick: bool


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


# -- timing and memory -----------------------------------------------------------------------------


def time_call(fn: Callable[[], Any], min_time: float, device: Any, min_repeats: int = 2) -> float:
    """Fastest seconds per call after one warm-up call, repeating for at least ``min_time`` s.

    The minimum, as ``timeit`` advises: on a shared machine the slower repeats measure the other
    processes, not the code."""
    import torch

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)


class PeakMemory:
    """Peak memory of a block in MiB above its start: CUDA allocator peak on a GPU; on the CPU the
    resident set size sampled every millisecond from ``/proc/self/statm`` (Linux). The timed
    block includes the warm-up call, whose allocations are the ones that reach the peak."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.peak_mib: float | None = None
        self._base: int | None = None

    def __enter__(self) -> PeakMemory:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        _return_freed_memory()
        self._base = _rss_bytes()
        self._max = self._base or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        if self._base is not None:
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self._max = max(self._max, _rss_bytes() or 0)

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mib = (torch.cuda.max_memory_allocated(self.device) - (self._base or 0)) / 2**20
            return
        if self._base is None:
            return
        self._stop.set()
        self._thread.join()
        self._max = max(self._max, _rss_bytes() or 0)
        self.peak_mib = (self._max - self._base) / 2**20


def _return_freed_memory() -> None:
    """Ask glibc to hand freed heap pages back to the OS, so the RSS baseline is live memory only
    and memory cached from an earlier model is not mistaken for headroom (no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def gflops_of(fn: Callable[[], Any]) -> float:
    """GFLOPs of one call, counted by ``torch.utils.flop_counter`` on a real run (so data-dependent
    work such as the coarse-to-fine crop is counted as it happens)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        fn()
    return counter.get_total_flops() / 1e9


# -- sections --------------------------------------------------------------------------------------


def _model(name: str, dims: int, setup: Setup, levels: int | None = None) -> Any:
    """A model in the form the Predictor runs it (batch norms folded into the convolutions,
    channels-last), so the sections measure what the engine does; feed it inputs through
    :func:`_engine_layout`."""
    from ..inference.batchnorm_folding import fold_batch_norms
    from ..inference.device import memory_format
    from ..models import create_model

    model = create_model(
        name, in_channels=1, num_classes=2, dims=dims, base_width=setup.width, levels=levels or setup.levels
    )
    folded, _ = fold_batch_norms(model, copy_model=False)
    return folded.to(setup.device, memory_format=memory_format(setup.device, dims)).eval()  # type: ignore[call-overload]


def _timed_with_memory(fn: Callable[[], Any], setup: Setup, min_repeats: int = 2) -> tuple[float, float | None]:
    """(seconds per call, peak MiB): the peak from one call of its own (which is also the
    warm-up), the time from calls without the memory sampler running, whose reads of
    ``/proc/self/statm`` every millisecond slowed large batches by up to 8 % (measured)."""
    with PeakMemory(setup.device) as memory:
        fn()
    return time_call(fn, setup.min_time, setup.device, min_repeats=min_repeats), memory.peak_mib


def _engine_layout(x: Any, setup: Setup) -> Any:
    from ..inference.device import memory_format

    return x.contiguous(memory_format=memory_format(setup.device, x.ndim - 2))


def _depths(model: Any) -> list[int | None]:
    return list(model.info.pruning_depths) or [None]


def bench_2d(name: str, setup: Setup, levels: int | None = None) -> list[dict[str, Any]]:
    """slices/s, peak memory and GFLOPs/slice at 256x256, batch 1 and 16, per pruning depth.
    ``levels``: a shallower network than the setup's (the size-matched U-Net references)."""
    import torch

    from ..inference.device import inference_context

    model = _model(name, 2, setup, levels)
    rows = []
    for depth in _depths(model):
        one = torch.randn(1, 1, 256, 256, device=setup.device)
        gflops = gflops_of(lambda: model(one, depth=depth))
        for batch in (1, 16):
            x = _engine_layout(torch.randn(batch, 1, 256, 256, device=setup.device), setup)
            with inference_context(setup.device):
                seconds, peak = _timed_with_memory(lambda: model(x, depth=depth), setup)
            rows.append(
                {
                    "model": name,
                    "depth": depth,
                    "batch": batch,
                    "levels": levels or setup.levels,
                    "slices_per_s": batch / seconds,
                    "gflops_per_slice": gflops,
                    "achieved_gflop_s": gflops * batch / seconds,
                    "peak_mib": peak,
                }
            )
            _progress(f"2d {name} depth={depth} batch={batch}: {batch / seconds:.2f} slices/s")
    return rows


def bench_3d(name: str, setup: Setup) -> list[dict[str, Any]]:
    """patches/s and peak memory at size3d^3, batch 1, per pruning depth."""
    import torch

    from ..inference.device import inference_context

    model = _model(name, 3, setup)
    rows = []
    s = setup.size3d
    x = _engine_layout(torch.randn(1, 1, s, s, s, device=setup.device), setup)
    for depth in _depths(model):
        gflops = gflops_of(lambda: model(x, depth=depth))
        with inference_context(setup.device):
            seconds, peak = _timed_with_memory(lambda: model(x, depth=depth), setup, min_repeats=1)
        rows.append(
            {
                "model": name,
                "depth": depth,
                "patch": [s, s, s],
                "patches_per_s": 1 / seconds,
                "gflops_per_patch": gflops,
                "achieved_gflop_s": gflops / seconds,
                "peak_mib": peak,
            }
        )
        _progress(f"3d {name} depth={depth}: {1 / seconds:.3f} patches/s")
    return rows


def monai_peers(width: int, levels: int) -> dict[str, Any]:
    """MONAI networks a user would pick instead, at the same widths as our U-Net and batch norm
    (the papers' norm, so the arithmetic compared is the same)."""
    from monai.networks.nets import BasicUNet, UNet

    widths = [width * 2**i for i in range(levels)]
    if levels != 5:
        raise CascadeSegError("--levels: the MONAI BasicUNet peer has 5 levels; compare at --levels 5")
    return {
        "monai.BasicUNet": BasicUNet(
            spatial_dims=2, in_channels=1, out_channels=2, features=(*widths, widths[0]), norm=("batch", {})
        ),
        "monai.UNet": UNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=2,
            channels=widths,
            strides=(2,) * (levels - 1),
            num_res_units=2,
            norm="batch",
        ),
    }


def bench_peers(setup: Setup) -> list[dict[str, Any]]:
    import torch

    rows = []
    from ..inference.allocator import reuse_freed_memory
    from ..inference.batchnorm_folding import fold_batch_norms

    # Each peer as a user runs it (a plain loop, default layout) and, for a like-for-like check of
    # the arithmetic, given the engine's own treatment: channels-last, then also batch norms
    # folded (the "same layout" target is checked against the latter, the strictest peer).
    peers = [(name, net, False, False) for name, net in monai_peers(setup.width, setup.levels).items()]
    peers += [
        (f"{name} (channels-last)", net, True, False) for name, net in monai_peers(setup.width, setup.levels).items()
    ]
    peers += [
        (f"{name} (channels-last, BN folded, heap reuse)", net, True, True)
        for name, net in monai_peers(setup.width, setup.levels).items()
    ]
    for name, net, channels_last, folded in peers:
        net = net.to(setup.device).eval()
        one = torch.randn(1, 1, 256, 256, device=setup.device)
        gflops = gflops_of(lambda: net(one))
        params = sum(p.numel() for p in net.parameters()) / 1e6
        if folded:
            net, _ = fold_batch_norms(net, copy_model=False)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        for batch in (1, 16):
            x = torch.randn(batch, 1, 256, 256, device=setup.device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            # The engine's full treatment includes keeping freed activation memory (allocator).
            with torch.inference_mode(), reuse_freed_memory(folded and setup.device.type == "cpu"):
                seconds, peak = _timed_with_memory(lambda: net(x), setup)
            rows.append(
                {
                    "model": name,
                    "batch": batch,
                    "slices_per_s": batch / seconds,
                    "params_m": params,
                    "gflops_per_slice": gflops,
                    "achieved_gflop_s": gflops * batch / seconds,
                    "peak_mib": peak,
                }
            )
            _progress(f"peer {name} batch={batch}: {batch / seconds:.2f} slices/s")
    return rows


def _card_for(name: str, setup: Setup) -> Any:
    from ..inference import ModelCard

    return ModelCard(
        architecture=name,
        model_options={
            "in_channels": 1,
            "num_classes": 2,
            "dims": 2,
            "base_width": setup.width,
            "levels": setup.levels,
        },
        dims=2,
        input_channels=[{"name": "FLAIR", "preprocessing": {"type": "mri_zscore"}}],
        classes=[{"value": 0, "name": "background"}, {"value": 1, "name": "lesion"}],
    )


def bench_overhead(setup: Setup, image_path: Path) -> dict[str, Any]:
    """Predictor.predict's network phase vs a bare batched forward over the same slices."""
    import torch

    from ..inference import Predictor
    from ..inference.device import inference_context
    from ..io import load_volume
    from ..preprocessing import apply_channel_preprocessing

    volume = load_volume(image_path)
    model = _model("unet", 2, setup)
    card = _card_for("unet", setup)
    batch = 8
    predictor = Predictor(model, card, device=setup.device, batch_size=batch)
    slices = torch.from_numpy(apply_channel_preprocessing(volume.array[0], {"type": "mri_zscore"}))[:, None]

    def bare() -> None:
        with inference_context(setup.device):
            for start in range(0, slices.shape[0], batch):
                model(_engine_layout(slices[start : start + batch].to(setup.device), setup)).logits.cpu()

    engine_times, bare_times = [], []
    for _ in range(3):  # interleaved, so drifting machine load hits both alike
        engine_times.append(predictor.predict(volume).timings["inference"])
        t0 = time.perf_counter()
        bare()
        bare_times.append(time.perf_counter() - t0)
    engine, plain = min(engine_times), min(bare_times)
    _progress(f"overhead: engine {engine:.2f} s vs bare {plain:.2f} s")
    return {
        "case": image_path.name,
        "slices": int(slices.shape[0]),
        "batch": batch,
        "engine_s": engine,
        "bare_forward_s": plain,
        "overhead": engine / plain - 1.0,
    }


def bench_e2e(setup: Setup, models: Sequence[str], image_path: Path, peers: bool = True) -> list[dict[str, Any]]:
    """Load, preprocess, predict, save a real scan: U-Net, each pruned model at L1 and its full
    depth, and (``peers``) the MONAI peers in a plain loop with the same I/O."""
    from ..inference import Predictor
    from ..io import load_volume, save_labels

    rows = []
    plans: list[tuple[str, int | None]] = []
    for name in models:
        if name == "unet":
            plans.append((name, None))
        elif name in PRUNED_FAMILY:
            plans += [(name, 1), (name, setup.levels - 1)]
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, depth) in enumerate(plans):
            predictor = Predictor(_model(name, 2, setup), _card_for(name, setup), device=setup.device)

            def pipeline() -> None:
                volume = load_volume(image_path)
                result = predictor.predict(volume, depth=depth)
                save_labels(result.labels.array, volume, Path(tmp) / f"{index}.nii.gz", overwrite=True)

            seconds = time_call(pipeline, setup.min_time, setup.device, min_repeats=1)
            rows.append({"model": name, "depth": depth, "seconds": seconds})
            _progress(f"e2e {name} depth={depth}: {seconds:.2f} s")
        for name, net in (monai_peers(setup.width, setup.levels) if peers else {}).items():
            seconds = time_call(
                lambda: _plain_loop_pipeline(
                    net.to(setup.device).eval(), image_path, Path(tmp) / "peer.nii.gz", setup.device
                ),
                setup.min_time,
                setup.device,
                min_repeats=1,
            )
            rows.append({"model": name, "depth": None, "seconds": seconds})
            _progress(f"e2e {name}: {seconds:.2f} s")
    return rows


def _plain_loop_pipeline(net: Any, image_path: Path, out: Path, device: Any, batch: int = 8) -> None:
    """What a user of a peer network writes: load, normalise, loop over slice batches, argmax, save."""
    import numpy as np
    import torch

    from ..io import load_volume, save_labels
    from ..preprocessing import apply_channel_preprocessing

    volume = load_volume(image_path)
    slices = torch.from_numpy(apply_channel_preprocessing(volume.array[0], {"type": "mri_zscore"}))[:, None]
    labels = np.empty(volume.spatial_shape, dtype=np.uint8)
    with torch.inference_mode():
        for start in range(0, slices.shape[0], batch):
            logits = net(slices[start : start + batch].to(device))
            labels[start : start + batch] = logits.argmax(1).to("cpu").numpy()
    save_labels(labels, volume, out, overwrite=True)


def check_targets(section: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, each with the measured figure and pass/fail."""
    targets: dict[str, Any] = {}
    if "overhead" in section:
        value = section["overhead"]["overhead"]
        targets["engine_overhead_below_15pct"] = {"value": value, "ok": value < 0.15}
    e2e = {(r["model"], r["depth"]): r["seconds"] for r in section.get("e2e", [])}
    for name in PRUNED_FAMILY:
        depths = sorted(d for (m, d) in e2e if m == name)
        if len(depths) >= 2:
            ratio = e2e[(name, depths[-1])] / e2e[(name, depths[0])]
            targets[f"{name}_L1_vs_L{depths[-1]}_e2e_at_least_5x"] = {"value": ratio, "ok": ratio >= 5.0}
    rows2d = section.get("2d", [])
    for batch in (1, 16):
        ours = [r for r in rows2d if r["model"] == "unet" and r["batch"] == batch]
        for peer_name, key in (
            ("monai.BasicUNet (channels-last, BN folded, heap reuse)", "same_treatment"),
            ("monai.BasicUNet (channels-last)", "same_layout"),
            ("monai.BasicUNet", "plain_loop"),
        ):
            peer = [r for r in section.get("peers", []) if r["model"] == peer_name and r["batch"] == batch]
            if ours and peer:
                ratio = ours[0]["slices_per_s"] / peer[0]["slices_per_s"]
                targets[f"unet_vs_basicunet_{key}_batch{batch}_at_least_1x"] = {"value": ratio, "ok": ratio >= 1.0}
        if ours:
            reference = ours[0]["achieved_gflop_s"]
            ratios = {
                f"{r['model']}@{r['depth'] or 'full'}": r["achieved_gflop_s"] / reference
                for r in rows2d
                if r["batch"] == batch and r["model"] != "unet"
            }
            slow = {k: v for k, v in ratios.items() if v < 1 / 1.5}
            if ratios:
                targets[f"gflop_rate_within_1.5x_of_unet_batch{batch}"] = {
                    "value": ratios,
                    "ok": not slow,
                    "below": sorted(slow),
                }
        # Context for the shallow depths: depth d of a nested model runs d + 1 levels, so its
        # like-sized reference is a U-Net of d + 1 levels (same width), not the full one.
        same_size = {
            r["levels"]: r["achieved_gflop_s"] for r in section.get("2d_unet_levels", []) if r["batch"] == batch
        }
        if ours:
            same_size[ours[0]["levels"]] = ours[0]["achieved_gflop_s"]
        matched = {
            f"{r['model']}@{r['depth'] or 'full'}": r["achieved_gflop_s"] / same_size[(r["depth"] or 0) + 1]
            for r in rows2d
            if r["batch"] == batch and r["model"] in PRUNED_FAMILY and r["depth"] and (r["depth"] + 1) in same_size
        }
        if matched and section.get("2d_unet_levels"):
            targets[f"gflop_rate_within_1.5x_of_same_levels_unet_batch{batch}"] = {
                "value": matched,
                "ok": all(v >= 1 / 1.5 for v in matched.values()),
                "informational": True,
            }
    return targets


# -- the 512x512x600 memory probe ------------------------------------------------------------------


def memory_in_subprocess(width: int, device: str, batches: int | None = None) -> dict[str, Any]:
    """Run :func:`memory_probe` in a fresh interpreter (a clean peak-RSS counter) and return its report."""
    code = (
        f"import torch; torch.set_num_threads({_torch_threads()}); from cascadeseg.cli.bench import memory_probe; "
        f"memory_probe({width}, {device!r}, stop_after_batches={batches!r})"
    )
    _progress(f"memory probe: 512x512x600 int16 CT, 2D, U-Net width {width} (fresh process)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise CascadeSegError(
            f"memory probe failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr else proc.returncode}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def memory_probe(width: int, device: str, slices: int = 600, stop_after_batches: int | None = None) -> None:
    """Segment a synthetic 512x512x``slices`` int16 CT volume in 2D and print a JSON line with
    the process's peak resident memory (``VmHWM``), which counts everything: the volume, the
    one float copy, the labels, PyTorch itself, and the label file write.

    ``stop_after_batches``: cancel after that many batches (for wide networks that would take
    hours on a CPU). The float copy and the label map are allocated before the first batch and
    every batch has the same activations, so the peak then covers all but the final file write."""
    import resource

    import numpy as np
    import torch

    from ..inference import ModelCard, Predictor
    from ..io import Volume, save_labels
    from ..models import create_model

    def maxrss_mib() -> float:
        # VmHWM is this process image's own high-water mark; ru_maxrss would also carry the
        # parent's RSS over fork+exec on Linux (the bench process that started the probe).
        try:
            with open("/proc/self/status", encoding="ascii") as handle:
                line = next(x for x in handle if x.startswith("VmHWM:"))
            return int(line.split()[1]) / 1024  # kB
        except (OSError, StopIteration, ValueError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB

    options = {"in_channels": 1, "num_classes": 2, "dims": 2, "base_width": width, "levels": 5}
    card = ModelCard(
        architecture="unet",
        model_options=options,
        dims=2,
        input_channels=[{"name": "CT", "preprocessing": {"type": "ct_window", "preset": "abdomen"}}],
        classes=[{"value": 0, "name": "background"}, {"value": 1, "name": "organ"}],
    )
    predictor = Predictor(create_model("unet", **options), card, device=device)
    start_mib = maxrss_mib()
    array = np.random.default_rng(0).integers(-1024, 1500, size=(1, slices, 512, 512), dtype=np.int16)
    volume = Volume(array, spacing=(1.0, 0.8, 0.8), modality="CT")
    t0 = time.perf_counter()
    stop = threading.Event()
    batches: list[Any] = []

    def count(progress: Any) -> None:
        batches.append(progress)
        if stop_after_batches is not None and len(batches) >= stop_after_batches:
            stop.set()

    try:
        result = predictor.predict(volume, progress=count, cancel=stop)
        with tempfile.TemporaryDirectory() as tmp:
            save_labels(result.labels.array, volume, Path(tmp) / "labels.nii.gz")
        rate, label_type = slices / result.timings["inference"], str(result.labels.array.dtype)
    except CancelledError:
        rate, label_type = batches[-1].rate, "n/a (stopped early)"
    seconds = time.perf_counter() - t0
    peak = maxrss_mib()
    print(
        json.dumps(
            {
                "shape_zyx": [slices, 512, 512],
                "dtype": "int16",
                "mode": "2d",
                "model": f"unet w{width}",
                "device": device,
                "threads": torch.get_num_threads(),
                "seconds": seconds,
                "slices_per_s": rate,
                "slices_done": batches[-1].done if batches else 0,
                "volume_mib": array.nbytes / 2**20,
                "before_volume_mib": start_mib,
                "peak_rss_mib": peak,
                "target_mib": 4096,
                "ok": peak < 4096,
                "label_dtype": label_type,
            }
        )
    )


# -- output ----------------------------------------------------------------------------------------


def _meta(device: Any, args: argparse.Namespace, widths: list[int]) -> dict[str, Any]:
    import torch

    from .. import __version__

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {
        "device": str(device),
        "device_name": name,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "project_version": __version__,
        "quick": args.quick,
        "widths": widths,
        "levels": args.levels,
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        # Other processes competing for the cores make every figure slower: recorded, not hidden.
        "load_average_at_start": _load_average(),
        "command": " ".join(["cascadeseg", *sys.argv[1:]])
        if Path(sys.argv[0]).name == "cascadeseg"
        else "cascadeseg bench (called from Python)",
    }


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # not available on this platform
        return None


def write_report(report: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """JSON + Markdown named by device and time (never replacing an earlier report)."""
    meta = report["meta"]
    tag = f"{meta['device'].replace(':', '')}_{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    json_path, md_path = folder / f"inference_{tag}.json", folder / f"inference_{tag}.md"
    write_text(json_path, json.dumps(report, indent=2) + "\n")
    write_text(md_path, render_markdown(report))
    return json_path, md_path


def _f(value: Any, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def render_markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = [
        f"# Inference benchmark — {meta['device']} ({meta['device_name']})",
        "",
        f"torch {meta['torch']}, {meta['threads']} threads, {meta['cpu_count']} CPUs, "
        f"napari-cascade {meta['project_version']}, {meta['date_utc']} UTC, "
        f"{'quick run' if meta['quick'] else 'full run'}, levels {meta['levels']}; "
        f"load average (1/5/15 min) {meta.get('load_average_at_start')} at the start, "
        f"{meta.get('load_average_at_end')} at the end.",
        "",
        f"Command: `{meta['command']}`",
        "",
    ]
    for width, section in report.get("widths", {}).items():
        if not any(section.get(k) for k in ("2d", "3d", "peers", "overhead", "e2e")):
            continue  # every section skipped (e.g. a --memory-only run)
        lines += [f"## Base width {width}", ""]
        if section.get("2d"):
            lines += [
                "### 2D, 256x256 (slices/s; GFLOP/s = slices/s x GFLOPs per slice)",
                "",
                markdown_table(
                    ("model", "depth", "batch", "slices/s", "GFLOPs/slice", "GFLOP/s", "peak MiB"),
                    [
                        (
                            r["model"],
                            r["depth"] or "full",
                            r["batch"],
                            _f(r["slices_per_s"]),
                            _f(r["gflops_per_slice"], ".3f"),
                            _f(r["achieved_gflop_s"], ".1f"),
                            _f(r["peak_mib"], ".0f"),
                        )
                        for r in section["2d"]
                    ],
                ),
                "",
            ]
        if section.get("2d_unet_levels"):
            lines += [
                "### Size-matched references: U-Net with fewer levels, 2D 256x256",
                "",
                "Depth d of UNet++ / ANU-Net / UNet# runs d + 1 resolution levels; these U-Nets are "
                "their like-sized references (the last targets row).",
                "",
                markdown_table(
                    ("model", "levels", "batch", "slices/s", "GFLOPs/slice", "GFLOP/s", "peak MiB"),
                    [
                        (
                            r["model"],
                            r["levels"],
                            r["batch"],
                            _f(r["slices_per_s"]),
                            _f(r["gflops_per_slice"], ".3f"),
                            _f(r["achieved_gflop_s"], ".1f"),
                            _f(r["peak_mib"], ".0f"),
                        )
                        for r in section["2d_unet_levels"]
                    ],
                ),
                "",
            ]
        if section.get("3d"):
            lines += [
                "### 3D patches, batch 1",
                "",
                markdown_table(
                    ("model", "depth", "patch", "patches/s", "GFLOPs/patch", "GFLOP/s", "peak MiB"),
                    [
                        (
                            r["model"],
                            r["depth"] or "full",
                            "x".join(map(str, r["patch"])),
                            _f(r["patches_per_s"], ".3f"),
                            _f(r["gflops_per_patch"], ".1f"),
                            _f(r["achieved_gflop_s"], ".1f"),
                            _f(r["peak_mib"], ".0f"),
                        )
                        for r in section["3d"]
                    ],
                ),
                "",
            ]
        if section.get("peers"):
            lines += [
                "### MONAI peers (same widths, plain loop), 2D 256x256",
                "",
                markdown_table(
                    ("model", "params M", "batch", "slices/s", "GFLOPs/slice", "GFLOP/s", "peak MiB"),
                    [
                        (
                            r["model"],
                            _f(r["params_m"], ".3f"),
                            r["batch"],
                            _f(r["slices_per_s"]),
                            _f(r["gflops_per_slice"], ".3f"),
                            _f(r["achieved_gflop_s"], ".1f"),
                            _f(r["peak_mib"], ".0f"),
                        )
                        for r in section["peers"]
                    ],
                ),
                "",
            ]
        if section.get("overhead"):
            o = section["overhead"]
            lines += [
                f"### Engine overhead: `Predictor.predict` {o['engine_s']:.3f} s vs bare batched forward "
                f"{o['bare_forward_s']:.3f} s on {o['case']} ({o['slices']} slices, batch {o['batch']}): "
                f"**{o['overhead']:+.1%}**",
                "",
            ]
        if section.get("e2e"):
            lines += [
                "### End to end on a real scan (load, preprocess, predict, save)",
                "",
                markdown_table(
                    ("model", "depth", "seconds"),
                    [(r["model"], r["depth"] or "full", _f(r["seconds"], ".3f")) for r in section["e2e"]],
                ),
                "",
            ]
        if section.get("targets"):
            rows = []
            for name, t in section["targets"].items():
                value = t["value"]
                shown = (
                    ", ".join(f"{k} {v:.2f}" for k, v in value.items()) if isinstance(value, dict) else f"{value:.3f}"
                )
                verdict = "PASS" if t["ok"] else "FAIL"
                rows.append(
                    (name, shown, f"{verdict} (context, not an issue target)" if t.get("informational") else verdict)
                )
            lines += ["### Targets", "", markdown_table(("target", "measured", "result"), rows), ""]
    if "memory_512x512x600" in report:
        m = report["memory_512x512x600"]
        partial = m.get("slices_done", m["shape_zyx"][0]) < m["shape_zyx"][0]
        lines += [
            "## 512x512x600 int16 CT in 2D (fresh process)",
            "",
            (
                f"Stopped after {m['slices_done']} slices (--memory-batches); the float copy and the label "
                f"map were allocated before the first batch, the final file write is not included. "
                if partial
                else ""
            )
            + f"{m['model']} on {m['device']}, {m['threads']} threads: {m['seconds']:.1f} s "
            f"({m['slices_per_s']:.1f} slices/s); peak resident memory **{m['peak_rss_mib']:.0f} MiB** "
            f"(volume {m['volume_mib']:.0f} MiB, process before the volume {m['before_volume_mib']:.0f} MiB; "
            f"target < 4096 MiB: {'PASS' if m['ok'] else 'FAIL'}); labels {m['label_dtype']}.",
            "",
        ]
    return "\n".join(lines)


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


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)
