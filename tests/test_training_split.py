"""Train/validation splits, recommended depth, augmentation and sampling (fast, no training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cascadeseg.errors import DatasetError, ModelConfigError
from cascadeseg.inference.predictor import PAD_VALUE, PreparedScan
from cascadeseg.training.augmentation import augment_batch
from cascadeseg.training.config import AugmentationConfig, TrainConfig
from cascadeseg.training.datasets import TrainingCase
from cascadeseg.training.sampling import PatchDataset, foreground_components
from cascadeseg.training.split import MIN_TRAINING_SHARE, Split, patient_id, split_by_patient, split_by_slice_blocks
from cascadeseg.training.validation import recommended_depth


def lgg_case_ids(shared_data: Path) -> list[str]:
    return sorted(p.name[: -len("_0000.nii.gz")] for p in (shared_data / "lgg-flair" / "imagesTr").glob("*_0000.nii.gz"))


def test_patient_split_is_seeded_disjoint_and_keeps_forced_case(shared_data: Path, tmp_path: Path) -> None:
    ids = lgg_case_ids(shared_data)
    assert len(ids) == 80
    a = split_by_patient(ids, 0.15, seed=0, force_val=["TCGA_DU_6404_19850629"])
    b = split_by_patient(ids, 0.15, seed=0, force_val=["TCGA_DU_6404_19850629"])
    c = split_by_patient(ids, 0.15, seed=1, force_val=["TCGA_DU_6404_19850629"])
    assert a == b and a.val != c.val
    assert "TCGA_DU_6404_19850629" in a.val and len(a.val) == 12
    assert not set(a.train) & set(a.val) and sorted(a.train + a.val) == ids
    a.save(tmp_path)
    assert Split.load(tmp_path) == a


def test_two_studies_of_one_patient_stay_on_one_side(shared_data: Path) -> None:
    # TCIA's PGBM-001 was scanned twice: the studies must not straddle the split.
    ids = sorted(p.name[: -len("_0000.nii.gz")] for p in (shared_data / "tcia-btp" / "imagesTr").glob("*_0000.nii.gz"))
    assert patient_id("PGBM-001_19920402") == "PGBM-001"
    for seed in range(6):
        split = split_by_patient(ids, 0.3, seed=seed)
        sides = {"train" if c in split.train else "val" for c in ids if c.startswith("PGBM-001")}
        assert len(sides) == 1


def test_patient_split_refuses_too_few_patients() -> None:
    with pytest.raises(DatasetError, match="at least 2 patients"):
        split_by_patient(["TCGA_A_1_19990101"], 0.2, seed=0)
    with pytest.raises(DatasetError, match="only 2 patient"):
        split_by_patient(["P1", "P2"], 0.2, seed=0, force_val=["P1", "P2"])
    with pytest.raises(DatasetError, match="not in the data"):
        split_by_patient(["P1", "P2", "P3"], 0.2, seed=0, force_val=["P9"])


def test_slice_blocks_keep_a_gap_between_training_and_validation() -> None:
    split = split_by_slice_blocks("vol", 60, axis=0, val_fraction=0.25, block=6, gap=2, seed=3)
    train = np.zeros(60, bool)
    val = np.zeros(60, bool)
    for b in split.train_blocks:
        train[b.start : b.stop] = True
    for b in split.val_blocks:
        val[b.start : b.stop] = True
    assert val.sum() >= 6 and train.sum() >= 30 and not (train & val).any()
    # No validation slice has a training slice within `gap` slices.
    for s in np.flatnonzero(val):
        assert not train[max(0, s - 2) : s + 3].any()


def test_slice_blocks_use_annotated_slices_and_refuse_thin_volumes() -> None:
    annotated = np.zeros(80, bool)
    annotated[20:60] = True
    split = split_by_slice_blocks("vol", 80, 0, 0.25, 5, 1, seed=0, annotated=annotated)
    used = [s for b in split.train_blocks + split.val_blocks for s in range(b.start, b.stop)]
    assert min(used) >= 20 and max(used) < 60
    with pytest.raises(DatasetError, match="slice-block split needs"):
        split_by_slice_blocks("thin", 10, 0, 0.2, 8, 3, seed=0)


def test_slice_blocks_validate_where_the_structure_is_and_train_on_most_of_it(shared_data: Path) -> None:
    """The four real glioblastoma studies (22-25 slices of 6.5 mm, small enhancing lesions): the
    validation block shows lesion in every study for every seed, and the training side keeps at
    least half of the lesion's voxels. Without the lesion's slices a study validated on background,
    scored 0.000 at every epoch and kept its first epoch as 'best'; with a gap of 3 around a
    validation block in the lesion, a fold trained on 1-2 of a study's lesion slices."""
    from cascadeseg.io import load_labels

    shown = 0
    for path in sorted((shared_data / "tcia-btp" / "labelsTr").glob("*.nii.gz")):
        voxels = np.asarray(load_labels(path).array > 0).sum(axis=(1, 2))
        lesion = voxels > 0
        for seed in range(5):
            split = split_by_slice_blocks(path.name, len(lesion), 0, 0.2, 8, 3, seed, foreground=voxels)
            val = np.concatenate([np.arange(b.start, b.stop) for b in split.val_blocks])
            train = np.concatenate([np.arange(b.start, b.stop) for b in split.train_blocks])
            assert lesion[val].any() and lesion[train].any(), (path.name, seed)
            assert not set(val) & set(train)
            assert voxels[train].sum() >= MIN_TRAINING_SHARE * voxels.sum(), (path.name, seed)
            blind = split_by_slice_blocks(path.name, len(lesion), 0, 0.2, 8, 3, seed)
            shown += bool(lesion[np.concatenate([np.arange(b.start, b.stop) for b in blind.val_blocks])].any())
    assert shown < 20  # without the foreground, some validation blocks miss the lesion


