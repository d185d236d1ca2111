"""Shared fixtures: where the real data lives, and a CPU budget for tests.

The real MRI/CT sets live in ``../shared/data`` next to the clone (CI puts ``shared/`` there).
``CASCADESEG_DATA`` overrides the location. A missing data folder is an error, not a skip: tests
that prove behaviour on real scans must not silently turn green without them.
"""

from __future__ import annotations

import os
from pathlib import Path

# Before torch is imported: OpenMP threads that spin-wait make PyTorch up to ~100x slower when
# another process shares the cores (measured here on 2 busy cores); passive waiting costs nothing
# on an idle machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _data_root() -> Path:
    env = os.environ.get("CASCADESEG_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = _data_root()
    if not (root / "README.md").is_file():
        raise RuntimeError(
            f"real test data not found at {root}: clone next to shared/ or set CASCADESEG_DATA"
        )
    return root


@pytest.fixture(scope="session", autouse=True)
def _limit_threads() -> None:
    # CI has 2 cores; oversubscribing them with intra-op threads makes small tests slower.
    import torch

    torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _allocator_opt_in_restored():
    """The command line opts its process in to heap reuse (cascadeseg.inference.allocator); a
    test that calls ``main([...])`` in pytest's process must not leave every later test opted in
    (the allocator tests assume plain glibc)."""
    from cascadeseg.inference import allocator

    opted_in = allocator.enabled()
    yield
    allocator.enable(opted_in)


@pytest.fixture
def artifacts_dir() -> Path:
    """Where tests drop files a reviewer should look at (screenshots, tables)."""
    path = REPO_ROOT / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path
