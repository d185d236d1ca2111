"""The benchmarks' one-core job runner (``benchmarks/_common.py``): their speed figures depend on it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _common import run_pinned_jobs  # noqa: E402

# Records the cores the job may run on (None where the OS cannot pin) and when it ran, then sleeps.
JOB = (
    "import json, os, sys, time; start = time.monotonic(); time.sleep(float(sys.argv[1])); "
    "cores = sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else None; "
    "print(json.dumps({'cores': cores, 'start': start, 'end': time.monotonic()}))"
)


def test_jobs_that_run_at_the_same_time_never_share_a_core(tmp_path: Path) -> None:
    # A short first job and a long second one: the third must take the first's core, not the busy one
    # (the loops this runner replaced put it beside the second at half speed). Where the OS cannot
    # pin, the runner has one "core" (None), so no two jobs may overlap at all.
    durations = {"short": 0.3, "long": 1.5, "third": 0.3, "fourth": 0.3}
    jobs = {name: [sys.executable, "-c", JOB, str(seconds)] for name, seconds in durations.items()}
    results = run_pinned_jobs(jobs, lambda name: tmp_path / f"{name}.log", parallel=2)
    assert all(r.returncode == 0 for r in results.values())
    ran = {name: json.loads((tmp_path / f"{name}.log").read_text()) for name in jobs}
    if hasattr(os, "sched_getaffinity"):
        assert all(len(r["cores"]) == 1 for r in ran.values())
    for a in ran:
        for b in ran:
            overlap = ran[a]["start"] < ran[b]["end"] and ran[b]["start"] < ran[a]["end"]
            if a < b and overlap:
                assert ran[a]["cores"] != ran[b]["cores"], (a, b, ran)


def test_a_failed_job_stops_the_benchmark_with_its_log_or_is_reported(tmp_path: Path) -> None:
    failing = {"broken": [sys.executable, "-c", "raise SystemExit(3)"]}
    with pytest.raises(SystemExit, match=r"broken failed \(exit 3\).*broken\.log"):
        run_pinned_jobs(failing, lambda name: tmp_path / f"{name}.log")
    reported = run_pinned_jobs(failing, lambda name: tmp_path / f"{name}.log", check=False)
    assert reported["broken"].returncode == 3
