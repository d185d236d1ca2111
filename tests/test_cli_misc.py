"""The ``cascadeseg`` command: help, one-line errors, ``models``, ``evaluate``, ``bench``, ranks."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cascadeseg.cli.main import COMMANDS, main
from cascadeseg.distributed import RankInfo, rank_info, shard
from cascadeseg.errors import CascadeSegError
from cascadeseg.inference.checkpoint import read_card, resolve_checkpoint
from cascadeseg.models import model_names

MY_COMMANDS = ("predict", "evaluate", "models", "bench", "train", "plan", "demo", "ensemble")
LGG_CASES = ("TCGA_CS_4941_19960909", "TCGA_CS_6665_20010817")


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("command", MY_COMMANDS)
def test_subcommand_help_documents_every_option(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    parser = importlib.import_module(COMMANDS[command][0]).add_parser(
        __import__("argparse").ArgumentParser().add_subparsers())
    for action in parser._actions:  # every option appears with a help text
        for flag in action.option_strings:
            assert flag in out, flag
        assert action.help, action.dest


def test_train_options_come_from_the_config_and_say_their_defaults() -> None:
    """Every TrainConfig field marked for the command line is a `train` option, its help says its
    default as the config has it ("planned" where the planner decides), and the help strings hold
    no default of their own."""
    import argparse
    from dataclasses import MISSING, fields

    from cascadeseg.cli.train import add_train_arguments
    from cascadeseg.training.config import PLANNED_FIELDS, TrainConfig

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    by_dest = {a.dest: a for a in parser._actions}
    for f in fields(TrainConfig):
        if not f.metadata.get("cli"):
            continue
        action = by_dest[f.name]
        assert f.metadata["help"] in action.help and "default" not in f.metadata["help"], f.name
        if f.name in PLANNED_FIELDS and f.default is None:
            assert action.help.endswith("(default: planned)"), f.name
        elif f.default is not MISSING and f.default not in (None, "", False, True):
            assert action.help.endswith(f"(default: {f.default})"), f.name


def test_console_script_runs_without_traceback(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("cascadeseg")
    exe = [str(script)] if script.exists() else [sys.executable, "-m", "cascadeseg.cli.main"]
    ok = subprocess.run([*exe, "models"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "anu_net" in ok.stdout
    bad = subprocess.run([*exe, "predict", str(tmp_path / "none.nii.gz"), "-o", str(tmp_path), "-c", "x"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().count("\n") == 0 and bad.stderr.startswith("cascadeseg: error:")


@pytest.mark.parametrize("argv, message", [
    (["predict"], "the following arguments are required"),
    (["predict", "x.nii.gz", "-o", "out", "-c", "ck", "--depth", "two"], "invalid int value: 'two'"),
    (["predict", "x.nii.gz", "-o", "out", "-c", "ck", "--mode", "4d"], "invalid choice: '4d'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["models", "no_such_model"], "unknown model 'no_such_model'"),
    (["bench", "--models", "nope", "--skip", "2d", "3d", "peers", "overhead", "e2e"], "unknown model 'nope'"),
])
def test_wrong_arguments_give_one_line_errors(argv: list[str], message: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse exits itself
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("cascadeseg: error:") and message in err and err.count("\n") == 1, err


def test_models_lists_the_registry_and_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in model_names():
        assert f"| {name} |" in out
    assert "| anu_net | ANU-Net" in out and "L1,L2,L3,L4" in out
    from cascadeseg.inference import ModelCard, save_checkpoint, user_models_dir
    from cascadeseg.models import create_model

    monkeypatch.setenv("CASCADESEG_HOME", str(tmp_path))
    options = {"in_channels": 1, "num_classes": 2, "dims": 2, "base_width": 4, "levels": 3}
    card = ModelCard(architecture="unet", model_options=options, dims=2,
                     input_channels=[{"name": "FLAIR", "preprocessing": {"type": "mri_zscore"}}],
                     classes=[{"value": 0, "name": "background"}, {"value": 1, "name": "lesion"}],
                     validation={"dice_per_depth": {"1": 0.81}}, recommended_depth=1)
    save_checkpoint(create_model("unet", **options), card, user_models_dir() / "my-lgg")
    assert main(["models", "--checkpoints"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "my-lgg" in line)
    assert "| user | unet | 2D | FLAIR | background,lesion | L1 | 0.810 |" in row


def test_evaluate_scores_real_reference_copies_perfectly(shared_data: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Predictions that are copies of the real references: Dice 1, HD95 0, and the files written."""
    pred = tmp_path / "pred"
    pred.mkdir()
    for case in LGG_CASES:
        shutil.copy(shared_data / "lgg-flair/labelsTr" / f"{case}.nii.gz", pred)
    out_csv = tmp_path / "scores" / "per_case.csv"
    assert main(["evaluate", str(pred), str(shared_data / "lgg-flair/labelsTr"), "-o", str(out_csv)]) == 0
    assert "| 1 | 2 | 1.0000 | 1.0000 | 1.0000 |" in capsys.readouterr().out
    rows = [line.split(",") for line in out_csv.read_text().splitlines()[1:]]
    assert [(r[0], r[1], float(r[2]), float(r[7])) for r in rows] == [(c, "1", 1.0, 0.0) for c in LGG_CASES]
    summary = json.loads(out_csv.with_suffix(".json").read_text())
    assert summary["cases"] == 2 and summary["summary"]["1"]["global_dice"] == 1.0
    # An existing report is not replaced without --overwrite; a prediction without reference fails.
    assert main(["evaluate", str(pred), str(shared_data / "lgg-flair"), "-o", str(out_csv)]) == 2
    assert "already exists" in capsys.readouterr().err
    shutil.copy(shared_data / "lgg-flair/labelsTr" / f"{LGG_CASES[0]}.nii.gz", pred / "not_a_case.nii.gz")
    assert main(["evaluate", str(pred), str(shared_data / "lgg-flair"), "-o", str(tmp_path / "b.csv")]) == 2
    assert "no reference for 1 prediction(s) (not_a_case)" in capsys.readouterr().err


