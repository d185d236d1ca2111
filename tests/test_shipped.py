"""The bundled sample and the shipped folders are reachable through importlib.resources and the
sample is the real LGG patient with its licence."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from cascadeseg.io import load_labels, load_volume
from cascadeseg.shipped import (
    SAMPLE_CASE_ID,
    checkpoints_dir,
    configs_dir,
    sample_label_path,
    sample_license_path,
    sample_scan_path,
)


def test_sample_is_the_lgg_patient_with_a_visible_lesion(shared_data: Path) -> None:
    scan = load_volume(sample_scan_path())
    mask = load_labels(sample_label_path(), reference=scan)
    assert SAMPLE_CASE_ID == "TCGA_DU_6404_19850629"
    assert scan.array.shape == (1, 53, 256, 256) and scan.modality == "MR"
    assert set(np.unique(mask.array)) == {0, 1}
    lesion_slices = np.flatnonzero(mask.array.any(axis=(1, 2)))
    assert mask.array.sum() > 10_000 and len(lesion_slices) >= 10
    # byte-identical to the shared data set, so a model validated there is validated on the sample
    source = shared_data / "lgg-flair"
    for shipped, original in (
        (sample_scan_path(), source / "imagesTr" / f"{SAMPLE_CASE_ID}_0000.nii.gz"),
        (sample_label_path(), source / "labelsTr" / f"{SAMPLE_CASE_ID}.nii.gz"),
    ):
        assert hashlib.sha256(shipped.read_bytes()).digest() == hashlib.sha256(original.read_bytes()).digest()
    assert sample_scan_path().stat().st_size < 3_000_000


def test_sample_licence_names_source_terms_and_citation() -> None:
    text = sample_license_path().read_text()
    for needed in ("CC BY-NC-SA 4.0", "Buda", "TCGA-LGG", "The Cancer Imaging Archive", "non-commercial"):
        assert needed in text, needed
    assert (sample_scan_path().parent / "README.md").is_file()


def test_shipped_folders_come_from_the_package_not_the_checkout() -> None:
    import cascadeseg.resources

    package_root = Path(cascadeseg.resources.__file__).parent
    assert sample_scan_path().parent == package_root / "sample"
    assert configs_dir() == package_root / "configs" and configs_dir().is_dir()
    assert checkpoints_dir() == package_root / "checkpoints"


def test_every_sample_is_real_data_its_model_was_or_was_not_trained_on_as_it_says(shared_data: Path) -> None:
    """One sample per task family, each a byte-identical copy of a case of ../shared (the CT's
    liver mask: TotalSegmentator's label 5 of the same patient), labels on the scan's grid with the
    classes of the model made for it; a sample called unseen is in none of its model's training
    cases, and the one that is not (the CT: ../shared holds no other CT) says so."""
    import json

    from cascadeseg.inference.checkpoint import read_card, resolve_checkpoint
    from cascadeseg.shipped import SAMPLES

    assert set(SAMPLES) == {"brain", "abdomen", "ct"}
    copies = {
        "abdomen": (shared_data / "chaos-t2/imagesTr/chaos_t2_08_0000.nii.gz", shared_data / "chaos-t2/labelsTr/chaos_t2_08.nii.gz"),
        "ct": (shared_data / "totalseg/example_ct_sm.nii.gz", None),
    }
    for key, sample in SAMPLES.items():
        scan = load_volume(sample_scan_path(key))
        labels = np.asarray(load_labels(sample_label_path(key), reference=scan).array)
        card = read_card(resolve_checkpoint(sample.model))
        present = set(np.unique(labels).tolist())
        assert present - {0} and present <= set(card.class_values), (key, present, card.class_values)
        training = json.dumps(card.training["data"].get("train_cases", []))
        assert (sample.case_id not in training) == sample.unseen or key == "ct", key
        if key in copies:
            image_source, label_source = copies[key]
            assert sample_scan_path(key).read_bytes() == image_source.read_bytes()
            if label_source is not None:
                assert sample_label_path(key).read_bytes() == label_source.read_bytes()
    # The CT: its liver is label 5 of TotalSegmentator's map of the same scan; trained on that patient.
    ct = load_volume(sample_scan_path("ct"))
    reference = load_labels(shared_data / "totalseg/example_seg.nii.gz", reference=ct).array
    assert np.array_equal(load_labels(sample_label_path("ct"), reference=ct).array, (np.asarray(reference) == 5))
    assert not SAMPLES["ct"].unseen and "totalseg_example_ct" in json.dumps(
        read_card(resolve_checkpoint("ct_liver_unet_3d")).training["data"]["train_cases"]
    )
    licence = (sample_scan_path().parent / "LICENSE").read_text()
    for needed in ("CHAOS", "CC BY-NC-SA 4.0", "TotalSegmentator", "Apache"):
        assert needed in licence, needed
