"""One-click training: the planner's decisions on real datasets, the budget kept on a tiny budget,
Cancel within seconds, validation that is the predictor, and bounded memory on a real CT."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cascadeseg.errors import ModelConfigError
from cascadeseg.inference import Predictor, load_checkpoint
from cascadeseg.io import load_labels, load_volume
from cascadeseg.io.volume import Volume
from cascadeseg.metrics import case_mean_dice
from cascadeseg.training.config import TrainConfig
from cascadeseg.training.datasets import case_sources, read_cases
from cascadeseg.training.fingerprint import fingerprint
from cascadeseg.training.planner import DeviceProfile, plan_preprocessing, plan_training
from cascadeseg.training.split import patient_id
from cascadeseg.training.trainer import train

CPU = DeviceProfile(kind="cpu", name="cpu", cores=2, threads=2, memory_gb=16.0)
GPU = DeviceProfile(kind="cuda", name="a GPU", cores=16, threads=16, memory_gb=128.0, gpu_memory_gb=80.0)


def _fingerprint(folder: Path, limit: int | None = None):
    sources = case_sources(folder)[:limit]
    raw = read_cases(sources, None)
    names = list(raw[0].image.channel_names)
    return fingerprint([(r.case_id, r.image, r.labels) for r in raw], names, patient_id)


@pytest.fixture(scope="module")
def flair_anu_card():
    """The shipped FLAIR ANU-Net's card, the starting point of the fine-tuning plans below."""
    from cascadeseg.inference.checkpoint import read_card
    from cascadeseg.shipped import checkpoints_dir

    return read_card(checkpoints_dir() / "lgg_flair_anu_net_2d")


@pytest.fixture(scope="module")
def fingerprints(shared_data: Path) -> dict:
    return {
        "tcia": _fingerprint(shared_data / "tcia-btp"),
        "hippocampus": _fingerprint(shared_data / "hippocampus", 24),
        "lgg": _fingerprint(shared_data / "lgg-flair", 12),
        "chaos": _fingerprint(shared_data / "chaos-t2", 4),
    }


def test_planner_slices_thick_or_flat_stacks_and_goes_3d_on_isotropic_crops(fingerprints) -> None:
    tcia, _ = plan_training(TrainConfig(data="x", minutes=15), fingerprints["tcia"], CPU)
    assert tcia.dims == 2 and tcia.axis == 0  # 6.5 mm slices: 2D along z
    # In-plane: the median 0.6875 mm grid coarsened to ~128 px across the median case; slices native.
    assert tcia.target_spacing[0] == pytest.approx(6.5, abs=0.01) and tcia.target_spacing[1] == tcia.target_spacing[2]
    width_px = fingerprints["tcia"].median_extent_mm[1] / tcia.target_spacing[1]
    assert 120 <= width_px <= 136
    chaos, _ = plan_training(TrainConfig(data="x", minutes=15), fingerprints["chaos"], CPU)
    assert chaos.dims == 2 and chaos.axis == 0  # 7.7 mm slices
    hippo, plan = plan_training(TrainConfig(data="x", minutes=10), fingerprints["hippocampus"], CPU)
    assert hippo.dims == 3 and hippo.target_spacing == [1.0, 1.0, 1.0]
    assert hippo.class_values == [0, 1, 2] and np.prod(hippo.patch_size) <= 64**3
    assert "near-isotropic" in plan.choices["dims"].reason
    # LGG says 1 mm isotropic, but 256 x 256 x ~36 mm is no brain: 2D along the thin axis.
    lgg, plan = plan_training(TrainConfig(data="x", minutes=20), fingerprints["lgg"], CPU)
    assert lgg.dims == 2 and lgg.axis == 0 and "thick slices" in plan.choices["dims"].reason


def test_slices_per_sample_are_planned_given_or_refused(fingerprints) -> None:
    """One slice unless asked; a 2.5D request is kept for a 2D plan and refused for a 3D one."""
    lgg, plan = plan_training(TrainConfig(data="x", minutes=20), fingerprints["lgg"], CPU)
    assert lgg.context_slices == 0 and plan.choices["context_slices"].source == "planned"
    wide, plan = plan_training(TrainConfig(data="x", minutes=20, context_slices=2), fingerprints["lgg"], CPU)
    assert wide.context_slices == 2 and plan.choices["context_slices"].source == "given"
    hippo, plan = plan_training(TrainConfig(data="x", minutes=10), fingerprints["hippocampus"], CPU)
    assert hippo.context_slices == 0 and "context_slices" not in plan.choices
    with pytest.raises(ModelConfigError, match="needs a 2D model"):
        plan_training(TrainConfig(data="x", minutes=10, context_slices=1), fingerprints["hippocampus"], CPU)


def test_classes_named_by_side_are_trained_and_mirrored_without_flips(fingerprints) -> None:
    """CHAOS names a right and a left kidney: a mirrored sample would show the right kidney where
    the left belongs, so the plan turns flips off (and says why) and the card then lets test-time
    mirroring flip nothing; the hippocampus (anterior / posterior) keeps its in-plane flips."""
    from cascadeseg.training.augmentation import mirrored_axes

    names = ["background", "liver", "right kidney", "left kidney", "spleen"]
    chaos, plan = plan_training(TrainConfig(data="x", minutes=15, class_names=names), fingerprints["chaos"], CPU)
    assert chaos.augmentation.flip is False and mirrored_axes(chaos.augmentation, chaos.dims) == []
    assert "right kidney, left kidney" in plan.choices["augmentation"].reason
    hippo, plan = plan_training(TrainConfig(data="x", minutes=10), fingerprints["hippocampus"], CPU)
    assert hippo.augmentation.flip is True and mirrored_axes(hippo.augmentation, 3) == [1, 2]
    assert "no flips" not in str(plan.choices["augmentation"].value)