def test_bench_quick_writes_json_and_markdown(shared_data: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A tiny bench run (width 2, the U-Net only, no 3D/peers) proves the report is produced and
    stamped; the real figures come from running the command, not from this test."""
    argv = ["bench", "--quick", "--models", "unet", "--widths", "2", "--min-time", "0", "--skip", "3d", "peers",
            "--data", str(shared_data), "--output-dir", str(tmp_path)]
    assert main(argv) == 0
    report = json.loads(next(tmp_path.glob("inference_cpu_*.json")).read_text())
    assert report["meta"]["torch"] and report["meta"]["threads"] >= 1 and report["meta"]["device"] == "cpu"
    section = report["widths"]["2"]
    assert [(r["model"], r["batch"]) for r in section["2d"]] == [("unet", 1), ("unet", 16)]
    assert all(r["slices_per_s"] > 0 and r["gflops_per_slice"] > 0 for r in section["2d"])
    assert section["overhead"]["bare_forward_s"] > 0 and section["e2e"][0]["model"] == "unet"
    assert "engine_overhead_below_15pct" in section["targets"]
    assert "# Inference benchmark — cpu" in next(tmp_path.glob("inference_cpu_*.md")).read_text()


def test_rank_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert rank_info() == RankInfo(0, 1, 0) and not rank_info().is_distributed
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert rank_info().is_distributed and not rank_info().is_main
    assert shard(["a", "b", "c"]) == ["b"] and shard(["a", "b", "c"], RankInfo(0, 2)) == ["a", "c"]
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(CascadeSegError, match="inconsistent torchrun environment"):
        rank_info()


def test_evaluate_brats_regions_on_real_segmentations(shared_data: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Two real BraTS-algorithm outputs of one patient: WT/TC/ET rows, WT Dice equal to a direct
    count, and ET (present in one map only) scored 0 with an infinite HD95 reported as such."""
    import nibabel as nib
    import numpy as np

    folder = shared_data / "brats-like" / "TCGA-DU-7294"
    for name, source in (("pred", "hnfnetv1-20"), ("ref", "isen-20")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "TCGA-DU-7294.nii.gz").symlink_to(folder / f"{source}.nii.gz")
    csv_path = tmp_path / "scores.csv"
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "ref"), "--regions", "brats",
                 "-o", str(csv_path)]) == 0
    rows = {r.split(",")[1]: r.split(",") for r in csv_path.read_text().splitlines()[1:]}
    assert sorted(rows) == ["ET", "TC", "WT"]
    pred = np.asarray(nib.load(str(folder / "hnfnetv1-20.nii.gz")).dataobj) > 0
    ref = np.asarray(nib.load(str(folder / "isen-20.nii.gz")).dataobj) > 0
    expected = 2 * np.count_nonzero(pred & ref) / (np.count_nonzero(pred) + np.count_nonzero(ref))
    assert abs(float(rows["WT"][2]) - expected) < 1e-5
    assert float(rows["ET"][2]) == 0.0 and rows["ET"][7] == "inf"
    assert "1 inf" in capsys.readouterr().out


