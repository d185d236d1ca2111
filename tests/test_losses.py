"""Losses of issue 5: hand-computed values, monotonicity on real labels, gradients, deep
supervision / cascade / CGM combination, empty targets, and the registry's default losses.

The hand-computed cases share one tiny binary "image" of four voxels whose foreground
probabilities are p = (0.8, 0.6, 0.3, 0.1) and whose labels are g = (1, 1, 0, 0); the logits are
built as (0, logit(p)) so that a 2-class softmax gives exactly p. The arithmetic is written out
next to each expected value.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from cascadeseg.errors import ModelConfigError, VolumeError
from cascadeseg.losses import (
    anu_focal_term,
    build_loss,
    case_body_mask,
    class_frequency_weighted_ce,
    cross_entropy_loss,
    focal_loss,
    focal_tversky_loss,
    laplace_dice_loss,
    loss_names,
    lovasz_hinge_loss,
    sample_matrix,
    soft_dice_loss,
    training_region,
)
from cascadeseg.losses.targets import downscale_labels
from cascadeseg.models.output import SegmentationOutput

PAPER_LOSSES = [
    "dice", "dice_ce", "focal_tversky", "weighted_sampling", "class_weighted_ce", "anu_hybrid", "unet_sharp_mixed",
]
P = [0.8, 0.6, 0.3, 0.1]
G = [1, 1, 0, 0]
ln = math.log


def tiny(dims: int = 2, p: list[float] = P, g: list[int] = G, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (1, 2, 1, n) or (1, 2, 1, 1, n) with softmax foreground = p, and labels g."""
    prob = torch.tensor(p, dtype=dtype)
    fg = torch.log(prob / (1 - prob))
    logits = torch.stack([torch.zeros_like(fg), fg])  # (2, n)
    shape = (1, 2) + (1,) * (dims - 1) + (len(p),)
    return logits.reshape(shape).clone().requires_grad_(True), torch.tensor(g).reshape((1,) + shape[2:])


# -- real labels -------------------------------------------------------------------------------