def test_recommended_depth_is_shallowest_within_one_point() -> None:
    assert recommended_depth({1: 0.70, 2: 0.795, 3: 0.80, 4: 0.805}) == 2
    assert recommended_depth({1: 0.81, 2: 0.80, 3: 0.79, 4: 0.78}) == 1
    assert recommended_depth({1: 0.50, 2: 0.60, 3: 0.70, 4: 0.80}) == 4
    assert recommended_depth({1: 0.9}) == 1
    assert recommended_depth({1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0}) == 4  # found nothing: no evidence for pruning


def test_a_depth_every_validation_patient_finds_worse_is_not_recommended() -> None:
    """The shipped 3D hippocampus model's depth was chosen on 32 validation patients (on its card:
    its own trainer's, or, for a continuation that kept its parent's choice, the parent's): L2 is
    0.004 below L4, inside the point of tolerance, but patient by patient the loss is 4 standard
    errors (L3: 6), so the card recommends L4; the means alone would have said L2."""
    from cascadeseg.inference.checkpoint import load_checkpoint, resolve_checkpoint

    _, card = load_checkpoint(resolve_checkpoint("hippocampus_unet_plus_plus_3d"), device=None)
    chosen_on = card.validation.get("choices", {}).get("evidence", {})
    trainer = chosen_on.get("trainer_validation") or card.validation["trainer_validation"]
    means = {int(d): float(v) for d, v in trainer["dice_per_depth"].items()}
    assert len(trainer["dice_per_case"]) == 32 and means[4] - means[2] < 0.01
    assert recommended_depth(means) == 2
    assert recommended_depth(means, dice_per_case=trainer["dice_per_case"]) == 4 == card.recommended_depth
    # Noise, not a loss: the same means with per-case differences that disagree keep the shallow depth.
    noisy = {f"case {i}": {"2": 0.88 + (0.03 if i % 2 else -0.03), "4": 0.88} for i in range(32)}
    assert recommended_depth({2: 0.88, 4: 0.8804}, dice_per_case=noisy) == 2


