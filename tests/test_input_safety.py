"""Inputs are never replaced, impossible sizes are refused before allocating, a killed run's
leftovers are cleaned, and each smaller misuse gets its own clear message (issues 20 and 21)."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from cascadeseg import _atomic
from cascadeseg.cli.main import main
from cascadeseg.errors import (
    CheckpointError,
    DatasetError,
    InsufficientMemoryError,
    OutputIsInputError,
    OutputWriteError,
)
from cascadeseg.inference import ModelCard, Predictor, load_checkpoint, save_checkpoint
from cascadeseg.inference.checkpoint import CARD_FILE, WEIGHTS_FILE, verify_checkpoint
from cascadeseg.io import load_dataset, load_labels, load_volume, save_labels
from cascadeseg.models import create_model

CASE = "TCGA_CS_4941_19960909"
ZSCORE = {"type": "mri_zscore", "percentiles": [0.5, 99.5]}


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]  # progress bars and notes may come before the error
    assert last.startswith("cascadeseg: error: ") and "Traceback" not in err
    return last


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    options = {"in_channels": 1, "num_classes": 2, "dims": 2, "base_width": 4, "levels": 3}
    card = ModelCard(architecture="unet", model_options=options, dims=2,
                     input_channels=[{"name": "FLAIR", "preprocessing": ZSCORE}],
                     classes=[{"value": 0, "name": "background"}, {"value": 1, "name": "tumour"}])
    return save_checkpoint(create_model("unet", **options), card, tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture
def small_dataset(shared_data: Path, tmp_path: Path) -> Path:
    """An MSD folder of two real LGG cases (copies: tests may try to overwrite them)."""
    root = tmp_path / "ds"
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    for case in (CASE, "TCGA_CS_4943_20000902"):
        shutil.copy(shared_data / "lgg-flair" / "imagesTr" / f"{case}_0000.nii.gz", root / "imagesTr")
        shutil.copy(shared_data / "lgg-flair" / "labelsTr" / f"{case}.nii.gz", root / "labelsTr")
    return root


# -- issue 20.1: an output never replaces an input -------------------------------------------------

def test_predict_refuses_every_output_that_is_an_input(small_dataset: Path, tiny_ckpt: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    before = digests(small_dataset)
    scan = tmp_path / "scan.nii.gz"
    shutil.copy(small_dataset / "imagesTr" / f"{CASE}_0000.nii.gz", scan)
    link_dir = tmp_path / "link"
    link_dir.symlink_to(tmp_path)  # the scan's folder under another name
    images = small_dataset / "imagesTr"
    for argv, says in [
        ([str(scan), "-o", str(tmp_path)], f"{scan}: is an input"),
        ([str(scan), "-o", str(link_dir)], "is an input (the same file as"),
        ([str(small_dataset), "-o", str(small_dataset)], "is the input folder"),
        ([str(images), "-o", str(images)], "is the imagesTr/ folder of the dataset"),
        ([str(scan), "-o", str(small_dataset / "labelsTr")], "is the labelsTr/ folder of the dataset"),
    ]:
        err = one_line_error(["predict", *argv, "-c", str(tiny_ckpt), "--overwrite", "--no-progress"], capsys)
        assert says in err and "--output" in err
    assert digests(small_dataset) == before and scan.read_bytes() == (images / f"{CASE}_0000.nii.gz").read_bytes()


def test_evaluate_and_save_labels_never_replace_an_input(small_dataset: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    labels = small_dataset / "labelsTr"
    before = digests(small_dataset)
    err = one_line_error(["evaluate", str(labels), str(small_dataset), "-o", str(labels / f"{CASE}.nii.gz"),
                          "--overwrite"], capsys)
    assert "is an image file name; expected a .csv" in err
    (labels / "scores.csv").write_text("a,b\n")  # a CSV among the references is still an output name
    assert main(["evaluate", str(labels), str(small_dataset), "-o", str(tmp_path / "e.csv")]) == 0
    # the engine's own writer refuses the scan's files whatever overwrite says
    image = load_volume(small_dataset / "imagesTr" / f"{CASE}_0000.nii.gz")
    with pytest.raises(OutputIsInputError, match="is an input"):
        save_labels(np.zeros(image.spatial_shape, np.uint8), image, image.source, overwrite=True)
    (labels / "scores.csv").unlink()
    assert digests(small_dataset) == before


def test_add_to_training_set_never_replaces_the_scan_it_adds(small_dataset: Path) -> None:
    from cascadeseg.editing import TrainingSet

    image = load_volume(small_dataset / "imagesTr" / f"{CASE}_0000.nii.gz")
    labels = load_labels(small_dataset / "labelsTr" / f"{CASE}.nii.gz", reference=image)
    before = digests(small_dataset)
    with pytest.raises(OutputIsInputError, match=f"{CASE}_0000.nii.gz: is an input"):
        TrainingSet(small_dataset).add_case(image, labels, CASE, overwrite=True)
    assert digests(small_dataset) == before
    added = TrainingSet(small_dataset).add_case(image, labels, CASE)  # without overwrite: a new version
    assert added.case_id == f"{CASE}_v2"


# -- issue 20.2: impossible sizes are refused before allocating ------------------------------------

def test_headers_claiming_a_trillion_voxels_are_refused_at_once(tmp_path: Path, tiny_ckpt: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    header = nib.Nifti1Header()
    header.set_data_shape((10_000, 10_000, 10_000))
    header.set_data_dtype(np.uint8)
    raw = header.binaryblock + b"\0" * 4 + b"\0" * 4096
    (tmp_path / "huge.nii").write_bytes(raw)
    (tmp_path / "huge.nii.gz").write_bytes(gzip.compress(raw))
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 4, 4), np.int16)), str(tmp_path / "small.mha"))
    mha = (tmp_path / "small.mha").read_bytes().replace(b"DimSize = 4 4 4", b"DimSize = 10000 10000 10000")
    (tmp_path / "huge.mha").write_bytes(mha)
    for name in ("huge.nii", "huge.nii.gz", "huge.mha"):
        start = time.perf_counter()
        with pytest.raises(InsufficientMemoryError) as info:
            load_volume(tmp_path / name)
        assert time.perf_counter() - start < 0.5
        message = str(info.value)
        assert name in message and "10000 x 10000 x 10000" in message and "voxels fit" in message
    err = one_line_error(["predict", str(tmp_path / "huge.nii.gz"), "-o", str(tmp_path / "out"), "-c", str(tiny_ckpt)],
                         capsys)
    assert "huge.nii.gz" in err and "are available" in err and not (tmp_path / "out").exists()


def test_a_card_asking_for_an_absurd_grid_is_refused_before_allocating(shared_data: Path, tiny_ckpt: Path,
                                                                       tmp_path: Path) -> None:
    model, card = load_checkpoint(tiny_ckpt)
    card.target_spacing = [1.0, 0.001, 0.001]  # 256 x 256 slices become 256000 x 256000
    scan = load_volume(shared_data / "lgg-flair" / "imagesTr" / f"{CASE}_0000.nii.gz")
    predictor = Predictor(model, card, device="cpu")
    start = time.perf_counter()
    with pytest.raises(InsufficientMemoryError) as info:
        predictor.predict(scan)
    assert time.perf_counter() - start < 2.0
    message = str(info.value)
    assert f"{CASE}_0000.nii.gz" in message and "256000 x 256000" in message and "are available" in message
    # a 3D window of 10^5 voxels a side: the same refusal, naming the window
    model3 = create_model("unet", in_channels=1, num_classes=2, dims=3, base_width=4, levels=3)
    card3 = ModelCard(architecture="unet", model_options={"base_width": 4, "levels": 3}, dims=3,
                      input_channels=[{"name": "FLAIR", "preprocessing": ZSCORE}],
                      classes=[{"value": 0}, {"value": 1}], patch_size=[100_000, 100_000, 100_000])
    with pytest.raises(InsufficientMemoryError, match="100000 x 100000 x 100000 windows"):
        Predictor(model3, card3, device="cpu").predict(scan)


# -- issue 20.3: a killed run's leftovers are finished or removed by the next run ------------------

def test_next_prediction_removes_what_a_killed_one_left(shared_data: Path, tiny_ckpt: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    torn = out / f"{_atomic.TEMP_PREFIX}{child.pid}-0a1b2c3d-{CASE}.nii.gz"
    torn.mkdir()
    (torn / f"{CASE}.nii.gz").write_bytes(b"half a label map")
    (out / ".cascadeseg-write-x8y7z6w5").mkdir()  # the name an earlier version used
    scan = shared_data / "lgg-flair" / "imagesTr" / f"{CASE}_0000.nii.gz"
    assert main(["predict", str(scan), "-o", str(out), "-c", str(tiny_ckpt), "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"{CASE}.nii.gz"]
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "killed while writing" in said and ".cascadeseg-write-x8y7z6w5" in said


# -- issue 21.4: weights that prove they are intact ------------------------------------------------

def test_flipped_tensor_bytes_are_refused_by_the_checksum(shared_data: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from cascadeseg.inference import resolve_checkpoint

    shipped = resolve_checkpoint("lgg_flair_anu_net_2d")
    assert verify_checkpoint(shipped) == "verified"
    monkeypatch.setenv("CASCADESEG_HOME", str(tmp_path / "home"))
    damaged = shutil.copytree(shipped, tmp_path / "home" / "models" / "damaged")
    weights = damaged / WEIGHTS_FILE
    raw = bytearray(weights.read_bytes())
    header_end = 8 + int.from_bytes(raw[:8], "little")
    rng = np.random.default_rng(0)
    where = header_end + 1000
    raw[where:where + 2000] = rng.integers(0, 256, 2000, dtype=np.uint8).tobytes()  # header intact
    weights.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=f"{weights}: the weights are damaged"):
        load_checkpoint(damaged)
    err = one_line_error(["predict", str(shared_data / "lgg-flair" / "imagesTr" / f"{CASE}_0000.nii.gz"),
                          "-o", str(tmp_path / "out"), "-c", "damaged"], capsys)
    assert "the weights are damaged" in err and not (tmp_path / "out").exists()
    assert main(["models", "--checkpoints"]) == 0
    captured = capsys.readouterr()
    assert "| damaged | user |" in captured.out and "DAMAGED" in captured.out
    assert "| lgg_flair_anu_net_2d | shipped |" in captured.out and "verified" in captured.out
    assert "the weights are damaged" in captured.err


# -- issue 21.5: each smaller misuse has its own message -------------------------------------------

def test_bad_cards_fail_when_loaded_naming_the_checkpoint(tiny_ckpt: Path, tmp_path: Path) -> None:
    for change, says in [
        ({"input_channels": [{"name": "FLAIR", "preprocessing": {"type": "log_magic"}}]},
         r"input_channels\[0\] \(FLAIR\): preprocessing type 'log_magic' is not known"),
        ({"target_spacing": [1.0, 0.0, 1.0]}, "target_spacing must be 3 positive millimetre sizes"),
        ({"model_options": {"base_width": 4, "levels": 3, "spacing": [0, 1, 1]}}, "model_options.spacing must be"),
    ]:
        folder = shutil.copytree(tiny_ckpt, tmp_path / f"bad{len(list(tmp_path.iterdir()))}")
        card = json.loads((folder / CARD_FILE).read_text())
        (folder / CARD_FILE).write_text(json.dumps({**card, **change}))
        with pytest.raises(CheckpointError, match=f"{folder / CARD_FILE}.*{says}"):
            load_checkpoint(folder)


def test_constant_scan_and_scan_given_as_labels_name_the_file(shared_data: Path, tiny_ckpt: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    nib.save(nib.Nifti1Image(np.full((64, 64, 12), 7, np.int16), np.eye(4)), tmp_path / "blank.nii.gz")
    err = one_line_error(["predict", str(tmp_path / "blank.nii.gz"), "-o", str(tmp_path / "o"), "-c", str(tiny_ckpt)],
                         capsys)
    assert f"{tmp_path / 'blank.nii.gz'}: mri_zscore: all foreground voxels have the same value 7" in err
    # evaluate on scans instead of label maps: refused, not scored as 200 "structures"
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(shared_data / "lgg-flair" / "imagesTr" / f"{CASE}_0000.nii.gz", scans / f"{CASE}.nii.gz")
    err = one_line_error(["evaluate", str(scans), str(shared_data / "lgg-flair")], capsys)
    assert f"{CASE}.nii.gz: holds 208 distinct values" in err and "is this a scan rather than its labels?" in err


def test_dataset_labels_without_images_are_named(small_dataset: Path) -> None:
    shutil.copy(small_dataset / "labelsTr" / f"{CASE}.nii.gz", small_dataset / "labelsTr" / "orphan_case.nii.gz")
    with pytest.raises(DatasetError, match=r"labelsTr: 1 label map\(s\) have no image in imagesTr/ \(orphan_case\)"):
        load_dataset(small_dataset)


def test_cli_messages_offer_what_the_cli_has(shared_data: Path, tiny_ckpt: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    data = np.random.default_rng(0).normal(100, 20, (64, 64, 12)).astype(np.float32)
    data[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii.gz")
    err = one_line_error(["predict", str(tmp_path / "nan.nii.gz"), "-o", str(tmp_path / "o"), "-c", str(tiny_ckpt)],
                         capsys)
    assert "--nan-policy zero|min on the command line" in err
    assert main(["predict", str(tmp_path / "nan.nii.gz"), "-o", str(tmp_path / "o"), "-c", str(tiny_ckpt),
                 "--nan-policy", "zero", "--no-progress"]) == 0
    err = one_line_error(["predict", str(tmp_path / "nan.nii.gz"), "-o", str(tmp_path / "o"), "-c", str(tiny_ckpt)],
                         capsys)
    assert "--overwrite" in err and "overwrite=True" not in err
    two_series = tmp_path / "dicom"
    two_series.mkdir()
    import SimpleITK as sitk

    for uid in ("1.2.826.0.1.1", "1.2.826.0.1.2"):
        for z in range(3):
            image = sitk.GetImageFromArray(np.full((1, 8, 8), z, np.int16))
            writer = sitk.ImageFileWriter()
            writer.KeepOriginalImageUIDOn()
            image.SetMetaData("0020|000e", uid)
            image.SetMetaData("0020|0032", f"0\\0\\{z}")
            image.SetMetaData("0020|0013", str(z))
            writer.SetFileName(str(two_series / f"{uid}-{z}.dcm"))
            writer.Execute(image)
    err = one_line_error(["predict", str(two_series), "-o", str(tmp_path / "o2"), "-c", str(tiny_ckpt)], capsys)
    assert "--series-uid UID on the command line" in err


def test_long_case_id_is_refused_and_ids_are_kept_as_given(shared_data: Path, tmp_path: Path) -> None:
    from cascadeseg.editing import TrainingSet

    image = load_volume(shared_data / "lgg-flair" / "imagesTr" / f"{CASE}_0000.nii.gz")
    labels = load_labels(shared_data / "lgg-flair" / "labelsTr" / f"{CASE}.nii.gz", reference=image)
    image, labels = image.with_array(image.array[:, 10:14].copy()), labels.with_array(labels.array[10:14].copy())
    labels.array[1, 100, 100] = 1
    training_set = TrainingSet(tmp_path / "set")
    with pytest.raises(DatasetError, match="is 300 characters long; file names allow at most 243"):
        training_set.add_case(image, labels, "x" * 300)
    ids = [training_set.add_case(image, labels, name).case_id for name in ("patient_0001", "patient_0002", "my scan (2)")]
    assert ids == ["patient_0001", "patient_0002", "my_scan_2"]
    with pytest.raises(OutputWriteError, match="the file name is 307 bytes long; file systems allow 255"):
        save_labels(labels, image, tmp_path / f"{'x' * 300}.nii.gz")


def test_init_checkpoint_accepts_a_shipped_model_name() -> None:
    from cascadeseg.inference import read_card

    by_name = read_card("lgg_flair_anu_net_2d")
    model, card = load_checkpoint("lgg_flair_anu_net_2d")
    assert by_name == card and card.architecture == "anu_net"
    with pytest.raises(CheckpointError, match="neither an existing folder nor a known model name"):
        read_card("no_such_model")