def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _crop_around(labels: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    centre = np.argwhere(labels > 0).mean(axis=0).round().astype(int)
    start = [int(np.clip(c - s // 2, 0, n - s)) for c, s, n in zip(centre, size, labels.shape)]
    return labels[tuple(slice(a, a + s) for a, s in zip(start, size))]


@pytest.fixture(scope="module")
def lgg_slice(shared_data: Path) -> torch.Tensor:
    """A 64x64 crop of the LGG FLAIR-abnormality label on its largest slice: (1, 64, 64), {0, 1}."""
    labels = _read(shared_data / "lgg-flair/labelsTr/TCGA_CS_4941_19960909.nii.gz")
    z = int(labels.sum(axis=(1, 2)).argmax())
    return torch.from_numpy(_crop_around(labels[z], (64, 64)).astype(np.int64))[None]


@pytest.fixture(scope="module")
def lgg_slice_and_brain(shared_data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole largest-tumour LGG slice (1, 256, 256) and a brain mask from its FLAIR image
    (intensity above 10 of 255: the black background outside the head is S1 of paper 001)."""
    labels = _read(shared_data / "lgg-flair/labelsTr/TCGA_CS_4941_19960909.nii.gz")
    image = _read(shared_data / "lgg-flair/imagesTr/TCGA_CS_4941_19960909_0000.nii.gz")
    z = int(labels.sum(axis=(1, 2)).argmax())
    return torch.from_numpy(labels[z].astype(np.int64))[None], torch.from_numpy(image[z] > 10)[None]


@pytest.fixture(scope="module")
def brats_labels(shared_data: Path) -> np.ndarray:
    labels = _read(shared_data / "brats-like/TCGA-DU-7294/hnfnetv1-20.nii.gz")
    return np.where(labels == 4, 3, labels).astype(np.int64)  # BraTS 0,1,2,4 -> classes 0..3


@pytest.fixture(scope="module")
def brats_patch(brats_labels: np.ndarray) -> torch.Tensor:
    """A 16x32x32 crop of the BraTS-like label map, classes 0..3: (1, 16, 32, 32)."""
    return torch.from_numpy(_crop_around(brats_labels, (16, 32, 32)))[None]


def confident_logits(target: torch.Tensor, num_classes: int, scale: float = 4.0) -> torch.Tensor:
    onehot = torch.nn.functional.one_hot(target, num_classes).movedim(-1, 1).double()
    return scale * (2.0 * onehot - 1.0)


# -- registry -----------------------------------------------------------------------------------

def test_loss_names_cover_the_papers_and_every_model_default() -> None:
    from cascadeseg.losses import LOSSES
    from cascadeseg.models import model_class
    from cascadeseg.models.registry import list_models

    assert loss_names() == PAPER_LOSSES == list(LOSSES)  # the torch-free names, the classes' order
    # The listing reads the catalogue without importing the architectures: each class agrees.
    assert all(model_class(info.name).info == info for info in list_models())
    defaults = {info.name: info.default_loss for info in list_models()}
    assert defaults, "the model registry lists no model"
    missing = {model: loss for model, loss in defaults.items() if loss not in loss_names()}
    assert not missing, f"models whose default loss does not exist: {missing}"
    for name in loss_names():
        assert isinstance(build_loss(name), torch.nn.Module)


def test_unknown_loss_and_option_fail_clearly() -> None:
    with pytest.raises(ModelConfigError, match="unknown loss 'dicey'.*dice_ce"):
        build_loss("dicey")
    with pytest.raises(ModelConfigError, match="loss 'dice'.*smoothing"):
        build_loss("dice", smoothing=1.0)
    with pytest.raises(ModelConfigError, match="aux_downscale"):
        build_loss("dice", aux_downscale="bilinear")


def test_bad_targets_fail_clearly() -> None:
    logits, _ = tiny()
    with pytest.raises(VolumeError, match=r"label values must be in \[0, 1\].*\[0, 4\]"):
        build_loss("dice_ce")(logits, torch.tensor([[[0, 4, 1, 0]]]))
    with pytest.raises(VolumeError, match="does not match the logits"):
        build_loss("dice_ce")(logits, torch.zeros(1, 1, 5, dtype=torch.long))


# -- hand-computed values -------------------------------------------------------------------------

@pytest.mark.parametrize("dims", [2, 3])
def test_soft_dice_and_dice_ce_hand_values(dims: int) -> None:
    logits, target = tiny(dims)
    # sum p g = 0.8 + 0.6 = 1.4; sum p = 1.8; sum g = 2  ->  Dice = (2.8 + s) / (3.8 + s)
    dice = 1 - (2 * 1.4 + 1e-5) / (3.8 + 1e-5)
    assert soft_dice_loss(logits, target).item() == pytest.approx(dice, abs=1e-12)
    assert build_loss("dice")(SegmentationOutput(logits=logits), target).item() == pytest.approx(dice, abs=1e-12)
    # CE = mean of -ln p_true with p_true = (0.8, 0.6, 0.7, 0.9)
    ce = -(ln(0.8) + ln(0.6) + ln(0.7) + ln(0.9)) / 4
    assert cross_entropy_loss(logits, target).item() == pytest.approx(ce, abs=1e-12)
    assert build_loss("dice_ce")(logits, target).item() == pytest.approx(ce + dice, abs=1e-12)


@pytest.mark.parametrize("dims", [2, 3])
def test_focal_tversky_hand_value(dims: int) -> None:
    logits, target = tiny(dims)
    # TP = 1.4; FP = sum p (1-g) = 0.3 + 0.1 = 0.4; FN = sum (1-p) g = 0.2 + 0.4 = 0.6
    # TI = (1.4 + 1e-6) / (1.4 + 0.4*0.4 + 0.6*0.6 + 1e-6) = 1.4 / 1.92; FTL = (1 - TI)^(3/4)
    ti = (1.4 + 1e-6) / (1.4 + 0.4 * 0.4 + 0.6 * 0.6 + 1e-6)
    expected = (1 - ti) ** 0.75
    assert focal_tversky_loss(logits, target).item() == pytest.approx(expected, abs=1e-12)
    assert build_loss("focal_tversky")(logits, target).item() == pytest.approx(expected, abs=1e-12)


def _focal_hand(background_alpha: float = 0.75) -> float:
    # alpha_t = 0.25 on foreground, 0.75 on background (RetinaNet; background_alpha=0.25: one alpha
    # for every voxel, UNet# Eq. 3 as printed); gamma = 2; p_true = (0.8, 0.6, 0.7, 0.9)
    b = background_alpha
    return (-0.25 * 0.2**2 * ln(0.8) - 0.25 * 0.4**2 * ln(0.6) - b * 0.3**2 * ln(0.7) - b * 0.1**2 * ln(0.9)) / 4


def _lovasz_hand() -> float:
    # scores s = logit(p) = (ln 4, ln 1.5, ln 3/7, ln 1/9), signs (+, +, -, -)
    # hinge errors 1 - s*sign = (1 - ln 4, 1 - ln 1.5, 1 + ln 3/7, 1 + ln 1/9)
    #   = (-0.386, 0.595, 0.153, -1.197); sorted: 0.595 (g=1), 0.153 (g=0), -0.386 (g=1), -1.197 (g=0)
    # Jaccard along the order: I = 2 - cumsum g = (1, 1, 0, 0); U = 2 + cumsum(1-g) = (2, 3, 3, 4)
    # J = 1 - I/U = (1/2, 2/3, 1, 1); gradient = (1/2, 1/6, 1/3, 0); loss = sum relu(e) * grad
    return (1 - ln(1.5)) * 0.5 + (1 + ln(3 / 7)) / 6


def test_focal_and_lovasz_hand_values() -> None:
    logits, target = tiny()
    assert focal_loss(logits, target).item() == pytest.approx(_focal_hand(), abs=1e-12)
    assert lovasz_hinge_loss(logits, target).item() == pytest.approx(_lovasz_hand(), abs=1e-12)


@pytest.mark.parametrize("dims", [2, 3])
def test_unet_sharp_mixed_hand_value(dims: int) -> None:
    logits, target = tiny(dims)
    laplace = 1 - (2 * 1.4 + 1) / (3.8 + 1)  # Eq. 4: 1 - (2 Y.Y^ + 1) / (Y + Y^ + 1)
    assert laplace_dice_loss(logits, target).item() == pytest.approx(laplace, abs=1e-12)
    expected = 0.5 * _focal_hand(background_alpha=0.25) + laplace + 0.5 * _lovasz_hand()  # Eq. 2, Eq. 3 as printed
    assert build_loss("unet_sharp_mixed")(logits, target).item() == pytest.approx(expected, abs=1e-12)
    balanced = 0.5 * _focal_hand() + laplace + 0.5 * _lovasz_hand()  # RetinaNet's alpha_t
    assert build_loss("unet_sharp_mixed", alpha_balanced=True)(logits, target).item() == pytest.approx(balanced, abs=1e-12)


def test_laplace_dice_and_lovasz_per_image_or_over_the_batch() -> None:
    # Image A: p = (0.8, 0.6, 0.3, 0.1), g = (1, 1, 0, 0); image B: p = 0.2 everywhere, no target.
    a, ga = tiny()
    b, gb = tiny(p=[0.2] * 4, g=[0] * 4)
    logits, target = torch.cat([a, b]), torch.cat([ga, gb])
    per_image = ((1 - 3.8 / 4.8) + (1 - 1 / 1.8)) / 2  # A: (2*1.4 + 1)/(1.8 + 2 + 1); B: 1/(0.8 + 1)
    batch = 1 - 3.8 / 5.6  # one ratio: (2*1.4 + 1)/(1.8 + 0.8 + 2 + 1)
    assert laplace_dice_loss(logits, target).item() == pytest.approx(per_image, abs=1e-12)
    assert laplace_dice_loss(logits, target, per_image=False).item() == pytest.approx(batch, abs=1e-12)
    # Lovasz over the batch = the Lovasz of the two images laid side by side as one image.
    side_by_side = lovasz_hinge_loss(torch.cat([a, b], dim=-1), torch.cat([ga, gb], dim=-1))
    assert lovasz_hinge_loss(logits, target, per_image=False).item() == pytest.approx(side_by_side.item(), abs=1e-12)
    mixed = build_loss("unet_sharp_mixed")(logits, target).item()
    focal = focal_loss(logits, target, balanced=False).item()
    assert mixed == pytest.approx(0.5 * focal + batch + 0.5 * side_by_side.item(), abs=1e-12)


def test_anu_hybrid_hand_value_summed_over_heads() -> None:
    logits, target = tiny()
    # squared Dice: sum p^2 = 0.64 + 0.36 + 0.09 + 0.01 = 1.1, sum g^2 = 2, s = 1 -> (2.8 + 1) / (1.1 + 2 + 1)
    per_head = _focal_hand() + 1 - 3.8 / 4.1
    loss = build_loss("anu_hybrid")
    assert loss(logits, target).item() == pytest.approx(per_head, abs=1e-12)
    # Eq. 8 sums over the deep-supervision heads: two identical heads give twice the value.
    output = SegmentationOutput(logits=logits, heads={1: logits, 2: logits})
    assert loss(output, target).item() == pytest.approx(2 * per_head, abs=1e-12)


def test_anu_eq8_focal_term_hand_value() -> None:
    logits, target = tiny()
    # p_t = (0.8, 0.6, 0.7, 0.9); |p_t - 0.5| = (0.3, 0.1, 0.2, 0.4), none below the 0.1 clamp;
    # alpha_t = (0.25, 0.25, 0.75, 0.75); term = mean(alpha_t * -ln p_t / |p_t - 0.5|^2)
    eq8 = (0.25 * -ln(0.8) / 0.09 + 0.25 * -ln(0.6) / 0.01 + 0.75 * -ln(0.7) / 0.04 + 0.75 * -ln(0.9) / 0.16) / 4
    assert anu_focal_term(logits, target).item() == pytest.approx(eq8, abs=1e-12)
    per_head = eq8 + 1 - 3.8 / 4.1  # plus Eq. 8's squared Dice, as in the default's hand value
    assert build_loss("anu_hybrid", focal="eq8")(logits, target).item() == pytest.approx(per_head, abs=1e-12)
    # At p_t = 0.5 the printed term is infinite; the clamp makes it alpha_t ln 2 / clamp^2.
    uncertain, labels = tiny(p=[0.5, 0.5], g=[1, 0])
    clamped = (0.25 * ln(2) / 0.1**2 + 0.75 * ln(2) / 0.1**2) / 2
    assert anu_focal_term(uncertain, labels).item() == pytest.approx(clamped, abs=1e-12)
    assert anu_focal_term(uncertain, labels, clamp=0.2).item() == pytest.approx(clamped / 4, abs=1e-12)
    with pytest.raises(ModelConfigError, match="focal must be one of"):
        build_loss("anu_hybrid", focal="printed")


def test_class_weighted_ce_hand_value() -> None:
    logits, target = tiny(g=[1, 0, 0, 0])
    # N_1 = 1, N_0 = 3, N_C = 4: lambda_1 = (1 - 1/4)/1 = 0.75, lambda_0 = 0.25
    # L = 1/4 [0.75 (-ln 0.8) + 0.25 (-ln 0.4 - ln 0.7 - ln 0.9)]
    expected = (0.75 * -ln(0.8) + 0.25 * -(ln(0.4) + ln(0.7) + ln(0.9))) / 4
    assert class_frequency_weighted_ce(logits, target).item() == pytest.approx(expected, abs=1e-12)
    assert build_loss("class_weighted_ce")(logits, target).item() == pytest.approx(expected, abs=1e-12)
    # candidate region without the last voxel: N_C = 3, lambda_1 = 2/3, lambda_0 = 1/3
    roi = torch.tensor([[[True, True, True, False]]])
    expected_roi = ((2 / 3) * -ln(0.8) + (1 / 3) * -(ln(0.4) + ln(0.7))) / 3
    assert build_loss("class_weighted_ce")(logits, target, roi=roi).item() == pytest.approx(expected_roi, abs=1e-12)


def test_class_weighted_ce_stage2_is_supervised_where_stage2_ran() -> None:
    # The model ran stage 2 on voxels 0..3 (its box): there the stage-2 logits are its own, outside
    # they are stage 1's copy. Stage 1 is supervised everywhere, stage 2 only on 0..3.
    stage1 = torch.tensor([-5.0, 5.0, 5.0, -5.0, 2.0, -2.0], dtype=torch.float64)
    stage1 = torch.stack([torch.zeros(6, dtype=torch.float64), stage1]).reshape(1, 2, 1, 6)
    own, _ = tiny(p=[0.8, 0.6, 0.3, 0.1])
    stage2 = stage1.clone()
    stage2[..., :4] = own.detach()
    target = torch.tensor([1, 0, 0, 0, 1, 1]).reshape(1, 1, 6)
    output = SegmentationOutput(logits=stage2, stages={"stage1": stage1, "stage2": stage2})
    inside = torch.tensor([[[True, True, True, True, False, False]]])
    expected_stage2 = (0.75 * -ln(0.8) + 0.25 * -(ln(0.4) + ln(0.7) + ln(0.9))) / 4  # the hand case above
    assert class_frequency_weighted_ce(stage2, target, roi=inside).item() == pytest.approx(expected_stage2, abs=1e-12)
    expected = class_frequency_weighted_ce(stage1, target).item() + expected_stage2
    assert build_loss("class_weighted_ce")(output, target).item() == pytest.approx(expected, abs=1e-12)
    # With a body mask (C1) without voxel 5, stage 1 trains in C1 and stage 2 in C2 inside C1.
    body = torch.tensor([[[True, True, True, True, True, False]]])
    expected_body = class_frequency_weighted_ce(stage1, target, roi=body).item() + expected_stage2
    assert build_loss("class_weighted_ce")(output, target, roi=body).item() == pytest.approx(expected_body, abs=1e-12)


def test_weighted_sampling_hand_value() -> None:
    # One row of 8 voxels, tumour at 3..5, contour band of width 2 (radius 1):
    # dilation 2..6, erosion {4} -> band S4 = {2, 3, 5, 6}, interior S3 = {4}, normal S2 = {0, 1, 7}.
    # p2 = beta N_S3 / N_S2 = 1.5 * 3 / 3 > 1 -> 1; W = S2 + S3 + 2 S4 = (1, 1, 2, 2, 1, 2, 2, 1), sum 12.
    p = [0.1, 0.2, 0.4, 0.7, 0.9, 0.6, 0.3, 0.2]
    logits, target = tiny(p=p, g=[0, 0, 0, 1, 1, 1, 0, 0])
    weights = sample_matrix(target > 0, None, substructures=False, contour_width=2)
    assert weights.flatten().tolist() == [1, 1, 2, 2, 1, 2, 2, 1]
    p_true = [0.9, 0.8, 0.6, 0.7, 0.9, 0.6, 0.7, 0.8]
    expected = sum(w * -ln(q) for w, q in zip([1, 1, 2, 2, 1, 2, 2, 1], p_true)) / 12
    loss = build_loss("weighted_sampling", contour_width=2)
    assert loss(logits, target).item() == pytest.approx(expected, abs=1e-12)
    # Brain mask without voxel 0: S1 = {0} is never sampled (p1 = 0), the sum of W drops to 11.
    roi = torch.ones_like(target, dtype=torch.bool)
    roi[..., 0] = False
    expected_roi = (12 * expected - -ln(0.9)) / 11
    assert loss(logits, target, roi=roi).item() == pytest.approx(expected_roi, abs=1e-12)
    # U-Net 2's rule (substructures): only tumour and band, contour weight 1.
    substructure = sample_matrix(target > 0, None, substructures=True, contour_width=2)
    assert substructure.flatten().tolist() == [0, 0, 1, 1, 1, 1, 1, 0]


def test_training_region_is_the_body_mask_plus_the_labels_and_reaches_the_loss() -> None:
    # One row of 8 voxels: body mask 1..6 (voxels 0 and 7 are the black background S1), tumour at
    # 5..7, so voxel 7 is labelled outside the thresholded mask and must stay in the region.
    p = [0.1, 0.2, 0.4, 0.7, 0.9, 0.6, 0.3, 0.2]
    logits, target = tiny(p=p, g=[0, 0, 0, 0, 0, 1, 1, 1])
    body = torch.tensor([False, True, True, True, True, True, True, False]).reshape(target.shape)
    region = training_region(build_loss("weighted_sampling"), target, body)
    assert region.flatten().tolist() == [False] + [True] * 7
    assert training_region(build_loss("dice_ce"), target, body) is None  # trains on every voxel
    with pytest.raises(ModelConfigError, match="body mask"):
        training_region(build_loss("class_weighted_ce"), target, None)
    # CU-Net, contour width 2 (radius 1): dilation 4..7, erosion {6, 7} (the row's end is not
    # background) -> band S4 = {4, 5}, interior S3 = {6, 7}; normal brain S2 = region minus tumour
    # and band = {1, 2, 3}; S1 = {0} is never sampled (p1 = 0).
    # p2 = 1.5 * 3 / 3 > 1 -> 1; W = (0, 1, 1, 1, 2, 2, 1, 1), sum 9.
    p_true = [0.9, 0.8, 0.6, 0.3, 0.1, 0.6, 0.3, 0.2]
    weights = [0, 1, 1, 1, 2, 2, 1, 1]
    expected = sum(w * -ln(q) for w, q in zip(weights, p_true)) / 9
    loss = build_loss("weighted_sampling", contour_width=2)
    assert loss(logits, target, roi=region).item() == pytest.approx(expected, abs=1e-12)
    # Coarse-to-fine stage 1 in C1 = the region: N_C = 7, N_1 = 3, N_0 = 4 -> lambda_1 = 4/7, lambda_0 = 3/7
    ce = (3 / 7 * -(ln(0.8) + ln(0.6) + ln(0.3) + ln(0.1)) + 4 / 7 * -(ln(0.6) + ln(0.3) + ln(0.2))) / 7
    assert build_loss("class_weighted_ce")(logits, target, roi=region).item() == pytest.approx(ce, abs=1e-12)


def test_case_body_mask_on_a_real_scan(shared_data: Path) -> None:
    image = _read(shared_data / "lgg-flair/imagesTr/TCGA_CS_4941_19960909_0000.nii.gz").astype(np.float32)
    labels = _read(shared_data / "lgg-flair/labelsTr/TCGA_CS_4941_19960909.nii.gz")
    head = case_body_mask(image[None])
    assert head.shape == labels.shape and 0.3 < head.mean() < 0.8  # the head, not the black background
    assert not (labels[~head] > 0).any()  # every lesion voxel lies inside it
    assert not head[:, :3, :3].any()  # the image's corners are background
    # A constant second channel (an empty modality) adds nothing.
    both = case_body_mask(np.stack([image, np.zeros_like(image)]))
    assert np.array_equal(both, head)


def test_weighted_sampling_aux_weight_decays_as_paper_001(brats_patch: torch.Tensor) -> None:
    loss = build_loss("weighted_sampling", beta=1e6)
    omega = {}
    for epoch in (0, 9, 10, 19, 20, 35):
        loss.set_epoch(epoch)
        omega[epoch] = loss.aux_weight
    assert omega == {0: 0.1, 9: 0.1, 10: pytest.approx(0.01), 19: pytest.approx(0.01), 20: pytest.approx(1e-3),
                     35: pytest.approx(1e-3)}
    for off in (False, "none"):  # False: a card written when the option was CU-Net's boolean
        constant = build_loss("weighted_sampling", aux_decay=off, aux_weight=0.3)
        constant.set_epoch(40)
        assert constant.aux_weight == 0.3


def test_weighted_sampling_rate_follows_eq3(lgg_slice_and_brain: tuple[torch.Tensor, torch.Tensor]) -> None:
    labels, brain = lgg_slice_and_brain
    tumour = labels > 0
    generator = torch.Generator().manual_seed(0)
    weights = sample_matrix(tumour, brain, substructures=False, beta=1.5, contour_width=0, generator=generator)
    normal = brain & ~tumour
    assert bool((weights[~brain & ~tumour] == 0).all())  # p1 = 0: the black background never counts
    assert bool((weights[tumour] == 1).all())  # p3 = 1
    rate = 1.5 * int(tumour.sum()) / int(normal.sum())  # Eq. 3
    assert 0.01 < rate < 1
    sampled = int((weights[normal] > 0).sum())
    expected = rate * int(normal.sum())
    assert abs(sampled - expected) < 4 * math.sqrt(expected)  # binomial: within 4 sigma
    # the contour band (default 10 px) carries weight alpha1 = 2 on both sides of the boundary
    with_band = sample_matrix(tumour, brain, substructures=False, generator=generator)
    band = with_band == 2
    assert bool(band.any()) and bool((band & tumour).any()) and bool((band & ~tumour).any())


# -- deep supervision, cascades, CGM -----------------------------------------------------------------

def test_heads_are_averaged_and_aux_compared_with_downscaled_target() -> None:
    torch.manual_seed(0)
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 2:6, 3:7] = 1
    heads = {1: torch.randn(1, 2, 8, 8, dtype=torch.float64), 2: torch.randn(1, 2, 8, 8, dtype=torch.float64)}
    aux = {"X1,3": torch.randn(1, 2, 4, 4, dtype=torch.float64)}
    logits = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    loss = build_loss("dice")
    # heads only: the mean of the two heads; ``logits`` (= the deepest head in a model) is not added
    expected = (soft_dice_loss(heads[1], target) + soft_dice_loss(heads[2], target)) / 2
    assert loss(SegmentationOutput(logits=logits, heads=heads), target).item() == pytest.approx(expected.item())
    # aux joins the average, against the max-pooled 4x4 target (rows 1..2, cols 1..3)
    small = torch.zeros(1, 4, 4, dtype=torch.long)
    small[0, 1:3, 1:4] = 1
    assert torch.equal(downscale_labels(target, (4, 4)), small)
    expected = (2 * expected + soft_dice_loss(aux["X1,3"], small)) / 3
    value = loss(SegmentationOutput(logits=logits, heads=heads, aux=aux), target).item()
    assert value == pytest.approx(expected.item())


def _two_heads_two_aux() -> tuple[torch.Tensor, dict[str, torch.Tensor], SegmentationOutput, float]:
    """A target, two full-size heads and two decoder branches (4x4, 2x2), and the heads' mean Dice loss."""
    torch.manual_seed(0)
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 2:6, 3:7] = 1
    heads = {1: torch.randn(1, 2, 8, 8, dtype=torch.float64), 2: torch.randn(1, 2, 8, 8, dtype=torch.float64)}
    aux = {"X1,3": torch.randn(1, 2, 4, 4, dtype=torch.float64), "X2,2": torch.randn(1, 2, 2, 2, dtype=torch.float64)}
    output = SegmentationOutput(logits=heads[2], heads=heads, aux=aux)
    main = ((soft_dice_loss(heads[1], target) + soft_dice_loss(heads[2], target)) / 2).item()
    return target, aux, output, main


def test_a_linearly_fading_aux_weight_reaches_zero_at_the_last_epoch() -> None:
    target, aux, output, main = _two_heads_two_aux()
    aux_sum = sum(soft_dice_loss(v, downscale_labels(target, v.shape[2:])).item() for v in aux.values())
    loss = build_loss("dice", aux_weight=0.1, aux_decay="linear")
    seen = []
    for epoch in range(5):  # 0.1 at the first of five epochs, 0 at the last: 0.1 * (1 - e / 4)
        loss.set_epoch(epoch, 5)
        seen.append(loss.aux_weight)
        assert loss(output, target).item() == pytest.approx(main + seen[-1] * aux_sum)
    assert seen == pytest.approx([0.1, 0.075, 0.05, 0.025, 0.0])
    loss.set_epoch(0, 1)  # a single epoch keeps the full weight
    assert loss.aux_weight == 0.1
    constant = build_loss("dice", aux_weight=0.1)  # no schedule unless asked
    constant.set_epoch(4, 5)
    assert constant.aux_weight == 0.1
    step = build_loss("dice_ce", aux_weight=0.1, aux_decay="step")  # CU-Net's omega, for any loss
    step.set_epoch(10, 50)
    assert step.aux_weight == pytest.approx(0.01)
    with pytest.raises(ModelConfigError, match="aux_decay: 'cosine' is unknown"):
        build_loss("dice", aux_weight=0.1, aux_decay="cosine")
    with pytest.raises(ModelConfigError, match="aux_weight is None"):
        build_loss("dice", aux_decay="linear")  # nothing separate to schedule when aux joins the mean


def test_aux_branches_names_the_decoder_branches_the_loss_supervises() -> None:
    target, aux, output, main = _two_heads_two_aux()
    x13 = soft_dice_loss(aux["X1,3"], downscale_labels(target, (4, 4))).item()
    x22 = soft_dice_loss(aux["X2,2"], downscale_labels(target, (2, 2))).item()
    assert build_loss("dice", aux_weight=0.1)(output, target).item() == pytest.approx(main + 0.1 * (x13 + x22))
    only = build_loss("dice", aux_weight=0.1, aux_branches=["X1,3"])
    assert only(output, target).item() == pytest.approx(main + 0.1 * x13)
    # pooled into the mean (aux_weight None), a branch left out is not counted in the mean either
    pooled = build_loss("dice", aux_branches=["X2,2"])
    assert pooled(output, target).item() == pytest.approx((2 * main + x22) / 3)
    with pytest.raises(ModelConfigError, match=r"\['X4,0'\] are not aux branches .*'X1,3', 'X2,2'"):
        build_loss("dice", aux_branches=["X1,3", "X4,0"])(output, target)
    with pytest.raises(ModelConfigError, match="expected a list of aux branch names"):
        build_loss("dice", aux_branches="X1,3")
    with pytest.raises(ModelConfigError, match="gives no aux branches"):  # UNet++: heads, no decoder branches
        build_loss("dice", aux_branches=["X1,3"])(SegmentationOutput(logits=output.logits, heads=output.heads), target)


def test_max_pool_downscaling_keeps_small_structures() -> None:
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 1, 1] = 3  # one voxel of the rarest class
    target[0, 0, 1] = 1
    assert downscale_labels(target, (2, 2)).tolist() == [[[3, 0], [0, 0]]]  # max: the 3 wins its window
    assert downscale_labels(target, (2, 2), "nearest").tolist() == [[[0, 0], [0, 0]]]  # nearest loses both


def test_two_channel_stage_is_supervised_against_the_whole_tumour(brats_patch: torch.Tensor) -> None:
    torch.manual_seed(0)
    stage1 = torch.randn(1, 2, *brats_patch.shape[1:], dtype=torch.float64)
    stage2 = torch.randn(1, 4, *brats_patch.shape[1:], dtype=torch.float64)
    output = SegmentationOutput(logits=stage2, stages={"stage1": stage1, "stage2": stage2})
    whole = (brats_patch > 0).long()
    expected = focal_tversky_loss(stage1, whole) + focal_tversky_loss(stage2, brats_patch)
    assert build_loss("focal_tversky")(output, brats_patch).item() == pytest.approx(expected.item())
    # stage-by-stage training: weight 0 leaves a stage out
    only_first = build_loss("focal_tversky", stage_weights={"stage2": 0.0})(output, brats_patch)
    assert only_first.item() == pytest.approx(focal_tversky_loss(stage1, whole).item())


def test_cu_net_combination_is_l1_plus_l2_plus_omega_aux(brats_patch: torch.Tensor) -> None:
    torch.manual_seed(0)
    spatial = brats_patch.shape[1:]
    stage1 = torch.randn(1, 2, *spatial, dtype=torch.float64)
    stage2 = torch.randn(1, 4, *spatial, dtype=torch.float64)
    aux1 = torch.randn(1, 2, *(s // 2 for s in spatial), dtype=torch.float64)
    output = SegmentationOutput(logits=stage2, stages={"stage1": stage1, "stage2": stage2}, aux={"stage1_level2": aux1})
    loss = build_loss("weighted_sampling", beta=1e6)  # p2 = 1: deterministic sampling
    part = build_loss("weighted_sampling", beta=1e6)
    small = downscale_labels((brats_patch > 0).long(), aux1.shape[2:])
    expected = part(stage1, (brats_patch > 0).long()) + part(stage2, brats_patch) + 0.1 * part(aux1, small)
    assert loss(output, brats_patch).item() == pytest.approx(expected.item())


def test_classification_bce_against_presence() -> None:
    logits, _ = tiny(p=[0.5, 0.5, 0.5, 0.5])
    logits3 = torch.cat([logits, torch.zeros_like(logits[:, :1])], dim=1).detach().repeat(2, 1, 1, 1)
    target = torch.tensor([[[1, 0, 0, 0]], [[0, 2, 2, 0]]])  # image 0 has class 1, image 1 class 2
    presence = torch.tensor([[3.0, -3.0], [0.0, 0.0]], dtype=torch.float64)
    loss = build_loss("unet_sharp_mixed")
    seg = loss(logits3, target)
    # truth ((1, 0), (0, 1)); BCE = mean of -ln sigmoid(3), -ln sigmoid(3), ln 2, ln 2
    bce = (2 * -ln(1 / (1 + math.exp(-3))) + 2 * ln(2)) / 4
    value = loss(SegmentationOutput(logits=logits3, classification=presence), target)
    assert value.item() == pytest.approx(seg.item() + bce, abs=1e-12)
    with pytest.raises(ModelConfigError, match="classification output has shape"):
        loss(SegmentationOutput(logits=logits3, classification=presence[:, :1]), target)
    # One module per branch (UNet#): the BCE is the mean over the branches' modules.
    branches = {"X0,1": presence, "X0,2": torch.full_like(presence, -3.0)}
    # second module: truth ((1, 0), (0, 1)) -> -ln sigmoid(-3) twice, -ln sigmoid(3) twice
    bce2 = (2 * -ln(1 / (1 + math.exp(3))) + 2 * -ln(1 / (1 + math.exp(-3)))) / 4
    value = loss(SegmentationOutput(logits=logits3, classification=presence, branch_classification=branches), target)
    assert value.item() == pytest.approx(seg.item() + (bce + bce2) / 2, abs=1e-12)


# -- behaviour on real labels: improvement lowers the loss; gradients; empty targets ---------------

@pytest.mark.parametrize("name", PAPER_LOSSES)
@pytest.mark.parametrize("case", ["lgg_2d_binary", "brats_3d_multiclass"])
def test_loss_decreases_as_prediction_improves(name: str, case: str, request: pytest.FixtureRequest) -> None:
    target = request.getfixturevalue("lgg_slice" if case == "lgg_2d_binary" else "brats_patch")
    num_classes = 2 if case == "lgg_2d_binary" else 4
    good = confident_logits(target, num_classes)
    values = []
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        loss = build_loss(name, seed=0) if name == "weighted_sampling" else build_loss(name)
        values.append(loss((2 * t - 1) * good, target).item())  # from confidently wrong to right
    assert all(np.isfinite(values))
    assert all(a > b for a, b in zip(values, values[1:])), values


@pytest.mark.parametrize("name", PAPER_LOSSES)
def test_gradient_matches_finite_differences(name: str) -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[[0, 1, 1], [0, 2, 0]], [[2, 2, 0], [0, 0, 1]]])
    loss = build_loss(name, beta=1e6) if name == "weighted_sampling" else build_loss(name)
    assert torch.autograd.gradcheck(lambda x: loss(x, target), (logits,), eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("name", PAPER_LOSSES)
def test_every_supervised_output_gets_a_gradient(name: str) -> None:
    torch.manual_seed(0)
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[0, 2:5, 2:6] = 1
    target[1, 4:7, 1:3] = 2
    leaf = lambda *shape: torch.randn(*shape, requires_grad=True)  # noqa: E731
    output = SegmentationOutput(
        logits=leaf(2, 3, 8, 8),
        heads={1: leaf(2, 3, 8, 8), 2: leaf(2, 3, 8, 8)},
        aux={"low": leaf(2, 3, 4, 4)},
        stages={"stage1": leaf(2, 2, 8, 8), "stage2": leaf(2, 3, 8, 8)},
        classification=leaf(2, 2),
    )
    build_loss(name)(output, target).backward()
    for tensor in [*output.heads.values(), *output.aux.values(), *output.stages.values(), output.classification]:
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all() and tensor.grad.abs().sum() > 0
    assert output.logits.grad is None  # with heads/stages present, logits are not supervised twice


@pytest.mark.parametrize("name", PAPER_LOSSES)
@pytest.mark.parametrize("shape,num_classes", [((2, 16, 16), 2), ((1, 4, 8, 8), 4)])
def test_empty_target_is_finite(name: str, shape: tuple[int, ...], num_classes: int) -> None:
    torch.manual_seed(0)
    target = torch.zeros(shape, dtype=torch.long)
    for logits in (torch.randn(shape[0], num_classes, *shape[1:]), confident_logits(target, num_classes).float()):
        logits = logits.clone().requires_grad_(True)
        value = build_loss(name)(logits, target)
        value.backward()
        assert torch.isfinite(value) and value.item() >= 0
        assert torch.isfinite(logits.grad).all()
    # An empty roi (nothing to look at) is a zero, not NaN.
    value = build_loss(name)(logits, target, roi=torch.zeros(shape, dtype=torch.bool))
    assert torch.isfinite(value)


def test_head_weights_weigh_the_pruning_heads_shallowest_first() -> None:
    torch.manual_seed(0)
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 2:6, 3:7] = 1
    heads = {k: torch.randn(1, 2, 8, 8, dtype=torch.float64) for k in (1, 2, 3)}
    aux = {"X1,1": torch.randn(1, 2, 4, 4, dtype=torch.float64)}
    output = SegmentationOutput(logits=heads[3], heads=heads, aux=aux)
    per_head = [soft_dice_loss(heads[k], target).item() for k in (1, 2, 3)]
    aux_term = soft_dice_loss(aux["X1,1"], downscale_labels(target, (4, 4))).item()
    weighted = build_loss("dice", aux_weight=0.1, head_weights=[2, 1, 1])
    assert weighted(output, target).item() == pytest.approx(
        (2 * per_head[0] + per_head[1] + per_head[2]) / 4 + 0.1 * aux_term
    )
    pooled = build_loss("dice", head_weights=[2, 1, 1])  # aux pooled into the mean with weight 1
    assert pooled(output, target).item() == pytest.approx((2 * per_head[0] + per_head[1] + per_head[2] + aux_term) / 5)
    with pytest.raises(ModelConfigError, match="2 weights given for a model with 3 pruning heads"):
        build_loss("dice", head_weights=[2, 1])(output, target)
    with pytest.raises(ModelConfigError, match="head_weights: expected one weight >= 0"):
        build_loss("dice", head_weights=[0, 0, 0])
    with pytest.raises(ModelConfigError, match="gives no pruning heads"):  # a plain U-Net's logits
        build_loss("dice", head_weights=[1])(SegmentationOutput(logits=heads[3]), target)


def test_aux_weights_weigh_the_deep_supervision_outputs_by_name() -> None:
    """nnU-Net's deep supervision: the full-resolution output and the down-scaled ones in one
    weighted mean (weights halved per level); with a separate aux_weight, a weighted sum."""
    torch.manual_seed(0)
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 2:6, 3:7] = 1
    logits = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    aux = {"level1": torch.randn(1, 2, 4, 4, dtype=torch.float64), "level2": torch.randn(1, 2, 2, 2, dtype=torch.float64)}
    output = SegmentationOutput(logits=logits, aux=aux)
    main = soft_dice_loss(logits, target).item()
    a1 = soft_dice_loss(aux["level1"], downscale_labels(target, (4, 4))).item()
    a2 = soft_dice_loss(aux["level2"], downscale_labels(target, (2, 2))).item()
    halved = build_loss("dice", aux_weights={"level1": 0.5, "level2": 0.25})
    assert halved(output, target).item() == pytest.approx((main + 0.5 * a1 + 0.25 * a2) / 1.75)
    assert build_loss("dice", aux_weights={"level2": 0.0})(output, target).item() == pytest.approx((main + a1) / 2)
    summed = build_loss("dice", aux_weight=0.1, aux_weights={"level1": 0.5, "level2": 0.25})
    assert summed(output, target).item() == pytest.approx(main + 0.1 * (0.5 * a1 + 0.25 * a2))
    with pytest.raises(ModelConfigError, match=r"aux_weights: \['level3'\] are not aux branches"):
        build_loss("dice", aux_weights={"level3": 0.5})(output, target)
    with pytest.raises(ModelConfigError, match="aux_weights: expected aux branch names with a weight >= 0"):
        build_loss("dice", aux_weights=[0.5, 0.25])


def test_component_dice_scores_each_lesion_island_alone(shared_data: Path) -> None:
    """A real LGG slice with two lesion islands (836 and 11 pixels): a prediction that finds the
    large one and misses the small one loses half of the component Dice, while the batch soft Dice
    barely notices; the sums match a component-by-component loop; the missed island gets gradient."""
    from scipy import ndimage

    from cascadeseg.losses import component_dice_loss

    labels = _read(shared_data / "lgg-flair/labelsTr/TCGA_CS_6188_20010812.nii.gz")[14].astype(np.int64)
    islands, count = ndimage.label(labels > 0)
    sizes = np.bincount(islands.ravel())[1:]
    assert count == 2 and sorted(sizes.tolist()) == [11, 836]
    small = islands == (int(np.argmin(sizes)) + 1)
    target = torch.from_numpy(labels)[None]
    found_large = torch.from_numpy(np.where(small, 0, labels))[None]

    def logits_for(mask: torch.Tensor) -> torch.Tensor:
        fg = torch.where(mask > 0, 8.0, -8.0).double()
        return torch.stack([-fg, fg], dim=1).requires_grad_(True)

    def value(loss: torch.Tensor) -> float:
        return loss.detach().item()  # the graph is kept for the gradient check below

    assert value(component_dice_loss(logits_for(target), target)) < 1e-3
    missed = logits_for(found_large)
    loss = component_dice_loss(missed, target)
    assert abs(value(loss) - 0.5) < 0.01
    assert value(soft_dice_loss(logits_for(found_large), target)) < 0.01  # the global Dice hardly sees it
    # Against a loop: each island against its own pixels and the background, the other left out.
    p = torch.softmax(missed.detach(), 1)[0, 1].numpy()
    expected = np.mean([
        1 - (2 * p[islands == k].sum() + 1e-5) / (p[islands == 0].sum() + p[islands == k].sum() + (islands == k).sum() + 1e-5)
        for k in (1, 2)
    ])
    assert value(loss) == pytest.approx(expected, rel=1e-9)
    loss.backward()
    grad = missed.grad[0, 1].numpy()
    assert (grad[small] < 0).all()  # raising the missed island's logits lowers the loss
    # An image without lesion adds nothing; a batch without any gives 0 and a graph.
    empty = torch.zeros_like(target)
    both = component_dice_loss(logits_for(torch.cat([found_large, empty])), torch.cat([target, empty]))
    assert value(both) == pytest.approx(value(loss), rel=1e-9)
    none = component_dice_loss(logits_for(empty), empty)
    assert value(none) == 0.0 and none.requires_grad
    # Images are averaged: one with its small island missed (0.5), one found whole (0).
    pair = component_dice_loss(logits_for(torch.cat([found_large, target])), torch.cat([target, target]))
    assert value(pair) == pytest.approx(value(loss) / 2, abs=1e-3)
    # 3D patches: components connect across slices (this scan: 2 lesions in 3D, 5 slice islands);
    # missing the smaller 3D lesion costs half.
    scan = _read(shared_data / "lgg-flair/labelsTr/TCGA_CS_6188_20010812.nii.gz").astype(np.int64)
    lesions, count = ndimage.label(scan > 0)
    assert count == 2 and sum(ndimage.label(s > 0)[1] for s in scan) == 5
    smaller = lesions == (int(np.argmin(np.bincount(lesions.ravel())[1:])) + 1)
    volume = torch.from_numpy(scan)[None]
    assert value(component_dice_loss(logits_for(volume), volume)) < 0.01  # 1.5 M voxels of e^-16 each
    missed_3d = component_dice_loss(logits_for(torch.from_numpy(np.where(smaller, 0, scan))[None]), volume)
    assert abs(value(missed_3d) - 0.5) < 0.01
    # As a part of dice_ce: off by default (the planned loss is unchanged), weighted when asked.
    plain = build_loss("dice_ce")(SegmentationOutput(logits=logits_for(found_large)), target)
    weighted = build_loss("dice_ce", component_weight=1.0)(SegmentationOutput(logits=logits_for(found_large)), target)
    assert value(weighted) - value(plain) == pytest.approx(value(loss), rel=1e-6)
    with pytest.raises(ModelConfigError, match="component_weight"):
        build_loss("dice_ce", component_weight=-1.0)
