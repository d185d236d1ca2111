"""Every real data set opens with the right shape, spacing, channels and geometry; NIfTI and DICOM
of the same scan agree voxel for voxel and position for position."""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from cascadeseg.io import (
    CANONICAL_ORIENTATION,
    list_series,
    load_channels,
    load_dataset,
    load_labels,
    load_volume,
    save_volume,
)
from cascadeseg.io.checks import world_corners
from cascadeseg.io.orientation import orientation_code, reorient

BRATS_CHANNELS = ("t1", "t1c", "t2", "fla")


def brats_files(shared_data: Path) -> list[Path]:
    folder = shared_data / "brats-like" / "TCGA-DU-7294"
    return [folder / f"TCGA-DU-7294_{name}_bet.nii.gz" for name in BRATS_CHANNELS]


def voxel_centres(volume, stride: int = 7) -> np.ndarray:
    """LPS positions (mm) of a strided subset of voxel centres, in array order."""
    z, y, x = (np.arange(0, n, stride) for n in volume.spatial_shape)
    index = np.stack(np.meshgrid(z, y, x, indexing="ij"), axis=-1).reshape(-1, 3)
    affine = volume.affine_zyx()
    return index @ affine[:3, :3].T + affine[:3, 3]


def test_lgg_flair_every_case_loads(shared_data: Path) -> None:
    cases = load_dataset(shared_data / "lgg-flair")
    assert len(cases) == 80
    for case in cases:
        image, labels = case.load()
        z, y, x = image.spatial_shape
        assert image.num_channels == 1 and (y, x) == (256, 256) and 20 <= z <= 88, case.case_id
        assert image.spacing == (1.0, 1.0, 1.0) and image.array.dtype == np.uint8
        assert labels is not None and labels.array.shape == image.spatial_shape
        assert set(np.unique(labels.array)) <= {0, 1}


def test_tcia_btp_cases_have_two_channels_and_thick_slices(shared_data: Path) -> None:
    cases = load_dataset(shared_data / "tcia-btp")
    assert sorted(c.case_id for c in cases) == [
        "PGBM-001_19911119", "PGBM-001_19920402", "PGBM-003_19950329", "PGBM-006_19961210"
    ]
    for case in cases:
        image, labels = case.load()
        assert image.num_channels == 2 and image.channel_names == ["0000", "0001"]
        z, y, x = image.spatial_shape
        assert 22 <= z <= 25 and 260 <= min(y, x) and max(y, x) <= 512
        assert image.spacing[0] == pytest.approx(6.5, abs=1e-4)
        assert labels is not None and labels.array.max() == 1 and labels.array.sum() > 0
    image, _ = next(c for c in cases if c.case_id == "PGBM-006_19961210").load()
    assert image.spatial_shape == (24, 512, 512)
    assert image.spacing[1:] == pytest.approx((0.4297, 0.4297), abs=1e-4)


def test_brats_like_four_channels_and_three_label_maps(shared_data: Path) -> None:
    started = time.perf_counter()
    image = load_channels(brats_files(shared_data), ["T1", "T1c", "T2", "FLAIR"])
    elapsed = time.perf_counter() - started
    # the largest sample (4 x 240 x 240 x 155 int16): its load time goes in the report
    print(f"\nload time of the largest sample (brats-like, 4 channels, {image.array.nbytes / 1e6:.0f} MB): {elapsed:.2f} s")
    assert image.array.shape == (4, 155, 240, 240)
    assert image.spacing == pytest.approx((1.0, 1.0, 1.0))
    assert image.channel_names == ["T1", "T1c", "T2", "FLAIR"] and image.modality == "MR"
    for name in ("simple", "hnfnetv1-20", "isen-20"):
        labels = load_labels(shared_data / "brats-like" / "TCGA-DU-7294" / f"{name}.nii.gz", reference=image)
        # BraTS labels; only hnfnetv1-20 marks enhancing tumour (4) on this case (352 voxels)
        assert {0, 1, 2} <= set(np.unique(labels.array).tolist()) <= {0, 1, 2, 4}


def test_totalseg_nifti_sets(shared_data: Path) -> None:
    folder = shared_data / "totalseg"
    expected = {
        "example_ct": ((112, 101, 122), "CT", "example_seg_fast_force_split"),
        "example_ct_sm": ((30, 101, 122), "CT", "example_seg"),
        "example_mr_sm": ((20, 91, 117), "MR", "example_seg_mr"),
    }
    for stem, (shape, modality, label_stem) in expected.items():
        image = load_volume(folder / f"{stem}.nii.gz")
        assert image.array.shape == (1, *shape), stem
        assert image.spacing == pytest.approx((3.0, 3.0, 3.0), abs=1e-4)
        assert image.modality == modality, stem
        labels = load_labels(folder / f"{label_stem}.nii.gz", reference=image)
        assert labels.array.max() > 1  # multi-organ