def test_augmentation_json_changes_only_the_settings_it_names(fingerprints, tmp_path: Path) -> None:
    """`--augmentation '{"flip": true}'` turns flips back on for CHAOS and keeps the rest of the plan
    (no 90-degree turns, the scanner-variation set); it used to replace the plan with the bare
    defaults (90-degree turns on, no gamma / contrast / noise / bias). A setting that does not exist
    is refused with the choices."""
    import argparse

    from cascadeseg.cli.train import add_train_arguments, config_from_args
    from cascadeseg.errors import ModelConfigError

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    names = ["background", "liver", "right kidney", "left kidney", "spleen"]
    args = parser.parse_args([str(tmp_path), "--minutes", "15", "--class-names", *names, "--augmentation", '{"flip": true}'])
    planned, plan = plan_training(config_from_args(args), fingerprints["chaos"], CPU)
    aug = planned.augmentation
    assert aug.flip is True and aug.rot90 is False and aug.gamma_probability == 0.3 and aug.bias_probability == 0.3
    assert plan.choices["augmentation_changes"].value == {"flip": True}
    args = parser.parse_args([str(tmp_path), "--minutes", "15", "--augmentation", '{"flips": false}'])
    with pytest.raises(ModelConfigError, match=r"unknown setting\(s\) \['flips'\]; choose from enabled, flip"):
        plan_training(config_from_args(args), fingerprints["chaos"], CPU)


def test_cpu_and_gpu_plans_differ_where_the_device_matters(fingerprints) -> None:
    cpu, _ = plan_training(TrainConfig(data="x", minutes=20), fingerprints["lgg"], CPU)
    gpu, _ = plan_training(TrainConfig(data="x", minutes=20), fingerprints["lgg"], GPU)
    assert cpu.model_options["base_width"] == 8 and gpu.model_options["base_width"] == 32
    assert cpu.target_spacing[1] == pytest.approx(2.0) and gpu.target_spacing[1] == pytest.approx(1.0)  # 128 vs 256 px
    assert cpu.patch_size == [96, 96] and gpu.patch_size == [256, 256]  # crops vs whole slices
    assert cpu.batch_size == 8 and gpu.batch_size == 32
    assert cpu.threads == 2 and gpu.threads is None


def test_cpu_training_steps_are_planned_in_bf16_only_where_the_cpu_computes_it(fingerprints) -> None:
    native = DeviceProfile(kind="cpu", name="cpu", cores=2, threads=2, memory_gb=16.0, native_bf16=True)
    bf16, plan = plan_training(TrainConfig(data="x", minutes=20), fingerprints["lgg"], native)
    assert bf16.cpu_precision == "bf16" and plan.choices["cpu_precision"].source == "planned"
    assert "timed against fp32" in plan.choices["cpu_precision"].reason  # the run's first steps decide
    emulated, plan = plan_training(TrainConfig(data="x", minutes=20), fingerprints["lgg"], CPU)
    assert emulated.cpu_precision == "fp32" and "no bf16 in hardware" in plan.choices["cpu_precision"].reason
    given, plan = plan_training(TrainConfig(data="x", minutes=20, cpu_precision="fp32"), fingerprints["lgg"], native)
    assert given.cpu_precision == "fp32" and plan.choices["cpu_precision"].source == "given"
    gpu, plan = plan_training(TrainConfig(data="x", minutes=20), fingerprints["lgg"], GPU)
    assert gpu.cpu_precision is None and "cpu_precision" not in plan.choices  # CUDA: --no-amp decides


def test_explicit_options_win_and_the_callers_config_is_not_changed(fingerprints) -> None:
    asked = TrainConfig(data="x", minutes=20, dims=3, batch_size=3, model="anu_net", target_spacing=[2.0, 2.0, 2.0])
    before = asked.to_dict()
    planned, plan = plan_training(asked, fingerprints["lgg"], CPU)
    assert asked.to_dict() == before
    assert (planned.dims, planned.batch_size, planned.model, planned.target_spacing) == (3, 3, "anu_net", [2.0, 2.0, 2.0])
    assert plan.choices["dims"].source == "given" and plan.choices["batch_size"].source == "given"
    assert planned.loss == "anu_hybrid"  # the chosen model's paper loss


