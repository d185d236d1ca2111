"""What the benchmark scripts share: one-core runs and where their tables go."""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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
    cores: list[int | None] = [*sorted(os.sched_getaffinity(0))] if hasattr(os, "sched_getaffinity") else [None]
    return cores


@dataclass(frozen=True)
class JobResult:
    wall_seconds: float
    returncode: int


def run_pinned_jobs(
    jobs: Mapping[str, Sequence[str]],
    log_path: Callable[[str], Path],
    parallel: int | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    on_done: Callable[[str, JobResult], None] | None = None,
) -> dict[str, JobResult]:
    """Runs each named command with one OpenMP thread on a core of its own, at most ``parallel``
    at a time (default: one per usable core), in the order given; its output goes to
    ``log_path(name)``. Returns each job's wall seconds and exit status; with ``check``, a failed
    job stops the benchmark with its log's path (the others get SIGTERM through :func:`pinned`).

    A finished job's core goes to the next job: the loops this replaces gave the next job
    ``cores[len(running) % len(cores)]``, which is the core still busy whenever the job on the
    first core finished first, so later jobs shared one core at half the step rate while the
    other stood idle (the few-shot folds 2-5 of stop 60)."""
    free = usable_cores()[: parallel or None]
    environment = dict(env) if env is not None else one_thread_env()
    pending = list(jobs.items())
    running: list[tuple[str, int | None, float, subprocess.Popen[bytes]]] = []
    results: dict[str, JobResult] = {}
    while pending or running:
        while pending and free:
            name, cmd = pending.pop(0)
            core = free.pop(0)
            with open(log_path(name), "w") as log:
                proc = subprocess.Popen(
                    list(cmd), env=environment, preexec_fn=pinned(core), stdout=log, stderr=subprocess.STDOUT
                )
            running.append((name, core, time.perf_counter(), proc))
        time.sleep(0.2)
        for item in list(running):
            name, core, started, proc = item
            if proc.poll() is None:
                continue
            running.remove(item)
            free.append(core)
            results[name] = JobResult(time.perf_counter() - started, proc.returncode)
            if check and proc.returncode != 0:
                raise SystemExit(f"{name} failed (exit {proc.returncode}): see {log_path(name)}")
            if on_done is not None:
                on_done(name, results[name])
    return results


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
