"""``cascadeseg predict`` (and ``evaluate`` after it) on real scans, including two torchrun ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from cascadeseg.cli.main import main
from cascadeseg.inference import ModelCard, save_checkpoint
from cascadeseg.models import create_model

LGG_CASES = ("TCGA_CS_4941_19960909", "TCGA_CS_6665_20010817")
ZSCORE = {"type": "mri_zscore", "percentiles": [0.5, 99.5]}


def make_checkpoint(folder: Path, dims: int, channels: list[tuple[str, dict]], classes: list[int],
                    architecture: str = "unet", **card_fields) -> Path:
    """A random-init width-4 checkpoint (tests check files and geometry, not quality)."""
    torch.manual_seed(0)
    options = {"in_channels": len(channels), "num_classes": len(classes), "dims": dims, "base_width": 4, "levels": 3}
    card = ModelCard(architecture=architecture, model_options=options, dims=dims,
                     input_channels=[{"name": n, "preprocessing": p} for n, p in channels],
                     classes=[{"value": v, "name": f"class {v}"} for v in classes], **card_fields)
    return save_checkpoint(create_model(architecture, **options), card, folder)


@pytest.fixture(scope="module")
def flair_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "flair-unet", 2, [("FLAIR", ZSCORE)], [0, 1])


def lgg_image(shared_data: Path, case: str) -> Path:
    return shared_data / "lgg-flair" / "imagesTr" / f"{case}_0000.nii.gz"


def assert_label_matches_image(label_file: Path, image_file: Path) -> None:
    label, image = nib.load(str(label_file)), nib.load(str(image_file))
    assert label.shape == image.shape[:3]
    assert np.allclose(label.affine, image.affine, atol=1e-4)
    assert np.issubdtype(label.get_data_dtype(), np.integer)


def test_predict_then_evaluate_two_real_cases(shared_data: Path, flair_ckpt: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pred"
    inputs = [str(lgg_image(shared_data, c)) for c in LGG_CASES]
    assert main(["predict", *inputs, "-o", str(out), "-c", str(flair_ckpt), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "slices/s" in err and "segmented 2 case(s)" in err  # the tqdm bar and the summary
    assert sorted(p.name for p in out.iterdir()) == [f"{c}.nii.gz" for c in LGG_CASES]
    for case in LGG_CASES:
        assert_label_matches_image(out / f"{case}.nii.gz", lgg_image(shared_data, case))
    assert main(["evaluate", str(out), str(shared_data / "lgg-flair")]) == 0
    captured = capsys.readouterr()
    assert "| structure | cases | Dice mean" in captured.out and "78 reference(s) without a prediction" in captured.err
    rows = (out / "evaluation.csv").read_text().splitlines()
    assert rows[0].startswith("case,structure,dice,iou,precision,recall,specificity,hd95")
    assert [r.split(",")[0] for r in rows[1:]] == list(LGG_CASES)


def test_existing_output_is_refused_then_overwritten(shared_data: Path, flair_ckpt: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pred"
    out.mkdir()
    target = out / f"{LGG_CASES[0]}.nii.gz"
    target.write_bytes(b"user's file")
    args = ["predict", str(lgg_image(shared_data, LGG_CASES[0])), "-o", str(out), "-c", str(flair_ckpt), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cascadeseg: error: output file(s) already exist")
    assert target.read_bytes() == b"user's file"
    assert main([*args, "--overwrite", "--largest-component", "--fill-holes", "--body-mask"]) == 0
    assert_label_matches_image(target, lgg_image(shared_data, LGG_CASES[0]))


def test_msd_folder_with_two_channels_in_2d(shared_data: Path, tmp_path: Path) -> None:
    """An MSD folder (imagesTs/) of the two-channel TCIA study: channels grouped, output named by case."""
    case = "PGBM-003_19950329"
    images = tmp_path / "dataset" / "imagesTs"
    images.mkdir(parents=True)
    for channel in ("0000", "0001"):
        (images / f"{case}_{channel}.nii.gz").symlink_to(shared_data / "tcia-btp/imagesTr" / f"{case}_{channel}.nii.gz")
    ckpt = make_checkpoint(tmp_path / "ckpt", 2, [("T1c", ZSCORE), ("FLAIR", ZSCORE)], [0, 1])
    out = tmp_path / "pred"
    assert main(["predict", str(tmp_path / "dataset"), "-o", str(out), "-c", str(ckpt), "--no-progress",
                 "--batch-size", "11"]) == 0
    assert [p.name for p in out.iterdir()] == [f"{case}.nii.gz"]
    assert_label_matches_image(out / f"{case}.nii.gz", images / f"{case}_0000.nii.gz")


def test_3d_ct_coarse_to_fine_prediction_keeps_geometry(shared_data: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt", 3, [("CT", {"type": "ct_window", "preset": "abdomen"})], [0, 1, 5],
                           architecture="coarse_to_fine_unet", patch_size=[32, 64, 64])
    image = shared_data / "totalseg" / "example_ct_sm.nii.gz"
    out = tmp_path / "pred"
    assert main(["predict", str(image), "-o", str(out), "-c", str(ckpt), "--mode", "3d", "--patch-size", "32", "112", "128",
                 "--no-progress"]) == 0
    assert "example_ct_sm: stage 2 ran on" in capsys.readouterr().err  # the crop's saving, measured
    result = out / "example_ct_sm.nii.gz"
    assert_label_matches_image(result, image)
    assert set(np.unique(np.asarray(nib.load(str(result)).dataobj))) <= {0, 1, 5}


def test_interrupt_leaves_no_output(shared_data: Path, flair_ckpt: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from cascadeseg.cli import predict

    def interrupt(self, progress) -> None:  # the user presses Ctrl-C after the first batch
        raise KeyboardInterrupt

    monkeypatch.setattr(predict.ProgressBar, "update", interrupt)
    out = tmp_path / "pred"
    assert main(["predict", str(lgg_image(shared_data, LGG_CASES[0])), "-o", str(out), "-c", str(flair_ckpt)]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert list(out.iterdir()) == []  # no label file, no temp file


def test_bad_inputs_give_one_line_errors(shared_data: Path, flair_ckpt: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "pred")
    tcia = str(shared_data / "tcia-btp/imagesTr/PGBM-003_19950329_0000.nii.gz")
    cases = [
        (["predict", tcia, "-o", out, "-c", str(flair_ckpt)], "expects 1: FLAIR"),
        (["predict", tcia, "-o", out, "-c", "no-such-model"], "neither an existing folder nor a known model name"),
        (["predict", str(tmp_path / "missing.nii.gz"), "-o", out, "-c", str(flair_ckpt)], "does not exist"),
        (["predict", tcia, "-o", out, "-c", str(flair_ckpt), "--depth", "3"], "pruning depth 3"),
        (["predict", tcia, "-o", out, "-c", str(flair_ckpt), "--device", "tpu"], "device 'tpu' is unknown"),
        (["predict", tcia, "-o", out, "-c", str(flair_ckpt), "--foreground-threshold", "1.5"],
         "--foreground-threshold must be between 0 and 1"),
        (["predict", tcia, "-o", out, "-c", "hippocampus_unet_plus_plus_3d", "--foreground-threshold", "0.3"],
         "--foreground-threshold needs a two-class model"),
    ]
    for argv, message in cases:
        assert main([*argv, "--no-progress"]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("cascadeseg: error:") and message in err and err.count("\n") == 1, err


def test_a_foreground_threshold_trades_sensitivity_for_specificity(shared_data: Path, tmp_path: Path) -> None:
    """The shipped FLAIR cascade on a real patient: a lower threshold only adds voxels to the mask,
    a higher one only removes them, and the default (0.5, the argmax) lies between."""
    masks = {}
    for name, extra in (("low", ["--foreground-threshold", "0.2"]), ("argmax", []),
                        ("high", ["--foreground-threshold", "0.8"])):
        out = tmp_path / name
        argv = ["predict", str(lgg_image(shared_data, LGG_CASES[0])), "-o", str(out), "-c", "lgg_flair_cascaded_unet_2d"]
        assert main([*argv, *extra, "--no-progress"]) == 0
        masks[name] = np.asarray(nib.load(out / f"{LGG_CASES[0]}.nii.gz").dataobj) > 0
    assert not (masks["high"] & ~masks["argmax"]).any() and not (masks["argmax"] & ~masks["low"]).any()
    assert masks["low"].sum() > masks["high"].sum() > 0


def test_two_torchrun_ranks_share_the_cases(shared_data: Path, flair_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "cascadeseg.cli.main", "predict", *[str(lgg_image(shared_data, c)) for c in LGG_CASES],
           "-o", str(out), "-c", str(flair_ckpt), "--device", "cpu", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[rank 0/2] segmented 1 case(s)" in proc.stderr and "[rank 1/2] segmented 1 case(s)" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [f"{c}.nii.gz" for c in LGG_CASES]
    for case in LGG_CASES:
        assert_label_matches_image(out / f"{case}.nii.gz", lgg_image(shared_data, case))


def test_probabilities_and_mirroring_are_written_with_the_scan_geometry(shared_data: Path, flair_ckpt: Path,
                                                                       tmp_path: Path) -> None:
    out = tmp_path / "pred"
    image = lgg_image(shared_data, LGG_CASES[0])
    args = ["predict", str(image), "-o", str(out), "-c", str(flair_ckpt), "--no-progress", "--save-probabilities"]
    assert main([*args, "--mirror"]) == 0
    labels = nib.load(str(out / f"{LGG_CASES[0]}.nii.gz"))
    probs = nib.load(str(out / f"{LGG_CASES[0]}_probabilities.nii.gz"))
    assert probs.shape == (*nib.load(str(image)).shape[:3], 2)
    assert np.allclose(probs.affine, labels.affine, atol=1e-5)
    p = np.asarray(probs.dataobj, dtype=np.float32)
    assert np.allclose(p.sum(axis=3), 1.0, atol=1e-4)
    assert np.array_equal(p.argmax(axis=3), np.asarray(labels.dataobj))
    # The probability file is checked before any work, like the label file.
    (out / f"{LGG_CASES[0]}.nii.gz").unlink()
    assert main(args) == 2


def test_a_file_name_output_names_the_one_scans_label_file(shared_data: Path, flair_ckpt: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """``-o mask.nii.gz`` (or .nrrd) for one scan writes that file, on the scan's grid, with the
    probabilities beside it; for two scans it is refused before any work, naming the count."""
    image = lgg_image(shared_data, LGG_CASES[0])
    target = tmp_path / "out" / "mask.nii.gz"
    args = ["predict", str(image), "-o", str(target), "-c", str(flair_ckpt), "--no-progress"]
    assert main([*args, "--save-probabilities"]) == 0
    assert sorted(p.name for p in target.parent.iterdir()) == ["mask.nii.gz", "mask_probabilities.nii.gz"]
    assert_label_matches_image(target, image)
    nrrd = tmp_path / "mask.nrrd"
    assert main(["predict", str(image), "-o", str(nrrd), "-c", str(flair_ckpt), "--no-progress"]) == 0
    from cascadeseg.io import load_labels, load_volume

    scan = load_volume(image)
    assert np.array_equal(load_labels(nrrd, reference=scan).array, load_labels(target, reference=scan).array)
    capsys.readouterr()
    both = [str(lgg_image(shared_data, c)) for c in LGG_CASES]
    assert main(["predict", *both, "-o", str(tmp_path / "two.nii.gz"), "-c", str(flair_ckpt), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "names one label file, but 2 scans were given" in err and not (tmp_path / "two.nii.gz").exists()
    # Naming the scan itself as the output file is refused, whatever the flags, and says "file".
    copy = tmp_path / "scan.nii.gz"
    copy.write_bytes(image.read_bytes())
    argv = ["predict", str(copy), "-o", str(copy), "-c", str(flair_ckpt), "--no-progress", "--overwrite"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "is an input" in err and err.rstrip().endswith("choose another --output file")
    assert copy.read_bytes() == image.read_bytes()


def test_predict_warns_when_the_scan_does_not_fit_the_model(shared_data: Path, tmp_path: Path, capsys) -> None:
    """The real CT through the shipped FLAIR model: a warning before the prediction, then the run."""
    ct = shared_data / "totalseg" / "example_ct_sm.nii.gz"
    assert main(["predict", str(ct), "-o", str(tmp_path / "out"), "-c", "lgg_flair_anu_net_2d", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "cascadeseg: warning:" in err and "looks like CT values" in err and "trained on MR" in err


@pytest.mark.parametrize("model, data, classes", [
    ("hippocampus_unet_plus_plus_3d", "hippocampus", [1, 2]),
    ("chaos_t2_anu_net_2d", "chaos-t2", [1, 2, 3, 4]),
])
def test_shipped_model_predicts_its_held_out_patients_as_its_card_says(
    model: str, data: str, classes: list[int], shared_data: Path, tmp_path: Path
) -> None:
    """A shipped model's card quotes per-patient Dice on patients it never trained on; `cascadeseg
    predict` (3D for the 3D model) gives exactly those figures on the same files: one truth."""
    from cascadeseg.inference import load_checkpoint, resolve_checkpoint
    from cascadeseg.io import load_labels, load_volume
    from cascadeseg.metrics import case_mean_dice

    _, card = load_checkpoint(resolve_checkpoint(model))
    cases = card.validation["cases"][:2]
    images = [shared_data / data / "imagesTr" / f"{case}_0000.nii.gz" for case in cases]
    out = tmp_path / "pred"
    mode = ["--mode", "3d"] if card.dims == 3 else []
    assert main(["predict", *map(str, images), "-o", str(out), "-c", model, *mode, "--no-progress"]) == 0
    depth = str(card.recommended_depth or 1)
    for case, image in zip(cases, images):
        assert_label_matches_image(out / f"{case}.nii.gz", image)
        predicted = load_volume(out / f"{case}.nii.gz").array[0].astype(np.uint8)
        truth = load_labels(shared_data / data / "labelsTr" / f"{case}.nii.gz").array
        dice = case_mean_dice(predicted, np.asarray(truth), classes)
        assert dice == pytest.approx(card.validation["dice_per_case"][depth][case], abs=1e-4)


def test_shipped_ct_model_segments_the_liver_of_an_unseen_dicom_ct_in_3d(shared_data: Path, tmp_path: Path) -> None:
    """The shipped CT liver model through `cascadeseg predict --mode 3d` on TotalSegmentator's DICOM
    series (512 x 512 x 20, 0.98 mm in plane, 2 mm apart), a CT no CT model here trained on: the
    mask lies on the series' grid, holds only the liver's value, and matches TotalSegmentator's liver
    (label 5, model-made) as benchmarks/ct_unseen_check.py measured it (0.953)."""
    from cascadeseg.io import load_labels, load_volume
    from cascadeseg.metrics import case_mean_dice

    series = shared_data / "totalseg" / "example_ct_dicom"
    out = tmp_path / "pred"
    assert main(["predict", str(series), "-o", str(out), "-c", "ct_liver_unet_3d", "--mode", "3d", "--no-progress"]) == 0
    image = load_volume(series)
    predicted = load_labels(out / "example_ct_dicom.nii.gz", reference=image)
    assert predicted.array.shape == image.array.shape[1:]
    assert np.allclose(predicted.spacing, image.spacing) and np.allclose(predicted.origin, image.origin)
    assert set(np.unique(predicted.array)) == {0, 1}
    truth = load_labels(shared_data / "totalseg" / "example_seg_dicom.nii.gz", reference=image).array
    assert case_mean_dice(np.asarray(predicted.array, np.uint8), (np.asarray(truth) == 5).astype(np.uint8), [1]) > 0.93


def test_a_flair_model_reads_the_flair_channel_of_a_two_channel_study(shared_data: Path, flair_ckpt: Path,
                                                                      tmp_path: Path, capsys) -> None:
    """A T1c + FLAIR TCIA study through a one-channel FLAIR model: refused with the study's channels
    and how to choose (no file written); ``--channels 0001`` (or ``1``) runs the model on the FLAIR
    channel, the same mask as the FLAIR file given alone; a ``dataset.json`` that names the channels
    picks FLAIR by itself; a channel the study does not have is named in the error."""
    case = "PGBM-003_19950329"
    study = shared_data / "tcia-btp/imagesTr" / f"{case}_0000.nii.gz"
    alone = tmp_path / "flair" / f"{case}.nii.gz"
    alone.parent.mkdir()
    alone.symlink_to(shared_data / "tcia-btp/imagesTr" / f"{case}_0001.nii.gz")
    run = ["-c", str(flair_ckpt), "--no-progress", "--device", "cpu"]
    assert main(["predict", str(study), "-o", str(tmp_path / "refused"), *run]) == 2
    err = capsys.readouterr().err
    assert "has 2 channel(s) (0: 0000, 1: 0001)" in err and "expects 1: FLAIR" in err and "--channels" in err
    assert not any((tmp_path / "refused").glob("*.nii.gz"))
    assert main(["predict", str(alone), "-o", str(tmp_path / "alone"), *run]) == 0
    reference = nib.load(str(tmp_path / "alone" / f"{case}.nii.gz")).get_fdata()
    for given in ("0001", "1"):
        out = tmp_path / f"chosen{given}"
        assert main(["predict", str(study), "-o", str(out), *run, "--channels", given]) == 0
        assert "channel(s) '0001' as FLAIR (of 2: 0000, 0001)" in capsys.readouterr().err
        assert_label_matches_image(out / f"{case}.nii.gz", study)
        np.testing.assert_array_equal(nib.load(str(out / f"{case}.nii.gz")).get_fdata(), reference)
    named = tmp_path / "named"
    (named / "imagesTs").mkdir(parents=True)
    for channel in ("0000", "0001"):
        (named / "imagesTs" / f"{case}_{channel}.nii.gz").symlink_to(shared_data / "tcia-btp/imagesTr" / f"{case}_{channel}.nii.gz")
    (named / "dataset.json").write_text('{"channel_names": {"0": "T1c", "1": "FLAIR"}, "labels": {"background": 0, "tumour": 1}}')
    assert main(["predict", str(named), "-o", str(tmp_path / "auto"), *run]) == 0
    assert "channel(s) 'FLAIR' as FLAIR (of 2: T1c, FLAIR)" in capsys.readouterr().err
    np.testing.assert_array_equal(nib.load(str(tmp_path / "auto" / f"{case}.nii.gz")).get_fdata(), reference)
    assert main(["predict", str(study), "-o", str(tmp_path / "bad"), *run, "--channels", "t2"]) == 2
    assert "--channels 't2' is none of its channels (0: 0000, 1: 0001)" in capsys.readouterr().err


def test_a_brats_case_folder_is_one_scan_of_named_sequences(shared_data: Path, flair_ckpt: Path, tmp_path: Path,
                                                            capsys) -> None:
    """The BraTS-style folder (one file per sequence, ``<case>_fla_bet.nii.gz``, beside three label
    maps named by the algorithms that made them) through a FLAIR model: one case of four named
    channels, the FLAIR one fed to the model (the same mask as that file given alone), the label
    maps skipped and said so; a label map given on its own is refused (it used to be segmented)."""
    folder = shared_data / "brats-like" / "TCGA-DU-7294"
    run = ["-c", str(flair_ckpt), "--no-progress", "--device", "cpu"]
    assert main(["predict", str(folder), "-o", str(tmp_path / "folder"), *run]) == 0
    err = capsys.readouterr().err
    assert "channel(s) 'fla' as FLAIR (of 4: fla, t1, t1c, t2)" in err
    assert err.count("not a scan: skipped") == 3 and "segmented 1 case(s)" in err and "3 label map(s) skipped" in err
    assert [p.name for p in (tmp_path / "folder").iterdir()] == ["TCGA-DU-7294.nii.gz"]
    assert_label_matches_image(tmp_path / "folder" / "TCGA-DU-7294.nii.gz", folder / "TCGA-DU-7294_fla_bet.nii.gz")
    assert main(["predict", str(folder / "TCGA-DU-7294_fla_bet.nii.gz"), "-o", str(tmp_path / "alone"), *run]) == 0
    np.testing.assert_array_equal(nib.load(str(tmp_path / "folder" / "TCGA-DU-7294.nii.gz")).get_fdata(),
                                  nib.load(str(tmp_path / "alone" / "TCGA-DU-7294_fla_bet.nii.gz")).get_fdata())
    capsys.readouterr()
    assert main(["predict", str(folder / "simple.nii.gz"), "-o", str(tmp_path / "label"), *run]) == 2
    assert "holds a label map (whole numbers, few values), not a scan: nothing to segment" in capsys.readouterr().err
    assert not (tmp_path / "label").exists() or not any((tmp_path / "label").iterdir())