def test_unet_sharp_weights_its_decoder_branches_whichever_loss_unless_told(fingerprints, flair_anu_card) -> None:
    from cascadeseg.losses import build_loss

    planned, plan = plan_training(TrainConfig(data="x", minutes=20, model="unet_sharp"), fingerprints["lgg"], CPU)
    assert planned.loss == "unet_sharp_mixed" and planned.loss_options == {"aux_weight": 0.1}
    assert plan.choices["loss_options"].source == "planned"
    assert build_loss(planned.loss, **planned.loss_options).aux_weight == 0.1
    with_dice_ce, _ = plan_training(TrainConfig(data="x", minutes=20, model="unet_sharp", loss="dice_ce"),
                                    fingerprints["lgg"], CPU)
    assert with_dice_ce.loss_options == {"aux_weight": 0.1}
    # Given options replace the model's (the paper's eight-branch average: aux_weight None).
    told, plan = plan_training(TrainConfig(data="x", minutes=20, model="unet_sharp", loss_options={"aux_weight": 0.0}),
                               fingerprints["lgg"], CPU)
    assert told.loss_options == {"aux_weight": 0.0} and plan.choices["loss_options"].source == "given"
    # Models without a branch weighting of their own get none.
    unet, plan = plan_training(TrainConfig(data="x", minutes=20, model="unet_plus_plus"), fingerprints["lgg"], CPU)
    assert unet.loss_options == {} and "loss_options" not in plan.choices
    # Fine-tuning a UNet# whose card records the options it was trained with (none: Eq. 6) keeps them;
    # a card from before cards recorded options gets the model's.
    import dataclasses

    card = flair_anu_card
    options = {k: v for k, v in card.model_options.items() if k not in ("attention", "merge")}
    for recorded, expected, source in (({"loss_options": {}}, {}, "checkpoint"), ({}, {"aux_weight": 0.1}, "planned")):
        sharp = dataclasses.replace(card, architecture="unet_sharp", model_options=options,
                                    training={**card.training, "loss": "dice_ce", **recorded})
        tuned, plan = plan_training(TrainConfig(data="x", minutes=20, init_checkpoint="x"), fingerprints["lgg"], CPU, sharp)
        assert (tuned.model, tuned.loss, tuned.loss_options) == ("unet_sharp", "dice_ce", expected)
        assert plan.choices["loss_options"].source == source


def test_a_fresh_2d_lesion_run_scores_each_lesion_component_alone(fingerprints, flair_anu_card) -> None:
    """The planned U-Net on one lesion class in 2D adds dice_ce's component term (measured on LGG);
    given options, 3D, several classes, other models and fine-tunings are left as they were."""
    from cascadeseg.losses import build_loss

    lgg, plan = plan_training(TrainConfig(data="x", minutes=20), fingerprints["lgg"], CPU)
    assert (lgg.model, lgg.dims, lgg.loss, lgg.loss_options) == ("unet", 2, "dice_ce", {"component_weight": 1.0})
    assert plan.choices["loss_options"].source == "planned" and "five splits" in plan.choices["loss_options"].reason
    assert build_loss(lgg.loss, **lgg.loss_options).component_weight == 1.0
    off, plan = plan_training(TrainConfig(data="x", minutes=20, loss_options={"component_weight": 0.0}),
                              fingerprints["lgg"], CPU)
    assert off.loss_options == {"component_weight": 0.0} and plan.choices["loss_options"].source == "given"
    hippo, _ = plan_training(TrainConfig(data="x", minutes=10), fingerprints["hippocampus"], CPU)
    organs, _ = plan_training(TrainConfig(data="x", minutes=15), fingerprints["chaos"], CPU)
    as_3d, _ = plan_training(TrainConfig(data="x", minutes=20, dims=3), fingerprints["lgg"], CPU)
    nested, _ = plan_training(TrainConfig(data="x", minutes=20, model="unet_plus_plus"), fingerprints["lgg"], CPU)
    assert (hippo.dims, len(organs.class_values)) == (3, 5)
    # A fine-tuning of a plain U-Net whose card records no loss options keeps none.
    import dataclasses

    card = flair_anu_card
    options = {k: v for k, v in card.model_options.items() if k not in ("attention", "merge", "levels")}
    unet_card = dataclasses.replace(card, architecture="unet", model_options=options,
                                    training={k: v for k, v in {**card.training, "loss": "dice_ce"}.items()
                                              if k != "loss_options"})
    tuned, _ = plan_training(TrainConfig(data="x", minutes=20, init_checkpoint="x"), fingerprints["lgg"], CPU, unet_card)
    assert tuned.model == "unet"
    for other in (hippo, organs, as_3d, nested, tuned):
        assert other.loss == "dice_ce" and not (other.loss_options or {}).get("component_weight")


def test_a_deeply_supervised_unet_gets_nnunets_halved_weights(fingerprints) -> None:
    """--model-option deep_supervision=true on the plain U-Net: its outputs below full resolution
    weighted as nnU-Net weighs them, beside the planned loss options; given weights are kept."""
    cfg, plan = plan_training(TrainConfig(data="x", minutes=20, model_options={"deep_supervision": True}),
                              fingerprints["lgg"], CPU)
    assert cfg.model_options["deep_supervision"] is True and "levels" not in cfg.model_options  # 5 levels
    assert cfg.loss_options == {"component_weight": 1.0, "aux_weights": {"level1": 0.5, "level2": 0.25, "level3": 0.125}}
    assert "five splits" in plan.choices["loss_options"].reason and "nnU-Net" in plan.choices["loss_options"].reason
    given, plan = plan_training(
        TrainConfig(data="x", minutes=20, model_options={"deep_supervision": True}, loss_options={"aux_weights": {"level1": 1}}),
        fingerprints["lgg"], CPU)
    assert given.loss_options == {"aux_weights": {"level1": 1}} and plan.choices["loss_options"].source == "given"
    hippo, _ = plan_training(TrainConfig(data="x", minutes=10, model_options={"deep_supervision": True}),
                             fingerprints["hippocampus"], CPU)
    levels = hippo.model_options.get("levels", 5)
    assert hippo.loss_options["aux_weights"] == {f"level{k}": 0.5**k for k in range(1, levels - 1)}


