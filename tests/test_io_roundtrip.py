"""Load, save, load again: same voxels, and a label map written for an image carries that image's
exact affine (what 3D Slicer / ITK-SNAP check). Writes are atomic and never overwrite silently."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cascadeseg.errors import GeometryMismatchError, OutputExistsError, VolumeError
from cascadeseg.io import load_labels, load_volume, save_labels, save_volume
from cascadeseg.io.checks import world_corners

NIFTI_PAIRS = [
    ("lgg-flair/imagesTr/TCGA_DU_6404_19850629_0000.nii.gz", "lgg-flair/labelsTr/TCGA_DU_6404_19850629.nii.gz"),  # RAS file
    ("tcia-btp/imagesTr/PGBM-001_19920402_0000.nii.gz", "tcia-btp/labelsTr/PGBM-001_19920402.nii.gz"),  # oblique LPS
    ("totalseg/example_ct_sm.nii.gz", "totalseg/example_seg.nii.gz"),  # CT, RAS
    ("totalseg/example_mr_sm.nii.gz", "totalseg/example_seg_mr.nii.gz"),  # MR, LPS
]


@pytest.mark.parametrize("image_rel,label_rel", NIFTI_PAIRS, ids=[p[0].split("/")[0] + ":" + p[0].split("/")[-1] for p in NIFTI_PAIRS])
def test_nifti_label_round_trip_keeps_data_and_exact_affine(shared_data: Path, tmp_path: Path, image_rel: str, label_rel: str) -> None:
    image_path, label_path = shared_data / image_rel, shared_data / label_rel
    image = load_volume(image_path, whole_case=False)
    labels = load_labels(label_path, reference=image)
    written = save_labels(labels.array, image, tmp_path / "labels.nii.gz")

    source, saved = nib.load(image_path), nib.load(written)
    np.testing.assert_array_equal(saved.affine, source.affine)  # exact, not approximately
    assert saved.header["sform_code"] == source.header["sform_code"]
    assert saved.header["qform_code"] == source.header["qform_code"]
    np.testing.assert_array_equal(saved.header.get_qform(), source.header.get_qform())
    assert saved.shape == source.shape[:3] and saved.get_data_dtype() == np.uint8
    # the file on disk has the original label file's voxels in the original axis order
    np.testing.assert_array_equal(np.asanyarray(saved.dataobj), np.asanyarray(nib.load(label_path).dataobj))
    reread = load_labels(written, reference=image)
    np.testing.assert_array_equal(reread.array, labels.array)


def test_image_round_trip_keeps_values_dtype_and_affine(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / "totalseg" / "example_ct.nii.gz"
    image = load_volume(path)
    written = save_volume(image, tmp_path / "ct.nii.gz")
    np.testing.assert_array_equal(nib.load(written).affine, nib.load(path).affine)
    again = load_volume(written)
    assert again.array.dtype == image.array.dtype == np.int32
    np.testing.assert_array_equal(again.array, image.array)
    assert again.modality == "CT" and again.meta["source_orientation"] == "RAS"


def test_label_written_from_a_dicom_image_lines_up(shared_data: Path, tmp_path: Path) -> None:
    ct = load_volume(shared_data / "totalseg" / "example_ct_dicom")
    labels = load_labels(shared_data / "totalseg" / "example_seg_dicom.nii.gz", reference=ct)
    written = save_labels(labels, ct, tmp_path / "from_dicom.nii.gz")
    saved = nib.load(written)
    assert nib.aff2axcodes(saved.affine) == ("L", "P", "S")  # the DICOM series' own orientation
    assert saved.header["sform_code"] == 1 and saved.header["qform_code"] == 1
    reread = load_labels(written, reference=ct)
    np.testing.assert_array_equal(reread.array, labels.array)
    np.testing.assert_allclose(world_corners(reread), world_corners(ct), atol=1e-4)
    # the oblique MR series too: the label lands on the same world positions
    mr = load_volume(shared_data / "dicom" / "PGBM-001_19920402" / "T1post")
    mr_labels = load_labels(shared_data / "tcia-btp" / "labelsTr" / "PGBM-001_19920402.nii.gz", reference=mr)
    reread = load_labels(save_labels(mr_labels, mr, tmp_path / "mr.nii.gz"), reference=mr)
    np.testing.assert_array_equal(reread.array, mr_labels.array)


def test_refuses_to_overwrite_and_leaves_no_temporary_files(shared_data: Path, tmp_path: Path) -> None:
    image = load_volume(shared_data / "totalseg" / "example_mr_sm.nii.gz")
    labels = load_labels(shared_data / "totalseg" / "example_seg_mr.nii.gz", reference=image)
    target = save_labels(labels, image, tmp_path / "seg.nii.gz")
    before = target.read_bytes()
    with pytest.raises(OutputExistsError, match="seg.nii.gz.*overwrite=True"):
        save_labels(np.zeros_like(labels.array), image, target)
    assert target.read_bytes() == before
    save_labels(np.zeros_like(labels.array), image, target, overwrite=True)
    assert load_labels(target).array.max() == 0
    assert [p.name for p in tmp_path.iterdir()] == ["seg.nii.gz"]


def test_labels_off_the_reference_grid_are_refused(shared_data: Path, tmp_path: Path) -> None:
    image = load_volume(shared_data / "totalseg" / "example_ct_sm.nii.gz")
    with pytest.raises(GeometryMismatchError, match=r"shape \(29, 101, 122\)"):
        save_labels(np.zeros((29, 101, 122), np.uint8), image, tmp_path / "x.nii.gz")
    with pytest.raises(VolumeError, match="negative"):
        save_labels(np.full(image.spatial_shape, -1, np.int16), image, tmp_path / "x.nii.gz")
    assert not any(tmp_path.iterdir())


def test_many_labels_use_a_wider_integer_type(shared_data: Path, tmp_path: Path) -> None:
    image = load_volume(shared_data / "totalseg" / "example_mr_sm.nii.gz")
    # 1000 structures as 8x8-voxel blocks in each slice: label maps are blocky (a map whose every
    # voxel differs from its neighbour reads as an intensity image and is refused by load_labels)
    z, y, x = np.indices(image.spatial_shape)
    labels = (((z * (y.max() // 8 + 1) + y // 8) * (x.max() // 8 + 1) + x // 8) % 1000).astype(np.int64)
    assert labels.max() > 255
    saved = nib.load(save_labels(labels, image, tmp_path / "many.nii.gz"))
    assert saved.get_data_dtype() == np.uint16
    np.testing.assert_array_equal(load_labels(tmp_path / "many.nii.gz").array, labels)


def test_qform_only_source_keeps_its_exact_affine(shared_data: Path, tmp_path: Path) -> None:
    source = nib.load(shared_data / "tcia-btp" / "imagesTr" / "PGBM-003_19950329_0000.nii.gz")
    image_file = nib.Nifti1Image(np.asanyarray(source.dataobj), None, source.header)
    image_file.header.set_sform(None, code=0)  # some converters write only the qform (oblique here)
    nib.save(image_file, tmp_path / "qform_only.nii.gz")
    written_source = nib.load(tmp_path / "qform_only.nii.gz")
    assert written_source.header["sform_code"] == 0 and written_source.header["qform_code"] > 0

    image = load_volume(tmp_path / "qform_only.nii.gz")
    labels = load_labels(shared_data / "tcia-btp" / "labelsTr" / "PGBM-003_19950329.nii.gz", reference=image)
    saved = nib.load(save_labels(labels, image, tmp_path / "labels.nii.gz"))
    np.testing.assert_array_equal(saved.affine, written_source.affine)
    assert saved.header["sform_code"] == 0 and saved.header["qform_code"] == written_source.header["qform_code"]
