"""The sections of ``cascadeseg bench``: what is measured, model by model (see the CLI's docstring)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CascadeSegError
from .measure import PeakMemory, _progress, gflops_of, time_call

PRUNED_FAMILY = ("unet_plus_plus", "anu_net", "unet_sharp")


@dataclass(frozen=True)
class Setup:
    device: Any
    width: int
    levels: int
    min_time: float
    size3d: int
    quick: bool


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