# The kept weights' validation in the three TCIA leave-one-patient-out folds of stop 58 (slice
# blocks of the training studies), per case and depth as their cards recorded it.
TCIA_FOLD_VALIDATION = {
    "without PGBM-001": {
        "PGBM-003_19950329[val12:16]": {"1": 0.606, "2": 0.664, "3": 0.63, "4": 0.625},
        "PGBM-006_19961210[val0:8]": {"1": 0.0, "2": 0.0, "3": 0.0, "4": 0.0},
    },
    "without PGBM-003": {
        "PGBM-006_19961210[val0:8]": {"1": 0.0, "2": 0.0, "3": 0.0, "4": 0.0},
        "PGBM-001_19911119[val20:24]": {"1": 0.192, "2": 0.0, "3": 0.0, "4": 0.0},
        "PGBM-001_19920402[val20:24]": {"1": 0.0, "2": 0.0, "3": 0.0, "4": 0.0},
    },
    "without PGBM-006": {
        "PGBM-003_19950329[val12:16]": {"1": 0.0, "2": 0.0, "3": 0.566, "4": 0.4},
        "PGBM-001_19911119[val20:24]": {"1": 0.0, "2": 0.0, "3": 0.0, "4": 0.0},
        "PGBM-001_19920402[val20:24]": {"1": 0.0, "2": 0.0, "3": 0.0, "4": 0.0},
    },
}


def test_a_fine_tuning_keeps_its_starting_models_depth_unless_validation_measurably_prefers_another() -> None:
    """Without a prior the TCIA folds' validation pruned the fine-tuned ANU-Net to L2, L1 and L3,
    where its held-out studies scored 0.340, 0.084 and 0.304; at the starting model's L4 they
    score 0.348, 0.157 and 0.320 (docs/one_click_training.md). With the starting model's depth as
    the prior, each fold keeps L4: no other depth is measurably better on two or three blocks."""
    for fold, expected in zip(TCIA_FOLD_VALIDATION.values(), (2, 1, 3)):
        means = {int(d): float(np.mean([case[d] for case in fold.values()])) for d in ("1", "2", "3", "4")}
        assert recommended_depth(means, dice_per_case=fold) == expected
        assert recommended_depth(means, dice_per_case=fold, prior_depth=4) == 4
    # Evidence moves it: ten cases, each 0.09-0.11 better at L2 than at the prior L4.
    consistent = {f"case {i}": {"2": 0.80 + 0.01 * (i % 3), "4": 0.70} for i in range(10)}
    means = {2: float(np.mean([c["2"] for c in consistent.values()])), 4: 0.70}
    assert recommended_depth(means, dice_per_case=consistent, prior_depth=4) == 2
    # ... and the prior L2 stays where L4 is better on average but not case by case.
    split = {f"case {i}": {"2": 0.70, "4": 0.70 + (0.3 if i % 2 else -0.25)} for i in range(6)}
    assert recommended_depth({2: 0.70, 4: 0.725}, dice_per_case=split) == 4
    assert recommended_depth({2: 0.70, 4: 0.725}, dice_per_case=split, prior_depth=2) == 2
    # One case is no evidence however large the gap, a validation that found nothing keeps the
    # prior, and a prior the model does not have is ignored.
    assert recommended_depth({2: 0.9, 4: 0.5}, dice_per_case={"only": {"2": 0.9, "4": 0.5}}, prior_depth=4) == 4
    assert recommended_depth({1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0}, prior_depth=3) == 3
    assert recommended_depth({1: 0.81, 2: 0.80}, prior_depth=4) == 1


def test_best_is_the_dice_at_the_depth_the_model_runs_at() -> None:
    """What chooses ``best/`` is the Dice at the recommended depth, not the highest depth's. The
    TCIA fold without PGBM-003 (stop 59, its log): epoch 8 validated 0.117 at L1 and 0 at L2-L4,
    and with the starting model's L4 as prior it runs at L4, where it found nothing: its best Dice
    is 0, so it cannot replace the starting weights as the run's best."""
    from cascadeseg.training.validation import ValidationResult

    epoch_8 = {1: 0.1171, 2: 0.0, 3: 0.0, 4: 0.0}
    fine_tuned = ValidationResult(epoch_8, {}, recommended_depth(epoch_8, prior_depth=4))
    assert fine_tuned.recommended_depth == 4 and fine_tuned.dice_at_recommended_depth == 0.0
    fresh = ValidationResult(epoch_8, {}, recommended_depth(epoch_8))
    assert fresh.recommended_depth == 1 and fresh.dice_at_recommended_depth == pytest.approx(0.1171)
    # A depth without a finite figure falls back to the best of those that have one.
    assert ValidationResult({1: 0.5, 2: float("nan")}, {}, 2).dice_at_recommended_depth == 0.5


