"""How much memory is available, and refusing work that cannot fit before allocating it.

Readers check the size a file's header implies and the predictor the size a prediction implies
against :func:`available_memory`, so a corrupt header claiming 10^12 voxels or a card asking for an
absurd grid ends in an :class:`~cascadeseg.errors.InsufficientMemoryError` naming the file, the
size and what would fit, in milliseconds, instead of a raw ``MemoryError`` (or the OOM killer)
after trying. Estimates are lower bounds of the real peak: a refusal is certain to be right, and
work that merely might not fit is left to try.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import InsufficientMemoryError

__all__ = ["available_memory", "format_bytes", "check_fits", "describe_shape", "array_bytes"]

_CGROUP_FILES = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),  # v1
)


def _cgroup_room() -> int | None:
    """Bytes left under this container's memory limit (None: no limit found). psutil reports the
    host's memory, but a container is killed at its own limit."""
    for limit_file, usage_file in _CGROUP_FILES:
        try:
            limit_text = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit_text == "max" or int(limit_text) >= 1 << 60:  # v1 writes a huge number for "none"
            return None
        return max(0, int(limit_text) - usage)
    return None


def available_memory() -> int:
    """Bytes a new allocation can get: free RAM plus free swap (psutil), capped by a container's
    memory limit."""
    import psutil

    room = int(psutil.virtual_memory().available) + int(psutil.swap_memory().free)
    cgroup = _cgroup_room()
    return room if cgroup is None else min(room, cgroup)


def format_bytes(count: float) -> str:
    """``1536`` -> ``'1.5 KiB'``; binary units up to EiB."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} EiB"  # pragma: no cover - the loop returns


def describe_shape(shape: Sequence[int]) -> str:
    return " x ".join(str(int(s)) for s in shape)


def check_fits(needed: float, what: str, *, per_voxel: float | None = None, remedy: str = "") -> None:
    """Raise :class:`InsufficientMemoryError` when ``needed`` bytes exceed :func:`available_memory`.

    ``what`` opens the message (it names the file and the size); with ``per_voxel`` (bytes the
    work needs per voxel) the message also says how many voxels would fit; ``remedy`` ends it.
    """
    available = available_memory()
    if needed <= available:
        return
    fits = f" (about {available / per_voxel:.3g} voxels fit)" if per_voxel else ""
    raise InsufficientMemoryError(
        f"{what} needs at least {format_bytes(needed)} of memory, but {format_bytes(available)} "
        f"are available{fits}; {remedy or 'expected data that fits in memory: crop or downsample it, or use a machine with more memory'}"
    )


def array_bytes(shape: Sequence[int], dtype: np.dtype | type | str) -> int:
    """Bytes of an array of ``shape`` and ``dtype``, as a Python int (no overflow)."""
    return math.prod(int(s) for s in shape) * np.dtype(dtype).itemsize
