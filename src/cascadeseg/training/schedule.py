"""Learning-rate schedules as pure functions of where the run stands (tested on their own)."""

from __future__ import annotations

import math


def run_progress(step: int, planned_steps: int, elapsed: float, training_seconds: float | None) -> float:
    """How far the run is, in [0, 1]: the larger of the step fraction and, with a time budget, the
    time fraction of the seconds available for training (so a time-limited run still reaches the
    end of its schedule when its budget ends, however fast the machine is)."""
    fraction = step / max(1, planned_steps)
    if training_seconds:
        fraction = max(fraction, elapsed / training_seconds)
    return min(1.0, max(0.0, fraction))


def lr_factor(
    schedule: str,
    progress: float,
    epoch: int,
    step: int,
    *,
    step_size: int = 30,
    gamma: float = 0.1,
    warmup_steps: int = 0,
    plateau_factor: float = 1.0,
) -> float:
    """The multiplier of the base learning rate.

    ``cosine``: from 1 to 0.01 over the run's progress (never 0: the last steps still learn).
    ``step``: ``gamma`` every ``step_size`` epochs. ``constant``: 1. ``plateau``: the factor a
    :class:`~cascadeseg.models.recipes.PlateauSchedule` keeps (``plateau_factor``; the trainer
    updates it after every validation). A linear warm-up over the first ``warmup_steps`` steps
    multiplies any of them.
    """
    if schedule == "cosine":
        factor = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))
    elif schedule == "step":
        factor = gamma ** (epoch // max(1, step_size))
    elif schedule == "plateau":
        factor = plateau_factor
    else:
        factor = 1.0
    if warmup_steps and step < warmup_steps:
        factor *= (step + 1) / warmup_steps
    return factor
