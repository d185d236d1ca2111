"""What the benchmark scripts share: one-core runs and where their tables go."""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

_PR_SET_PDEATHSIG = 1  # prctl option: the signal this process gets when its parent dies

# A training that must keep to one core: one OpenMP thread, passive waiting, no GPU.
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "CUDA_VISIBLE_DEVICES": ""}


def one_thread_env() -> dict[str, str]:
    return {**os.environ, **ONE_THREAD_ENV}


def pinned(core: int | None) -> Callable[[], None]:
    """A ``preexec_fn`` that pins the child process to ``core`` and has the kernel stop it (SIGTERM)
    when the benchmark that started it dies (Linux; elsewhere a no-op). Without the second part, a
    killed benchmark leaves its trainings running: they compete for the cores of the next
    measurement and keep writing into run folders the next start reuses."""

    def pin() -> None:
        if core is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {core})
        if sys.platform == "linux":
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return pin


def usable_cores() -> list[int | None]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [None]


def add_folder_arguments(parser: argparse.ArgumentParser, run_name: str) -> None:
    """``--out``, the scratch folder of the runs (``runs/<run_name>`` in the repository), and
    ``--results``, where the tables go (``benchmarks/results``)."""
    root = Path(__file__).resolve().parents[1]
    parser.add_argument("--out", type=Path, default=root / "runs" / run_name)
    parser.add_argument("--results", type=Path, default=root / "benchmarks" / "results")


def write_results(folder: Path, name: str, markdown: str, payload: Any) -> tuple[Path, Path]:
    """``<folder>/<name>_<UTC stamp>.md`` and ``.json``; prints the Markdown too."""
    print(markdown)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    folder.mkdir(parents=True, exist_ok=True)
    md, js = folder / f"{name}_{stamp}.md", folder / f"{name}_{stamp}.json"
    md.write_text(markdown)
    js.write_text(json.dumps(payload, indent=2))
    return md, js


def run_model_checkpoint(run: Path) -> Path:
    """The run's model: the checkpoint ``result.json`` names (what ``cascadeseg train`` installs and
    ships), looked up inside ``run`` so that a moved run folder still resolves; ``last/`` for runs
    from before ``result.json`` named it."""
    result = json.loads((run / "result.json").read_text())
    return run / Path(result.get("model_checkpoint") or "last").name


def paired_standard_error(differences: Sequence[float]) -> float:
    """Standard error of the mean of paired per-patient differences (NaN for fewer than two)."""
    diff = np.asarray(differences, dtype=float)
    return float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
