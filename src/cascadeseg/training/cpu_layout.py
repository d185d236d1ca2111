"""Threads or processes on a CPU: measured on the run's own network, then started.

On a CPU, a small network gains little from more intra-op threads: in
``benchmarks/results/cpu_parallelism_*`` the 2D U-Net of a one-click LGG run trained *slower* with
two threads than with one, while two processes with one thread each, averaging their gradients
with Gloo (DDP), trained 1.4-2.2x faster than one process with two threads. Which layout wins
depends on the network, the patch and the machine, so ``cascadeseg train`` measures both before
training, on the planned network with real batches of the run's data:

- one process with a thread per core, at the planned batch ``B``;
- a process per core with one thread, each at ``ceil(B / P)`` (the same recipe: the planner splits
  the batch, :func:`.planner.per_process_batch`). Its throughput is predicted as ``P`` times one
  such process's, times :data:`PROCESS_EFFICIENCY` (the processes share memory bandwidth and
  exchange gradients).

The faster layout is used (processes only when clearly faster, and only when every process can
hold its copy of the data). Processes are started here, without ``torchrun``: each is
``cascadeseg train`` on the same planned config, in its own session so that Ctrl-C reaches them
once, through this process (the first asks them to stop and save, a second interrupts them).
The measurement and the processes' start-up count against the budget (they get the first
process's start time).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..distributed import DistContext, rank_info
from ..inference.device import release_cached_memory, resolve_device
from .callbacks import CallbackList
from .config import TrainConfig, write_json_atomic
from .planner import available_cores, available_memory_gb, per_process_batch

# Share of ``P`` x one single-thread process's samples/s that ``P`` processes reach together:
# measured 0.80 (2D U-Net), 0.83 (2D ANU-Net) and 0.93 (3D U-Net) on 2 cores
# (benchmarks/cpu_parallelism.py); the lowest is used, so processes are not chosen on hope.
PROCESS_EFFICIENCY = 0.80
# Processes must beat threads by this much to be worth a second copy of the data in memory.
MIN_GAIN = 1.10
# Below this budget the measurement (a second reading of the data) costs more than it can win.
MIN_MINUTES = 3.0
# Timed steps per layout (after one warm-up), and the most seconds one layout may take.
MEASURE_STEPS = 4
MEASURE_SECONDS = 12.0
# The processes' copies of the data and their steps must fit in this share of the free memory.
MEMORY_SHARE = 0.5
# Environment variable that hands the first process's start (``time.time()``) to the others.
STARTED_ENV = "CASCADESEG_BUDGET_STARTED"


@dataclass
class CpuLayout:
    """How a training run uses the CPU, and the measurement that chose it."""

    processes: int
    threads: int
    reason: str
    samples_per_second: dict[str, float] = field(default_factory=dict)
    measure_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def apply(self, config: TrainConfig) -> None:
        """Make ``config`` train this way (and carry the measurement into its plan)."""
        config.layout, config.processes, config.threads = self.to_dict(), self.processes, self.threads

    def describe(self) -> str:
        return f"{self.processes} process(es) x {self.threads} thread(s): {self.reason}"


def layout_needed(config: TrainConfig) -> str | None:
    """Why no measurement is needed (``None``: measure). The layout is measured only for a new
    run on a CPU with two or more cores whose processes and threads were not given."""
    if rank_info().is_distributed:
        return "already one of several processes (torchrun)"
    if config.resume:
        return "a resumed run keeps its layout"
    if resolve_device(config.device).type != "cpu":
        return "a GPU run"
    if config.processes is not None:
        return "processes given"
    if config.threads is not None:
        return "threads given"
    if available_cores() < 2:
        return "one core"
    if config.minutes is not None and config.minutes < MIN_MINUTES:
        return f"a budget under {MIN_MINUTES:g} minutes (the measurement would cost more than it wins)"
    return None


def measure_cpu_layout(config: TrainConfig, cancel: Any = None, started: float | None = None) -> CpuLayout:
    """Time real training steps of the planned network on this CPU in both layouts (see the
    module docstring) and return the faster one. Nothing is written."""
    from .trainer import Trainer

    config.validate()
    t0 = time.perf_counter()
    cores = available_cores()
    device = resolve_device(config.device)
    previous_threads = torch.get_num_threads()
    trainer = Trainer(
        config.copy(resume=False, threads=cores, processes=1),
        CallbackList(None),
        cancel,
        device,
        DistContext(),
        started,
        dry_run=True,
    )
    try:
        trainer.on_train_start(calibrate=False)
        batch = int(trainer.cfg.batch_size or 1)
        # One sample per process at least (a given batch is per process, as under torchrun); on
        # more cores than samples the processes share the cores as threads.
        processes = cores if config.batch_size is not None else min(cores, batch)
        share = batch if config.batch_size is not None else per_process_batch(batch, processes)
        each = max(1, cores // processes)
        threads_step = _step_seconds(trainer, batch, cores)
        process_step = _step_seconds(trainer, share, each) if processes > 1 else float("inf")
        data_gb = (
            sum(
                case.scan.image.nbytes + case.labels.nbytes + case.labels_full.nbytes
                for case in [*trainer.train_cases, *trainer.val_cases]
            )
            / 1024**3
        )
    finally:
        trainer.release()
        release_cached_memory(device)
        torch.set_num_threads(previous_threads)
    return choose_layout(
        cores,
        processes,
        share,
        batch / threads_step,
        share / process_step,
        data_gb,
        available_memory_gb(),
        time.perf_counter() - t0,
    )


def choose_layout(
    cores: int,
    processes: int,
    share: int,
    threads_rate: float,
    one_process_rate: float,
    data_gb: float,
    free_gb: float,
    measure_seconds: float = 0.0,
) -> CpuLayout:
    """The faster layout from measured samples/s: ``threads_rate`` of one process with a thread
    per core, ``one_process_rate`` of one process with ``cores // processes`` threads at
    ``share`` samples per step (``processes`` of them reach :data:`PROCESS_EFFICIENCY` of
    ``processes`` times that), if ``processes`` copies of ``data_gb`` fit in :data:`MEMORY_SHARE`
    of ``free_gb``."""
    each = max(1, cores // max(1, processes))
    if processes < 2:
        reason = f"a batch of {share} cannot be split over processes"
        return CpuLayout(1, cores, reason, {f"1 process x {cores} threads": threads_rate}, measure_seconds)
    process_rate = processes * one_process_rate * PROCESS_EFFICIENCY
    many = f"{processes} processes x {each} thread{'s' if each > 1 else ''}"
    rates = {f"1 process x {cores} threads": threads_rate, many: process_rate}
    measured = (
        f"measured {threads_rate:.1f} samples/s for one process with {cores} threads and "
        f"{process_rate:.1f} predicted for {many} ({share} per process per step; "
        f"{PROCESS_EFFICIENCY:.0%} of {processes} x one)"
    )
    if processes * (data_gb + 0.5) > MEMORY_SHARE * free_gb:
        reason = (
            f"{measured}; but {processes} copies of the {data_gb:.1f} GB of data do not fit in "
            f"{MEMORY_SHARE:.0%} of the {free_gb:.1f} GB free"
        )
        return CpuLayout(1, cores, reason, rates, measure_seconds)
    if process_rate >= MIN_GAIN * threads_rate:
        reason = f"{measured}: processes are {process_rate / threads_rate:.2f}x faster"
        return CpuLayout(processes, each, reason, rates, measure_seconds)
    return CpuLayout(1, cores, f"{measured}: threads are as fast or faster", rates, measure_seconds)


def _step_seconds(trainer: Any, batch: int, threads: int) -> float:
    """Median seconds of a training step on ``batch`` samples with ``threads`` threads."""
    torch.set_num_threads(threads)
    times: list[float] = []
    start = time.perf_counter()
    for i in range(MEASURE_STEPS + 1):
        images, labels = trainer.draw_batch(fresh=i == 0)
        trainer._check_cancel("while measuring threads against processes")
        t0 = time.perf_counter()
        trainer.train_step(images[:batch], labels[:batch], 0.0, 0.0)
        times.append(time.perf_counter() - t0)
        if i >= 2 and time.perf_counter() - start > MEASURE_SECONDS:
            break
    return float(np.median(times[1:]))


# ----------------------------------------------------------------------------------------------
# Starting the processes


def budget_start() -> float | None:
    """The ``time.perf_counter()`` the budget counts from, when this process was started by
    :func:`run_processes` (the first process's start); else ``None``."""
    value = os.environ.get(STARTED_ENV)
    if not value:
        return None
    return time.perf_counter() - max(0.0, time.time() - float(value))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_processes(config: TrainConfig, processes: int, started: float, extra_args: list[str] | None = None) -> int:
    """Train ``config`` as ``processes`` data-parallel processes (Gloo), each with the config's
    threads (default: an equal share of the cores); wait for them. Returns the first non-zero
    exit status (the others are stopped), else 0."""
    threads = int(config.threads or max(1, available_cores() // processes))
    cfg = config.copy(threads=threads, processes=processes)
    with tempfile.TemporaryDirectory(prefix="cascadeseg-train-") as tmp:
        path = Path(tmp) / "config.json"
        write_json_atomic(path, cfg.to_dict())
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(threads),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(_free_port()),
            "WORLD_SIZE": str(processes),
            "LOCAL_WORLD_SIZE": str(processes),
            STARTED_ENV: repr(time.time() - (time.perf_counter() - started)),
        }
        command = [
            sys.executable,
            "-m",
            "cascadeseg.cli.main",
            "train",
            "--from-config",
            str(path),
            *(extra_args or []),
        ]
        children = [
            subprocess.Popen(command, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, start_new_session=True)
            for r in range(processes)
        ]

        def forward(signum: int, frame: Any) -> None:
            for child in children:
                if child.poll() is None:
                    child.send_signal(signum)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return _wait(children)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()


CANCELLED_EXIT = 130  # what ``cascadeseg train`` returns for a cancelled run


CANCEL_GRACE_SECONDS = 30.0  # after one process stopped on Cancel, the others' time to follow


def _wait(children: list[subprocess.Popen[bytes]]) -> int:
    """Wait for every process. A cancelled one (exit 130) is waited for with the others (they
    decide to stop together and finish within a moment of each other; one still running
    ``CANCEL_GRACE_SECONDS`` later is stuck and is stopped); one that failed otherwise gets the
    others stopped after a grace period (they would wait for it at the next collective until the
    group's timeout)."""
    cancelled_at: float | None = None
    while True:
        codes = [child.poll() for child in children]
        failed = [c for c in codes if c not in (None, 0, CANCELLED_EXIT)]
        if CANCELLED_EXIT in codes and cancelled_at is None:
            cancelled_at = time.perf_counter()
        if cancelled_at is not None and time.perf_counter() - cancelled_at > CANCEL_GRACE_SECONDS:
            stuck = [r for r, c in enumerate(codes) if c is None]
            if stuck:
                print(
                    f"cascadeseg: process(es) {stuck} still running {CANCEL_GRACE_SECONDS:.0f} s after the "
                    "others stopped on Cancel; stopping them",
                    file=sys.stderr,
                )
                for r in stuck:
                    children[r].terminate()
                for child in children:
                    child.wait()
                return CANCELLED_EXIT
        if failed:
            deadline = time.perf_counter() + 5.0
            while time.perf_counter() < deadline and any(child.poll() is None for child in children):
                time.sleep(0.2)
            for child in children:
                if child.poll() is None:
                    child.terminate()
            for child in children:
                child.wait()
            return int(failed[0])
        if all(c is not None for c in codes):
            return CANCELLED_EXIT if CANCELLED_EXIT in codes else 0
        time.sleep(0.2)
