"""The 512x512x600 int16 CT segmented in 2D in a fresh process: its peak resident memory."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import CancelledError, CascadeSegError
from .measure import _progress


def memory_in_subprocess(width: int, device: str, batches: int | None = None) -> dict[str, Any]:
    """Run :func:`memory_probe` in a fresh interpreter (a clean peak-RSS counter) and return its report."""
    code = (
        f"import torch; torch.set_num_threads({_torch_threads()}); from cascadeseg.benchmarking.memory_probe import memory_probe; "
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