def test_the_run_keeps_its_final_weights_when_the_schedule_settles(fingerprints, flair_anu_card, shared_data: Path) -> None:
    """A cosine schedule ends at a tiny learning rate: the run's model is its last checkpoint; a
    plateau schedule does not settle by the end of a budget: its best validated one; nor does a
    run on one or two volumes, validated on blocks of them (the real LiTS crop)."""
    one_volume, plan = plan_training(TrainConfig(data="x", minutes=20), _fingerprint(shared_data / "lits-crop"), CPU)
    assert one_volume.keep == "best" and "blocks of the training volumes" in plan.choices["keep"].reason
    cosine, plan = plan_training(TrainConfig(data="x", minutes=20), fingerprints["lgg"], CPU)
    assert cosine.keep == "last" and "final weights" in plan.choices["keep"].reason
    assert "-0.008 +- 0.009" in plan.choices["keep"].reason  # measured at 5 minutes on held-out patients
    plateau, _ = plan_training(TrainConfig(data="x", minutes=20, schedule="plateau"), fingerprints["lgg"], CPU)
    assert plateau.keep == "best"
    given, plan = plan_training(TrainConfig(data="x", minutes=20, keep="best"), fingerprints["lgg"], CPU)
    assert given.keep == "best" and plan.choices["keep"].source == "given"
    # A fine-tuning on three patients (the TCIA studies, validated on a whole patient) keeps its
    # final weights too, and says what the three-patient folds of benchmarks/fewshot_rules.py measured.
    card = flair_anu_card
    tuned, plan = plan_training(TrainConfig(data="x", minutes=15, init_checkpoint="c"), fingerprints["tcia"], CPU, card)
    assert tuned.keep == "last" and "three shifted LGG patients" in plan.choices["keep"].reason


def test_gapped_label_values_are_packed_into_channels(shared_data: Path) -> None:
    ct = load_volume(shared_data / "totalseg" / "example_ct_sm.nii.gz")
    seg = load_labels(shared_data / "totalseg" / "example_seg.nii.gz", reference=ct)
    fp = fingerprint([("ct", ct, seg.array.astype(np.uint8))], ["CT"], patient_id)
    planned, plan = plan_training(TrainConfig(data="x", minutes=5), fp, CPU)
    present = sorted(int(v) for v in np.unique(seg.array))
    assert planned.class_values == present and len(present) < max(present) + 1
    assert "one output channel per value present" in plan.choices["class_values"].reason


# -- training runs ------------------------------------------------------------------------------