def test_ct_is_recognised_from_hounsfield_values_alone(shared_data: Path) -> None:
    image = load_volume(shared_data / "totalseg" / "example_ct.nii.gz")
    assert image.array.min() < -1000 and image.modality == "CT"
    from cascadeseg.io.modality import infer_modality

    assert infer_modality(image.array) == "CT"  # no name hint
    lgg = load_volume(shared_data / "lgg-flair" / "imagesTr" / "TCGA_CS_4941_19960909_0000.nii.gz")
    assert infer_modality(lgg.array) is None  # uint8 MR: values cannot tell


def test_dicom_t1post_matches_its_nifti_voxels_and_positions(shared_data: Path) -> None:
    dicom = load_volume(shared_data / "dicom" / "PGBM-001_19920402" / "T1post")
    nifti = load_volume(shared_data / "tcia-btp" / "imagesTr" / "PGBM-001_19920402_0000.nii.gz", whole_case=False)
    assert dicom.modality == "MR" and dicom.meta["format"] == "dicom"
    assert dicom.channel_names == ["T1post"] and dicom.meta["num_files"] == 24
    assert dicom.array.shape == nifti.array.shape == (1, 24, 320, 260)
    np.testing.assert_array_equal(dicom.array.astype(np.int32), nifti.array.astype(np.int32))
    # oblique scan: compare world positions of voxel centres, not just header numbers
    np.testing.assert_allclose(voxel_centres(dicom), voxel_centres(nifti), atol=1e-3)
    assert abs(np.linalg.det(dicom.direction) - 1) < 1e-6 and not np.allclose(dicom.direction, np.eye(3))


def test_dicom_any_file_of_the_series_opens_the_series(shared_data: Path) -> None:
    folder = shared_data / "dicom" / "PGBM-001_19920402" / "T1post"
    from_file = load_volume(folder / "000007.dcm")
    from_folder = load_volume(folder)
    assert from_file.array.shape == from_folder.array.shape
    np.testing.assert_array_equal(from_file.array, from_folder.array)
    [series] = list_series(folder)
    assert series.description == "T1post" and len(series.files) == 24


def test_totalseg_dicom_lines_up_with_its_label_file(shared_data: Path) -> None:
    folder = shared_data / "totalseg"
    ct = load_volume(folder / "example_ct_dicom")
    assert ct.array.shape == (1, 20, 512, 512) and ct.modality == "CT"
    assert ct.spacing == pytest.approx((2.0, 0.9765625, 0.9765625))
    assert ct.array.min() == -1024  # rescale intercept applied: HU
    # the label file is stored LAS, the DICOM LPS: same grid once both are canonical
    assert nib.aff2axcodes(nib.load(folder / "example_seg_dicom.nii.gz").affine) == ("L", "A", "S")
    labels = load_labels(folder / "example_seg_dicom.nii.gz", reference=ct)
    assert labels.array.shape == ct.spatial_shape
    np.testing.assert_allclose(world_corners(labels), world_corners(ct), atol=1e-3)
    # and they really overlap: the liver label (5) lies on soft-tissue HU, background mostly not
    liver_hu = np.median(ct.array[0][labels.array == 5])
    assert 0 < liver_hu < 150


def test_canonical_orientation_matches_simpleitk_dicomorient(shared_data: Path) -> None:
    path = shared_data / "lgg-flair" / "imagesTr" / "TCGA_DU_6404_19850629_0000.nii.gz"
    ours = load_volume(path)
    assert ours.meta["source_orientation"] == "RAS"
    assert orientation_code(ours.direction) == CANONICAL_ORIENTATION
    reference = sitk.DICOMOrient(sitk.ReadImage(str(path)), CANONICAL_ORIENTATION)
    np.testing.assert_array_equal(ours.array[0], sitk.GetArrayFromImage(reference))
    np.testing.assert_allclose(ours.origin, reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(ours.direction.ravel(), reference.GetDirection(), atol=1e-6)


def test_reorient_permuted_axes_keeps_every_voxel_position() -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 100, size=(1, 4, 5, 6)).astype(np.int16)
    direction = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # a sagittal-style "PIR"-like grid
    spacing, origin = (3.0, 2.0, 1.0), (10.0, -5.0, 7.0)
    out, new_spacing, new_origin, new_direction = reorient(array, spacing, origin, direction)
    assert orientation_code(new_direction) == "LPS"
    np.testing.assert_allclose(new_direction, np.eye(3))

    def world(idx_zyx, sp, org, d):
        return np.asarray(org) + np.asarray(d) @ (np.asarray(idx_zyx)[::-1] * np.asarray(sp)[::-1])

    for idx in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        value = array[(0, *idx)]
        position = world(idx, spacing, origin, direction)
        new_idx = np.round(np.linalg.solve(new_direction * np.asarray(new_spacing)[::-1], position - new_origin)).astype(int)[::-1]
        assert out[(0, *new_idx)] == value
    back = reorient(out, new_spacing, new_origin, new_direction, orientation_code(direction))
    np.testing.assert_array_equal(back[0], array)
    np.testing.assert_allclose(back[3], direction)
    np.testing.assert_allclose(back[2], origin)