def test_slice_blocks_of_the_training_volumes_cannot_overturn_the_starting_models_depth() -> None:
    """The shipped FLAIR ANU-Net fine-tuned on two shifted LGG patients (benchmarks/fewshot_rules.py,
    fold 0, epoch 2): its two validation blocks, one per training volume, both scored L1 0.35-0.39
    and L2-L4 0, a paired gain far over two standard errors, so the prior L4 gave way to L1, where
    the ten held-out patients scored 0.390 against 0.563 at L4. Validation on slice blocks keeps
    the prior; the same figures from whole patients still move it."""
    blocks = {
        "TCGA_CS_6668_20011025[val10:12]": {"1": 0.3463, "2": 0.0, "3": 0.0, "4": 0.0},
        "TCGA_FG_7643_20021104[val15:16]": {"1": 0.3922, "2": 0.0, "3": 0.0, "4": 0.0},
    }
    means = {1: 0.3693, 2: 0.0, 3: 0.0, 4: 0.0}
    assert recommended_depth(means, dice_per_case=blocks, prior_depth=4) == 1
    assert recommended_depth(means, dice_per_case=blocks, prior_depth=4, prior_fixed=True) == 4
    # Without a prior there is nothing to keep: the validation decides as before.
    assert recommended_depth(means, dice_per_case=blocks, prior_fixed=True) == 1


@pytest.mark.parametrize(("model", "patients", "depth"), [
    ("hippocampus_unet_plus_plus_3d", 40, 4),
    ("chaos_t2_anu_net_2d", 3, 3),
])
def test_weights_trained_on_their_parents_held_out_patients_quote_the_parents_figures(
    model: str, patients: int, depth: int
) -> None:
    """The shipped hippocampus and CHAOS weights continued on every patient but two, the parent's
    held-out ones included: the card scores them only on the two patients neither trained on, and
    quotes for new patients (model lists, the Segment dock) the parent's figures on its held-out
    patients, measured before those patients were trained on."""
    from cascadeseg.cli.models import recorded_dice
    from cascadeseg.inference.checkpoint import read_card, resolve_checkpoint

    card = read_card(resolve_checkpoint(model))
    trained_on = set(card.training["data"]["train_cases"])
    own, estimate = card.validation, card.validation["estimate"]
    assert len(own["cases"]) == 2 and not trained_on & set(own["cases"])
    assert estimate["patients"] == patients and estimate["of"]["weights_sha256"] != card.weights_sha256
    assert card.recommended_depth == depth
    assert recorded_dice(card) == card.dice_for_depth(depth) == estimate["dice_per_depth"][str(depth)]
    assert card.dice_for_depth(depth) != own["dice_per_depth"][str(depth)]  # the two patients' own figure is not quoted


def test_augmentation_moves_image_and_labels_together_and_is_seeded() -> None:
    # Labels are a threshold of the image: after any spatial transform they must still agree.
    torch.manual_seed(0)
    image = torch.nn.functional.avg_pool2d(torch.randn(6, 1, 64, 64), 9, 1, 4) * 10
    labels = (image[:, 0] > 0.5).long()
    cfg = AugmentationConfig(intensity_scale=(1, 1), intensity_shift=0.0, elastic_probability=1.0, spatial_probability=1.0)
    out_a = augment_batch(image, labels, cfg, torch.Generator().manual_seed(5))
    out_b = augment_batch(image, labels, cfg, torch.Generator().manual_seed(5))
    assert torch.equal(out_a[0], out_b[0]) and torch.equal(out_a[1], out_b[1])
    img, lab = out_a
    assert not torch.equal(img, image)
    inside = img[:, 0, 8:-8, 8:-8]  # away from the border (padding)
    clear = (inside - 0.5).abs() > 0.3  # bilinear vs nearest may differ right at the boundary only
    agree = ((inside > 0.5).long() == lab[:, 8:-8, 8:-8])[clear].float().mean()
    assert clear.float().mean() > 0.5 and agree > 0.99


