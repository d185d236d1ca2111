"""Preprocessing on real scans: CT windows, MRI z-score, min-max, channel stacking, N4, resampling,
body/head masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cascadeseg.errors import GeometryMismatchError, ModelConfigError, VolumeError
from cascadeseg.io import load_channels, load_labels, load_volume
from cascadeseg.io.checks import world_corners
from cascadeseg.preprocessing import (
    CT_WINDOWS,
    apply_channel_preprocessing,
    body_mask,
    ct_window,
    minmax,
    mri_zscore,
    n4_bias_correction,
    preprocess_volume,
    resample_to_grid,
    resample_to_spacing,
    stack_channels,
)

LIVER, LUNG_LOBES = 5, (10, 11, 12, 13, 14)


@pytest.fixture(scope="module")
def ct_case(shared_data: Path):
    image = load_volume(shared_data / "totalseg" / "example_ct.nii.gz")
    labels = load_labels(shared_data / "totalseg" / "example_seg_fast_force_split.nii.gz", reference=image)
    return image, labels


@pytest.fixture(scope="module")
def brats_case(shared_data: Path):
    folder = shared_data / "brats-like" / "TCGA-DU-7294"
    files = [folder / f"TCGA-DU-7294_{c}_bet.nii.gz" for c in ("t1", "t1c", "t2", "fla")]
    image = load_channels(files, ["T1", "T1c", "T2", "FLAIR"])
    labels = load_labels(folder / "simple.nii.gz", reference=image)
    return image, labels


def test_ct_window_presets_are_the_papers_windows() -> None:
    assert CT_WINDOWS["liver"] == (-200, 250) and CT_WINDOWS["abdomen"] == (-200, 200)
    assert CT_WINDOWS["brain"] == (0, 80) and CT_WINDOWS["bone"] == (-450, 1050)


def test_ct_window_scales_hounsfield_to_unit_range(ct_case) -> None:
    image, labels = ct_case
    hu = image.array[0]
    liver = ct_window(hu, "liver")
    assert liver.dtype == np.float32 and liver.min() == 0.0 and liver.max() == 1.0
    np.testing.assert_allclose(liver, np.clip((hu + 200.0) / 450.0, 0, 1), atol=1e-6)
    # liver parenchyma (~50-100 HU) sits in the middle of the liver window, air at 0, bone at 1
    assert 0.45 < np.median(liver[labels.array == LIVER]) < 0.7
    assert np.all(liver[hu < -200] == 0) and np.all(liver[hu > 250] == 1)
    by_spec = apply_channel_preprocessing(hu, {"type": "ct_window", "window": [-200, 250]})
    by_preset = apply_channel_preprocessing(hu, {"type": "ct_window", "preset": "liver"})
    np.testing.assert_array_equal(by_spec, liver)
    np.testing.assert_array_equal(by_preset, liver)
    assert image.array.dtype == np.int32  # the input is untouched
    # One float32 copy is all the window allocates (no float64 temporary of the volume).
    import tracemalloc

    ct16 = hu.astype(np.int16)
    tracemalloc.start()
    ct_window(ct16, "abdomen")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1.2 * ct16.size * 4
    for name in CT_WINDOWS:
        windowed = ct_window(hu, name)
        assert windowed.min() == 0.0 and windowed.max() == 1.0, name
    with pytest.raises(ModelConfigError, match="'lung' is not known"):
        ct_window(hu, "lung")
    with pytest.raises(ModelConfigError, match="low < high"):
        ct_window(hu, (250, -200))


def test_mri_zscore_inside_the_foreground(brats_case) -> None:
    image, _ = brats_case
    flair = image.array[3]
    normalised = mri_zscore(flair, (0.5, 99.5))
    brain = flair != 0
    assert normalised.dtype == np.float32
    assert abs(normalised[brain].mean()) < 1e-3 and abs(normalised[brain].std() - 1) < 1e-3
    assert np.all(normalised[~brain] == 0)
    low, high = np.percentile(flair[brain], [0.5, 99.5])
    clipped = np.clip(flair[brain], low, high).astype(float)
    assert normalised.max() == pytest.approx((high - clipped.mean()) / clipped.std(), rel=1e-5)  # clipped at 99.5%
    via_spec = apply_channel_preprocessing(flair, {"type": "mri_zscore", "percentiles": [0.5, 99.5]})
    np.testing.assert_array_equal(via_spec, normalised)


def test_mri_zscore_with_a_body_mask_on_unstripped_mri(shared_data: Path) -> None:
    image = load_volume(shared_data / "tcia-btp" / "imagesTr" / "PGBM-001_19920402_0000.nii.gz")
    head = body_mask(image.array[0])
    normalised = mri_zscore(image.array[0], foreground=head)
    assert abs(normalised[head].mean()) < 1e-3 and np.all(normalised[~head] == 0)


def test_minmax_and_per_channel_specs(brats_case) -> None:
    image, _ = brats_case
    scaled = minmax(image.array[0])
    assert scaled.min() == 0 and scaled.max() == 1
    specs = [{"type": "mri_zscore", "percentiles": [0.5, 99.5]}] * 3 + [{"type": "minmax", "percentiles": [1, 99]}]
    prepared = preprocess_volume(image, specs)
    assert prepared.array.dtype == np.float32 and prepared.array.shape == image.array.shape
    assert prepared.spacing == image.spacing and prepared.channel_names == image.channel_names
    assert prepared.array[3].min() == 0 and prepared.array[3].max() == 1
    with pytest.raises(ModelConfigError, match="4 channels.*2 preprocessing specs"):
        preprocess_volume(image, specs[:2])
    with pytest.raises(ModelConfigError, match="'gamma' is not known"):
        apply_channel_preprocessing(image.array[0], {"type": "gamma"})


def test_stack_channels_equals_loading_them_together(shared_data: Path, brats_case) -> None:
    image, _ = brats_case
    singles = [load_volume(p, whole_case=False) for p in image.meta["channel_files"]]
    stacked = stack_channels(singles, ["T1", "T1c", "T2", "FLAIR"])
    np.testing.assert_array_equal(stacked.array, image.array)
    assert stacked.modality == "MR"
    other = load_volume(shared_data / "totalseg" / "example_mr_sm.nii.gz")
    with pytest.raises(GeometryMismatchError, match="channel has shape"):
        stack_channels([singles[0], other])


def test_n4_removes_a_known_bias_field(brats_case) -> None:
    image, _ = brats_case
    t1 = image.array[0, 40:110, 20:220, 20:220].astype(np.float32)  # a crop around the brain keeps it fast
    brain = t1 > 0
    x = np.linspace(-1.0, 1.0, t1.shape[2], dtype=np.float32)
    z = np.linspace(-1.0, 1.0, t1.shape[0], dtype=np.float32)
    true_log_bias = 0.35 * x[None, None, :] + 0.2 * z[:, None, None]  # smooth, up to x1.7 across the head
    biased = image.with_array((t1 * np.exp(true_log_bias))[None], meta={})
    original = image.with_array(t1[None], meta={})
    corrected = n4_bias_correction(biased, mask=brain)
    corrected_original = n4_bias_correction(original, mask=brain)
    # the scan has a bias of its own: the field N4 finds on top of it must be the one we added
    found_total = np.log(biased.array[0][brain] / corrected.array[0][brain])
    found_own = np.log(t1[brain] / corrected_original.array[0][brain])
    truth = np.broadcast_to(true_log_bias, t1.shape)[brain]
    found_added = found_total - found_own
    slope = np.polyfit(truth, found_added, 1)[0]
    print(f"\nN4 on a known added field: correlation {np.corrcoef(found_added, truth)[0, 1]:.3f}, slope {slope:.2f}")
    assert np.corrcoef(found_added, truth)[0, 1] > 0.95
    assert slope > 0.6  # most of the field's amplitude is recovered (N4 under-shoots linear ramps a little)

    def ramp(volume: np.ndarray) -> float:
        left, right = volume[..., : t1.shape[2] // 2], volume[..., t1.shape[2] // 2 :]
        return float(np.log(np.median(right[right > 0]) / np.median(left[left > 0])))

    # the left-right intensity ramp we added is at least halved
    added = ramp(biased.array[0]) - ramp(t1)
    left_over = ramp(corrected.array[0]) - ramp(corrected_original.array[0])
    assert added > 0.1 and abs(left_over) < 0.5 * added
    with pytest.raises(VolumeError, match="negative values"):
        n4_bias_correction(image.with_array(image.array[:1, :40].astype(np.float32) - 100, meta={}))


def test_resample_to_spacing_keeps_extent_and_organ_volumes(ct_case) -> None:
    image, labels = ct_case
    coarse = resample_to_spacing(image, (6.0, 6.0, 6.0))
    coarse_labels = resample_to_spacing(labels, (6.0, 6.0, 6.0))
    assert coarse.spatial_shape == coarse_labels.spatial_shape == (56, 50, 61)
    assert coarse.array.dtype == np.float32 and coarse_labels.array.dtype == labels.array.dtype
    assert set(np.unique(coarse_labels.array)) <= set(np.unique(labels.array))  # nearest: no new labels

    def extent(volume) -> tuple[np.ndarray, np.ndarray]:
        corners = world_corners(volume)
        half = np.abs(volume.direction) @ (np.asarray(volume.spacing[::-1]) / 2)
        return corners.min(axis=1) - half, corners.max(axis=1) + half

    for got, expected in zip(extent(coarse), extent(image)):
        np.testing.assert_allclose(got, expected, atol=3.0)  # within half a new voxel
    liver_ml = np.count_nonzero(labels.array == LIVER) * 27 / 1000
    coarse_liver_ml = np.count_nonzero(coarse_labels.array == LIVER) * 216 / 1000
    assert coarse_liver_ml == pytest.approx(liver_ml, rel=0.05)
    assert coarse.meta["resampled_from"]["spacing"] == [3.0, 3.0, 3.0] and "nifti" not in coarse.meta
    # back onto the original grid: the liver mask survives with a high overlap
    back = resample_to_grid(coarse_labels, image, is_label=True)
    assert back.spatial_shape == image.spatial_shape
    a, b = back.array == LIVER, labels.array == LIVER
    assert 2 * np.count_nonzero(a & b) / (a.sum() + b.sum()) > 0.85
    with pytest.raises(VolumeError, match="three positive numbers"):
        resample_to_spacing(image, (0, 1, 1))


def test_resample_thick_slices_to_isotropic(shared_data: Path) -> None:
    image = load_volume(shared_data / "tcia-btp" / "imagesTr" / "PGBM-003_19950329_0000.nii.gz")
    iso = resample_to_spacing(image, (1.375, 1.375, 1.375))
    assert iso.array.shape == (2, 104, 160, 140)
    np.testing.assert_allclose(iso.direction, image.direction)  # oblique direction kept
    centre_old = world_corners(image).mean(axis=1)
    centre_new = world_corners(iso).mean(axis=1)
    np.testing.assert_allclose(centre_new, centre_old, atol=1.0)


@pytest.mark.parametrize("case", ["tcia", "ct"])
def test_resampling_in_slabs_equals_one_pass(case: str, shared_data: Path, ct_case, monkeypatch) -> None:
    """A 2D model's working grid keeps the slices: the scan is resampled a slab of slices at a
    time (SimpleITK's whole-volume copy held the interpreter lock, freezing the GUI thread), and the
    result is the one-pass result: on the oblique two-channel TCIA scan and on a CT label map."""
    from cascadeseg.preprocessing import resample as resampling

    if case == "tcia":
        volume = load_volume(shared_data / "tcia-btp" / "imagesTr" / "PGBM-003_19950329_0000.nii.gz")
    else:
        volume = ct_case[1]
    target = (volume.spacing[0], 1.3, 0.9)
    monkeypatch.setattr(resampling, "_SLAB_VOXELS", 1 << 40)
    whole = resample_to_spacing(volume, target)
    back_whole = resample_to_grid(whole, volume)
    calls: list[tuple[int, ...]] = []
    one_pass = resampling._resample_once
    monkeypatch.setattr(resampling, "_resample_once", lambda part, *a, **k: calls.append(part.array.shape) or one_pass(part, *a, **k))
    slab_voxels = 3 * int(np.prod(volume.spatial_shape[1:])) + 1  # three slices a slab, the last one shorter
    monkeypatch.setattr(resampling, "_SLAB_VOXELS", slab_voxels)
    slabs = resample_to_spacing(volume, target)
    assert len(calls) == -(-volume.spatial_shape[0] // 3) and all(shape[-3] <= 3 for shape in calls)
    assert slabs.spatial_shape == whole.spatial_shape and slabs.array.dtype == whole.array.dtype
    assert slabs.origin == whole.origin and slabs.spacing == whole.spacing
    np.testing.assert_allclose(slabs.array, whole.array, rtol=0, atol=1e-4 if case == "tcia" else 0)
    # and back onto the scan's grid (what a prediction's labels do), again in slabs
    back = resample_to_grid(slabs, volume)
    np.testing.assert_allclose(back.array, back_whole.array, rtol=0, atol=1e-4 if case == "tcia" else 0)
    # a grid that keeps no axis is resampled in one pass whatever the volume's size
    calls.clear()
    resample_to_spacing(volume, (volume.spacing[0] * 1.5, 1.3, 0.9))
    assert len(calls) == 1


def test_body_mask_on_ct_contains_the_lungs_and_not_the_air(ct_case) -> None:
    image, labels = ct_case
    mask = body_mask(image)
    hu = image.array[0]
    lungs = np.isin(labels.array, LUNG_LOBES)
    assert lungs.sum() > 1000 and mask[lungs].mean() > 0.99  # dark lungs are inside the body (holes filled)
    organs = labels.array > 0
    assert mask[organs].mean() > 0.995
    outside = ~mask
    assert np.median(hu[outside]) < -900  # outside is air
    assert 0.2 < mask.mean() < 0.9


def test_head_mask_on_mri_contains_the_tumour(shared_data: Path, brats_case) -> None:
    image, labels = brats_case
    brain = body_mask(image)
    assert brain[labels.array > 0].mean() > 0.99
    assert np.count_nonzero(brain & (image.array[0] == 0)) < 0.05 * brain.sum()
    lgg = load_volume(shared_data / "lgg-flair" / "imagesTr" / "TCGA_DU_6404_19850629_0000.nii.gz")
    lesion = load_labels(shared_data / "lgg-flair" / "labelsTr" / "TCGA_DU_6404_19850629.nii.gz", reference=lgg)
    head = body_mask(lgg)
    assert head[lesion.array > 0].mean() > 0.99 and head.mean() < 0.6
    with pytest.raises(VolumeError, match="constant"):
        body_mask(np.zeros((4, 4, 4), np.int16))


def test_shipped_presets_apply_to_the_real_scans_they_name(shared_data: Path, ct_case, brats_case) -> None:
    from cascadeseg.preprocessing import preprocessing_presets
    from cascadeseg.shipped import sample_scan_path

    presets = preprocessing_presets()
    assert {"lgg_flair", "brats", "ct_liver", "ct_abdomen", "brain_t1c_flair"} <= set(presets)
    assert presets["ct_liver"].specs[0]["window"] == list(CT_WINDOWS["liver"])
    for name, volume in (("lgg_flair", load_volume(sample_scan_path())), ("brats", brats_case[0]), ("ct_liver", ct_case[0])):
        prepared = preprocess_volume(volume, presets[name].specs)
        assert prepared.array.dtype == np.float32 and np.isfinite(prepared.array).all(), name


@pytest.mark.parametrize("path", ["lgg-flair/imagesTr/TCGA_DU_6404_19850629_0000.nii.gz",
                                  "brats-like/TCGA-DU-7294/TCGA-DU-7294_fla_bet.nii.gz"])
def test_auto_foreground_gives_the_same_input_for_a_rescaled_or_already_normalised_scan(shared_data: Path, path) -> None:
    """A real FLAIR scan (LGG with its noisy background; BraTS-style skull-stripped with a zero
    one), the same scan z-scored over all voxels (its background becomes a negative value) and
    rescaled by 3 x + 100: the "auto" z-score gives one array for all three (to float precision),
    where "nonzero" counts the shifted background as tissue."""
    from cascadeseg.io import load_volume
    from cascadeseg.preprocessing import apply_channel_preprocessing

    scan = load_volume(shared_data / path).array[0].astype(np.float32)
    zscored = (scan - scan.mean()) / scan.std()
    rescaled = 3.0 * scan + 100.0
    spec = {"type": "mri_zscore", "percentiles": [0.5, 99.5], "foreground": "auto"}
    reference = apply_channel_preprocessing(scan, spec)
    for copy in (zscored, rescaled):
        np.testing.assert_allclose(apply_channel_preprocessing(copy, spec), reference, atol=1e-4)
    nonzero = {"type": "mri_zscore", "percentiles": [0.5, 99.5]}
    assert np.abs(apply_channel_preprocessing(rescaled, nonzero) - reference).max() > 0.5


def test_auto_foreground_keeps_a_crop_without_background(shared_data: Path) -> None:
    """A hippocampus crop lies inside the brain: "auto" must not cut its darker tissue away."""
    from cascadeseg.io import load_volume
    from cascadeseg.preprocessing.intensity import _foreground

    crop = load_volume(shared_data / "hippocampus" / "imagesTr" / "hippocampus_001_0000.nii.gz").array[0]
    mask = _foreground(np.asarray(crop, dtype=np.float32), "auto")
    assert mask is not None and mask.mean() > 0.97
    lgg = load_volume(shared_data / "lgg-flair" / "imagesTr" / "TCGA_DU_6404_19850629_0000.nii.gz").array[0]
    assert 0.2 < _foreground(lgg.astype(np.float32), "auto").mean() < 0.7  # the head, not the noisy air
