"""The CPU inference allocator setting: large blocks come from the reused heap inside the block,
from fresh mmaps outside it, and the system gets the memory back on leaving.

The setting is process-wide and so is what it leaves behind: after a test earlier in the same
process has run inference with it (the in-process CLI tests opt in), the heap can hold a free
chunk large enough to serve the next 96 MiB block without a fresh mmap, whatever the setting now
is. Each test therefore runs its body in a fresh interpreter (``_in_fresh_process``), where plain
glibc behaves as plain glibc.
"""

from __future__ import annotations

import ctypes
import subprocess
import sys

import numpy as np
import pytest

from cascadeseg.inference import allocator
from cascadeseg.inference.allocator import reuse_freed_memory

pytestmark = pytest.mark.skipif(not allocator.available(), reason="glibc only: elsewhere the setting is a documented no-op")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mmapped_bytes() -> int:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    return int(libc.mallinfo2().hblkhd)


def _mmapped_while_holding(nbytes: int) -> int:
    before = _mmapped_bytes()
    block = np.ones(nbytes, dtype=np.uint8)  # written, so really allocated
    during = _mmapped_bytes()
    del block
    return during - before


def _in_fresh_process(body: str) -> None:
    """Run the function ``body`` of this file in a new interpreter; its failure fails the test."""
    code = f"import runpy; runpy.run_path({__file__!r})[{body!r}]()"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_large_blocks_stay_in_the_heap_only_inside_the_block() -> None:
    _in_fresh_process("_large_blocks_stay_in_the_heap_only_inside_the_block")


def test_the_predictor_context_uses_it_on_the_cpu_only_when_the_process_opted_in() -> None:
    _in_fresh_process("_the_predictor_context_uses_it_on_the_cpu_only_when_the_process_opted_in")


def _large_blocks_stay_in_the_heap_only_inside_the_block() -> None:
    size = 96 * 2**20  # above glibc's largest mmap threshold, like a width-32 batch-16 activation
    assert _mmapped_while_holding(size) >= size  # plain glibc: a fresh mmap
    with reuse_freed_memory() as active:
        assert active
        assert _mmapped_while_holding(size) == 0
        with reuse_freed_memory():  # nested use keeps it on
            assert _mmapped_while_holding(size) == 0
        assert _mmapped_while_holding(size) == 0
    assert _mmapped_while_holding(size) >= size  # restored


def _the_predictor_context_uses_it_on_the_cpu_only_when_the_process_opted_in() -> None:
    import torch

    from cascadeseg.inference import allocator
    from cascadeseg.inference.device import inference_context

    size = 96 * 2**20
    was = allocator.enabled()
    try:
        allocator.enable(False)  # a host process (napari) that did not opt in: its allocator is left alone
        with inference_context(torch.device("cpu")):
            assert _mmapped_while_holding(size) >= size
        allocator.enable(True)  # the command line opts in
        with inference_context(torch.device("cpu")):
            assert _mmapped_while_holding(size) == 0
    finally:
        allocator.enable(was)
    with reuse_freed_memory(enabled=False) as active:
        assert not active and _mmapped_while_holding(size) >= size
