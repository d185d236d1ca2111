"""What the trainer reports while it runs: per step and per epoch (the GUI plots these).

Any object with some of the methods of :class:`TrainingCallback` can be passed (a list of them
too); missing methods are simply not called. Callbacks run in the training thread: a GUI must
hand the values over to its own thread (napari's thread workers do that with ``yield``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StepInfo:
    """After each optimiser step."""

    epoch: int  # 0-based epoch the step belongs to
    step: int  # global step count (1-based)
    step_in_epoch: int  # 1-based
    steps_per_epoch: int
    loss: float
    lr: float
    samples_per_second: float
    elapsed_seconds: float
    time_left_seconds: float | None  # to the end of the budget or of the planned epochs


@dataclass
class EpochInfo:
    """After each validated epoch: the values of one row of ``log.csv``."""

    epoch: int  # 0-based
    epochs: int  # planned
    train_loss: float
    lr: float
    dice_per_depth: dict[int, float]  # mean per-patient Dice at every pruning depth
    dice_per_case: dict[str, dict[int, float]]
    recommended_depth: int
    best_dice: float
    best_epoch: int
    is_best: bool
    elapsed_seconds: float
    epoch_seconds: float
    validation_seconds: float
    samples_per_second: float
    time_left_seconds: float | None
    extra: dict[str, Any] = field(default_factory=dict)


class TrainingCallback:
    """No-op base: override what you need."""

    def on_train_start(self, info: dict[str, Any]) -> None:  # run folder, cases, model, sizes
        pass

    def on_step(self, info: StepInfo) -> None:
        pass

    def on_epoch(self, info: EpochInfo) -> None:
        pass

    def on_train_end(self, result: Any) -> None:  # the TrainResult
        pass


class FunctionCallback(TrainingCallback):
    """Callbacks from plain functions: ``FunctionCallback(on_epoch=plot.update)``."""

    def __init__(
        self,
        on_step: Callable[[StepInfo], None] | None = None,
        on_epoch: Callable[[EpochInfo], None] | None = None,
        on_train_start: Callable[[dict[str, Any]], None] | None = None,
        on_train_end: Callable[[Any], None] | None = None,
    ) -> None:
        self._fns = {
            "on_step": on_step,
            "on_epoch": on_epoch,
            "on_train_start": on_train_start,
            "on_train_end": on_train_end,
        }

    def on_step(self, info: StepInfo) -> None:
        self._call("on_step", info)

    def on_epoch(self, info: EpochInfo) -> None:
        self._call("on_epoch", info)

    def on_train_start(self, info: dict[str, Any]) -> None:
        self._call("on_train_start", info)

    def on_train_end(self, result: Any) -> None:
        self._call("on_train_end", result)

    def _call(self, name: str, value: Any) -> None:
        fn = self._fns[name]
        if fn is not None:
            fn(value)


class CallbackList:
    """Fan one event out to every callback that has a method for it."""

    def __init__(self, callbacks: Any = None) -> None:
        if callbacks is None:
            self.items: list[Any] = []
        elif isinstance(callbacks, Iterable) and not hasattr(callbacks, "on_step"):
            self.items = list(callbacks)
        else:
            self.items = [callbacks]

    def emit(self, name: str, value: Any) -> None:
        for cb in self.items:
            fn = getattr(cb, name, None)
            if fn is not None:
                fn(value)
