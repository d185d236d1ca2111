"""Which device inference runs on, and the GPU-only speed settings that go with it.

``"auto"`` picks CUDA, then Apple MPS, then the CPU. Mixed precision for inference (bf16 where the
GPU supports it, else fp16) is used on GPUs only: on a CPU without bf16 hardware autocast to bf16 is
slower than fp32, and prediction is one path whose figures the cards quote, so CPU inference stays
plain fp32. (Training steps on a CPU with bf16 hardware are another matter: the planner plans them in
bf16 and times them against fp32, ``training.planner``.)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..errors import DeviceError
from .allocator import enabled as allocator_enabled
from .allocator import reuse_freed_memory

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions: the napari docks import this module for the device
# choices, and importing torch with it froze the window for 0.9 s when a dock was opened (the
# docks' warm-up worker imports torch in the background instead).

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or ``"cpu"`` into a usable device.

    Under ``torchrun`` with CUDA, ``"auto"``/``"cuda"`` pick ``cuda:$LOCAL_RANK`` so each rank uses
    its own GPU. A device that is not available fails naming what is.
    """
    import torch

    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif _mps_available():
            name = "mps"
        else:
            return torch.device("cpu")
    if name == "cuda":
        name = f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % max(torch.cuda.device_count(), 1)}"
    kind = name.split(":")[0]
    if kind not in ("cuda", "mps", "cpu"):
        raise DeviceError(f"device {device!r} is unknown (expected one of {', '.join(DEVICE_CHOICES)} or 'cuda:N')")
    if kind == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"device {device!r} was requested but CUDA is not available here "
            f"(available: {', '.join(available_devices())}); use --device auto or cpu"
        )
    if kind == "mps" and not _mps_available():
        raise DeviceError(
            f"device {device!r} was requested but Apple MPS is not available here "
            f"(available: {', '.join(available_devices())})"
        )
    try:
        resolved = torch.device(name)
    except RuntimeError as exc:
        raise DeviceError(f"device {device!r} is not a valid device name: {exc}") from exc
    if kind == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise DeviceError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return resolved


def available_devices() -> list[str]:
    """Device names usable on this machine, best first (what the GUI's device list shows)."""
    import torch

    names = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    if _mps_available():
        names.append("mps")
    names.append("cpu")
    return names


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed-precision dtype for ``device`` (``None``: run in fp32)."""
    import torch

    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return None


@contextlib.contextmanager
def inference_context(device: torch.device, mixed_precision: bool = True) -> Iterator[None]:
    """``torch.inference_mode`` plus autocast on GPUs (when ``mixed_precision``); on the CPU, in a
    process that opted in (the command line does), freed activation memory is kept for the next
    batch (:mod:`.allocator`)."""
    import torch

    dtype = autocast_dtype(device) if mixed_precision else None
    with torch.inference_mode(), reuse_freed_memory(device.type == "cpu" and allocator_enabled()):
        if dtype is None:
            yield
        else:
            with torch.autocast(device_type=device.type, dtype=dtype):
                yield


def memory_format(device: torch.device, dims: int) -> torch.memory_format:
    """Channels-last everywhere: on GPUs for tensor cores, and on the CPU because oneDNN's
    convolutions are much faster on it. Measured here (2-core x86_64, 1 thread, batch 16 at
    256x256, width 8): U-Net 1.76 -> 0.86 s, ANU-Net 11.4 -> 4.2 s (its many 1x1 attention-gate
    convolutions at full resolution were 30x slower in NCHW), UNet++ 5.8 -> 3.3 s, UNet# 6.8 -> 3.9 s;
    width 32: U-Net 11.1 -> 7.9 s, ANU-Net 46 -> 31 s; 3D patches 64x96x96: 7-15 % faster.
    Outputs are equal to the contiguous run within float rounding (max difference 1e-7)."""
    import torch

    del device  # the same choice on every device; kept in the signature for callers
    return torch.channels_last if dims == 2 else torch.channels_last_3d


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a CUDA/MPS out-of-memory error (the predictor then retries with a smaller batch)."""
    import torch

    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def release_cached_memory(device: torch.device) -> None:
    """Give cached allocator blocks back (after an OOM, or when inference ends)."""
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()