def test_models_table_measures_the_named_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "unet", "--table"]) == 0
    out = capsys.readouterr().out
    assert "| model | depth | params 2D (M) |" in out and "| unet | full | 7.762 |" in out


def test_plan_command_prints_the_plan_and_writes_it_as_json(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`cascadeseg plan DATA` on eight real 3D hippocampus crops: the readable plan on stdout, with
    the steps the budget buys, and the same plan as JSON where --json says (explicit options marked
    given, choices taken from the shipped model it fine-tunes marked so)."""
    source = shared_data / "hippocampus"
    folder = tmp_path / "hippo"
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
    # The two crops the shipped model never trained on validate (the trainer refuses to validate a
    # fine-tuning on its checkpoint's training patients); six it did train on are the training set.
    unseen = ["hippocampus_014", "hippocampus_036"]
    crops = [p.name[: -len(".nii.gz")] for p in sorted((source / "labelsTr").glob("*.nii.gz"))]
    for case in [c for c in crops if c not in unseen][:6] + unseen:
        (folder / "labelsTr" / f"{case}.nii.gz").symlink_to(source / "labelsTr" / f"{case}.nii.gz")
        (folder / "imagesTr" / f"{case}_0000.nii.gz").symlink_to(source / "imagesTr" / f"{case}_0000.nii.gz")
    out_json = tmp_path / "plan.json"
    forced = [arg for case in unseen for arg in ("--val-case", case)]
    assert main(["plan", str(folder), "--minutes", "2", "--threads", "1", *forced, "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "dims" in printed and "estimated_steps" in printed
    plan = json.loads(out_json.read_text())
    # Eight cases: few-shot, so the planner starts from the shipped 3D hippocampus model and takes
    # its dimensionality from it.
    assert "hippocampus_unet_plus_plus_3d" in str(plan["choices"]["init_checkpoint"]["value"])
    assert plan["choices"]["dims"]["value"] == 3 and plan["choices"]["dims"]["source"] == "checkpoint"
    assert plan["choices"]["threads"] == {"value": 1, "source": "given", "reason": "given"}
    assert plan["fingerprint"]["num_cases"] == 8 and plan["schedule"]["estimated_steps"] > 0


def test_channel_names_given_decide_which_input_of_the_shipped_model_each_channel_feeds(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The four TCIA studies (channels 0000 = T1 post-contrast, 0001 = FLAIR, named by no file):
    with --channel-names the FLAIR channel takes the shipped FLAIR model's input weights and its
    normalisation, and T1c starts at zero weights (unnamed, both channels would share them)."""
    out_json = tmp_path / "plan.json"
    args = ["plan", str(shared_data / "tcia-btp"), "--minutes", "2", "--threads", "1", "--json", str(out_json)]
    assert main([*args, "--channel-names", "T1c", "FLAIR"]) == 0
    capsys.readouterr()
    plan = json.loads(out_json.read_text())
    assert plan["choices"]["init_checkpoint"]["value"] == "lgg_flair_anu_net_2d"
    assert plan["choices"]["channel_mapping"]["value"] == "T1c <- (new, zero weights); FLAIR <- FLAIR"
    assert [c["name"] for c in plan["fingerprint"]["channels"]] == ["T1c", "FLAIR"]
    flair_spec = read_card(resolve_checkpoint("lgg_flair_anu_net_2d")).input_channels[0]["preprocessing"]
    assert plan["choices"]["preprocessing"]["value"][1] == flair_spec
