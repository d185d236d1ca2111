"""The CPU cores this process may run on: its affinity (a run pinned to one core has one), or the
machine's count where the platform has no affinity. The planner caps it by ``OMP_NUM_THREADS``
for torch's threads; HD95's k-d tree queries use it as it is."""

from __future__ import annotations

import os


def affinity_cores() -> int:
    """Cores this process may run on (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
