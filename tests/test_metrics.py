"""Metrics of issue 4: hand-computed values on tiny arrays, the empty-mask conventions, spacing in
HD95, aggregation, bad input, and validation against MONAI and SimpleITK on the real scans."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from cascadeseg.errors import VolumeError
from cascadeseg.metrics import (
    BRATS_REGIONS,
    aggregate_cases,
    evaluate_case,
    hausdorff_distance,
    hd95,
    label_confusion_matrix,
)


def _square(shape: tuple[int, ...], rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


# -- hand-computed values ------------------------------------------------------------------------

def test_overlap_metrics_hand_values() -> None:
    ref = np.array([[0, 1, 1, 0],
                    [0, 1, 1, 0],
                    [2, 2, 0, 0],
                    [0, 0, 0, 0]], dtype=np.uint8)
    pred = np.array([[0, 1, 1, 1],
                     [0, 0, 1, 0],
                     [2, 0, 0, 0],
                     [0, 0, 0, 2]], dtype=np.uint8)
    scores = evaluate_case(pred, ref, (1.0, 1.0))
    assert list(scores) == ["1", "2"]
    one = scores["1"]
    # class 1: TP = 3 ((0,1), (0,2), (1,2)), FP = 1 ((0,3)), FN = 1 ((1,1)), TN = 16 - 5 = 11
    assert (one["tp"], one["fp"], one["fn"], one["tn"]) == (3, 1, 1, 11)
    assert one["dice"] == pytest.approx(6 / 8)  # 2 TP / (2 TP + FP + FN)
    assert one["iou"] == pytest.approx(3 / 5)
    assert one["precision"] == pytest.approx(3 / 4)
    assert one["recall"] == pytest.approx(3 / 4)
    assert one["specificity"] == pytest.approx(11 / 12)
    two = scores["2"]
    # class 2: TP = 1 ((2,0)), FP = 1 ((3,3)), FN = 1 ((2,1)), TN = 13
    assert (two["tp"], two["fp"], two["fn"], two["tn"]) == (1, 1, 1, 13)
    assert two["dice"] == pytest.approx(0.5)
    # regions pool labels: {1, 2} -> TP 4 (5 predicted foreground voxels hit 4 of the 6 reference ones)
    region = evaluate_case(pred, ref, (1.0, 1.0), regions={"any": (1, 2)})["any"]
    assert (region["tp"], region["fp"], region["fn"]) == (4, 2, 2)
    assert list(evaluate_case(pred, ref, (1.0, 1.0), classes={"tumour": 1})) == ["tumour"]


def test_hd95_hand_value_and_anisotropic_spacing() -> None:
    # 3x3 squares, the prediction one column to the right. Boundary = the 8 outer voxels.
    ref = _square((6, 6), slice(1, 4), slice(1, 4))
    pred = _square((6, 6), slice(1, 4), slice(2, 5))
    # spacing 1 mm: 4 of the 8 prediction boundary voxels coincide with reference boundary voxels,
    # 4 are 1 voxel away -> sorted (0,0,0,0,1,1,1,1), 95th percentile (index 6.65) = 1; symmetric.
    assert hd95(pred, ref, (1.0, 1.0)) == pytest.approx(1.0)
    # x spacing 2 mm (array order (y, x)): the shift is now 2 mm. Directed distances pred -> ref:
    # (1,2),(1,3),(3,2),(3,3) -> 0; (2,2) -> 1 ((1,2) one row up); (1,4),(2,4),(3,4) -> 2
    # sorted (0,0,0,0,1,2,2,2): 95th percentile = 2; ref -> pred symmetric the same -> 2.
    assert hd95(pred, ref, (1.0, 2.0)) == pytest.approx(2.0)
    # y spacing 2 mm instead: the x shift stays 1 mm.
    assert hd95(pred, ref, (2.0, 1.0)) == pytest.approx(1.0)
    assert hausdorff_distance(pred, ref, (1.0, 2.0), percentile=100) == pytest.approx(2.0)


def test_hd95_3d_shift_scales_with_the_spacing_of_the_shifted_axis() -> None:
    ref = np.zeros((9, 9, 9), dtype=bool)
    ref[2:7, 2:7, 2:7] = True
    pred = np.roll(ref, 1, axis=0)  # one slice up
    # A quarter of the prediction's boundary (its 25-voxel top face) is one slice from the
    # reference's top face: far more than 5%, so HD95 is exactly one slice thickness.
    assert hd95(pred, ref, (1.0, 1.0, 1.0)) == pytest.approx(1.0)
    assert hd95(pred, ref, (3.0, 0.5, 0.5)) == pytest.approx(3.0)
    shifted_in_plane = np.roll(ref, 1, axis=2)
    assert hd95(shifted_in_plane, ref, (3.0, 0.5, 0.5)) == pytest.approx(0.5)


# -- empty masks ----------------------------------------------------------------------------------

def test_empty_mask_conventions() -> None:
    empty = np.zeros((5, 5), dtype=np.uint8)
    full = empty.copy()
    full[1:3, 1:3] = 1
    both = evaluate_case(empty, empty, (1.0, 1.0), classes=[1])["1"]
    assert (both["dice"], both["iou"], both["precision"], both["recall"], both["hd95"]) == (1.0, 1.0, 1.0, 1.0, 0.0)
    missed = evaluate_case(empty, full, (1.0, 1.0), classes=[1])["1"]
    assert (missed["dice"], missed["iou"], missed["recall"], missed["precision"]) == (0.0, 0.0, 0.0, 1.0)
    assert missed["hd95"] == math.inf
    false_alarm = evaluate_case(full, empty, (1.0, 1.0), classes=[1])["1"]
    assert (false_alarm["dice"], false_alarm["precision"], false_alarm["recall"]) == (0.0, 0.0, 1.0)
    assert false_alarm["hd95"] == math.inf
    assert hd95(np.zeros((3, 3), bool), np.zeros((3, 3), bool), (1, 1)) == 0.0
    # nothing present and no classes asked: nothing scored (no invented zero rows)
    assert evaluate_case(empty, empty, (1.0, 1.0)) == {}


def test_aggregation_mean_median_global_and_infinite_hd95() -> None:
    ref = np.zeros((4, 4), dtype=np.uint8)
    ref[0, :] = 1  # 4 voxels
    good = ref.copy()  # Dice 1
    half = np.zeros_like(ref)
    half[0, :2] = 1  # TP 2, FN 2 -> Dice 4/6
    cases = [evaluate_case(p, ref, (1.0, 1.0), classes=[1]) for p in (good, half, np.zeros_like(ref))]
    summary = aggregate_cases(cases)["1"]
    dices = [1.0, 4 / 6, 0.0]
    assert summary["dice"]["mean"] == pytest.approx(np.mean(dices))
    assert summary["dice"]["median"] == pytest.approx(4 / 6)
    # global Dice pools voxels: TP 4 + 2 + 0, |P| = 4 + 2 + 0, |G| = 12 -> 12 / 18
    assert summary["global_dice"] == pytest.approx(12 / 18)
    # HD95: 0 (identical), finite for the half, inf for the empty prediction -> counted, not averaged
    assert summary["hd95"]["n_inf"] == 1 and summary["hd95"]["n"] == 2
    assert np.isfinite(summary["hd95"]["mean"])
    penalised = aggregate_cases(cases, hd95_penalty=373.13)["1"]["hd95"]
    assert penalised["n"] == 3 and penalised["n_inf"] == 1
    assert penalised["mean"] == pytest.approx((cases[0]["1"]["hd95"] + cases[1]["1"]["hd95"] + 373.13) / 3)


# -- bad input --------------------------------------------------------------------------------------

def test_bad_input_raises_volume_error() -> None:
    a = np.zeros((4, 4), dtype=np.uint8)
    with pytest.raises(VolumeError, match="differs from reference shape"):
        evaluate_case(a, np.zeros((4, 5), dtype=np.uint8), (1.0, 1.0))
    with pytest.raises(VolumeError, match="spacing: expected 2 positive"):
        evaluate_case(a, a, (1.0, 0.0))
    with pytest.raises(VolumeError, match="spacing: expected 2 positive"):
        evaluate_case(a, a, (1.0, 1.0, 1.0))
    with pytest.raises(VolumeError, match="prediction: expected an integer label map"):
        evaluate_case(a + 0.5, a, (1.0, 1.0))
    with pytest.raises(VolumeError, match="reference: label values must be >= 0"):
        evaluate_case(a, a.astype(np.int16) - 1, (1.0, 1.0))
    with pytest.raises(VolumeError, match="region 'WT' has no labels"):
        evaluate_case(a, a, (1.0, 1.0), regions={"WT": ()})


# -- validation against MONAI and SimpleITK on real scans -------------------------------------------

def _read(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), tuple(reversed(image.GetSpacing()))  # array (z, y, x) order


def _union_crop(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cropped to their union's bounding box plus 2 voxels: Dice and HD95 do not change
    (every boundary voxel and its neighbours stay inside), the reference tools just run faster."""
    hits = np.argwhere(pred | ref)
    if hits.size == 0:
        return pred, ref
    box = tuple(slice(max(lo - 2, 0), hi + 3) for lo, hi in zip(hits.min(axis=0), hits.max(axis=0)))
    return pred[box], ref[box]