def test_elastic_field_is_a_cubic_bspline() -> None:
    """The elastic deformation is a true cubic B-spline: basis values by hand (beta3(0) = 2/3,
    beta3(0.5) = 23/48, beta3(1) = 1/6, beta3(2) = 0), partition of unity, and in 3D no
    displacement along the slice axis."""
    from cascadeseg.training.augmentation import _elastic_field, bspline_basis, cubic_bspline

    values = cubic_bspline(torch.tensor([0.0, 0.5, -0.5, 1.0, 1.5, 2.0, 3.0]))
    assert torch.allclose(values, torch.tensor([2 / 3, 23 / 48, 23 / 48, 1 / 6, 1 / 48, 0.0, 0.0]))
    basis = bspline_basis(9, 5)  # 9 voxels, knots at voxels 0, 2, 4, 6, 8 (+ one beyond each end)
    assert basis.shape == (9, 7)
    assert torch.allclose(basis.sum(dim=1), torch.ones(9))  # a constant field is reproduced exactly
    assert torch.allclose(basis[4], torch.tensor([0, 0, 1 / 6, 2 / 3, 1 / 6, 0, 0]))  # on the middle knot
    assert torch.allclose(basis[3, 2:4], torch.tensor([23 / 48, 23 / 48]))  # half-way between knots
    cfg = AugmentationConfig(elastic_probability=1.0, elastic_magnitude=0.05, elastic_control_points=4)
    field = _elastic_field(64, torch.Size((6, 32, 32)), cfg, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert field.shape == (64, 6, 32, 32, 3)
    assert torch.all(field[..., 2] == 0)
    # elastic_magnitude stays the displacement's standard deviation (2 normalised units = 1 image)
    assert 0.07 < float(field[..., :2].std()) < 0.13
    smooth = (field[:, :, 1:] - field[:, :, :-1]).abs().max()
    assert float(smooth) < 0.05  # neighbouring voxels move together


def test_rot90_and_flips_are_exact_on_square_slices() -> None:
    image = torch.arange(64.0).view(1, 1, 8, 8).repeat(16, 1, 1, 1)
    labels = (image[:, 0] >= 32).long()
    cfg = AugmentationConfig(rotate_degrees=0, scale_range=(1, 1), elastic_probability=0, intensity_scale=(1, 1), intensity_shift=0)
    img, lab = augment_batch(image, labels, cfg, torch.Generator().manual_seed(0))
    base = image[0, 0]
    variants = [torch.rot90(f, k, (0, 1)) for f in (base, base.flip(0)) for k in range(4)]
    for i in range(16):
        assert any(torch.allclose(img[i, 0], v, atol=1e-3) for v in variants)
        assert torch.equal(lab[i], (img[i, 0] >= 31.5).long())


def test_foreground_oversampling_hits_rare_foreground() -> None:
    labels = np.zeros((20, 64, 64), np.uint8)
    labels[10, 30:34, 30:34] = 1  # 16 voxels of 81920: 0.02 %
    image = np.random.default_rng(0).normal(size=(1, 20, 64, 64)).astype(np.float32)
    case = TrainingCase("c", PreparedScan(image, (20, 64, 64)), labels, labels, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0))
    with_fg = PatchDataset([case], 2, 0, (32, 32), 0.5, 200, seed=0)
    without = PatchDataset([case], 2, 0, (32, 32), 0.0, 200, seed=0)
    share = np.mean([with_fg[i][1].any().item() for i in range(200)])
    assert 0.35 < share < 0.7
    assert np.mean([without[i][1].any().item() for i in range(200)]) < 0.15
    img, lab = PatchDataset([case], 3, 0, (8, 32, 32), 1.0, 5, seed=1)[0]
    assert img.shape == (1, 8, 32, 32) and lab.shape == (8, 32, 32) and lab.any()
    # Same (seed, epoch, index) -> same sample, whatever worker draws it.
    assert torch.equal(with_fg[7][0], with_fg[7][0])


