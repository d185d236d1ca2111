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
