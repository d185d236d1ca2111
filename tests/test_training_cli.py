"""`cascadeseg train`: complete --help, a real run from file pairs, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cascadeseg.cli.main import main
from cascadeseg.io import load_labels, load_volume, save_labels, save_volume

CASES = ["TCGA_CS_4941_19960909", "TCGA_CS_4943_20000902"]


def test_help_lists_every_option(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--model", "--dims", "--minutes", "--epochs", "--resume", "--run-dir", "--pairs", "--inplane-size",
                   "--patch-size", "--loss", "--optimizer", "--schedule", "--lr", "--grad-clip", "--cascade-training",
                   "--val-case", "--val-fraction", "--seed", "--device", "--workers", "--init-checkpoint", "torchrun",
                   "--threads", "--processes"):
        assert option in text, option


@pytest.fixture(scope="module")
def pair_files(shared_data: Path, tmp_path_factory) -> list[Path]:
    """Two real LGG patients, 10 tumour slices each, written as NIfTI pairs."""
    out = tmp_path_factory.mktemp("pairs")
    files = []
    for case in CASES:
        image = load_volume(shared_data / "lgg-flair" / "imagesTr" / f"{case}_0000.nii.gz")
        labels = load_labels(shared_data / "lgg-flair" / "labelsTr" / f"{case}.nii.gz", reference=image)
        z = np.flatnonzero(labels.array.any(axis=(1, 2)))
        lo = max(0, int(z.mean()) - 5)
        crop = image.with_array(image.array[:, lo : lo + 10].copy())
        files.append(save_volume(crop, out / f"{case}_img.nii.gz"))
        files.append(save_labels(labels.with_array(labels.array[lo : lo + 10].copy()), crop, out / f"{case}_lab.nii.gz"))
    return files


def test_cli_trains_from_pairs_and_refuses_to_overwrite(pair_files, tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    args = ["train", "--pairs", *map(str, pair_files), "--model", "unet", "--base-width", "4", "--levels", "3",
            "--inplane-size", "64", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--val-fraction", "0.5",
            "--threads", "1", "--run-dir", str(run_dir), "--no-progress", "--data-licence", "CC BY-NC-SA 4.0"]
    assert main(args) == 0
    out = capsys.readouterr()
    assert "stopped (epochs) after 1 epoch(s)" in out.out
    # The depth the epoch line recommends says how many validation cases it was chosen on.
    val_cases = json.loads((run_dir / "split.json").read_text())["val"]
    assert f"(on {len(val_cases)} validation case(s))" in out.err
    card = json.loads((run_dir / "best" / "model_card.json").read_text())
    assert card["training"]["command"].startswith("cascadeseg train --pairs")
    assert card["training"]["licence"] == "CC BY-NC-SA 4.0"
    assert {p.name for p in run_dir.iterdir()} >= {"config.json", "split.json", "log.csv", "last", "best"}
    # The same command again: refused in one line, nothing overwritten.
    before = (run_dir / "best" / "model.safetensors").read_bytes()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cascadeseg: error: run folder") and "--resume" in err and "\n" not in err
    assert (run_dir / "best" / "model.safetensors").read_bytes() == before
    # --resume with a larger epoch count continues the stored run.
    assert main(["train", "--resume", "--run-dir", str(run_dir), "--epochs", "2", "--no-progress"]) == 0
    assert "after 2 epoch(s)" in capsys.readouterr().out


def test_cli_bad_inputs_are_one_line_errors(pair_files, tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty"
    (empty / "imagesTr").mkdir(parents=True)
    assert main(["train", str(empty), "--run-dir", str(tmp_path / "r1")]) == 2
    assert "no image files" in capsys.readouterr().err
    assert main(["train", "--pairs", str(pair_files[0]), "--run-dir", str(tmp_path / "r2")]) == 2
    assert "odd number" in capsys.readouterr().err
    # An impossible class count is refused before any data is read.
    assert main(["train", "--pairs", *map(str, pair_files), "--num-classes", "1", "--run-dir", str(tmp_path / "r3")]) == 2
    assert "num_classes" in capsys.readouterr().err
    assert main(["train", "--resume", "--run-dir", str(tmp_path / "nothing")]) == 2
    assert "cannot" in capsys.readouterr().err