def _tumour_slab(image: Volume, labels: Volume, slices: int = 12) -> tuple[Volume, Volume]:
    z = np.flatnonzero(labels.array.any(axis=(1, 2)))
    lo = max(0, min(int(z.mean()) - slices // 2, labels.array.shape[0] - slices))
    return image.with_array(image.array[:, lo:lo + slices].copy()), labels.with_array(labels.array[lo:lo + slices].copy())


@pytest.fixture(scope="module")
def lgg_pairs(shared_data: Path) -> list[tuple[Volume, Volume]]:
    root = shared_data / "lgg-flair"
    pairs = []
    for case in ("TCGA_CS_4941_19960909", "TCGA_CS_4943_20000902", "TCGA_DU_6404_19850629"):
        image = load_volume(root / "imagesTr" / f"{case}_0000.nii.gz")
        pairs.append(_tumour_slab(image, load_labels(root / "labelsTr" / f"{case}.nii.gz", reference=image)))
    return pairs


def test_a_tiny_budget_is_kept_and_leaves_a_validated_checkpoint(lgg_pairs, tmp_path: Path, monkeypatch) -> None:
    from cascadeseg.training import planner
    from cascadeseg.training import trainer as trainer_module

    monkeypatch.setattr(planner, "available_cores", lambda: 2)  # threads are planned: two, then measured
    # bf16 steps are planned (as on a CPU with AMX), then timed against fp32 (emulated bf16 loses).
    monkeypatch.setattr(planner, "cpu_has_native_bf16", lambda: True)
    # One thread (and then fp32) is tried only while the calibration has used under half its share
    # (5 % of 30 s: 0.75 s, missed on a loaded CI machine); 40 % of the budget leaves room for
    # both comparisons (the timed steps are training steps: the budget is not spent on them).
    monkeypatch.setattr(trainer_module, "CALIBRATION_SHARE", 0.4)
    budget = 30.0
    config = TrainConfig(data=lgg_pairs, run_dir=str(tmp_path / "run"), minutes=budget / 60, seed=0, model="unet",
                         val_cases=["TCGA_DU_6404_19850629"], val_fraction=0.34)
    t0 = time.perf_counter()
    result = train(config)
    wall = time.perf_counter() - t0
    # The budget ends the run, or the planned epochs do when they fill it (the epochs left share
    # the time left at the pace measured so far): within 10 % of the budget either way.
    assert result.stopped in ("time", "epochs") and result.epochs_completed >= 1
    assert 0.9 * budget <= wall <= 1.1 * budget, f"{wall:.1f} s for a {budget:.0f} s budget"
    assert result.elapsed_seconds <= wall
    assert result.best_checkpoint is not None and result.last_checkpoint is not None
    # The run's model is the final weights (cosine schedule), validated, and result.json says so.
    assert result.keep == "last" and result.model_checkpoint == result.last_checkpoint
    assert result.model_dice == result.last_dice is not None
    recorded = json.loads((tmp_path / "run" / "result.json").read_text())
    assert recorded["keep"] == "last" and recorded["model_checkpoint"] == str(result.last_checkpoint)
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["schedule"]["seconds_per_step"] > 0 and plan["choices"]["dims"]["value"] == 2
    # The first steps ran with two threads and with one; the faster was kept, with both times.
    threads = plan["choices"]["threads"]
    assert threads["source"] == "measured" and threads["value"] in (1, 2)
    assert "with 1 thread" in threads["reason"] and "with 2" in threads["reason"]
    precision = plan["choices"]["cpu_precision"]
    assert precision["source"] == "measured" and precision["value"] in ("bf16", "fp32")
    assert "in bf16" in precision["reason"] and "in fp32" in precision["reason"]
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["dims"] == 2 and stored["target_spacing"] and stored["batch_size"]  # the planned config
    assert config.dims is None and config.batch_size is None  # the caller's is untouched


def test_cancel_stops_within_five_seconds_even_during_validation(lgg_pairs, tmp_path: Path, monkeypatch) -> None:
    from cascadeseg.training import trainer as trainer_module

    cancel = threading.Event()
    real_validate = trainer_module.validate
    seen = {}

    def validate_then_cancel(*args, **kwargs):
        # Cancel while the predictor is segmenting the validation cases: it must stop mid-way.
        seen["t"] = time.perf_counter()
        cancel.set()
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "validate", validate_then_cancel)
    config = TrainConfig(data=lgg_pairs, run_dir=str(tmp_path / "run"), epochs=3, steps_per_epoch=2, seed=0,
                         val_cases=["TCGA_DU_6404_19850629"], val_fraction=0.34, threads=1)
    result = train(config, cancel=cancel)
    assert time.perf_counter() - seen["t"] < 5.0
    assert result.stopped == "cancelled" and result.best_checkpoint is None
    load_checkpoint(result.last_checkpoint)  # the last finished step's weights, loadable
    card = json.loads((result.last_checkpoint / "model_card.json").read_text())
    assert "cancelled" in card["training"]["note"]


def test_cancel_between_steps_stops_at_once(lgg_pairs, tmp_path: Path) -> None:
    cancel = threading.Event()
    stamps = {}

    class StopAtStep:
        def on_step(self, info):
            if info.step == 3:
                stamps["t"] = time.perf_counter()
                cancel.set()

    config = TrainConfig(data=lgg_pairs, run_dir=str(tmp_path / "run"), minutes=5, seed=0, threads=1,
                         val_cases=["TCGA_DU_6404_19850629"], val_fraction=0.34)
    result = train(config, callbacks=StopAtStep(), cancel=cancel)
    assert time.perf_counter() - stamps["t"] < 5.0
    assert result.stopped == "cancelled" and result.steps == 3


def test_validation_dice_is_the_predictors_dice_on_a_real_case(lgg_pairs, tmp_path: Path) -> None:
    """The Dice the trainer records for a validation patient equals segmenting that patient's
    scan with Predictor (as `cascadeseg predict` does) and scoring it with cascadeseg.metrics."""
    config = TrainConfig(data=lgg_pairs, run_dir=str(tmp_path / "run"), model="anu_net",
                         model_options={"base_width": 4}, epochs=1, steps_per_epoch=4, seed=0, threads=1,
                         inplane_size=96, val_cases=["TCGA_DU_6404_19850629"], val_fraction=0.34)
    result = train(config)
    card = json.loads((result.best_checkpoint / "model_card.json").read_text())
    recorded = card["validation"]["dice_per_case"]["TCGA_DU_6404_19850629"]
    image, labels = lgg_pairs[2]
    predictor = Predictor.from_checkpoint(result.best_checkpoint, device="cpu")
    assert predictor.card.target_spacing[1] != image.spacing[1]  # resampled on the way: the hard case
    from cascadeseg.inference import PredictionRequest

    out = predictor.predict(image, want=PredictionRequest(depths=True))
    for depth, volume in out.depth_labels.items():
        assert case_mean_dice(volume.array, labels.array, [1]) == pytest.approx(recorded[str(depth)], abs=1e-4)
    assert set(recorded) == {"1", "2", "3", "4"}


def test_a_3d_run_on_the_real_ct_keeps_to_4_gb(shared_data: Path, tmp_path: Path) -> None:
    """The 122 x 101 x 112 CT with its 62 organ labels, planned in 3D: peak resident memory of the
    whole training process (data, steps, validation) stays under 4 GB."""
    ct = shared_data / "totalseg" / "example_ct.nii.gz"
    seg = shared_data / "totalseg" / "example_seg_fast_force_split.nii.gz"
    code = (
        "import resource, sys; from cascadeseg.cli.main import main; "
        f"code = main(['train', '--pairs', {str(ct)!r}, {str(seg)!r}, '--dims', '3', '--minutes', '0.4', "
        f"'--run-dir', {str(tmp_path / 'run')!r}, '--no-progress']); "
        "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak_gb = int(proc.stdout.split("PEAK_KB")[1].split()[0]) / 1024**2
    assert peak_gb < 4.0
    card = json.loads((tmp_path / "run" / "last" / "model_card.json").read_text())
    assert len(card["classes"]) == 62 and card["classes"][-1]["value"] == 117
    assert "slice block(s) of 1 volume(s)" in proc.stderr


def test_given_grid_and_axis_win_over_the_checkpoint_and_contradictions_are_refused(fingerprints) -> None:
    """Fine-tuning the CHAOS MRI model on another modality (MRI -> CT): its 7.7 mm slice grid is
    the default, a given target spacing (or in-plane size) and slicing axis win, and a given model
    or dimensionality that the checkpoint cannot be is an error, not silently replaced."""
    from cascadeseg.inference.checkpoint import read_card
    from cascadeseg.shipped import checkpoints_dir

    card = read_card(checkpoints_dir() / "chaos_t2_anu_net_2d")
    fp = fingerprints["chaos"]
    inherited, plan = plan_training(TrainConfig(data="x", minutes=20, init_checkpoint="c"), fp, CPU, card)
    assert inherited.target_spacing == list(card.target_spacing)
    assert plan.choices["target_spacing"].source == "checkpoint"
    told, plan = plan_training(
        TrainConfig(data="x", minutes=20, init_checkpoint="c", target_spacing=[2.0, 2.0, 2.0], axis=1), fp, CPU, card
    )
    assert told.target_spacing == [2.0, 2.0, 2.0] and plan.choices["target_spacing"].source == "given"
    assert told.axis == 1 and plan.choices["axis"].source == "given"
    sized, plan = plan_training(TrainConfig(data="x", minutes=20, init_checkpoint="c", inplane_size=128), fp, CPU, card)
    assert sized.target_spacing != list(card.target_spacing) and plan.choices["target_spacing"].source == "given"
    with pytest.raises(ModelConfigError, match="is a 2D model, but dims=3 was given"):
        plan_training(TrainConfig(data="x", minutes=20, init_checkpoint="c", dims=3), fp, CPU, card)
    with pytest.raises(ModelConfigError, match="is of architecture 'anu_net', but model 'unet' was given"):
        plan_training(TrainConfig(data="x", minutes=20, init_checkpoint="c", model="unet"), fp, CPU, card)


def test_a_checkpoint_normalisation_of_the_other_modality_is_replaced_by_the_datas_own(
    fingerprints, shared_data: Path
) -> None:
    """Fine-tuning across modalities: an MR checkpoint's z-score on CT data (the LiTS crop) gives way
    to the CT window of the data's labelled structures; a CT checkpoint's HU window on MR data (the
    hippocampus crops) to the z-score; the same family keeps the checkpoint's spec."""
    from cascadeseg.inference.checkpoint import read_card
    from cascadeseg.shipped import checkpoints_dir

    mr_card = read_card(checkpoints_dir() / "chaos_t2_anu_net_2d")
    ct_card = read_card(checkpoints_dir() / "ct_liver_unet_3d")
    ct_data = _fingerprint(shared_data / "lits-crop")
    fallback = [{"type": "reader default"}]
    specs, reason, source = plan_preprocessing(ct_data, fallback, mr_card)
    assert specs[0]["type"] == "ct_window" and source == "planned" and "the data is CT" in reason
    own, _, _ = plan_preprocessing(ct_data, fallback)  # what a run from scratch plans
    assert specs == own
    specs, reason, source = plan_preprocessing(fingerprints["hippocampus"], fallback, ct_card)
    assert specs[0]["type"] == "mri_zscore" and "the data is MR / unknown" in reason
    specs, _, source = plan_preprocessing(ct_data, fallback, ct_card)
    assert specs == [ct_card.input_channels[0]["preprocessing"]] and source == "checkpoint"
    specs, _, source = plan_preprocessing(fingerprints["chaos"], fallback, mr_card)
    assert specs == [mr_card.input_channels[0]["preprocessing"]] and source == "checkpoint"


def test_class_names_come_from_dataset_json_and_a_checkpoint_naming_a_value_otherwise_is_a_warning(
    shared_data: Path, tmp_path: Path
) -> None:
    """The LiTS crop as an MSD folder whose dataset.json names its labels (1 liver, 2 tumour): a
    fresh model takes those names; fine-tuned from the CHAOS model, whose value 2 is the right
    kidney, the plan keeps the data's names and warns that the kidney output is retrained as
    tumour (a transfer may mean it; a labelling slip more often does)."""
    from cascadeseg.inference.checkpoint import read_card
    from cascadeseg.io.msd_layout import label_values_from_json
    from cascadeseg.shipped import checkpoints_dir
    from cascadeseg.training.datasets import dataset_class_names

    folder = tmp_path / "lits"
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
        for path in (shared_data / "lits-crop" / sub).glob("*.nii.gz"):
            (folder / sub / path.name).symlink_to(path)
    (folder / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "CT"}, "labels": {"0": "background", "1": "liver", "2": "tumour"}})
    )
    assert dataset_class_names(folder) == {0: "background", 1: "liver", 2: "tumour"}
    # nnU-Net v2's form names the same values; its region entries name no single value
    assert label_values_from_json({"labels": {"background": 0, "liver": 1, "tumour": 2, "any": [1, 2]}}) == {
        "background": 0,
        "liver": 1,
        "tumour": 2,
    }
    fp = _fingerprint(folder)
    fp.class_names = dataset_class_names(folder)
    fresh, plan = plan_training(TrainConfig(data=str(folder), minutes=5), fp, CPU)
    assert fresh.class_names == ["background", "liver", "tumour"] and not plan.warnings
    card = read_card(checkpoints_dir() / "chaos_t2_anu_net_2d")
    tuned, plan = plan_training(TrainConfig(data=str(folder), minutes=5, init_checkpoint="c"), fp, CPU, card)
    assert tuned.class_names == ["background", "liver", "tumour", "left kidney", "spleen"]
    assert (
        len(plan.warnings) == 1
        and "value 2 is 'right kidney' in the checkpoint but 'tumour' in the data" in plan.warnings[0]
    )
    assert "warnings:" in plan.describe() and plan.to_dict()["warnings"] == plan.warnings
    told, plan = plan_training(
        TrainConfig(data=str(folder), minutes=5, init_checkpoint="c", class_names=["bg", "a", "b", "c", "d"]),
        fp,
        CPU,
        card,
    )
    assert told.class_names == ["bg", "a", "b", "c", "d"] and not plan.warnings
    # A value nobody named (a training set writes "label_2") is not a name that contradicts one.
    fp.class_names = {0: "background", 1: "liver", 2: "label_2"}
    unnamed, plan = plan_training(TrainConfig(data=str(folder), minutes=5, init_checkpoint="c"), fp, CPU, card)
    assert unnamed.class_names == ["background", "liver", "right kidney", "left kidney", "spleen"] and not plan.warnings
    # Nor is a checkpoint's placeholder ("class 2": a card that never named it).
    import copy

    unnamed_card = copy.deepcopy(card)
    unnamed_card.classes[2]["name"] = "class 2"
    fp.class_names = dataset_class_names(folder)
    renamed, plan = plan_training(TrainConfig(data=str(folder), minutes=5, init_checkpoint="c"), fp, CPU, unnamed_card)
    assert renamed.class_names[:3] == ["background", "liver", "tumour"] and not plan.warnings
    # A folder that names nothing (../shared's crops) leaves the checkpoint's names to the card.
    plain = _fingerprint(shared_data / "lits-crop")
    kept, plan = plan_training(TrainConfig(data="x", minutes=5, init_checkpoint="c"), plain, CPU, card)
    assert kept.class_names is None and not plan.warnings