def _monai_hd95(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> float:
    from monai.metrics import compute_hausdorff_distance

    pred, ref = _union_crop(pred, ref)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns on empty masks and deprecated arguments
        value = compute_hausdorff_distance(
            torch.from_numpy(pred)[None, None], torch.from_numpy(ref)[None, None],
            include_background=True, percentile=95, spacing=list(spacing),
        )
    return float(value.item())


def _sitk_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    pred, ref = _union_crop(pred, ref)
    measures = sitk.LabelOverlapMeasuresImageFilter()
    measures.Execute(sitk.GetImageFromArray(ref.astype(np.uint8)), sitk.GetImageFromArray(pred.astype(np.uint8)))
    return measures.GetDiceCoefficient()


def test_brats_algorithms_agree_with_monai_and_simpleitk(shared_data: Path) -> None:
    """hnfnetv1-20 vs isen-20 on the BraTS-like case, per BraTS region, 1 mm voxels."""
    folder = shared_data / "brats-like/TCGA-DU-7294"
    pred, spacing = _read(folder / "hnfnetv1-20.nii.gz")
    ref, ref_spacing = _read(folder / "isen-20.nii.gz")
    assert spacing == ref_spacing
    scores = evaluate_case(pred, ref, spacing, regions=BRATS_REGIONS)
    assert list(scores) == ["WT", "TC", "ET"]
    for name, labels in BRATS_REGIONS.items():
        p, r = np.isin(pred, labels), np.isin(ref, labels)
        monai = _monai_hd95(p, r, spacing)
        if not r.any():
            # isen-20 labels no enhancing tumour at all. MONAI answers NaN for an empty reference
            # (and inf for an empty prediction); ours is inf for both, the documented convention,
            # so aggregation counts the miss instead of a nan-mean silently dropping it.
            assert name == "ET" and p.any() and math.isnan(monai)
            assert scores[name]["dice"] == 0.0 and scores[name]["hd95"] == math.inf
            continue
        assert scores[name]["dice"] == pytest.approx(_sitk_dice(p, r), abs=1e-6)
        # MONAI keeps distances in float32: agreement to float32 precision.
        assert scores[name]["hd95"] == pytest.approx(monai, rel=1e-5), name
    assert scores["WT"]["dice"] == pytest.approx(0.96179, abs=1e-5)  # recorded: both algorithms agree well


@pytest.mark.parametrize(
    "case,shift",
    [("lgg-flair/labelsTr/TCGA_CS_4941_19960909.nii.gz", (0, 3, -2)),
     ("tcia-btp/labelsTr/PGBM-006_19961210.nii.gz", (1, 4, 0))],
)
def test_real_label_against_eroded_and_shifted_copy(shared_data: Path, case: str, shift: tuple[int, ...]) -> None:
    """A real manual label against a morphologically eroded, shifted copy, with the scan's spacing
    (TCIA: 6.5 mm slices, 0.43 mm pixels - strongly anisotropic)."""
    from scipy import ndimage

    ref, spacing = _read(shared_data / case)
    ref = ref > 0
    pred = np.roll(ndimage.binary_erosion(ref, iterations=1), shift, axis=(0, 1, 2))
    scores = evaluate_case(pred.astype(np.uint8), ref.astype(np.uint8), spacing, classes=[1])["1"]
    assert scores["dice"] == pytest.approx(_sitk_dice(pred, ref), abs=1e-6)
    assert scores["hd95"] == pytest.approx(_monai_hd95(pred, ref, spacing), rel=1e-5)
    assert scores["hd95"] > 0
    np.testing.assert_array_equal(
        label_confusion_matrix(pred.astype(np.uint8), ref.astype(np.uint8)).ravel(),
        [np.sum(~ref & ~pred), np.sum(~ref & pred), np.sum(ref & ~pred), np.sum(ref & pred)],
    )


def test_one_case_dice_leaves_out_classes_absent_from_both() -> None:
    """The project's one multi-class Dice convention (training validation, export, evaluate):
    the mean over the structures present in the reference or the prediction. A class absent from
    both is not counted as 1; a case with nothing anywhere is NaN (it says nothing)."""
    from cascadeseg.metrics import aggregate_cases, case_mean_dice, mean_dice

    ref = np.zeros((4, 10), np.uint8)
    pred = np.zeros((4, 10), np.uint8)
    ref[0, :4] = 1  # class 1: 4 reference voxels
    pred[0, 2:6] = 1  # 2 TP, 2 FP, 2 FN -> Dice 4 / 8 = 0.5
    ref[2, :5] = 3  # class 3: missed entirely -> Dice 0
    # classes 2 and 4..117 are absent from both
    assert case_mean_dice(pred, ref, range(1, 118)) == pytest.approx((0.5 + 0.0) / 2)
    assert np.isnan(case_mean_dice(np.zeros_like(ref), np.zeros_like(ref), [1, 2]))
    scores = evaluate_case(pred, ref, (1.0, 1.0), classes=[1, 2, 3], surface=False)
    assert scores["2"]["dice"] == 1.0  # per structure, "nothing to find, nothing found" stays 1 ...
    assert mean_dice(scores) == pytest.approx(0.25)  # ... but it is not averaged in
    summary = aggregate_cases([scores, evaluate_case(ref, ref, (1.0, 1.0), classes=[1, 2, 3], surface=False)])
    assert summary["2"]["dice"]["n"] == 0 and summary["2"]["n_absent"] == 2
    assert summary["1"]["dice"]["mean"] == pytest.approx((0.5 + 1.0) / 2)
