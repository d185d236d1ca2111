"""The worker glue turns every way a job can end into an outcome (no viewer needed)."""

from __future__ import annotations

import threading

from cascadeseg.errors import CancelledError, CheckpointError
from cascadeseg.inference.progress import Progress
from napari_cascade._qt.workers import format_progress, run_job


def test_every_ending_becomes_an_outcome() -> None:
    seen = []
    ok = run_job(lambda progress, cancel: progress(0.5) or 42, seen.append, threading.Event())
    assert ok.ok and ok.value == 42 and seen == [0.5]

    def cancelled(progress, cancel):
        raise CancelledError("prediction cancelled after 8 of 53 slices")

    assert run_job(cancelled, seen.append, threading.Event()).cancelled

    def user_error(progress, cancel):
        raise CheckpointError("/models/x: weights file model.safetensors is missing")

    outcome = run_job(user_error, seen.append, threading.Event())
    assert not outcome.ok and outcome.error == "/models/x: weights file model.safetensors is missing"

    def bug(progress, cancel):
        raise ZeroDivisionError("division by zero")

    outcome = run_job(bug, seen.append, threading.Event())
    assert outcome.error.startswith("unexpected ZeroDivisionError") and "log" in outcome.error

    # Cancel pressed after the last batch: the result is dropped as the user asked.
    event = threading.Event()
    event.set()
    assert run_job(lambda progress, cancel: 1, seen.append, event).cancelled


def test_progress_text_has_the_rate() -> None:
    assert format_progress(Progress(0.25, 8, 32, 12.34, "slices")) == "8/32 slices · 12.3 slices/s"
    assert format_progress(Progress(0.0, 0, 32, 0.0, "patches")) == "0/32 patches"
    assert format_progress(0.5) == "50%"
