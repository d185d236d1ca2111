"""What each paper trains its models with: optimiser, learning rate and its schedule, and the
schedules of its loss, as plain data and pure functions a trainer can apply.

Nothing here runs a training: :data:`PAPER_RECIPES` says, per architecture, what its paper
reports (with the sentence's section), and the schedule helpers compute a factor or a weight from
an epoch or a validation value, so a trainer can follow a paper's recipe step by step and a test
can check each value by hand.

* :func:`step_decay`: a value divided by ``1 / factor`` every ``every`` epochs down to a floor
  (CU-Net's learning rate and its auxiliary weight omega, paper 001 Sec. 3.2);
* :func:`cu_net_aux_weight`: CU-Net's omega, 0.1 divided by 10 every ten epochs down to 1e-3;
* :class:`PlateauSchedule`: multiply the learning rate by ``factor`` once the monitored value has
  not improved for ``patience`` validations (paper 000: 0.1 after 10 epochs on LiTS, 4 on BraTS
  2013, monitored on the validation loss), Keras' ``ReduceLROnPlateau`` rule without an optimiser,
  so a trainer that sets the learning rate itself can apply it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import ModelConfigError


def step_decay(epoch: int, initial: float, factor: float = 0.1, every: int = 10, floor: float = 0.0) -> float:
    """``initial * factor ** (epoch // every)``, never below ``floor`` (``epoch`` counts from 0)."""
    if epoch < 0 or every < 1 or not 0.0 < factor <= 1.0:
        raise ModelConfigError(
            f"step_decay: expected epoch >= 0, every >= 1, 0 < factor <= 1; got {epoch}, {every}, {factor}"
        )
    return max(initial * factor ** (epoch // every), floor)


CU_NET_AUX_WEIGHT = 0.1
CU_NET_AUX_FLOOR = 1e-3


def cu_net_aux_weight(epoch: int, initial: float = CU_NET_AUX_WEIGHT) -> float:
    """CU-Net's auxiliary weight omega at ``epoch`` (0-based): "set to 0.1 initially and decreased by
    a factor of 10 every ten epochs until a minimum threshold of 10^-3" (paper 001, Sec. 3.2), so
    0.1 for epochs 0-9, 0.01 for 10-19, 0.001 from 20 on."""
    return step_decay(epoch, initial, 0.1, 10, CU_NET_AUX_FLOOR)


@dataclass
class PlateauSchedule:
    """Learning-rate factor that drops by ``factor`` when the monitored value stalls.

    Call :meth:`update` once per validation with the monitored value (``mode="min"`` for a loss,
    ``"max"`` for a Dice); it returns the factor to multiply the initial learning rate by. A value
    improves on the best so far when it beats it by more than ``min_delta``. After ``patience``
    validations in a row without improvement the factor is multiplied by ``factor`` and the count
    restarts. These are the semantics of Keras' ``ReduceLROnPlateau`` (paper 000 used Keras; its
    defaults ``min_delta=1e-4``, no cooldown), which reduces after exactly ``patience`` stalled
    epochs; torch's version waits one more. The state is plain numbers (:meth:`state_dict`), so a
    resumed run continues where it stopped.
    """

    factor: float = 0.1
    patience: int = 10
    mode: str = "min"
    min_delta: float = 1e-4
    min_factor: float = 0.0
    best: float = field(default=math.nan)
    bad: int = 0
    current: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max") or not 0.0 < self.factor < 1.0 or self.patience < 1:
            raise ModelConfigError(
                f"PlateauSchedule: expected mode 'min' or 'max', 0 < factor < 1, patience >= 1; "
                f"got {self.mode!r}, {self.factor}, {self.patience}"
            )

    def _improves(self, value: float) -> bool:
        if math.isnan(self.best):
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, value: float) -> float:
        """Record one validation's monitored ``value``; the learning-rate factor from now on."""
        if self._improves(value):
            self.best, self.bad = value, 0
        else:
            self.bad += 1
            if self.bad >= self.patience:
                self.current = max(self.current * self.factor, self.min_factor)
                self.bad = 0
        return self.current

    def state_dict(self) -> dict[str, float]:
        return {"best": self.best, "bad": self.bad, "current": self.current}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.best, self.bad, self.current = float(state["best"]), int(state["bad"]), float(state["current"])


@dataclass(frozen=True)
class PaperRecipe:
    """A paper's training recipe as it reports it. ``schedule``: "plateau" (:class:`PlateauSchedule`
    with ``schedule_options``), "step" (:func:`step_decay`), "cosine" (cosine annealing over the
    epochs) or ``None`` (not reported). ``loss_schedule`` names a per-epoch loss schedule the loss
    applies itself through ``loss.set_epoch`` (CU-Net's omega). ``source``: where the paper says it."""

    optimizer: str | None
    lr: float | None
    schedule: str | None
    schedule_options: dict[str, Any] = field(default_factory=dict)
    momentum: float | None = None
    weight_decay: float | None = None
    batch_size: int | None = None
    epochs: int | None = None
    loss_schedule: str | None = None
    source: str = ""


_PAPER_000 = PaperRecipe(
    optimizer="adam",
    lr=1e-4,
    schedule="plateau",
    schedule_options={"factor": 0.1, "patience": 10, "mode": "min", "monitor": "validation loss"},
    batch_size=8,
    epochs=50,
    source="paper 000 Sec. 3.2: Adam, initial lr 1e-4, lr decay 0.1 with patience 10 (LiTS; 4 on BraTS 2013) "
    "monitored on the validation loss; 50 epochs at batch 8 on BraTS 2013 (20 at batch 2 on LiTS)",
)
_PAPER_004 = PaperRecipe(
    optimizer="adam",
    lr=1e-3,
    schedule="cosine",
    weight_decay=1e-4,
    batch_size=128,
    epochs=100,
    source="paper 004 Sec. 3.3: Adam, weight decay 1e-4, batch 128, 100 passes, lr 1e-3 with cosine annealing",
)

PAPER_RECIPES: dict[str, PaperRecipe] = {
    "cascaded_unet": _PAPER_000,
    "inner_cascaded_unet": _PAPER_000,
    "inner_cascaded_u2net": _PAPER_000,
    "cu_net": PaperRecipe(
        optimizer="sgd",
        lr=1e-3,
        schedule="step",
        schedule_options={"factor": 0.1, "every": 10, "floor": 1e-7},
        momentum=0.9,
        weight_decay=5e-5,
        epochs=50,
        loss_schedule="cu_net_aux_weight",
        source="paper 001 Sec. 3.2: SGD, momentum 0.9, lr 1e-3 divided by 10 every ten epochs down to 1e-7, "
        "weight decay 5e-5, about 50 epochs; omega 0.1 divided by 10 every ten epochs down to 1e-3",
    ),
    "coarse_to_fine_unet": PaperRecipe(
        optimizer=None,
        lr=None,
        schedule=None,
        source="paper 002 (a review): 200,000 iterations for stage 1 and "
        "115,000 for stage 2; no optimiser or learning rate given",
    ),
    "anu_net": PaperRecipe(
        optimizer=None, lr=None, schedule=None, source="paper 003 gives no optimiser or learning rate"
    ),
    "unet_sharp": _PAPER_004,
    "unet3plus": _PAPER_004,
    "unet_plus_plus": _PAPER_004,
    "unet": _PAPER_004,
}


def paper_recipe(model: str) -> PaperRecipe:
    """The recipe of ``model``'s paper (the comparison paper's for the baselines U-Net, UNet++ and
    UNet 3+, which paper 004 trains with its own recipe)."""
    if model not in PAPER_RECIPES:
        raise ModelConfigError(f"no paper recipe for model '{model}' (known: {', '.join(sorted(PAPER_RECIPES))})")
    return PAPER_RECIPES[model]


__all__ = ["PAPER_RECIPES", "PaperRecipe", "PlateauSchedule", "cu_net_aux_weight", "paper_recipe", "step_decay"]