def test_component_sampling_draws_a_lesions_small_parts_more_often(shared_data: Path) -> None:
    """--foreground-sampling component on a real LGG patient: the lesion's voxels grouped by slice
    component (each within one slice, together the whole lesion), every component kept when the
    coordinates are subsampled, and foreground-centred crops showing a small part of the lesion
    (under 50 pixels) several times as often as the per-voxel draw gives them."""
    from cascadeseg.io import load_labels, load_volume

    root = shared_data / "lgg-flair"
    image = load_volume(root / "imagesTr" / "TCGA_DU_6404_19850629_0000.nii.gz")
    labels = load_labels(root / "labelsTr" / "TCGA_DU_6404_19850629.nii.gz", reference=image).array.astype(np.uint8)
    coords, offsets = foreground_components(labels, 1, 0, np.random.default_rng(0))
    sizes = np.diff(offsets)
    assert len(sizes) > 1 and sizes.sum() == (labels == 1).sum() and np.all(labels[tuple(coords.T)] == 1)
    assert all(len(np.unique(coords[a:b, 0])) == 1 for a, b in zip(offsets[:-1], offsets[1:]))
    _, offsets_3d = foreground_components(labels, 1, None, np.random.default_rng(0))
    assert len(offsets_3d) < len(offsets)  # across slices the lesion's parts join
    few, few_offsets = foreground_components(labels, 1, 0, np.random.default_rng(0), limit=100)
    assert len(few_offsets) == len(offsets) and np.all(np.diff(few_offsets) >= 1)
    assert len(few) <= 100 + len(sizes) and np.all(labels[tuple(few.T)] == 1)

    case = TrainingCase("lgg", PreparedScan(image.array[None].astype(np.float32), labels.shape), labels, labels,
                        (1.0, 1.0, 1.0), (1.0, 1.0, 1.0))
    small_share = {}
    for mode in ("voxel", "component"):
        sampler = PatchDataset([case], 2, 0, (32, 32), 1.0, 400, seed=0, foreground_sampling=mode)
        areas = np.array([sampler[i][1].sum().item() for i in range(400)])
        assert np.all(areas > 0)  # every crop is centred on the lesion
        small_share[mode] = float(np.mean(areas < 50))
    assert small_share["component"] > 3 * small_share["voxel"]
    with pytest.raises(ValueError, match="foreground_sampling"):
        PatchDataset([case], 2, 0, (32, 32), 1.0, 4, seed=0, foreground_sampling="per_lesion")
    with pytest.raises(ModelConfigError, match="'foreground_sampling' = 'per_lesion'.*'voxel', 'component'"):
        TrainConfig(data="x", foreground_sampling="per_lesion").validate()


