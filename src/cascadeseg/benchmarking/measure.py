"""Timing and memory of one call, on a CPU or a GPU."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any


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


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)
