"""Every bad input gives the project's own exception naming the file, what was wrong and what was
expected. The broken files are made in tmp_path from real scans; input files are never modified."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from cascadeseg.errors import (
    CascadeSegError,
    DatasetError,
    GeometryMismatchError,
    InputFileError,
    OutputExistsError,
    VolumeError,
)
from cascadeseg.io import list_series, load_channels, load_dataset, load_labels, load_volume, save_labels

LGG_IMAGE = "lgg-flair/imagesTr/TCGA_CS_4941_19960909_0000.nii.gz"
LGG_LABEL = "lgg-flair/labelsTr/TCGA_CS_4941_19960909.nii.gz"
PGBM_DICOM = "dicom/PGBM-001_19920402/T1post"


def real_nifti(shared_data: Path, rel: str = "totalseg/example_mr_sm.nii.gz") -> nib.Nifti1Image:
    image = nib.load(shared_data / rel)
    return nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine, image.header)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match=r"nope\.nii\.gz: does not exist; expected"):
        load_volume(tmp_path / "nope.nii.gz")
    with pytest.raises(InputFileError, match="does not exist"):
        load_labels(tmp_path / "nope.nii.gz")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.nii.gz").touch()
    with pytest.raises(InputFileError, match=r"empty\.nii\.gz: is an empty file"):
        load_volume(tmp_path / "empty.nii.gz")


def test_truncated_gzip(shared_data: Path, tmp_path: Path) -> None:
    data = (shared_data / LGG_IMAGE).read_bytes()
    (tmp_path / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError, match=r"truncated\.nii\.gz: cannot be read as NIfTI.*truncated"):
        load_volume(tmp_path / "truncated.nii.gz")


def test_truncated_uncompressed_nifti(shared_data: Path, tmp_path: Path) -> None:
    raw = gzip.decompress((shared_data / LGG_IMAGE).read_bytes())
    (tmp_path / "short.nii").write_bytes(raw[: len(raw) - 1000])
    with pytest.raises(InputFileError, match=r"short\.nii: cannot be read as NIfTI"):
        load_volume(tmp_path / "short.nii")


def test_corrupt_gzip_body(shared_data: Path, tmp_path: Path) -> None:
    data = bytearray((shared_data / LGG_IMAGE).read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)  # zero a block inside the deflate stream
    (tmp_path / "corrupt.nii.gz").write_bytes(bytes(data))
    with pytest.raises(InputFileError, match=r"corrupt\.nii\.gz: cannot be read"):
        load_volume(tmp_path / "corrupt.nii.gz")


def test_a_wrong_gzip_checksum_is_refused(shared_data: Path, tmp_path: Path) -> None:
    """The streamed decompression checks each member's CRC (nibabel alone would stop reading at
    the last voxel and never see it)."""
    data = bytearray((shared_data / LGG_IMAGE).read_bytes())
    data[-8] ^= 0xFF  # the CRC32 of the gzip trailer
    (tmp_path / "bad_crc.nii.gz").write_bytes(bytes(data))
    with pytest.raises(InputFileError, match=r"bad_crc\.nii\.gz: cannot be read as NIfTI"):
        load_volume(tmp_path / "bad_crc.nii.gz")


def test_nifti_gz_voxels_are_nibabel_s_for_scaled_big_endian_multi_member_files(shared_data: Path, tmp_path: Path) -> None:
    """The reader inflates a .nii.gz itself (in pieces, without holding the interpreter lock for
    a whole copy of the volume) and reads the voxels out of the inflated bytes; nibabel's own
    reading is the reference: read scaling (slope / intercept), byte order, a file in two gzip
    members, and bytes after the voxels."""
    from cascadeseg.io.nifti import read_nifti

    source = nib.load(str(shared_data / LGG_IMAGE))
    stored = np.asarray(source.dataobj).astype(np.int16)
    cases = {}
    scaled = nib.Nifti1Image(stored, source.affine)
    scaled.header.set_slope_inter(0.25, -7.0)
    cases["scaled.nii.gz"] = scaled
    big = nib.Nifti1Image(stored.astype(">i2"), source.affine)
    big.header.set_data_dtype(">i2")
    cases["big_endian.nii.gz"] = big
    for name, image in cases.items():
        nib.save(image, tmp_path / name)
    raw = gzip.decompress((tmp_path / "scaled.nii.gz").read_bytes())
    half = len(raw) // 2
    (tmp_path / "two_members.nii.gz").write_bytes(gzip.compress(raw[:half]) + gzip.compress(raw[half:]))
    (tmp_path / "trailing.nii.gz").write_bytes(gzip.compress(raw + bytes(100)))
    for name in ("scaled.nii.gz", "big_endian.nii.gz", "two_members.nii.gz", "trailing.nii.gz"):
        reference = np.asanyarray(nib.load(str(tmp_path / name)).dataobj)
        if reference.dtype == np.float64:
            reference = reference.astype(np.float32)  # what read_nifti keeps of nibabel's float64 scaling
        volume = read_nifti(tmp_path / name)
        assert volume.array.dtype == reference.dtype, name
        np.testing.assert_array_equal(volume.array[0], reference.T, err_msg=name)
    assert np.unique(read_nifti(tmp_path / "scaled.nii.gz").array).min() == 0.25 * stored.min() - 7.0


def test_uncompressed_nifti_named_nii_gz_still_opens(shared_data: Path, tmp_path: Path) -> None:
    raw = gzip.decompress((shared_data / LGG_IMAGE).read_bytes())
    (tmp_path / "plain.nii.gz").write_bytes(raw)
    np.testing.assert_array_equal(load_volume(tmp_path / "plain.nii.gz").array, load_volume(shared_data / LGG_IMAGE).array)


def test_files_that_are_not_images(shared_data: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.nii.gz"
    shutil.copy(shared_data / "README.md", text)  # text with an image name
    with pytest.raises(InputFileError, match=r"notes\.nii\.gz: cannot be read as NIfTI"):
        load_volume(text)
    readme = tmp_path / "README.md"
    shutil.copy(shared_data / "README.md", readme)
    with pytest.raises(InputFileError, match=r"README\.md: is not a supported image file; expected NIfTI"):
        load_volume(readme)
    fake_mha = tmp_path / "fake.mha"
    fake_mha.write_bytes((shared_data / "totalseg" / "label_names.json").read_bytes())
    with pytest.raises(InputFileError, match=r"fake\.mha: cannot be read as \.mha image"):
        load_volume(fake_mha)


def test_dicom_folder_without_images(shared_data: Path, tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="no DICOM images found"):
        load_volume(tmp_path)
    shutil.copy(shared_data / "README.md", tmp_path / "README.md")
    with pytest.raises(InputFileError, match=f"{tmp_path}: no DICOM images found"):
        load_volume(tmp_path)


def test_dicom_folder_with_several_series(shared_data: Path, tmp_path: Path) -> None:
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for source in [shared_data / PGBM_DICOM, shared_data / "totalseg" / "example_ct_dicom"]:
        for path in sorted(source.iterdir()):
            (mixed / f"{source.name}_{path.name}").symlink_to(path)
    series = list_series(mixed)
    assert len(series) == 2
    with pytest.raises(InputFileError, match=r"holds 2 DICOM series, expected one; pick one with series_uid= \(--series-uid UID on the command line\)") as info:
        load_volume(mixed)
    message = str(info.value)
    assert "series_uid='1.3.6.1.4.1.14519.5.2.1.4429.7055.197322826283777183783875680644': T1post, MR, 24 files" in message
    assert "series_uid='': CT Body 3.0, CT, 20 files" in message  # anonymised series: empty UID
    t1 = load_volume(mixed, series_uid="1.3.6.1.4.1.14519.5.2.1.4429.7055.197322826283777183783875680644")
    assert t1.array.shape == (1, 24, 320, 260) and t1.modality == "MR"
    ct_uid = next(s.uid for s in series if s.modality == "CT")
    ct = load_volume(mixed, series_uid=ct_uid)
    assert ct.array.shape == (1, 20, 512, 512) and ct.modality == "CT"
    # a file of one series picks that series
    one_file = next(p for p in sorted(mixed.iterdir()) if p.name.startswith("T1post_"))
    assert load_volume(one_file).array.shape == (1, 24, 320, 260)
    with pytest.raises(InputFileError, match="no DICOM series with series_uid='1.2.3'"):
        load_volume(mixed, series_uid="1.2.3")


def test_dicom_series_with_a_missing_slice(shared_data: Path, tmp_path: Path) -> None:
    files = sorted((shared_data / PGBM_DICOM).iterdir())
    for path in files[:10] + files[11:]:  # one slice file lost in the middle of the series
        (tmp_path / path.name).symlink_to(path)
    with pytest.raises(VolumeError, match=r"the 23 DICOM slices are not evenly spaced \(gaps from 6\.5 to 13 mm"):
        load_volume(tmp_path)


def test_2d_image_where_a_volume_is_needed(shared_data: Path, tmp_path: Path) -> None:
    image = real_nifti(shared_data)
    slice_2d = np.asanyarray(image.dataobj)[:, :, 10]
    nib.save(nib.Nifti1Image(slice_2d, image.affine), tmp_path / "slice.nii.gz")
    with pytest.raises(VolumeError, match=r"slice\.nii\.gz: is a 2D image.*expected a 3D volume"):
        load_volume(tmp_path / "slice.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(slice_2d.T.copy()), str(tmp_path / "slice.mha"))
    with pytest.raises(VolumeError, match=r"slice\.mha: is a 2D image"):
        load_volume(tmp_path / "slice.mha")


def test_5d_data(shared_data: Path, tmp_path: Path) -> None:
    image = real_nifti(shared_data)
    data = np.asanyarray(image.dataobj)[:20, :20, :10]
    five_d = np.stack([np.stack([data, data]), np.stack([data, data])]).transpose(2, 3, 4, 0, 1)
    nib.save(nib.Nifti1Image(five_d, image.affine), tmp_path / "five.nii.gz")
    with pytest.raises(VolumeError, match=r"five\.nii\.gz: has 5 dimensions.*expected a 3D volume or a 4D"):
        load_volume(tmp_path / "five.nii.gz")
    # a vector image stored as (x, y, z, 1, c) by ITK is just channels
    nib.save(nib.Nifti1Image(five_d[..., :1, :], image.affine), tmp_path / "vector.nii.gz")
    assert load_volume(tmp_path / "vector.nii.gz").array.shape == (2, 10, 20, 20)


def test_nan_and_inf_are_reported_then_handled_by_choice(shared_data: Path, tmp_path: Path) -> None:
    image = real_nifti(shared_data)
    data = np.asanyarray(image.dataobj).astype(np.float32)
    data[0, 0, :5] = np.nan
    data[1, 1, :2] = np.inf
    nib.save(nib.Nifti1Image(data, image.affine), tmp_path / "nan.nii.gz")
    with pytest.raises(VolumeError, match=r"nan\.nii\.gz: has 7 non-finite voxels \(5 NaN, 2 Inf\).*nan_policy"):
        load_volume(tmp_path / "nan.nii.gz")
    zero = load_volume(tmp_path / "nan.nii.gz", nan_policy="zero")
    assert np.isfinite(zero.array).all() and zero.meta["non_finite_replaced"]["count"] == 7
    low = load_volume(tmp_path / "nan.nii.gz", nan_policy="min")
    finite = data[np.isfinite(data)]
    assert np.isfinite(low.array).all() and low.array.min() == finite.min()
    assert np.count_nonzero(low.array == finite.min()) == np.count_nonzero(finite == finite.min()) + 7
    with pytest.raises(VolumeError, match="nan_policy='drop' is not known"):
        load_volume(tmp_path / "nan.nii.gz", nan_policy="drop")


def test_constant_volume_loads_but_cannot_be_normalised(shared_data: Path, tmp_path: Path) -> None:
    from cascadeseg.preprocessing import apply_channel_preprocessing

    image = real_nifti(shared_data)
    nib.save(nib.Nifti1Image(np.full(image.shape, 7, np.int16), image.affine), tmp_path / "flat.nii.gz")
    flat = load_volume(tmp_path / "flat.nii.gz")
    for spec in ({"type": "mri_zscore"}, {"type": "minmax"}):
        with pytest.raises(VolumeError, match="constant"):
            apply_channel_preprocessing(flat.array[0], spec)


def test_label_map_that_does_not_match_its_image(shared_data: Path, tmp_path: Path) -> None:
    image = load_volume(shared_data / LGG_IMAGE)
    other = shared_data / "lgg-flair" / "labelsTr" / "TCGA_DU_6404_19850629.nii.gz"
    with pytest.raises(GeometryMismatchError, match=r"TCGA_DU_6404_19850629\.nii\.gz: label map has shape \(53, 256, 256\).*\(23, 256, 256\)"):
        load_labels(other, reference=image)
    # same shape, moved by 5 mm: a geometry mismatch, not a shape one
    label = nib.load(shared_data / LGG_LABEL)
    moved = label.affine.copy()
    moved[0, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asanyarray(label.dataobj), moved), tmp_path / "moved.nii.gz")
    with pytest.raises(GeometryMismatchError, match=r"moved\.nii\.gz: .* lies 5 mm away"):
        load_labels(tmp_path / "moved.nii.gz", reference=image)


def test_non_integer_negative_and_multichannel_labels(shared_data: Path, tmp_path: Path) -> None:
    label = nib.load(shared_data / LGG_LABEL)
    data = np.asanyarray(label.dataobj)
    nib.save(nib.Nifti1Image(data * np.float32(0.5), label.affine), tmp_path / "soft.nii.gz")
    with pytest.raises(VolumeError, match=r"soft\.nii\.gz: \d+ label voxels are not whole numbers"):
        load_labels(tmp_path / "soft.nii.gz")
    nib.save(nib.Nifti1Image(data.astype(np.int16) - 1, label.affine), tmp_path / "negative.nii.gz")
    with pytest.raises(VolumeError, match=r"negative\.nii\.gz: label map has negative values \(min -1"):
        load_labels(tmp_path / "negative.nii.gz")
    nib.save(nib.Nifti1Image(np.stack([data, data], -1), label.affine), tmp_path / "two.nii.gz")
    with pytest.raises(VolumeError, match="has 2 channels; expected a single 3D label map"):
        load_labels(tmp_path / "two.nii.gz")
    # whole-number floats are fine (some tools save labels as float32)
    nib.save(nib.Nifti1Image(data.astype(np.float32), label.affine), tmp_path / "float.nii.gz")
    assert load_labels(tmp_path / "float.nii.gz").array.dtype == np.uint8


def test_channels_on_different_grids_and_bad_datasets(shared_data: Path, tmp_path: Path) -> None:
    with pytest.raises(GeometryMismatchError, match="channel has shape"):
        load_channels([shared_data / LGG_IMAGE, shared_data / "lgg-flair" / "imagesTr" / "TCGA_DU_6404_19850629_0000.nii.gz"])
    with pytest.raises(DatasetError, match="has no imagesTr/ folder"):
        load_dataset(tmp_path)
    (tmp_path / "imagesTr").mkdir()
    with pytest.raises(DatasetError, match="holds no image files"):
        load_dataset(tmp_path)
    (tmp_path / "imagesTr" / "a_0000.nii.gz").symlink_to(shared_data / LGG_IMAGE)
    (tmp_path / "imagesTr" / "a_0002.nii.gz").symlink_to(shared_data / LGG_IMAGE)
    with pytest.raises(DatasetError, match=r"case 'a' has channels \['0000', '0002'\]"):
        load_dataset(tmp_path)
    with pytest.raises(DatasetError, match="is a dataset folder"):
        load_volume(tmp_path)
    (tmp_path / "imagesTr" / "a_0002.nii.gz").unlink()
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"dataset\.json: is not valid JSON"):
        load_dataset(tmp_path)


def test_every_error_is_a_cascadeseg_error() -> None:
    for kind in (InputFileError, VolumeError, GeometryMismatchError, DatasetError, OutputExistsError):
        assert issubclass(kind, CascadeSegError)


def _fingerprint(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def test_input_files_are_never_modified(shared_data: Path, tmp_path: Path) -> None:
    image_path = tmp_path / "case_0000.nii.gz"
    label_path = tmp_path / "case_seg.nii.gz"
    shutil.copy2(shared_data / LGG_IMAGE, image_path)
    shutil.copy2(shared_data / LGG_LABEL, label_path)
    dicom_files = sorted((shared_data / PGBM_DICOM).iterdir())
    before = {p: _fingerprint(p) for p in [image_path, label_path, *dicom_files[:3]]}

    image = load_volume(image_path)
    labels = load_labels(label_path, reference=image)
    save_labels(labels, image, tmp_path / "case_out.nii.gz")
    with pytest.raises(OutputExistsError):
        save_labels(labels, image, label_path)  # onto the user's own file: refused
    with pytest.raises(OutputExistsError):
        save_labels(labels, image, image_path)
    load_volume(shared_data / PGBM_DICOM)

    assert {p: _fingerprint(p) for p in before} == before


def test_dataset_folder_pairs_each_case_with_its_own_label_map_and_names_orphans(shared_data: Path,
                                                                                 tmp_path: Path) -> None:
    """Five real LGG cases linked into an nnU-Net folder: each case gets its own label map, a case
    whose map is missing gets none, and a map without an image is refused with its name."""
    from cascadeseg.errors import DatasetError
    from cascadeseg.io import load_dataset

    source = shared_data / "lgg-flair"
    cases = sorted(p.name[: -len(".nii.gz")] for p in (source / "labelsTr").glob("*.nii.gz"))[:5]
    folder = tmp_path / "data"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for case in cases:
        (folder / "imagesTr" / f"{case}_0000.nii.gz").symlink_to(source / "imagesTr" / f"{case}_0000.nii.gz")
    for case in cases[1:]:
        (folder / "labelsTr" / f"{case}.nii.gz").symlink_to(source / "labelsTr" / f"{case}.nii.gz")
    refs = {ref.case_id: ref for ref in load_dataset(folder)}
    assert sorted(refs) == cases
    assert refs[cases[0]].label_file is None
    assert all(refs[case].label_file == folder / "labelsTr" / f"{case}.nii.gz" for case in cases[1:])
    (folder / "imagesTr" / f"{cases[2]}_0000.nii.gz").unlink()
    with pytest.raises(DatasetError, match=f"1 label map\\(s\\) have no image in imagesTr/ \\({cases[2]}\\)"):
        load_dataset(folder)