def test_mha_and_nrrd_open_like_the_nifti(shared_data: Path, tmp_path: Path) -> None:
    nifti = load_volume(shared_data / "totalseg" / "example_mr_sm.nii.gz")
    for suffix in (".mha", ".nrrd", ".mhd"):
        written = save_volume(nifti, tmp_path / f"mr{suffix}")
        reread = load_volume(written)
        np.testing.assert_array_equal(reread.array, nifti.array)
        np.testing.assert_allclose(reread.affine_zyx(), nifti.affine_zyx(), atol=1e-4)
    assert {p.name for p in tmp_path.iterdir()} == {"mr.mha", "mr.nrrd", "mr.mhd", "mr.zraw"}


def test_4d_nifti_is_read_as_channels(shared_data: Path, tmp_path: Path) -> None:
    image = load_channels(brats_files(shared_data)[:2])
    crop = image.with_array(np.ascontiguousarray(image.array[:, 60:80, 50:150, 60:160]), meta={})
    path = save_volume(crop, tmp_path / "two_channels.nii.gz")
    assert nib.load(path).shape == (100, 100, 20, 2)
    reread = load_volume(path)
    assert reread.num_channels == 2 and reread.channel_names == ["two_channels_c0", "two_channels_c1"]
    np.testing.assert_array_equal(reread.array, crop.array)


def test_msd_case_file_loads_all_channels_with_dataset_json_names(shared_data: Path, tmp_path: Path) -> None:
    (tmp_path / "imagesTr").mkdir()
    for channel in ("0000", "0001"):
        name = f"PGBM-003_19950329_{channel}.nii.gz"
        (tmp_path / "imagesTr" / name).symlink_to(shared_data / "tcia-btp" / "imagesTr" / name)
    (tmp_path / "dataset.json").write_text('{"channel_names": {"0": "T1c", "1": "FLAIR"}, "labels": {"background": 0, "tumour": 1}}')
    image = load_volume(tmp_path / "imagesTr" / "PGBM-003_19950329_0000.nii.gz")
    assert image.num_channels == 2 and image.channel_names == ["T1c", "FLAIR"] and image.modality == "MR"
    [case] = load_dataset(tmp_path)
    assert case.channel_names == ("T1c", "FLAIR") and case.label_file is None
    loaded, labels = case.load()
    assert labels is None and loaded.array.shape == (2, 22, 320, 280)
    single = load_volume(tmp_path / "imagesTr" / "PGBM-003_19950329_0001.nii.gz", whole_case=False)
    np.testing.assert_array_equal(single.array[0], loaded.array[1])


def test_original_msd_layout_with_4d_files_and_modality_names(shared_data: Path, tmp_path: Path) -> None:
    from cascadeseg.io import load_labels as read_labels
    from cascadeseg.io import save_labels

    image = load_channels(brats_files(shared_data)[::3])  # t1 and flair
    labels = read_labels(shared_data / "brats-like" / "TCGA-DU-7294" / "simple.nii.gz", reference=image)
    crop = (slice(70, 80), slice(60, 180), slice(60, 180))
    small = image.with_array(np.ascontiguousarray(image.array[(slice(None), *crop)]), meta={})
    (tmp_path / "imagesTr").mkdir()
    save_volume(small, tmp_path / "imagesTr" / "BRATS_001.nii.gz")
    save_labels(labels.array[crop], small, tmp_path / "labelsTr" / "BRATS_001.nii.gz")
    (tmp_path / "dataset.json").write_text('{"name": "BrainTumour", "modality": {"0": "T1", "1": "FLAIR"}}')
    [case] = load_dataset(tmp_path)
    assert case.case_id == "BRATS_001" and case.channel_names == ("T1", "FLAIR")
    loaded, loaded_labels = case.load()
    assert loaded.channel_names == ["T1", "FLAIR"] and loaded.array.shape == (2, 10, 120, 120)
    np.testing.assert_array_equal(loaded.array, small.array)
    assert loaded_labels is not None
    np.testing.assert_array_equal(loaded_labels.array, labels.array[crop])