def test_a_wide_cpu_network_the_budget_affords_few_steps_is_narrowed(fingerprints, lgg_pairs, monkeypatch) -> None:
    """100 thread-minutes plan width 16; on the hippocampus crops a width-16 3D step measured 12.75 s
    on this CPU (428 steps in the budget), so the measured pace narrows it to 8, and says so; at
    LGG's 2D pace (0.55 s) the width stays. Given widths, checkpoints and GPUs are never narrowed.
    Then through the trainer's calibration on real LGG slices, with the floor raised so that it
    must act: the plan and the network it builds are both width 8."""
    from cascadeseg.training import planner
    from cascadeseg.training.planner import WIDTH_STEP_FLOOR, narrower_width
    from cascadeseg.training.trainer import plan_only

    cfg, plan = plan_training(TrainConfig(data="x", minutes=100, threads=1), fingerprints["hippocampus"], CPU)
    assert plan.choices["base_width"].value == 16 and plan.choices["base_width"].source == "planned"
    assert narrower_width(plan, cfg, 0.55, 100 * 60) is None  # 9,800 steps: wide enough
    assert narrower_width(plan, cfg, 12.75, 100 * 60) == 8
    assert plan.choices["base_width"].value == 8 and "about 424 steps" in plan.choices["base_width"].reason
    assert str(WIDTH_STEP_FLOOR) in plan.choices["base_width"].reason
    given, plan = plan_training(
        TrainConfig(data="x", minutes=100, threads=1, model_options={"base_width": 16}), fingerprints["hippocampus"], CPU
    )
    assert narrower_width(plan, given, 12.75, 100 * 60) is None
    on_gpu, plan = plan_training(TrainConfig(data="x", minutes=100), fingerprints["hippocampus"], GPU)
    assert narrower_width(plan, on_gpu, 12.75, 100 * 60) is None

    monkeypatch.setattr(planner, "WIDTH_STEP_FLOOR", 10**9)
    from cascadeseg.training import trainer as trainer_module

    built = {}
    real_release = trainer_module.Trainer.release

    def release(self):
        built["options"], built["first_conv"] = self.cfg.model_options, next(self.model.parameters()).shape
        return real_release(self)

    monkeypatch.setattr(trainer_module.Trainer, "release", release)
    config = TrainConfig(data=lgg_pairs, minutes=61, threads=1, seed=0, model="unet",
                         val_cases=["TCGA_DU_6404_19850629"], val_fraction=0.34)
    measured = plan_only(config)
    width = measured.choices["base_width"]
    assert width.value == 8 and "61 CPU thread-minutes: width 16, but width 16 measured" in width.reason
    assert measured.schedule["seconds_per_step"] > 0  # the schedule is the narrow network's
    assert built["options"]["base_width"] == 8 and built["first_conv"][0] == 8


