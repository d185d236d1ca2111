"""The papers' training recipes and schedules (models/recipes.py), checked value by value."""

from __future__ import annotations

import pytest

from cascadeseg.errors import ModelConfigError
from cascadeseg.models import model_names
from cascadeseg.models.recipes import PAPER_RECIPES, PlateauSchedule, cu_net_aux_weight, paper_recipe, step_decay


def test_step_decay_and_cu_net_schedules() -> None:
    # CU-Net's learning rate: 1e-3, divided by 10 every ten epochs, never below 1e-7 (paper 001 Sec. 3.2).
    lr = [step_decay(e, 1e-3, 0.1, 10, 1e-7) for e in (0, 9, 10, 29, 30, 40, 80)]
    assert lr == pytest.approx([1e-3, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-7])
    # Its auxiliary weight omega: 0.1, divided by 10 every ten epochs, never below 1e-3.
    assert [cu_net_aux_weight(e) for e in (0, 10, 20, 50)] == pytest.approx([0.1, 0.01, 1e-3, 1e-3])
    with pytest.raises(ModelConfigError, match="step_decay"):
        step_decay(-1, 1e-3)


def test_plateau_schedule_follows_keras_reduce_on_plateau() -> None:
    # Paper 000: factor 0.1, patience 10 on the validation loss. Patience 2 here to keep it short:
    # the factor drops after exactly 2 validations without an improvement of more than 1e-4.
    schedule = PlateauSchedule(factor=0.1, patience=2)
    losses = [1.0, 0.8, 0.80005, 0.9, 0.7, 0.75, 0.71, 0.72, 0.73]
    factors = [schedule.update(v) for v in losses]
    #          best  best  +1 bad  +2 bad->drop  best  +1  +2->drop  +1  +2->drop
    assert factors == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.001])
    resumed = PlateauSchedule(factor=0.1, patience=2)
    resumed.load_state_dict(schedule.state_dict())
    assert resumed.update(0.5) == pytest.approx(0.001) and resumed.best == 0.5
    dice = PlateauSchedule(patience=1, mode="max")
    assert [dice.update(v) for v in (0.5, 0.6, 0.55)] == pytest.approx([1, 1, 0.1])
    with pytest.raises(ModelConfigError, match="PlateauSchedule"):
        PlateauSchedule(mode="lowest")


def test_every_model_has_its_papers_recipe() -> None:
    assert set(PAPER_RECIPES) == set(model_names())
    inner = paper_recipe("inner_cascaded_unet")
    assert (inner.optimizer, inner.lr, inner.schedule, inner.schedule_options["patience"]) == ("adam", 1e-4, "plateau", 10)
    cu = paper_recipe("cu_net")
    assert (cu.optimizer, cu.momentum, cu.weight_decay, cu.loss_schedule) == ("sgd", 0.9, 5e-5, "cu_net_aux_weight")
    assert paper_recipe("unet_sharp").schedule == "cosine"
    with pytest.raises(ModelConfigError, match="no paper recipe"):
        paper_recipe("resnet")
