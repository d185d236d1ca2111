"""Keep freed activation memory inside the process during CPU inference (glibc only).

Why: glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MiB, adapted at
run time) with a fresh ``mmap`` and gives it back with ``munmap`` when it is freed. A 2D batch
of 8-16 slices at 256x256 makes activation maps of 16-128 MiB, so every forward pass maps,
page-faults (the kernel zeroes each 4 KiB page) and unmaps hundreds of megabytes again. Models
whose arithmetic per byte is low (the nested decoders at full resolution: UNet++ / ANU-Net /
UNet# at depth 1) lose most; measured on this project's 2-core CPU, width 32, batch 16, one
thread: UNet++ depth 1 +44 %, U-Net +18 % slices/s with freed memory kept.

Inside :func:`reuse_freed_memory` the heap serves large blocks too (``M_MMAP_MAX = 0``) and is not
trimmed on every free (``M_TRIM_THRESHOLD``), so the second batch reuses the first batch's pages.
On leaving, the process is set to the values glibc's own adaptive rule converges to after large
blocks are freed (mmap threshold 32 MiB, trim threshold twice that) and ``malloc_trim(0)`` hands
the free heap back to the system, so a long napari session does not keep inference's memory.
glibc keeps no getter for these settings, hence fixed values rather than "the previous ones".

Elsewhere (macOS, Windows, musl) this is a no-op: their allocators cache large blocks already or
have other knobs. Nested use is counted; only the outermost exit restores.

Opt-in per process (:func:`enable`): leaving the block sets glibc's thresholds for the whole
process, which a host application (napari, with its own allocations) did not ask for. The command
line enables it (its process only runs the engine); the GUI leaves the host's allocator alone.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
_GLIBC_MMAP_MAX_DEFAULT = 65536
_GLIBC_DYNAMIC_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # 64-bit glibc's DEFAULT_MMAP_THRESHOLD_MAX
_NEVER_TRIM = 2**62

_lock = threading.Lock()
_active = 0
_enabled_for_process = False


def enable(value: bool = True) -> None:
    """Let inference keep freed memory in the heap in this process (the CLI calls this)."""
    global _enabled_for_process
    _enabled_for_process = bool(value)


def enabled() -> bool:
    """Whether this process opted in (:func:`enable`)."""
    return _enabled_for_process


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        _ = libc.gnu_get_libc_version  # glibc only (musl has no such symbol): AttributeError elsewhere
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _glibc()


def available() -> bool:
    """True where the setting does something (glibc)."""
    return _LIBC is not None


def _mallopt(option: int, value: int) -> bool:
    value = min(int(value), 2**31 - 1)  # mallopt takes an int
    assert _LIBC is not None  # callers check available() first
    return bool(_LIBC.mallopt(option, value))


@contextmanager
def reuse_freed_memory(enabled: bool = True) -> Iterator[bool]:
    """Within the block, large freed blocks stay in the heap for the next batch (see module doc).
    Yields whether the setting is in force."""
    global _active
    if not enabled or _LIBC is None:
        yield False
        return
    with _lock:
        if _active == 0:
            _mallopt(M_MMAP_MAX, 0)
            _mallopt(M_TRIM_THRESHOLD, _NEVER_TRIM)
        _active += 1
    try:
        yield True
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                _mallopt(M_MMAP_MAX, _GLIBC_MMAP_MAX_DEFAULT)
                _mallopt(M_MMAP_THRESHOLD, _GLIBC_DYNAMIC_MMAP_THRESHOLD_MAX)
                _mallopt(M_TRIM_THRESHOLD, 2 * _GLIBC_DYNAMIC_MMAP_THRESHOLD_MAX)
                _LIBC.malloc_trim(0)