def test_a_budget_too_small_for_the_number_of_structures_is_flagged_with_the_minutes_it_needs(
    shared_data: Path, fingerprints
) -> None:
    """The 62-class TotalSegmentator CT at 20 minutes (1.87 s per 3D step on this CPU: about 600
    steps, 10 per structure) is flagged, with the minutes that give 50 per structure; re-planning
    after a calibration replaces the warning. The same budget for a fine-tuning, or for the
    hippocampus crops' two structures, is not flagged."""
    from cascadeseg.training.planner import BUDGET_WARNING_PREFIX, MIN_STEPS_PER_STRUCTURE, schedule_for_budget

    ct = load_volume(shared_data / "totalseg" / "example_ct.nii.gz")
    seg = load_labels(shared_data / "totalseg" / "example_seg_fast_force_split.nii.gz", reference=ct)
    fp = fingerprint([("ct", ct, seg.array.astype(np.uint8))], ["CT"], patient_id)

    def flagged(cfg: TrainConfig, plan, step_seconds: float = 1.87) -> list[str]:
        schedule_for_budget(plan, cfg, step_seconds=step_seconds, case_seconds=[1.2], startup_seconds=13.0,
                            train_samples=1)
        return [w for w in plan.warnings if w.startswith(BUDGET_WARNING_PREFIX)]

    cfg, plan = plan_training(TrainConfig(data="x", minutes=20, threads=1), fp, CPU)
    structures = len(cfg.class_values or []) - 1
    assert structures == 61
    (warning,) = flagged(cfg, plan)
    steps = plan.schedule["estimated_steps"]
    assert steps < MIN_STEPS_PER_STRUCTURE * structures
    assert f"about {steps} optimiser steps for 61 structure(s)" in warning
    minutes = int(warning.split("Give at least ")[1].split(" minutes")[0])
    (again,) = flagged(cfg, plan, step_seconds=1.5)  # a calibration re-plans: one warning, updated
    assert again != warning
    longer, plan = plan_training(TrainConfig(data="x", minutes=minutes, threads=1), fp, CPU)
    assert flagged(longer, plan) == []  # the minutes asked for buy 50 steps per structure
    assert plan.schedule["estimated_steps"] >= MIN_STEPS_PER_STRUCTURE * structures
    shorter, plan = plan_training(TrainConfig(data="x", minutes=0.9 * minutes, threads=1), fp, CPU)
    assert len(flagged(shorter, plan)) == 1  # and not many more than that

    tuned, plan = plan_training(TrainConfig(data="x", minutes=20, threads=1), fp, CPU)
    tuned.init_checkpoint = "a checkpoint that knows these organs"
    assert flagged(tuned, plan) == []
    hippo, plan = plan_training(TrainConfig(data="x", minutes=20, threads=1), fingerprints["hippocampus"], CPU)
    assert flagged(hippo, plan) == []


