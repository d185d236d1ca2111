"""The trainer on real LGG patients (tiny widths, cropped and downsampled so each run takes seconds):
training steps, callbacks, checkpoints, resume after a simulated kill, cancellation, single-volume
splits, stagewise cascades, 3D patches, and the bad inputs each with its clear error."""

from __future__ import annotations

import csv
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from cascadeseg.errors import (
    CheckpointError,
    DatasetError,
    GeometryMismatchError,
    ModelConfigError,
    OutputExistsError,
)
from cascadeseg.inference.checkpoint import load_checkpoint
from cascadeseg.io import load_labels, load_volume
from cascadeseg.io.volume import Volume
from cascadeseg.training import run_folder
from cascadeseg.training.config import TrainConfig
from cascadeseg.training.trainer import train

PATIENTS = ["TCGA_CS_4941_19960909", "TCGA_CS_4943_20000902", "TCGA_DU_6404_19850629"]
TINY = {"base_width": 4, "levels": 3}


def _crop_to_tumour(image: Volume, labels: Volume, slices: int = 12) -> tuple[Volume, Volume]:
    """The ``slices`` axial slices centred on the tumour (the cases stay real, just thinner)."""
    z = np.flatnonzero(labels.array.any(axis=(1, 2)))
    centre = int(z.mean()) if len(z) else labels.array.shape[0] // 2
    lo = max(0, min(centre - slices // 2, labels.array.shape[0] - slices))
    return image.with_array(image.array[:, lo : lo + slices].copy()), labels.with_array(labels.array[lo : lo + slices].copy())


@pytest.fixture(scope="module")
def lgg_pairs(shared_data: Path) -> list[tuple[Volume, Volume]]:
    root = shared_data / "lgg-flair"
    pairs = []
    for case in PATIENTS:
        image = load_volume(root / "imagesTr" / f"{case}_0000.nii.gz")
        labels = load_labels(root / "labelsTr" / f"{case}.nii.gz", reference=image)
        pairs.append(_crop_to_tumour(image, labels))
    return pairs


def tiny_config(data, run_dir: Path, **changes) -> TrainConfig:
    values = dict(
        data=data, run_dir=str(run_dir), model="unet", dims=2, model_options=dict(TINY), inplane_size=64,
        batch_size=4, epochs=2, steps_per_epoch=3, val_fraction=0.34, seed=0, threads=1,
    )
    values.update(changes)
    return TrainConfig(**values)


class Recorder:
    def __init__(self, stop_at_step: int | None = None, cancel: threading.Event | None = None, crash_at_step: int | None = None):
        self.steps, self.epochs, self.started, self.ended = [], [], [], []
        self.stop_at_step, self.cancel, self.crash_at_step = stop_at_step, cancel, crash_at_step

    def on_train_start(self, info):
        self.started.append(info)

    def on_step(self, info):
        self.steps.append(info)
        if self.cancel is not None and info.step == self.stop_at_step:
            self.cancel.set()
        if info.step == self.crash_at_step:
            raise KeyboardInterrupt("simulated kill")

    def on_epoch(self, info):
        self.epochs.append(info)

    def on_train_end(self, result):
        self.ended.append(result)


def read_log(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_training_steps_on_real_patients_write_a_complete_run_folder(lgg_pairs, tmp_path: Path) -> None:
    rec = Recorder()
    run_dir = tmp_path / "run"
    result = train(tiny_config(lgg_pairs, run_dir, model="anu_net", val_cases=["TCGA_DU_6404_19850629"]), callbacks=rec)
    assert result.stopped == "epochs" and result.epochs_completed == 2 and result.steps == 6
    assert {p.name for p in run_dir.iterdir()} >= {"config.json", "split.json", "log.csv", "last", "best"}
    split = json.loads((run_dir / "split.json").read_text())
    assert split["kind"] == "patient" and split["val"] == ["TCGA_DU_6404_19850629"] and len(split["train"]) == 2
    # Callbacks: every step, every epoch, with Dice at every pruning depth of ANU-Net.
    assert [s.step for s in rec.steps] == [1, 2, 3, 4, 5, 6] and len(rec.started) == 1 and len(rec.ended) == 1
    assert all(np.isfinite(s.loss) and s.samples_per_second > 0 for s in rec.steps)
    assert [e.epoch for e in rec.epochs] == [0, 1]
    assert set(rec.epochs[-1].dice_per_depth) == {1, 2}  # a 3-level ANU-Net has the heads L1 and L2
    for e in rec.epochs:  # each depth's Dice is the mean of that depth's per-patient Dice
        for depth, value in e.dice_per_depth.items():
            assert value == pytest.approx(np.mean([case[depth] for case in e.dice_per_case.values()]))
    log = read_log(run_dir)
    assert [r["epoch"] for r in log] == ["1", "2"] and {"dice_depth1", "dice_depth2", "recommended_depth"} <= set(log[0])
    # The best checkpoint loads through the inference loader and its card carries the validation.
    model, card = load_checkpoint(run_dir / "best")
    assert card.architecture == "anu_net" and card.target_spacing == [1.0, 4.0, 4.0] and card.slice_size == [64, 64]
    assert set(card.validation["dice_per_depth"]) == {"1", "2"}
    assert card.recommended_depth in (1, 2)
    assert card.validation["cases"] == ["TCGA_DU_6404_19850629"]
    # "best" is the Dice at the depth the model runs at by default, its recommended depth.
    best = rec.epochs[result.best_epoch - 1]
    assert result.best_dice == pytest.approx(best.dice_per_depth[best.recommended_depth])


def test_resume_after_a_kill_continues_from_the_last_checkpoint(lgg_pairs, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # Killed during epoch 2 (after epoch 1's checkpoint was written).
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(lgg_pairs, run_dir, epochs=3), callbacks=Recorder(crash_at_step=5))
    assert run_folder.find_checkpoint(run_dir, "last") == run_dir / "last"
    load_checkpoint(run_dir / "last")  # loadable as left by the kill
    state = run_folder.read_training_state(run_dir / "last")
    assert state["epoch"] == 1 and state["step"] == 3
    # A second run into the same folder without resume is refused; resume continues.
    with pytest.raises(OutputExistsError, match="--resume"):
        train(tiny_config(lgg_pairs, run_dir, epochs=3))
    rec = Recorder()
    result = train(tiny_config(lgg_pairs, run_dir, epochs=3, resume=True), callbacks=rec)
    assert rec.steps[0].step == 4 and rec.steps[0].epoch == 1
    assert result.epochs_completed == 3 and result.steps == 9
    assert [r["epoch"] for r in read_log(run_dir)] == ["1", "2", "3"]


def test_a_resume_on_a_cpu_without_bf16_continues_in_fp32(lgg_pairs, tmp_path: Path, monkeypatch) -> None:
    # The first sitting ran where bf16 is computed in hardware (planned bf16 steps); the run folder
    # is resumed on a CPU that would emulate bf16, slower than fp32 there: it continues in fp32.
    from cascadeseg.training import planner
    from cascadeseg.training import trainer as trainer_module

    run_dir = tmp_path / "run"
    monkeypatch.setattr(planner, "cpu_has_native_bf16", lambda: True)
    train(tiny_config(lgg_pairs, run_dir, epochs=1))
    assert json.loads((run_dir / "config.json").read_text())["cpu_precision"] == "bf16"
    monkeypatch.setattr(planner, "cpu_has_native_bf16", lambda: False)
    seen = {}
    real_set = trainer_module.Trainer._set_cpu_precision

    def record(self, precision):
        seen["precision"] = precision
        return real_set(self, precision)

    monkeypatch.setattr(trainer_module.Trainer, "_set_cpu_precision", record)
    result = train(tiny_config(lgg_pairs, run_dir, epochs=2, resume=True))
    assert result.epochs_completed == 2 and seen["precision"] == "fp32"
    choice = json.loads((run_dir / "plan.json").read_text())["choices"]["cpu_precision"]
    assert choice["value"] == "fp32" and "resumed on a CPU without bf16 in hardware" in choice["reason"], choice
    # bf16 given to the resume is kept, wherever it runs.
    train(tiny_config(lgg_pairs, run_dir, epochs=3, resume=True, cpu_precision="bf16"))
    assert seen["precision"] == "bf16"


def test_a_passing_slowdown_on_the_first_steps_does_not_decide_the_cpu_precision(lgg_pairs, tmp_path: Path, monkeypatch) -> None:
    # Here fp32 steps cost 0.3 s more than bf16 ones, and a passing load slows the run's first four
    # steps (the planned bf16 ones) by 0.8 s. Timed one after the other (before), bf16 looked the
    # slower and the run kept fp32; taking turns, each setting sees the load alike and bf16 is kept.
    import time

    from cascadeseg.training import planner
    from cascadeseg.training import trainer as trainer_module

    monkeypatch.setattr(planner, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(trainer_module, "CALIBRATION_SHARE", 1.0)  # room to compare, however slow the machine
    real_step = trainer_module.Trainer.train_step
    precisions: list[str] = []

    def step(self, *args, **kwargs):
        loss = real_step(self, *args, **kwargs)
        precisions.append("fp32" if self.amp_dtype is None else "bf16")
        time.sleep((0.8 if len(precisions) <= 4 else 0.0) + (0.3 if self.amp_dtype is None else 0.0))
        return loss

    monkeypatch.setattr(trainer_module.Trainer, "train_step", step)
    run_dir = tmp_path / "run"
    result = train(tiny_config(lgg_pairs, run_dir, epochs=1, steps_per_epoch=12, minutes=5))
    assert result.steps == 12
    assert precisions[:11] == ["bf16"] * 4 + ["fp32", "bf16"] * 3 + ["fp32"], precisions  # turns after the first four
    assert precisions[11:] == ["bf16"]
    choice = json.loads((run_dir / "plan.json").read_text())["choices"]["cpu_precision"]
    assert choice["value"] == "bf16" and choice["source"] == "measured", choice


def test_a_kill_between_the_checkpoint_renames_leaves_a_loadable_checkpoint(lgg_pairs, tmp_path: Path, monkeypatch) -> None:
    run_dir = tmp_path / "run"
    train(tiny_config(lgg_pairs, run_dir, epochs=1))
    model, card = load_checkpoint(run_dir / "last")
    real_replace = os.replace
    calls = []

    def dying_replace(src, dst):
        calls.append((src, dst))
        if Path(dst) == run_dir / "last":  # the old one is moved away, the new one not yet in place
            raise KeyboardInterrupt("killed between the renames")
        return real_replace(src, dst)

    monkeypatch.setattr(run_folder.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        run_folder.write_checkpoint(run_dir, "last", model, card, {"epoch": 1, "step": 3})
    monkeypatch.setattr(run_folder.os, "replace", real_replace)
    survivor = run_folder.find_checkpoint(run_dir, "last")
    assert survivor == run_dir / ".last.old"
    load_checkpoint(survivor)


def test_cancel_stops_within_one_step_and_keeps_a_loadable_checkpoint(lgg_pairs, tmp_path: Path) -> None:
    cancel = threading.Event()
    rec = Recorder(stop_at_step=2, cancel=cancel)
    run_dir = tmp_path / "run"
    result = train(tiny_config(lgg_pairs, run_dir, epochs=5), callbacks=rec, cancel=cancel)
    assert result.stopped == "cancelled" and result.steps == 2 and len(rec.steps) == 2
    assert not (run_dir / "best").exists()  # no validation happened: nothing is called "best"
    model, card = load_checkpoint(result.last_checkpoint)
    assert "cancelled" in card.training["note"]


def test_the_trainer_tells_the_loss_each_epoch_of_how_many(lgg_pairs, tmp_path: Path, monkeypatch) -> None:
    from cascadeseg.losses.supervision import SupervisedLoss

    calls, real = [], SupervisedLoss.set_epoch

    def spy(self, epoch, epochs=None):
        real(self, epoch, epochs)
        calls.append((epoch, epochs, self.aux_weight))

    monkeypatch.setattr(SupervisedLoss, "set_epoch", spy)
    # UNet#'s decoder branches at 0.1, fading to 0 over three epochs (docs/model_zoo.md).
    result = train(tiny_config(lgg_pairs, tmp_path / "run", model="unet_sharp", model_options={"base_width": 4},
                               epochs=3, steps_per_epoch=1, loss="dice_ce",
                               loss_options={"aux_weight": 0.1, "aux_decay": "linear"}))
    assert result.stopped == "epochs"
    assert calls == [(0, 3, 0.1), (1, 3, pytest.approx(0.05)), (2, 3, 0.0)]
    assert load_checkpoint(result.last_checkpoint)[1].training["loss_options"] == {"aux_weight": 0.1, "aux_decay": "linear"}


def test_fine_tuning_starts_from_the_given_checkpoint(lgg_pairs, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    first = tmp_path / "first"
    # Not the U-Net's paper loss (dice_ce): fine-tuning continues with the loss it was trained with.
    train(tiny_config(lgg_pairs, first, epochs=1, steps_per_epoch=2, loss="focal_tversky",
                      loss_options={"alpha": 0.3, "beta": 0.7}))
    # A vanishing learning rate: the fine-tuned weights must still be the checkpoint's.
    tuned = train(tiny_config(lgg_pairs, tmp_path / "tuned", epochs=1, steps_per_epoch=1, lr=1e-12, inplane_size=None,
                              init_checkpoint=str(first / "last")))
    start = load_file(str(first / "last" / "model.safetensors"))
    end = tuned.model.state_dict()
    assert all(torch.allclose(start[k].float(), end[k].float(), atol=1e-6) for k in start if "running" not in k and "num_batches" not in k)
    _, card = load_checkpoint(tmp_path / "tuned" / "last")
    assert card.target_spacing == [1.0, 4.0, 4.0]  # the resolution of the checkpoint it started from
    assert card.training["loss"] == "focal_tversky"
    assert card.training["loss_options"] == {"alpha": 0.3, "beta": 0.7}  # the loss's options come along
    # A loss given explicitly wins over the checkpoint's.
    other = train(tiny_config(lgg_pairs, tmp_path / "other", epochs=1, steps_per_epoch=1, inplane_size=None,
                              init_checkpoint=str(first / "last"), loss="dice"))
    assert load_checkpoint(other.last_checkpoint)[1].training["loss"] == "dice"
    assert load_checkpoint(other.last_checkpoint)[1].training["loss_options"] == {}


def test_fine_tuning_refuses_to_validate_on_the_checkpoints_training_patients(lgg_pairs, tmp_path: Path) -> None:
    first = tmp_path / "first"
    train(tiny_config(lgg_pairs, first, epochs=1, steps_per_epoch=1))
    trained_on = json.loads((first / "split.json").read_text())["train"]
    with pytest.raises(DatasetError, match=f"{trained_on[0]}.*were training cases of init checkpoint"):
        train(tiny_config(lgg_pairs, tmp_path / "leaky", epochs=1, steps_per_epoch=1, inplane_size=None,
                          init_checkpoint=str(first / "last"), val_cases=[trained_on[0]]))
    assert not (tmp_path / "leaky" / "last").exists()
    # The checkpoint's own split (same seed and fraction) is accepted.
    ok = train(tiny_config(lgg_pairs, tmp_path / "same", epochs=1, steps_per_epoch=1, inplane_size=None,
                           init_checkpoint=str(first / "last")))
    assert json.loads((tmp_path / "same" / "split.json").read_text())["val"] == json.loads((first / "split.json").read_text())["val"]
    assert ok.steps == 1


def test_weight_average_is_what_is_validated_and_saved(lgg_pairs, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    # Same seed: both runs take the same first step, so the two-step run's average must be
    # 0.5 * w1 + 0.5 * w2 (the first update copies the weights, AveragedModel's convention).
    one = train(tiny_config(lgg_pairs, tmp_path / "one", epochs=1, steps_per_epoch=1, ema_decay=0.5))
    two = train(tiny_config(lgg_pairs, tmp_path / "two", epochs=2, steps_per_epoch=1, ema_decay=0.5))
    w1 = run_folder.read_training_state(one.last_checkpoint)["raw_weights"]
    state = run_folder.read_training_state(two.last_checkpoint)
    w2, saved = state["raw_weights"], load_file(str(two.last_checkpoint / "model.safetensors"))
    assert state["ema_updates"] == 2
    floats = [k for k in saved if saved[k].is_floating_point()]
    assert any(not torch.allclose(w1[k], w2[k]) for k in floats)  # the weights did move
    for k in floats:
        torch.testing.assert_close(saved[k], 0.5 * w1[k] + 0.5 * w2[k], rtol=1e-5, atol=1e-6)
    assert load_checkpoint(two.last_checkpoint)[1].training["ema_decay"] == 0.5


def test_batch_norm_statistics_of_clean_samples_are_what_is_validated_and_saved(lgg_pairs, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from cascadeseg.inference import Predictor
    from cascadeseg.metrics import case_mean_dice

    clean = train(
        tiny_config(lgg_pairs, tmp_path / "clean", val_cases=["TCGA_DU_6404_19850629"], batch_norm_statistics="clean")
    )
    moving = train(tiny_config(lgg_pairs, tmp_path / "moving", val_cases=["TCGA_DU_6404_19850629"]))  # planned
    choice = json.loads((tmp_path / "moving" / "plan.json").read_text())["choices"]["batch_norm_statistics"]
    assert choice["value"] == "running" and choice["source"] == "planned" and "-0.0016" in choice["reason"]
    a = load_file(str(clean.last_checkpoint / "model.safetensors"))
    b = load_file(str(moving.last_checkpoint / "model.safetensors"))
    statistics = [k for k in a if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert statistics
    for k in set(a) - set(statistics):  # the same steps: measuring statistics changes no weight
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    means = [k for k in statistics if k.endswith("running_mean")]
    assert all(not torch.allclose(a[k], b[k]) for k in means)
    # What was validated is what was saved: the card's Dice is the predictor's on the saved weights.
    image, truth = lgg_pairs[2]
    card = load_checkpoint(clean.last_checkpoint)[1]
    labels = Predictor.from_checkpoint(clean.last_checkpoint, device="cpu").predict(image).labels.array
    assert card.validation["dice_per_depth"]["1"] == pytest.approx(case_mean_dice(labels, truth.array, [1]), abs=1e-4)


def test_resume_with_a_weight_average_ends_where_an_unbroken_run_ends(lgg_pairs, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    unbroken = train(tiny_config(lgg_pairs, tmp_path / "unbroken", epochs=3, ema_decay=0.9))
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(lgg_pairs, tmp_path / "broken", epochs=3, ema_decay=0.9), callbacks=Recorder(crash_at_step=5))
    resumed = train(tiny_config(lgg_pairs, tmp_path / "broken", epochs=3, ema_decay=0.9, resume=True))
    assert resumed.steps == unbroken.steps == 9
    a = load_file(str(unbroken.last_checkpoint / "model.safetensors"))
    b = load_file(str(resumed.last_checkpoint / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


def test_export_scores_the_held_out_patient_through_the_predictor(shared_data: Path, lgg_pairs, tmp_path: Path) -> None:
    from cascadeseg.training import export_run

    run_dir = tmp_path / "run"
    train(tiny_config(lgg_pairs, run_dir, epochs=1, val_cases=["TCGA_DU_6404_19850629"]))
    exported = export_run(run_dir, tmp_path / "model", name="tiny", holdout_data=shared_data / "lgg-flair",
                          card_updates={"training": {"licence": "CC BY-NC-SA 4.0"}},
                          choose_mirroring=True, holdout_mirror=True)
    assert sorted(p.name for p in exported.iterdir()) == ["model.safetensors", "model_card.json"]
    _, card = load_checkpoint(exported)
    assert card.name == "tiny" and card.training["licence"] == "CC BY-NC-SA 4.0"
    assert card.validation["cases"] == ["TCGA_DU_6404_19850629"]  # the whole scan, on its own grid
    assert "hd95_per_depth" in card.validation
    # The card's figure is the held-out scan segmented by the predictor and scored by the metrics.
    from cascadeseg.inference import Predictor
    from cascadeseg.metrics import case_mean_dice

    scan = load_volume(shared_data / "lgg-flair" / "imagesTr" / "TCGA_DU_6404_19850629_0000.nii.gz")
    truth = load_labels(shared_data / "lgg-flair" / "labelsTr" / "TCGA_DU_6404_19850629.nii.gz", reference=scan)
    labels = Predictor.from_checkpoint(exported, device="cpu").predict(scan).labels.array
    assert card.validation["dice_per_depth"]["1"] == pytest.approx(case_mean_dice(labels, truth.array, [1]), abs=1e-4)
    # Mirroring was decided on the run's validation patient, and the card quotes its default inference
    # (the figures above) with the other way beside them.
    choice = card.validation["mirroring_choice"]
    assert choice["cases"] == ["TCGA_DU_6404_19850629"] and card.test_time_mirroring == (choice["mean_paired_gain"] > 0)
    other = card.validation["plain" if card.test_time_mirroring else "mirrored"]
    assert other["dice_per_depth"]["1"] == pytest.approx(choice["plain" if card.test_time_mirroring else "mirrored"], abs=1e-4)
    assert card.mirror_axes == [0, 1]  # the 2D trainer flips both in-plane axes
    with pytest.raises(OutputExistsError):
        export_run(run_dir, exported)


def test_export_can_keep_a_depth_and_mirroring_decided_elsewhere(shared_data: Path, lgg_pairs, tmp_path: Path) -> None:
    """A continuation validated on two patients keeps its parent's depth and mirroring: given, they
    are neither re-derived nor chosen, the quoted figures are the mirrored inference's, and the card
    says where the choices came from. A depth the network lacks, or another key, is refused."""
    from cascadeseg.training import export_run

    run_dir = tmp_path / "run"
    train(tiny_config(lgg_pairs, run_dir, model="unet_plus_plus", model_options={"base_width": 4},
                      epochs=1, val_cases=["TCGA_DU_6404_19850629"]))
    fixed = {"recommended_depth": 2, "test_time_mirroring": True, "reason": "the parent's validation patients",
             "evidence": {"trainer_validation": {"dice_per_depth": {"2": 0.8}}}}
    exported = export_run(run_dir, tmp_path / "model", holdout_data=shared_data / "lgg-flair",
                          choose_mirroring=True, fixed_choices=fixed)
    _, card = load_checkpoint(exported)
    assert card.recommended_depth == 2 and card.test_time_mirroring is True
    assert card.validation["choices"] == fixed and "mirroring_choice" not in card.validation
    assert "with test-time mirroring" in card.validation["metric"]
    with pytest.raises(CheckpointError, match="recommended_depth 7 is not one of the model's depths"):
        export_run(run_dir, tmp_path / "other", fixed_choices={"recommended_depth": 7})
    with pytest.raises(CheckpointError, match=r"unknown key\(s\) \['depth'\]"):
        export_run(run_dir, tmp_path / "other", fixed_choices={"depth": 2})


def test_time_budget_stops_and_validates(lgg_pairs, tmp_path: Path, monkeypatch) -> None:
    from cascadeseg.training import planner
    from cascadeseg.training import trainer as trainer_module

    # Two planned threads and a calibration share too small to try one thread as well: the
    # planned threads stay and the plan says why they were not measured.
    monkeypatch.setattr(planner, "available_cores", lambda: 2)
    monkeypatch.setattr(trainer_module, "CALIBRATION_SHARE", 1e-4)
    budget = 6.0
    run_dir = tmp_path / "run"
    result = train(tiny_config(lgg_pairs, run_dir, epochs=1000, steps_per_epoch=2, minutes=budget / 60, threads=None))
    assert result.stopped == "time" and 1 <= result.epochs_completed < 1000
    assert result.best_dice is not None and result.elapsed_seconds <= 1.1 * budget
    threads = json.loads((run_dir / "plan.json").read_text())["choices"]["threads"]
    assert threads["value"] == 2 and threads["source"] == "planned"
    assert "one thread not tried" in threads["reason"] and "share of the budget" in threads["reason"]


def test_given_epoch_length_is_kept_under_a_budget(lgg_pairs, tmp_path: Path) -> None:
    # --epochs 3 --steps-per-epoch 6 --minutes 5: the budget is a ceiling, not a target; before,
    # the later epochs were stretched to fill the five minutes (a 1,500-step comparison ran 2,700
    # steps into its second epoch).
    run_dir = tmp_path / "run"
    result = train(tiny_config(lgg_pairs, run_dir, epochs=3, steps_per_epoch=6, minutes=5))
    assert result.stopped == "epochs" and result.epochs_completed == 3 and result.steps == 18
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["choices"]["steps_per_epoch"] == {"value": 6, "source": "given", "reason": "given: every epoch this long"}


def test_given_epoch_length_bounds_the_threads_comparison(lgg_pairs, tmp_path: Path, monkeypatch) -> None:
    # Two planned threads are timed against one on the run's first steps; with a given epoch of 3
    # steps those steps are epoch 0's, so the comparison may only time what the epoch has left
    # (before, it timed 4 more steps: 2 x 3 became 10).
    from cascadeseg.training import planner
    from cascadeseg.training import trainer as trainer_module

    monkeypatch.setattr(planner, "available_cores", lambda: 2)
    monkeypatch.setattr(planner, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(trainer_module, "CALIBRATION_SHARE", 1.0)  # room to compare, however slow the machine
    run_dir = tmp_path / "run"
    result = train(tiny_config(lgg_pairs, run_dir, epochs=2, steps_per_epoch=3, minutes=5, threads=None))
    assert result.stopped == "epochs" and result.epochs_completed == 2 and result.steps == 6
    threads = json.loads((run_dir / "plan.json").read_text())["choices"]["threads"]
    assert threads["value"] == 2 and "given epoch length" in threads["reason"], threads


def test_single_volume_is_split_by_slice_blocks_with_a_gap(lgg_pairs, tmp_path: Path) -> None:
    image, labels = lgg_pairs[0]
    image = image.with_array(image.array[:, :, 64:192, 64:192].copy())
    labels = labels.with_array(labels.array[:, 64:192, 64:192].copy())
    run_dir = tmp_path / "run"
    result = train(tiny_config([(image, labels)], run_dir, epochs=1, slice_block=3, slice_gap=1, val_fraction=0.25, inplane_size=None))
    split = json.loads((run_dir / "split.json").read_text())
    assert split["kind"] == "slice_blocks" and split["val_blocks"] and split["train_blocks"]
    train_slices = {s for b in split["train_blocks"] for s in range(b["start"], b["stop"])}
    for b in split["val_blocks"]:
        assert not train_slices & set(range(b["start"] - 1, b["stop"] + 1))
    assert result.best_dice is not None


def test_stagewise_cascade_freezes_stage_one_in_the_second_half(lgg_pairs, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    run_dir = tmp_path / "run"
    cfg = tiny_config(lgg_pairs, run_dir, model="cascaded_unet", epochs=2, cascade_training="stagewise")
    train(cfg)
    first = load_file(str(run_dir / "best" / "model.safetensors"))
    log = read_log(run_dir)
    assert [r["phase"] for r in log] == ["stage1", "full"]
    # Resume for a third epoch (phase 2 continues): stage-1 weights must not move any more.
    before = load_file(str(run_dir / "last" / "model.safetensors"))
    train(tiny_config(lgg_pairs, run_dir, model="cascaded_unet", epochs=3, cascade_training="stagewise", resume=True))
    after = load_file(str(run_dir / "last" / "model.safetensors"))
    moved = {k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k]) and "running" not in k}
    assert moved, "stage 2 must still learn"
    assert not any(k.startswith("stage1") for k in moved), sorted(moved)[:5]
    assert set(first) == set(after)


def test_3d_patch_training_validates_with_sliding_windows(lgg_pairs, tmp_path: Path) -> None:
    result = train(tiny_config(
        lgg_pairs, tmp_path / "run", dims=3, patch_size=[8, 32, 32], batch_size=2, epochs=1, steps_per_epoch=2, choose_threshold=True
    ))
    _, card = load_checkpoint(tmp_path / "run" / "best")
    assert card.dims == 3 and card.patch_size == [8, 32, 32] and result.best_dice is not None
    # The sliding window's threshold levels are the predictor's label maps too (one path in 3D).
    from cascadeseg.inference import Predictor
    from cascadeseg.inference.predictor import PredictionRequest, labels_at_threshold
    from cascadeseg.training.validation import THRESHOLD_CANDIDATES

    assert len(card.validation["threshold_candidates"]) == len(THRESHOLD_CANDIDATES)
    image, _ = lgg_pairs[PATIENTS.index(card.validation["cases"][0])]
    predictor = Predictor.from_checkpoint(tmp_path / "run" / "best", device="cpu")
    predictor.card.postprocessing = None
    want = PredictionRequest(threshold_candidates=THRESHOLD_CANDIDATES)
    depth = predictor.resolve_depth(None)
    maps, *_ = predictor.predict_maps(predictor.prepare(image, None), "3d", 0, depth, want)
    for t in (0.5, 0.2):
        predictor.card.foreground_threshold = None if t == 0.5 else t
        expected = labels_at_threshold(maps["levels"][depth], THRESHOLD_CANDIDATES, t, 1)
        assert np.array_equal(predictor.predict(image, mode="3d").labels.array, expected)


# ---------------------------------------------------------------------------------------------- bad input


def test_shape_and_geometry_mismatches_are_refused(lgg_pairs, tmp_path: Path) -> None:
    image, labels = lgg_pairs[0]
    short = labels.with_array(labels.array[:-1].copy())
    with pytest.raises(GeometryMismatchError, match="shape"):
        train(tiny_config([(image, short), *lgg_pairs[1:]], tmp_path / "a"))
    moved = labels.with_array(labels.array, spacing=(1.0, 1.2, 1.2))
    with pytest.raises(GeometryMismatchError, match="mm away"):
        train(tiny_config([(image, moved), *lgg_pairs[1:]], tmp_path / "b"))


def test_labels_the_model_does_not_know_are_refused(lgg_pairs, tmp_path: Path) -> None:
    image, labels = lgg_pairs[0]
    three = labels.array.copy()
    three[three == 1] = 3
    with pytest.raises(DatasetError, match=r"label value\(s\) \[3\].*num_classes=2"):
        train(tiny_config([(image, labels.with_array(three)), *lgg_pairs[1:]], tmp_path / "a", num_classes=2))


def test_empty_folder_images_without_labels_and_too_few_patients(shared_data: Path, lgg_pairs, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "imagesTr").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no image files"):
        train(tiny_config(str(empty), tmp_path / "r1"))
    unlabelled = tmp_path / "unlabelled"
    (unlabelled / "imagesTr").mkdir(parents=True)
    (unlabelled / "labelsTr").mkdir()
    src = shared_data / "lgg-flair" / "imagesTr" / f"{PATIENTS[0]}_0000.nii.gz"
    os.symlink(src, unlabelled / "imagesTr" / src.name)
    with pytest.raises(DatasetError, match="no label map"):
        train(tiny_config(str(unlabelled), tmp_path / "r2"))
    with pytest.raises(DatasetError, match="at least 1 training patient"):
        train(tiny_config(lgg_pairs[:2], tmp_path / "r3", val_cases=[PATIENTS[0], PATIENTS[1]]))


def test_resume_of_a_folder_that_is_not_a_run_is_refused(lgg_pairs, tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    with pytest.raises(DatasetError, match="cannot be resumed"):
        train(tiny_config(lgg_pairs, tmp_path / "x", resume=True))


def test_the_papers_region_of_interest_reaches_the_loss_and_the_prediction(lgg_pairs, tmp_path: Path, monkeypatch) -> None:
    """CU-Net (paper 001) samples its loss inside the head (p1 = 0 outside: Eq. 3): the trainer
    hands the loss a region cropped and augmented with the labels, holding every labelled voxel;
    and its predictions are fused with the head mask at inference (nothing outside the head)."""
    from cascadeseg.inference import Predictor
    from cascadeseg.training import trainer as trainer_module

    seen = []
    real = trainer_module.Trainer._make_loss

    def spying_loss(self):
        loss = real(self)
        forward = loss.forward

        def record(output, target, roi=None):
            seen.append((roi, target))
            return forward(output, target, roi=roi)

        loss.forward = record
        return loss

    monkeypatch.setattr(trainer_module.Trainer, "_make_loss", spying_loss)
    result = train(tiny_config(lgg_pairs, tmp_path / "run", model="cu_net", epochs=1, steps_per_epoch=3))
    assert len(seen) == 3
    for roi, target in seen:
        assert roi is not None and roi.shape == target.shape and roi.dtype == torch.bool
        assert bool(roi[target > 0].all())  # every labelled voxel is supervised
        assert 0.05 < float(roi.float().mean()) < 0.95  # a head, not everything and not nothing
    image, _ = lgg_pairs[2]
    predictor = Predictor.from_checkpoint(result.last_checkpoint, device="cpu")
    assert predictor.model.info.body_mask_at_inference
    from cascadeseg.losses.regions import case_body_mask

    labels = predictor.predict(image).labels.array
    outside = ~case_body_mask(image.array, image.modality)
    assert outside.any() and not labels[outside].any()


def test_plateau_schedule_lowers_the_learning_rate_when_the_dice_stalls(lgg_pairs, tmp_path: Path) -> None:
    """Paper 000's recipe: lr x gamma after step_size validations without a better Dice."""
    run_dir = tmp_path / "run"
    result = train(tiny_config(lgg_pairs, run_dir, epochs=4, schedule="plateau", step_size=1, gamma=0.5, lr=1e-4))
    rows = read_log(run_dir)
    dice = [float(r[f"dice_depth{r['recommended_depth']}"]) for r in rows]  # at the depth the model runs at
    best, expected, factor = -1.0, [], 1.0
    for d in dice:  # the rule by hand, validation by validation
        if d > best + 1e-4:
            best = d
        else:
            factor *= 0.5
        expected.append(factor)
    state = run_folder.read_training_state(result.last_checkpoint)
    assert state["plateau_factor"] == pytest.approx(expected[-1])


def test_postprocessing_that_costs_a_case_its_lesion_is_refused() -> None:
    """The choice rule by hand: a candidate must beat the raw argmax's mean by over 0.005 and cost
    no case more than 0.1 Dice (race seed 3: "largest component" deleted the only component that
    found one patient's lesion, 0.18 -> 0.00, while raising the validation mean)."""
    from cascadeseg.training.validation import pick_postprocessing, worst_case_loss

    raw = {"a": {1: 0.80, 2: 0.70}, "b": {1: 0.70, 2: 0.60}, "c": {1: 0.18, 2: 0.10}}
    # +0.04 mean at depth 1 (0.60 vs 0.56), but case c loses 0.18 there: refused.
    largest = {"a": {1: 0.95, 2: 0.70}, "b": {1: 0.85, 2: 0.60}, "c": {1: 0.00, 2: 0.10}}
    # +0.01 at depth 1, worst loss 0.01: kept.
    islands = {"a": {1: 0.82, 2: 0.70}, "b": {1: 0.72, 2: 0.60}, "c": {1: 0.17, 2: 0.10}}
    assert worst_case_loss(raw, largest, 1) == pytest.approx(0.18)
    assert worst_case_loss(raw, islands, 2) == 0.0
    both = {"none": raw, "largest_component": largest, "distant_islands_10mm": islands}
    assert pick_postprocessing(both) == "distant_islands_10mm"
    assert pick_postprocessing({"none": raw, "largest_component": largest}) == "none"
    # The same gain at a cost of 0.08 to case c: within the bound, kept.
    safer = {"a": {1: 0.95, 2: 0.70}, "b": {1: 0.85, 2: 0.60}, "c": {1: 0.10, 2: 0.10}}
    assert pick_postprocessing({"none": raw, "largest_component": safer}) == "largest_component"
    # A gain of 0.004 (under the 0.005 margin) is not worth any change.
    tiny = {"a": {1: 0.812, 2: 0.70}, "b": {1: 0.70, 2: 0.60}, "c": {1: 0.18, 2: 0.10}}
    assert pick_postprocessing({"none": raw, "largest_component": tiny}) == "none"


def test_postprocessing_is_chosen_on_validation_and_applied_by_the_predictor(lgg_pairs, tmp_path: Path) -> None:
    """Each validation scores the raw argmax and each candidate post-processing on the validation
    patients; the card keeps the one that beats the raw argmax by over 0.005 (or none), its Dice is
    the Dice with it, and the predictor applies the card's choice to every label map."""
    from cascadeseg.inference import Predictor
    from cascadeseg.labelops import keep_largest_component
    from cascadeseg.training.validation import POSTPROCESSING_MARGIN

    result = train(tiny_config(lgg_pairs, tmp_path / "run", epochs=1, steps_per_epoch=6, val_cases=["TCGA_DU_6404_19850629"]))
    card = json.loads((result.best_checkpoint / "model_card.json").read_text())
    candidates = card["validation"]["postprocessing_candidates"]
    assert set(candidates) == {"none", "largest_component", "distant_islands_10mm"}
    best = {name: max(v.values()) for name, v in candidates.items()}
    winner = max(("largest_component", "distant_islands_10mm"), key=best.get)
    expected = winner if best[winner] > best["none"] + POSTPROCESSING_MARGIN else "none"
    chosen = {"largest_component": {"largest_component": True}, "distant_islands_10mm": {"distant_islands_mm": 10.0},
              "none": None}[expected]
    assert card["postprocessing"] == chosen
    assert card["validation"]["dice_per_depth"] == candidates[expected]
    assert card["foreground_threshold"] is None and "threshold_candidates" not in card["validation"]  # opt-in
    # The predictor applies a card's post-processing: the same checkpoint told to keep the largest
    # island gives exactly the raw map with its other islands removed.
    image, _ = lgg_pairs[2]
    predictor = Predictor.from_checkpoint(result.best_checkpoint, device="cpu")
    predictor.card.postprocessing = None
    raw = predictor.predict(image).labels.array
    predictor.card.postprocessing = {"largest_component": True}
    assert np.array_equal(predictor.predict(image).labels.array, keep_largest_component(raw))


def test_a_fine_tuning_that_no_epoch_improves_keeps_its_starting_weights(lgg_pairs, tmp_path: Path) -> None:
    """The starting weights are validated before the first step (epoch 0 of the log) and compete
    for ``best/``: the shipped FLAIR ANU-Net fine-tuned at a learning rate that wrecks it keeps its
    own weights as the run's best, and says so (on the TCIA studies, fifteen minutes of fine-tuning
    had taken that model from 0.30 to 0.07 on the held-out patient)."""
    from safetensors.torch import load_file

    from cascadeseg.inference import available_checkpoints

    result = train(tiny_config(lgg_pairs, tmp_path / "tuned", init_checkpoint="lgg_flair_anu_net_2d", model=None,
                               model_options=None, inplane_size=None, dims=None, epochs=1, steps_per_epoch=2,
                               lr=10.0, keep="best", val_cases=["TCGA_DU_6404_19850629"]))
    rows = list(csv.DictReader((tmp_path / "tuned" / "log.csv").open()))
    assert [r["epoch"] for r in rows] == ["0", "1"] and rows[0]["step"] == "0"
    start, after = float(rows[0]["best_dice"]), max(float(v) for k, v in rows[1].items() if k.startswith("dice_depth"))
    assert start > 0.5 > after, rows  # the shipped model finds the lesion; after two steps at a learning rate of 10 it does not
    assert result.best_epoch == 0 and result.best_dice == pytest.approx(start, abs=1e-4)
    assert result.model_checkpoint == result.best_checkpoint
    (entry,) = [e for e in available_checkpoints() if e.name == "lgg_flair_anu_net_2d" and e.source == "shipped"]
    shipped = load_file(str(entry.path / "model.safetensors"))
    kept = load_file(str(result.best_checkpoint / "model.safetensors"))
    assert shipped.keys() == kept.keys() and all(torch.equal(shipped[k], kept[k]) for k in shipped)
    # the card names what made its starting weights: the shipped model's own command and step count
    _, parent = load_checkpoint(entry.path)
    lineage = load_checkpoint(result.best_checkpoint)[1].training["parent_training"]
    assert lineage["name"] == "lgg_flair_anu_net_2d" and lineage["command"] == parent.training["command"]
    assert lineage["steps"] == parent.training["steps"] > 0 and lineage["data_cases"] == parent.training["data"]["cases"]
    # One validation patient cannot move the depth the shipped model's own 12 chose (its card's L4).
    kept_card = load_checkpoint(result.best_checkpoint)[1]
    assert parent.recommended_depth == 4 and kept_card.validation["prior_depth"] == 4
    assert kept_card.recommended_depth == 4 and {r["recommended_depth"] for r in rows} == {"4"}
    assert "prior_fixed" not in kept_card.validation  # whole patients could have moved it, with evidence


def test_a_fine_tuning_validated_on_slice_blocks_runs_at_its_starting_models_depth(lgg_pairs, tmp_path: Path) -> None:
    """One patient: validation is slice blocks of its own volume, which cannot overturn the shipped
    model's depth (``prior_fixed``); every epoch and the card keep its L4, and export's re-derivation
    agrees."""
    from cascadeseg.training.validation import recommended_depth

    run_dir = tmp_path / "one_patient"
    result = train(tiny_config(lgg_pairs[:1], run_dir, init_checkpoint="lgg_flair_anu_net_2d", model=None,
                               model_options=None, inplane_size=None, dims=None, epochs=1, steps_per_epoch=1,
                               keep="best", val_fraction=0.25))
    assert json.loads((run_dir / "split.json").read_text())["kind"] == "slice_blocks"
    card = load_checkpoint(result.best_checkpoint)[1]
    assert card.validation["prior_depth"] == 4 and card.validation["prior_fixed"] is True
    assert card.recommended_depth == 4
    assert {r["recommended_depth"] for r in csv.DictReader((run_dir / "log.csv").open())} == {"4"}
    dice = {int(d): float(v) for d, v in card.validation["dice_per_depth"].items()}
    assert recommended_depth(dice, dice_per_case=card.validation["dice_per_case"], prior_depth=4, prior_fixed=True) == 4


def test_foreground_threshold_is_chosen_on_validation_and_the_predictor_scores_it_alike(lgg_pairs, tmp_path: Path) -> None:
    """Asked to (``--choose-threshold``), a two-class model's validation scores every candidate threshold at the recommended depth and
    keeps the best (ties: the higher; 0.5 is the argmax, recorded as None). The levels it compares
    give exactly the label map the predictor makes with that threshold on its card, and a card's
    threshold is 'foreground probability above t'."""
    from cascadeseg.inference import Predictor
    from cascadeseg.inference.predictor import PredictionRequest, labels_at_threshold
    from cascadeseg.metrics import case_mean_dice
    from cascadeseg.training.validation import THRESHOLD_CANDIDATES

    val_case = "TCGA_DU_6404_19850629"
    config = tiny_config(lgg_pairs, tmp_path / "run", epochs=1, steps_per_epoch=6, val_cases=[val_case], choose_threshold=True)
    result = train(config)
    card = json.loads((result.best_checkpoint / "model_card.json").read_text())
    means = {float(t): v for t, v in card["validation"]["threshold_candidates"].items()}
    assert sorted(means, reverse=True) == list(THRESHOLD_CANDIDATES)
    best = max(means, key=lambda t: (means[t], t))
    assert card["foreground_threshold"] == (None if best == 0.5 else best)
    with open(tmp_path / "run" / "log.csv", newline="") as fh:
        logged = list(csv.DictReader(fh))
    assert float(logged[-1]["foreground_threshold"]) == best  # the epoch's choice, in the last column
    depth = str(card["recommended_depth"] or 1)
    assert card["validation"]["dice_per_depth"][depth] == pytest.approx(means[best], abs=1e-4)

    image, labels = lgg_pairs[PATIENTS.index(val_case)]
    predictor = Predictor.from_checkpoint(result.best_checkpoint, device="cpu")
    # One path: the predictor with the card's threshold scores what validation recorded.
    dice = case_mean_dice(predictor.predict(image).labels.array, labels.array, [1])
    assert dice == pytest.approx(card["validation"]["dice_per_case"][val_case][depth], abs=1e-4)
    # Each candidate's label map from the levels is exactly the predictor's with that threshold.
    predictor.card.postprocessing = None
    prepared = predictor.prepare(image, 0)
    want = PredictionRequest(threshold_candidates=THRESHOLD_CANDIDATES, probabilities=True)
    maps, *_ = predictor.predict_maps(prepared, "2d", 0, predictor.resolve_depth(None), want)
    levels, foreground = next(iter(maps["levels"].values())), maps["probabilities"][1]
    counts = []
    for t in THRESHOLD_CANDIDATES:
        predictor.card.foreground_threshold = None if t == 0.5 else t
        labels_t = predictor.predict(image).labels.array
        assert np.array_equal(labels_t, labels_at_threshold(levels, THRESHOLD_CANDIDATES, t, 1))
        # The rule is "probability above t" (float rounding may flip a voxel at the boundary).
        assert np.mean(labels_t.astype(bool) != (foreground > t)) < 1e-4
        counts.append(int(labels_t.sum()))
    assert counts == sorted(counts) and counts[-1] > counts[0]  # lower thresholds only add voxels
    # A run may ask for its own threshold without touching the card.
    predictor.card.foreground_threshold = None
    by_request = predictor.predict(image, want=PredictionRequest(foreground_threshold=0.2)).labels.array
    assert np.array_equal(by_request, labels_at_threshold(levels, THRESHOLD_CANDIDATES, 0.2, 1))
    with pytest.raises(ModelConfigError, match="between 0 and 1"):
        predictor.predict(image, want=PredictionRequest(foreground_threshold=1.5))


def test_a_threshold_needs_a_two_class_card_in_range(shared_data: Path) -> None:
    from cascadeseg.inference import Predictor
    from cascadeseg.inference.checkpoint import ModelCard
    from cascadeseg.inference.predictor import PredictionRequest

    base = dict(architecture="unet", model_options={}, dims=2, input_channels=[{"name": "FLAIR"}])
    two = [{"value": 0, "name": "background"}, {"value": 1, "name": "lesion"}]
    assert ModelCard(**base, classes=two, foreground_threshold=0.3).foreground_threshold == 0.3
    for bad in (0.0, 1.0, 1.5, True, "0.3"):
        with pytest.raises(CheckpointError, match="foreground_threshold must be a number in"):
            ModelCard.from_dict({**base, "classes": two, "foreground_threshold": bad}, "card.json")
    three = [*two, {"value": 2, "name": "oedema"}]
    with pytest.raises(CheckpointError, match="needs a two-class model"):
        ModelCard.from_dict({**base, "classes": three, "foreground_threshold": 0.3}, "card.json")
    # Asked of a run: refused before the scan is prepared, naming the classes.
    predictor = Predictor.from_checkpoint("hippocampus_unet_plus_plus_3d", device="cpu")
    crop = load_volume(shared_data / "hippocampus" / "imagesTr" / "hippocampus_001_0000.nii.gz")
    with pytest.raises(ModelConfigError, match="needs a two-class model.*3 classes"):
        predictor.predict(crop, want=PredictionRequest(foreground_threshold=0.3))


def test_freeze_encoder_keeps_the_starting_encoder_and_trains_the_rest(lgg_pairs, tmp_path: Path) -> None:
    """``freeze="encoder"`` on the shipped FLAIR ANU-Net fine-tuned on real LGG patients: after its
    steps every encoder parameter is the shipped one and the decoder has moved; the plan says how
    many parameters were kept. A network trained from scratch refuses the option with the reason
    (every registered architecture has an encoder: the next test)."""
    from safetensors.torch import load_file

    from cascadeseg.inference import available_checkpoints
    from cascadeseg.training.trainer import is_encoder_parameter

    result = train(tiny_config(lgg_pairs, tmp_path / "tuned", init_checkpoint="lgg_flair_anu_net_2d", model=None,
                               model_options=None, inplane_size=None, dims=None, epochs=1, steps_per_epoch=3,
                               lr=1e-2, keep="last", freeze="encoder", val_cases=["TCGA_DU_6404_19850629"]))
    (entry,) = [e for e in available_checkpoints() if e.name == "lgg_flair_anu_net_2d" and e.source == "shipped"]
    shipped = load_file(str(entry.path / "model.safetensors"))
    tuned = load_file(str(result.last_checkpoint / "model.safetensors"))
    model, _ = load_checkpoint(result.last_checkpoint)
    parameters = [name for name, _ in model.named_parameters()]
    encoder = [n for n in parameters if is_encoder_parameter(n)]
    assert encoder and all(n.startswith("encoder.") for n in encoder)
    assert all(torch.equal(shipped[n], tuned[n]) for n in encoder)
    assert any(not torch.equal(shipped[n], tuned[n]) for n in parameters if n.startswith("nodes."))
    plan = json.loads((tmp_path / "tuned" / "plan.json").read_text())
    assert plan["choices"]["freeze"]["value"] == "encoder"
    kept = sum(shipped[n].numel() for n in encoder)
    assert f"{kept:,} of" in plan["choices"]["freeze"]["reason"]

    with pytest.raises(ModelConfigError, match="needs a starting model"):
        train(tiny_config(lgg_pairs, tmp_path / "scratch", freeze="encoder", auto_init=False))


def test_every_model_has_an_encoder_to_freeze_and_a_rest_to_train() -> None:
    """``is_encoder_parameter`` over every registered architecture: some parameters are encoder,
    some are not, and U2-Net's decoder blocks (small U-Nets with encoders of their own) stay
    trainable."""
    from cascadeseg.models import create_model, model_names
    from cascadeseg.training.trainer import is_encoder_parameter

    for name in model_names():
        names = [n for n, _ in create_model(name, in_channels=1, num_classes=2, dims=2).named_parameters()]
        encoder = [n for n in names if is_encoder_parameter(n)]
        assert 0 < len(encoder) < len(names), name
        if name == "inner_cascaded_u2net":
            for n in names:
                outer = n.split(".")[1]  # body.<former|latter>_<encoder|decoder>...
                assert (n in encoder) == outer.endswith("_encoder"), n