def test_training_crops_pad_with_the_predictors_pad_value(shared_data: Path) -> None:
    """One pad value: a crop that runs past a real z-scored LGG scan is padded with exactly the
    value the predictor pads with (0), not the scan's minimum (about -0.95 there)."""
    from cascadeseg.inference.predictor import prepare_scan
    from cascadeseg.io import load_labels, load_volume

    root = shared_data / "lgg-flair"
    image = load_volume(root / "imagesTr" / "TCGA_DU_6404_19850629_0000.nii.gz")
    labels = load_labels(root / "labelsTr" / "TCGA_DU_6404_19850629.nii.gz", reference=image).array.astype(np.uint8)
    scan = prepare_scan(image, [{"type": "mri_zscore", "percentiles": [0.5, 99.5]}], None, 0)
    assert scan.image.min() < -0.5  # the scan's own minimum is far from the pad value
    case = TrainingCase("lgg", scan, labels, labels, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0))
    sampler = PatchDataset([case], 2, 0, (320, 320), 0.0, 4, seed=0)  # larger than the 256 x 256 slices
    img, lab = sampler[0]
    border = torch.ones(img.shape[1:], dtype=torch.bool)
    inside = (img[0] != PAD_VALUE)
    rows, cols = np.flatnonzero(inside.any(1).numpy()), np.flatnonzero(inside.any(0).numpy())
    border[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = False
    assert border.sum() >= 320 * 320 - 256 * 256  # the padded band
    assert torch.all(img[0][border] == PAD_VALUE) and torch.all(lab[border] == 0)


def test_scanner_augmentations_change_intensities_only_and_keep_their_promises(shared_data: Path) -> None:
    """Gamma, contrast, noise and the bias field on a real z-scored LGG slice: labels untouched,
    gamma keeps the sample's range and its order of intensities, the bias field is smooth (its
    log-ratio to the input varies slowly) and leaves the background minimum in place."""
    from cascadeseg.inference.predictor import prepare_scan
    from cascadeseg.io import load_volume

    image = load_volume(shared_data / "lgg-flair" / "imagesTr" / "TCGA_DU_6404_19850629_0000.nii.gz")
    scan = prepare_scan(image, [{"type": "mri_zscore", "percentiles": [0.5, 99.5]}], None, 0)
    x = torch.from_numpy(scan.image[:, 20:24].swapaxes(0, 1).copy())  # 4 real slices (B, C, H, W)
    labels = torch.zeros(x.shape[0], *x.shape[2:], dtype=torch.long)
    off = dict(flip=False, rot90=False, rotate_degrees=0.0, scale_range=(1.0, 1.0), elastic_probability=0.0,
               intensity_scale=(1.0, 1.0), intensity_shift=0.0)
    gamma = AugmentationConfig(**off, gamma_probability=1.0)
    out, lab = augment_batch(x, labels, gamma, torch.Generator().manual_seed(0))
    assert torch.equal(lab, labels)
    for i in range(x.shape[0]):
        assert torch.allclose(out[i].min(), x[i].min(), atol=1e-5) and torch.allclose(out[i].max(), x[i].max(), atol=1e-4)
        order_out = out[i].flatten()[x[i].flatten().argsort()]
        assert torch.all(order_out[1:] >= order_out[:-1] - 1e-4)  # monotone (up to the identity resampling)
        assert not torch.allclose(out[i], x[i])
    bias = AugmentationConfig(**off, bias_probability=1.0, bias_magnitude=0.3)
    out, _ = augment_batch(x, labels, bias, torch.Generator().manual_seed(1))
    low = x.flatten(2).min(2).values[..., None, None]
    tissue = x > low + 0.5
    log_ratio = torch.log((out - low).clamp(min=1e-6) / (x - low).clamp(min=1e-6))
    assert 0.3 < float(log_ratio[tissue].exp().min()) and float(log_ratio[tissue].exp().max()) < 3.4  # exp(+-4 sd)
    assert float(log_ratio[tissue].std()) > 0.05  # it does vary over the slice ...
    both = tissue[..., 1:] & tissue[..., :-1]
    assert float((log_ratio[..., 1:] - log_ratio[..., :-1])[both].abs().max()) < 0.05  # ... smoothly
    assert torch.allclose(out[x == low], x[x == low], atol=1e-4)  # the background stays the background
    noise = AugmentationConfig(**off, noise_probability=1.0, noise_std=0.1)
    out, _ = augment_batch(x, labels, noise, torch.Generator().manual_seed(2))
    assert 0.0 < float((out - x).std()) <= 0.1


def test_foreground_contrast_dims_the_real_lesion_against_its_own_surroundings(shared_data: Path) -> None:
    """On real z-scored LGG slices through the lesion: inside the lesion (one voxel in from its
    edge) the contrast to the ring's mean is exactly the drawn factor, voxels two or more beyond
    the lesion do not move, labels do not change; the body mask riding in the labels (class +
    num_classes) does not count as foreground; a 3D batch takes the same path."""
    from cascadeseg.inference.predictor import prepare_scan
    from cascadeseg.io import load_labels, load_volume

    root = shared_data / "lgg-flair"
    image = load_volume(root / "imagesTr" / "TCGA_DU_6404_19850629_0000.nii.gz")
    truth = load_labels(root / "labelsTr" / "TCGA_DU_6404_19850629.nii.gz", reference=image).array
    scan = prepare_scan(image, [{"type": "mri_zscore", "percentiles": [0.5, 99.5]}], None, 0)
    lesion_slices = np.flatnonzero(truth.reshape(truth.shape[0], -1).any(1))[:3]
    assert len(lesion_slices) == 3
    x = torch.from_numpy(scan.image[:, lesion_slices].swapaxes(0, 1).copy())  # (3, 1, H, W)
    labels = torch.from_numpy(truth[lesion_slices].astype(np.int64))
    off = dict(flip=False, rot90=False, rotate_degrees=0.0, scale_range=(1.0, 1.0), elastic_probability=0.0,
               intensity_scale=(1.0, 1.0), intensity_shift=0.0)
    dim = AugmentationConfig(**off, foreground_contrast_probability=1.0, foreground_contrast_range=(0.25, 0.25))
    out, lab = augment_batch(x, labels, dim, torch.Generator().manual_seed(0))
    assert torch.equal(lab, labels)
    fg = labels[:, None].float()
    interior = -torch.nn.functional.max_pool2d(-fg, 3, 1, 1) > 0  # the lesion eroded by one voxel
    near = torch.nn.functional.max_pool2d(fg, 3, 1, 1) > 0
    ring = (torch.nn.functional.max_pool2d(fg, 7, 1, 3) > 0) & ~(fg > 0)
    for i in range(3):
        m = x[i][ring[i]].mean()
        assert interior[i].sum() > 10
        assert torch.allclose(out[i][interior[i]] - m, 0.25 * (x[i][interior[i]] - m), atol=1e-4)
        # the lesion stood out before, and stands out a quarter as much after
        before, after = float(x[i][interior[i]].mean() - m), float(out[i][interior[i]].mean() - m)
        assert before > 0.3 and after == pytest.approx(before / 4, abs=1e-4)
    assert torch.allclose(out[~near], x[~near], atol=1e-4)  # (the identity resampling is exact to rounding)
    # The body mask rides in the labels as class + num_classes: body without lesion is not foreground.
    with_body = labels + 2 * (x[:, 0] > -0.5).long()
    out_body, _ = augment_batch(x, with_body, dim, torch.Generator().manual_seed(0), num_classes=2)
    assert torch.allclose(out_body, out)
    # Off (the planned default) it changes nothing.
    plain = AugmentationConfig(**off)
    assert torch.allclose(augment_batch(x, labels, plain, torch.Generator().manual_seed(0))[0], x, atol=1e-4)
    volume = x[:1, :, None].repeat(1, 1, 4, 1, 1)  # (1, 1, 4, H, W)
    out3d, _ = augment_batch(volume, labels[:1, None].repeat(1, 4, 1, 1), dim, torch.Generator().manual_seed(0))
    assert torch.allclose(out3d[0, 0, 1], out[0, 0], atol=1e-4)  # each slice of a z-constant lesion as in 2D


def test_plateau_schedule_drops_after_patience_validations_without_a_better_dice() -> None:
    from cascadeseg.models.recipes import PlateauSchedule
    from cascadeseg.training.schedule import lr_factor

    schedule = PlateauSchedule(factor=0.1, patience=2, mode="max")
    factors = [schedule.update(d) for d in (0.5, 0.6, 0.6, 0.59, 0.7, 0.65, 0.69)]
    assert factors == [1.0, 1.0, 1.0, pytest.approx(0.1), pytest.approx(0.1), pytest.approx(0.1), pytest.approx(0.01)]
    assert lr_factor("plateau", 0.5, 3, 100, plateau_factor=0.01) == 0.01