def test_a_few_shot_fine_tuning_given_no_budget_runs_two_minutes(fingerprints, flair_anu_card) -> None:
    """Neither minutes nor epochs: a fine-tuning on three to ten patients gets FEW_SHOT_MINUTES (its
    held-out gain comes in the first epoch), on one or two the budget their rules were measured at,
    anything else DEFAULT_MINUTES; the plan says which and why, and a given budget wins."""
    from cascadeseg.training.config import DEFAULT_MINUTES, FEW_SHOT_MINUTES, SLICE_BLOCK_FINE_TUNING_MINUTES

    card = flair_anu_card
    tuned, plan = plan_training(TrainConfig(data="x", init_checkpoint="c"), fingerprints["tcia"], CPU, card)
    assert tuned.minutes == FEW_SHOT_MINUTES == plan.minutes == 2.0
    assert "a fine-tuning on 3 patient(s)" in plan.choices["minutes"].reason
    assert "+0.009 +- 0.010 against 8" in plan.choices["minutes"].reason
    fresh, plan = plan_training(TrainConfig(data="x"), fingerprints["tcia"], CPU)
    assert fresh.minutes == DEFAULT_MINUTES and plan.choices["minutes"].reason == "no budget given: 30 minutes"
    many, _ = plan_training(TrainConfig(data="x", init_checkpoint="c"), fingerprints["lgg"], CPU, card)
    assert fingerprints["lgg"].num_patients == 12 and many.minutes == DEFAULT_MINUTES
    two = dataclasses.replace(fingerprints["tcia"], num_patients=2)  # slice-block validation, best/ kept
    pair, plan = plan_training(TrainConfig(data="x", init_checkpoint="c"), two, CPU, card)
    assert pair.minutes == SLICE_BLOCK_FINE_TUNING_MINUTES == 8.0 and "-0.018 +- 0.017" in plan.choices["minutes"].reason
    given, plan = plan_training(TrainConfig(data="x", minutes=15, init_checkpoint="c"), fingerprints["tcia"], CPU, card)
    assert given.minutes == 15 and "minutes" not in plan.choices
    by_epochs, plan = plan_training(TrainConfig(data="x", epochs=3, init_checkpoint="c"), fingerprints["tcia"], CPU, card)
    assert by_epochs.minutes is None and "minutes" not in plan.choices


def test_a_fine_tuning_on_a_few_patients_gets_a_tenth_of_the_learning_rate(fingerprints, flair_anu_card) -> None:
    """The shipped FLAIR ANU-Net on the TCIA studies (3 patients): 1e-4, the rate that fine-tuned it
    best on few shifted patients (benchmarks/fewshot_rules.py); LGG from scratch or a fine-tuning on
    more than ten patients: 1e-3; a given rate wins."""
    card = flair_anu_card
    tuned, plan = plan_training(TrainConfig(data="x", minutes=15, init_checkpoint="c"), fingerprints["tcia"], CPU, card)
    assert fingerprints["tcia"].num_patients == 3
    assert tuned.lr == 1e-4 and plan.choices["lr"].source == "planned" and "3 patient(s)" in plan.choices["lr"].reason
    fresh, plan = plan_training(TrainConfig(data="x", minutes=20), fingerprints["lgg"], CPU)
    assert fresh.lr == 1e-3 and plan.choices["lr"].source == "planned"
    many, _ = plan_training(TrainConfig(data="x", minutes=20, init_checkpoint="c"), fingerprints["lgg"], CPU, card)
    assert fingerprints["lgg"].num_patients == 12 and many.lr == 1e-3
    given, plan = plan_training(
        TrainConfig(data="x", minutes=15, init_checkpoint="c", lr=3e-4), fingerprints["tcia"], CPU, card
    )
    assert given.lr == 3e-4 and plan.choices["lr"].source == "given"
