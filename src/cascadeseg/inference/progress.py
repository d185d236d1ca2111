"""Progress reports and cooperative cancellation for long engine calls.

A callback receives a :class:`Progress` after every batch; a cancel token is any object with an
``is_set()`` method (``threading.Event``, or the GUI's worker flag), polled between batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..errors import CancelledError


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` items (slices or patches, named by ``unit``); ``rate`` in items/s."""

    fraction: float
    done: int
    total: int
    rate: float
    unit: str


class CancelToken(Protocol):
    def is_set(self) -> bool: ...


ProgressCallback = Callable[[Progress], None]


class ProgressTracker:
    """Counts finished items, reports them through an optional callback and honours cancellation."""

    def __init__(
        self,
        total: int,
        unit: str,
        callback: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        what: str = "prediction",
    ) -> None:
        self.total = max(int(total), 1)
        self.unit = unit
        self.callback = callback
        self.cancel = cancel
        self.what = what
        self.done = 0
        self._start = time.perf_counter()

    def check_cancelled(self) -> None:
        """Raise :class:`CancelledError` if the user asked to stop."""
        if self.cancel is not None and self.cancel.is_set():
            raise CancelledError(f"{self.what} cancelled after {self.done} of {self.total} {self.unit}")

    def advance(self, items: int) -> None:
        self.done = min(self.done + int(items), self.total)
        if self.callback is not None:
            self.callback(Progress(self.done / self.total, self.done, self.total, self.rate, self.unit))

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    @property
    def rate(self) -> float:
        elapsed = self.elapsed
        return self.done / elapsed if elapsed > 0 else 0.0
