"""Ctrl-C at a random moment of a two-process CPU training (issue 14's ``--processes 2``): does it
always stop both processes, keep ``last/`` and report the run cancelled?

Each round trains a small 3D U-Net on six real hippocampus crops as two Gloo processes (the
command of ``tests/test_training_cpu_layout.py``), waits for the first ``last/``, waits a random
0-3 s more (so the signal falls on steps, validations and checkpoint writes alike) and sends SIGINT
to the command (which forwards it) or, with ``--rank0-only``, to rank 0 alone. ``--torchrun``
starts the same training under ``torchrun --nproc_per_node=2`` instead and sends SIGINT to the whole
process group, as a terminal's Ctrl-C does (torchrun then also signals its workers; its own exit
status is its own, so a round passes on ``result.json`` and ``last/``). A round hangs when the
command has not exited 30 s later (its processes are then killed). Prints a table.

    python benchmarks/ctrl_c_processes.py --rounds 30
    python benchmarks/ctrl_c_processes.py --rounds 20 --torchrun
    PYTHONPATH=/some/other/src python benchmarks/ctrl_c_processes.py --rounds 20   # another tree
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CASCADESEG_DATA", REPO.parent / "shared" / "data"))
CASES = ["hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006", "hippocampus_007",
         "hippocampus_008"]
HANG_SECONDS = 30.0


def _folder(root: Path) -> Path:
    """The six crops as an MSD folder of links."""
    source, folder = DATA / "hippocampus", root / "hippocampus6"
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
    for case in CASES:
        (folder / "imagesTr" / f"{case}_0000.nii.gz").symlink_to(source / "imagesTr" / f"{case}_0000.nii.gz")
        (folder / "labelsTr" / f"{case}.nii.gz").symlink_to(source / "labelsTr" / f"{case}.nii.gz")
    return folder


def _children(pid: int) -> dict[int, int]:
    """``{rank: process id}`` of the command's training processes (Linux ``/proc``)."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                env = dict(v.split(b"=", 1) for v in (entry / "environ").read_bytes().split(b"\0") if b"=" in v)
                found[int(env[b"RANK"])] = int(entry.name)
        except (OSError, KeyError, ValueError, IndexError):
            continue
    return found


def one_round(
    folder: Path, run: Path, rank0_only: bool, rng: random.Random, torchrun: bool = False
) -> tuple[str, float, float]:
    """(outcome, delay after ``last/``, seconds from the signal to the command's exit)."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    training = ["train", str(folder), "--model", "unet", "--base-width", "4", "--levels", "3", "--epochs", "100",
                "--steps-per-epoch", "4", "--no-auto-init", "--run-dir", str(run), "--no-progress"]
    if torchrun:
        launcher = Path(sys.executable).with_name("torchrun")
        command = [str(launcher), "--nproc_per_node=2", "-m", "cascadeseg.cli.main", *training]
    else:
        command = [sys.executable, "-m", "cascadeseg.cli.main", *training, "--processes", "2"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=torchrun)
    while not (run / "last").is_dir() and proc.poll() is None:
        time.sleep(0.2)
    children = _children(proc.pid)
    delay = rng.uniform(0.0, 3.0)
    time.sleep(delay)
    asked = time.monotonic()
    if torchrun and not rank0_only:
        os.killpg(proc.pid, signal.SIGINT)  # the terminal's Ctrl-C: every process of the group
    else:
        os.kill(children[0] if rank0_only else proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=HANG_SECONDS)
    except subprocess.TimeoutExpired:
        for pid in [*children.values(), proc.pid]:
            with contextlib.suppress(ProcessLookupError):  # already gone
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        return "hang", delay, HANG_SECONDS
    took = time.monotonic() - asked
    result = run / "result.json"
    stopped = json.loads(result.read_text())["stopped"] if result.exists() else "no result.json"
    workers_gone = all(not Path(f"/proc/{pid}").exists() for pid in children.values())
    exit_ok = workers_gone if torchrun else proc.returncode == 130
    ok = exit_ok and stopped == "cancelled" and (run / "last").is_dir()
    return ("stopped" if ok else f"rc {proc.returncode}, {stopped}"), delay, took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--rank0-only", action="store_true", help="signal rank 0 alone, not the command")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torchrun", action="store_true", help="start it with torchrun, Ctrl-C to its process group")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    outcomes: dict[str, int] = {}
    took: list[float] = []
    with tempfile.TemporaryDirectory(prefix="ctrl-c-") as tmp:
        folder = _folder(Path(tmp))
        print("| round | delay after last/ (s) | outcome | seconds to stop |\n|---|---|---|---|")
        for i in range(args.rounds):
            outcome, delay, seconds = one_round(folder, Path(tmp) / f"run{i}", args.rank0_only, rng, args.torchrun)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if outcome == "stopped":
                took.append(seconds)
            print(f"| {i} | {delay:.2f} | {outcome} | {seconds:.1f} |", flush=True)
    told = "rank 0 only" if args.rank0_only else "the command (forwarded to both)"
    if args.torchrun:
        told = "rank 0 only, under torchrun" if args.rank0_only else "torchrun's process group (a terminal's Ctrl-C)"
    print(f"\nSIGINT to {told}, {args.rounds} rounds: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
          + (f"; seconds to stop: median {sorted(took)[len(took) // 2]:.1f}, max {max(took):.1f}" if took else ""))


if __name__ == "__main__":
    main()
