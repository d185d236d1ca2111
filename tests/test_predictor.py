"""The predictor on real MRI/CT scans: 2D and 3D, geometry, depths, stages, attention, progress,
cancellation, memory, bad input. Tiny random-init networks (width 4): the tests check behaviour
(shapes, grids, dtypes, control flow), not segmentation quality."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from cascadeseg.errors import CancelledError, ModelConfigError, VolumeError
from cascadeseg.inference import (
    DeviceError,
    ModelCard,
    PostProcessing,
    PredictionRequest,
    Predictor,
    label_dtype,
    postprocess,
    resolve_device,
    save_checkpoint,
)
from cascadeseg.inference.predictor import count_windows
from cascadeseg.io import Volume, load_volume
from cascadeseg.models import create_model

ZSCORE = {"type": "mri_zscore", "percentiles": [0.5, 99.5]}
ABDOMEN = {"type": "ct_window", "preset": "abdomen"}


def tiny(arch: str, dims: int, channels: list[tuple[str, dict]], classes: list[int], **card_fields):
    """A random-init width-4 network of ``arch`` and the card describing it."""
    torch.manual_seed(0)
    options = {"in_channels": len(channels), "num_classes": len(classes), "dims": dims, "base_width": 4, "levels": 3}
    options.update(card_fields.pop("options", {}))
    model = create_model(arch, **options).eval()
    card = ModelCard(
        architecture=arch, model_options=options, dims=dims,
        input_channels=[{"name": n, "preprocessing": p} for n, p in channels],
        classes=[{"value": v, "name": f"class {v}"} for v in classes], **card_fields,
    )
    return model, card


def crop(volume: Volume, z: slice, y: slice, x: slice) -> Volume:
    """A sub-block of a real scan with its geometry moved accordingly (origin of the first voxel)."""
    start = np.array([z.start or 0, y.start or 0, x.start or 0], dtype=float)
    origin = volume.affine_zyx() @ np.append(start, 1.0)  # rows (z, y, x) of LPS
    return volume.with_array(np.ascontiguousarray(volume.array[:, z, y, x]),
                             origin=tuple(origin[:3][::-1]))


def assert_same_grid(labels: Volume, image: Volume) -> None:
    assert labels.array.shape == image.spatial_shape
    assert labels.spacing == image.spacing
    assert np.allclose(labels.origin, image.origin)
    assert np.allclose(labels.direction, image.direction)


@pytest.fixture(scope="module")
def lgg(shared_data: Path) -> Volume:
    return load_volume(shared_data / "lgg-flair/imagesTr/TCGA_CS_4941_19960909_0000.nii.gz")


@pytest.fixture(scope="module")
def tcia(shared_data: Path) -> Volume:
    return load_volume(shared_data / "tcia-btp/imagesTr/PGBM-003_19950329_0000.nii.gz")


@pytest.fixture(scope="module")
def ct(shared_data: Path) -> Volume:
    return load_volume(shared_data / "totalseg/example_ct_sm.nii.gz")


def test_2d_on_real_lgg_keeps_grid_and_reports_progress(lgg: Volume) -> None:
    model, card = tiny("unet", 2, [("FLAIR", ZSCORE)], [0, 1])
    reports = []
    result = Predictor(model, card, device="cpu", batch_size=8).predict(lgg, progress=reports.append)
    assert_same_grid(result.labels, lgg)
    assert result.labels.array.dtype == np.uint8
    assert set(np.unique(result.labels.array)) <= {0, 1}
    assert result.mode == "2d" and result.unit == "slices" and result.items == lgg.spatial_shape[0]
    # 23 slices in batches of 8: 3 reports, monotone, ending at 1.0 with a positive rate.
    assert [r.done for r in reports] == [8, 16, 23]
    assert reports[-1].fraction == 1.0 and reports[-1].total == 23 and all(r.rate > 0 for r in reports)
    assert set(result.timings) == {"preprocess", "inference", "total"} and result.rate > 0


def test_2d_slicing_axis_and_odd_sizes_are_padded_and_cropped(lgg: Volume) -> None:
    model, card = tiny("unet", 2, [("FLAIR", ZSCORE)], [0, 1])
    small = crop(lgg, slice(3, 14), slice(60, 157), slice(40, 141))  # 11 x 97 x 101: not multiples of 4
    predictor = Predictor(model, card, device="cpu")
    along_x = predictor.predict(small, axis=2, want=PredictionRequest(probabilities=True))
    assert along_x.items == 101 and along_x.axis == 2
    assert_same_grid(along_x.labels, small)
    probs = along_x.probabilities.array
    assert probs.shape == (2, *small.spatial_shape) and np.allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    assert np.array_equal(probs.argmax(axis=0), along_x.labels.array)
    # Slicing a single slab along z equals running the network on that slice by hand (crop after pad).
    along_z = predictor.predict(small, axis=0)
    from cascadeseg.preprocessing import apply_channel_preprocessing

    x = torch.from_numpy(apply_channel_preprocessing(small.array[0], ZSCORE)[5:6])[None]
    with torch.no_grad():
        logits = model(torch.nn.functional.pad(x, (0, 3, 0, 3))).logits[..., :97, :101]
    assert np.array_equal(along_z.labels.array[5], logits.argmax(1)[0].numpy())


def test_3d_on_real_two_channel_anisotropic_mri(shared_data: Path, tcia: Volume) -> None:
    assert tcia.num_channels == 2 and tcia.spacing[0] > 6  # 6.5 mm slices, 0.69 mm pixels
    model, card = tiny("unet", 3, [("T1c", ZSCORE), ("FLAIR", ZSCORE)], [0, 1],
                       options={"spacing": list(tcia.spacing)}, patch_size=[8, 48, 48])
    assert model.size_divisor[0] < model.size_divisor[1]  # anisotropic pooling from the spacing
    block = crop(tcia, slice(4, 16), slice(100, 164), slice(110, 174))
    reports = []
    result = Predictor(model, card, device="cpu").predict(block, progress=reports.append, overlap=0.25,
                                                          want=PredictionRequest(probabilities=True))
    assert_same_grid(result.labels, block)
    assert result.mode == "3d" and result.unit == "patches"
    assert result.items == count_windows(block.spatial_shape, (8, 48, 48), 0.25) == len(reports) == 8
    assert reports[-1].fraction == 1.0
    assert np.allclose(result.probabilities.array.sum(axis=0), 1.0, atol=1e-4)


def test_3d_ct_smaller_than_patch_is_padded(ct: Volume) -> None:
    model, card = tiny("unet", 3, [("CT", ABDOMEN)], [0, 1, 5], patch_size=[16, 32, 32])
    small = crop(ct, slice(10, 20), slice(30, 50), slice(40, 64))  # 10 x 20 x 24 < 16 x 32 x 32
    result = Predictor(model, card, device="cpu").predict(small)
    assert result.items == 1
    assert_same_grid(result.labels, small)
    assert set(np.unique(result.labels.array)) <= {0, 1, 5}  # channel 2 is written as value 5


def test_depths_heads_and_attention_on_real_scan(lgg: Volume) -> None:
    model, card = tiny("anu_net", 2, [("FLAIR", ZSCORE)], [0, 1], recommended_depth=1)
    block = crop(lgg, slice(8, 12), slice(64, 192), slice(64, 192))
    predictor = Predictor(model, card, device="cpu")
    assert predictor.predict(block).depth == 1  # the card's recommended depth is the default
    everything = predictor.predict(block, depth=2, want=PredictionRequest(depths=True, attention=True))
    assert sorted(everything.depth_labels) == [1, 2]  # levels=3: pruning depths L1, L2
    for depth in (1, 2):
        pruned = predictor.predict(block, depth=depth)
        assert np.array_equal(pruned.labels.array, everything.depth_labels[depth].array)
    assert np.array_equal(everything.labels.array, everything.depth_labels[2].array)
    assert everything.attention, "ANU-Net returns its attention gates"
    for gate, coeff in everything.attention.items():
        assert coeff.array.shape == block.spatial_shape and coeff.array.dtype == np.float32
        assert float(coeff.array.std()) > 0, gate  # the gate responds to the scan (not a constant map)
    with pytest.raises(ModelConfigError, match="pruning depth 7"):
        predictor.predict(block, depth=7)


def test_cascade_stages_come_back_by_name(lgg: Volume, ct: Volume) -> None:
    model, card = tiny("cascaded_unet", 2, [("FLAIR", ZSCORE)], [0, 1])
    block = crop(lgg, slice(8, 11), slice(64, 128), slice(64, 128))
    result = Predictor(model, card, device="cpu").predict(block, want=PredictionRequest(stages=True))
    assert list(result.stage_labels) == ["stage1", "stage2"]
    for stage in result.stage_labels.values():
        assert_same_grid(stage, block)
    # The coarse-to-fine 3D cascade reports the share of the input its stage 2 ran on.
    model, card = tiny("coarse_to_fine_unet", 3, [("CT", ABDOMEN)], [0, 1, 5], patch_size=[16, 32, 32])
    small = crop(ct, slice(0, 16), slice(30, 62), slice(40, 72))
    result = Predictor(model, card, device="cpu").predict(small, want=PredictionRequest(stages=True))
    assert sorted(result.stage_labels) == ["stage1", "stage2"]
    assert 0.0 <= result.stats["stage2_fraction"] <= 1.0 and result.stats["stage2_forwards"] == 1


def test_cancel_stops_within_one_batch_and_returns_nothing(lgg: Volume) -> None:
    model, card = tiny("unet", 2, [("FLAIR", ZSCORE)], [0, 1])
    cancel = threading.Event()
    seen = []

    def on_progress(progress) -> None:
        seen.append(progress.done)
        cancel.set()  # the user clicks Cancel after the first batch

    with pytest.raises(CancelledError, match="cancelled after 4 of 23 slices"):
        Predictor(model, card, device="cpu", batch_size=4).predict(lgg, progress=on_progress, cancel=cancel)
    assert seen == [4]


def test_bad_input_is_refused_with_clear_messages(lgg: Volume, tcia: Volume) -> None:
    model, card = tiny("unet", 2, [("FLAIR", ZSCORE)], [0, 1])
    predictor = Predictor(model, card, device="cpu")
    with pytest.raises(VolumeError, match=r"has 2 channel\(s\).*expects 1: FLAIR.*Predictor.choose_channels"):
        predictor.predict(tcia)
    flair, taken = predictor.choose_channels(tcia, ["0001"])  # what the message points to
    assert flair.array.shape[0] == 1 and taken is not None and "0001" in taken
    with pytest.raises(VolumeError, match=r"has 1 channel\(s\).*expects 2") as fewer:
        Predictor(*tiny("unet", 2, [("T1c", ZSCORE), ("FLAIR", ZSCORE)], [0, 1]), device="cpu").predict(flair)
    assert "choose_channels" not in str(fewer.value)  # too few channels: nothing to pick
    nan = lgg.with_array(lgg.array[:, :4].astype(np.float32))
    nan.array[0, 1, 2, 3] = np.nan
    with pytest.raises(VolumeError, match="1 voxel\\(s\\) are NaN"):
        predictor.predict(nan)
    with pytest.raises(VolumeError, match="empty"):
        predictor.predict(lgg.with_array(lgg.array[:, :0]))
    with pytest.raises(VolumeError, match="label map cannot be segmented"):
        predictor.predict(lgg.with_array(lgg.array[0]))
    with pytest.raises(ModelConfigError, match="network is 2D"):
        predictor.predict(lgg, mode="3d")


def test_out_of_memory_halves_the_batch_then_says_so(lgg: Volume) -> None:
    model, card = tiny("unet", 2, [("FLAIR", ZSCORE)], [0, 1])
    block = crop(lgg, slice(0, 10), slice(64, 128), slice(64, 128))
    sizes = []
    original = model.forward

    def limited(x, depth=None, request=None):
        sizes.append(x.shape[0])
        if x.shape[0] > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(x, depth=depth, request=request)

    model.forward = limited
    limit = 2
    reference = Predictor(model, card, device="cpu", batch_size=2).predict(block).labels.array
    sizes.clear()
    result = Predictor(model, card, device="cpu", batch_size=8).predict(block)
    assert sizes[:3] == [8, 4, 2] and np.array_equal(result.labels.array, reference)
    limit = 0
    with pytest.raises(DeviceError, match="ran out of memory even with one item"):
        Predictor(model, card, device="cpu", batch_size=2).predict(block)


MEMORY_PROBE = """
import sys, numpy as np, torch
from pathlib import Path
torch.set_num_threads(1)
from cascadeseg.inference import allocator
allocator.enable()  # as the command line runs: freed batch memory is reused, the peak is the live set
sys.path.insert(0, sys.argv[1])
from test_predictor import ABDOMEN, tiny
from cascadeseg.inference.predictor import Predictor
from cascadeseg.io.volume import Volume

def hwm_kb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

array = np.random.default_rng(0).integers(-1000, 1500, size=(1, int(sys.argv[2]), 512, 512), dtype=np.int16)
volume = Volume(array, spacing=(2.0, 0.8, 0.8), modality="CT")
model, card = tiny("unet", 2, [("CT", ABDOMEN)], [0, 1], options={"levels": 2, "base_width": 2})
predictor = Predictor(model, card, device="cpu", batch_size=4)
predictor.predict(Volume(array[:, :4].copy(), spacing=(2.0, 0.8, 0.8), modality="CT"))  # warm up the runtime
Path("/proc/self/clear_refs").write_text("5")  # the peak restarts at the current resident size
before = hwm_kb()
result = predictor.predict(volume)
print("GROWTH_KB", hwm_kb() - before, array.size * 4 // 1024)
"""


def test_2d_memory_holds_one_float_copy() -> None:
    """A 512 x 512 int16 CT in 2D: each extra slice costs the process's peak resident memory (read
    from the kernel: NumPy and torch alike) one float32 copy of the slice plus its uint8 label
    slice, not more: comparing 120 slices with 60 cancels the per-batch buffers, which do not grow
    with the volume (60 vs 180 slices: the heap's own variation, about 10 MiB, stays well inside the
    bound). The 512x512x600 figure is measured by ``cascadeseg bench --memory``."""
    import subprocess
    import sys

    growth = {}
    for slices in (60, 180):
        proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(Path(__file__).parent), str(slices)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        growth[slices] = int(proc.stdout.split("GROWTH_KB")[1].split()[0])
    per_120_slices = (120 * 512 * 512 * (4 + 1)) // 1024  # a float32 copy and a uint8 label map, in kB
    extra = growth[180] - growth[60]
    assert 0.8 * per_120_slices < extra < 1.25 * per_120_slices, f"120 more slices cost {extra / 1024:.0f} MiB"


def test_checkpoint_round_trip_and_label_values(tmp_path: Path, ct: Volume) -> None:
    model, card = tiny("unet", 2, [("CT", ABDOMEN)], [0, 300])
    folder = save_checkpoint(model, card, tmp_path / "ct-model")
    predictor = Predictor.from_checkpoint(folder, device="cpu")
    result = predictor.predict(crop(ct, slice(0, 4), slice(0, 64), slice(0, 64)))
    assert result.labels.array.dtype == np.uint16 and set(np.unique(result.labels.array)) <= {0, 300}
    assert label_dtype(255) == np.uint8 and label_dtype(256) == np.uint16 and label_dtype(70000) == np.uint32


def test_postprocessing_on_a_real_label_map(shared_data: Path) -> None:
    from cascadeseg.io import load_labels

    labels = load_labels(shared_data / "lgg-flair/labelsTr/TCGA_CS_4941_19960909.nii.gz").array.copy()
    labels[0, :3, :3] = 1  # a far-away false-positive island
    labels[labels.shape[0] // 2, 5:9, 5:9] = 1
    lesion = labels == 1
    kept = postprocess(labels, PostProcessing(largest_component=True))
    assert kept[0, 0, 0] == 0 and kept.sum() < labels.sum() and kept[lesion].any()
    ring = np.zeros((1, 9, 9), dtype=np.uint8)
    ring[0, 2:7, 2:7] = 1
    ring[0, 4, 4] = 0
    assert postprocess(ring, PostProcessing(fill_holes=True, fill_holes_axis=0))[0, 4, 4] == 1
    mask = np.zeros(labels.shape, dtype=bool)
    mask[labels.shape[0] // 2] = True
    inside = postprocess(labels, PostProcessing(restrict_to_mask=True), mask=mask)
    assert inside[~mask].max() == 0 and np.array_equal(inside[mask], labels[mask])
    assert labels[0, 0, 0] == 1  # the input is never modified
    with pytest.raises(VolumeError, match="no mask"):
        postprocess(labels, PostProcessing(restrict_to_mask=True))


def test_device_resolution_and_default_batch() -> None:
    from cascadeseg.inference.predictor import default_2d_batch

    cpu = resolve_device("cpu")
    assert cpu.type == "cpu"
    # A pixel budget: 512x512 CT slices go two at a time on the CPU (activation memory), 256x256 eight.
    assert [default_2d_batch(cpu, s, s) for s in (64, 256, 512, 1024)] == [8, 8, 2, 1]
    assert default_2d_batch(torch.device("cuda"), 512, 512) == 8
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve_device("cuda")
        assert resolve_device("auto").type in ("cpu", "mps")
    with pytest.raises(DeviceError, match="unknown"):
        resolve_device("tpu")


def test_target_spacing_resamples_in_plane_and_maps_back(tcia: Volume) -> None:
    """A 2D card trained at 1.375 mm pixels on a 0.6875 mm scan: the network sees half-size
    slices (the 6.5 mm slice axis is left alone) and the labels land on the scan's own grid."""
    model, card = tiny("unet", 2, [("T1c", ZSCORE), ("FLAIR", ZSCORE)], [0, 1], target_spacing=[1.0, 1.375, 1.375])
    block = crop(tcia, slice(8, 12), slice(80, 208), slice(96, 224))  # 4 x 128 x 128 at 0.6875 mm
    seen = []
    model.register_forward_hook(lambda module, args, output: seen.append(tuple(args[0].shape)))
    result = Predictor(model, card, device="cpu").predict(block, want=PredictionRequest(probabilities=True))
    assert seen == [(4, 2, 64, 64)]
    assert_same_grid(result.labels, block)
    assert result.probabilities.array.shape == (2, 4, 128, 128)


def test_maps_return_to_the_native_grid_by_linear_zoom(shared_data: Path) -> None:
    """A real lesion mask taken to a 2 mm working grid and back: the linear zoom of the predictor
    (what the network's logits go through) must land on the scan's voxels exactly (an error of
    half a working voxel would move the lesion's centre by 0.5 mm and cost Dice), and beat the
    nearest-neighbour route it replaced."""
    from cascadeseg.inference.predictor import NativeZoom
    from cascadeseg.preprocessing import resample_to_grid, resample_to_spacing

    mask = load_volume(shared_data / "lgg-flair/labelsTr/TCGA_CS_6665_20010817.nii.gz")
    truth = mask.array.reshape(mask.spatial_shape) > 0  # (1, Z, Y, X) as loaded -> (Z, Y, X)
    working = resample_to_spacing(mask.with_array(truth.astype(np.float32)),
                                  [mask.spacing[0], 2 * mask.spacing[1], 2 * mask.spacing[2]], is_label=False)
    assert working.spatial_shape == (truth.shape[0], truth.shape[1] // 2, truth.shape[2] // 2)
    zoom = NativeZoom.between(working, mask).in_plane(0)
    soft = working.array.reshape(working.spatial_shape)
    planes = torch.from_numpy(soft)[:, None]  # (Z, 1, Y/2, X/2): slices as a batch
    back = zoom.apply(planes)[:, 0].numpy() > 0.5
    nearest = resample_to_grid(working.with_array((soft > 0.5).astype(np.uint8)), mask, is_label=True).array
    nearest = nearest.reshape(mask.spatial_shape) > 0

    def dice(a: np.ndarray) -> float:
        return 2 * float((a & truth).sum()) / float(a.sum() + truth.sum())

    assert dice(back) > 0.98 and dice(back) > dice(nearest)
    centre = lambda m: np.array(np.nonzero(m)).mean(axis=1)  # noqa: E731
    assert np.abs(centre(back) - centre(truth)).max() < 0.1  # voxels


def test_mirroring_averages_the_mirror_images(lgg: Volume) -> None:
    """``mirror=True``: probabilities are the mean softmax over the slice and its three mirror
    images (checked against a hand-made mean on a real scan), and labels are its argmax."""
    model, card = tiny("unet", 2, [("FLAIR", ZSCORE)], [0, 1])
    block = crop(lgg, slice(10, 12), slice(64, 192), slice(64, 192))
    predictor = Predictor(model, card, device="cpu")
    mirrored = predictor.predict(block, want=PredictionRequest(probabilities=True, mirror=True))
    plain = predictor.predict(block, want=PredictionRequest(probabilities=True))
    from cascadeseg.inference.predictor import _preprocess_channel

    x = torch.from_numpy(_preprocess_channel(block.array[0], ZSCORE))[:, None]
    expected = torch.zeros(2, 2, 128, 128)
    with torch.inference_mode():
        for dims in ((), (2,), (3,), (2, 3)):
            logits = predictor.model(torch.flip(x, dims) if dims else x).logits
            expected += torch.softmax(torch.flip(logits, dims) if dims else logits, dim=1)
    expected = (expected / 4).numpy().swapaxes(0, 1)  # (K, Z, Y, X)
    assert np.allclose(mirrored.probabilities.array, expected, atol=1e-5)
    assert not np.allclose(plain.probabilities.array, expected, atol=1e-3)
    assert np.array_equal(mirrored.labels.array, expected.argmax(axis=0))


def test_mirroring_flips_only_the_axes_training_flipped(shared_data: Path) -> None:
    """The shipped 3D hippocampus model on a real crop: its training never flipped the first axis
    (anterior-posterior here), so test-time mirroring flips only the other two (4 passes). Flipping
    all three swapped the two labels: Dice 0.06 against 0.88 plain on the validation patients."""
    from cascadeseg.inference.checkpoint import load_checkpoint, resolve_checkpoint
    from cascadeseg.io import load_labels
    from cascadeseg.metrics import case_mean_dice

    model, card = load_checkpoint(resolve_checkpoint("hippocampus_unet_plus_plus_3d"), device=None)
    assert card.dims == 3 and card.test_time_mirror_axes == (1, 2)
    predictor = Predictor(model, card, device="cpu")
    flips: list[tuple[int, ...]] = []
    real_flip = torch.flip

    def counting_flip(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        flips.append(tuple(dims))
        return real_flip(x, dims)

    case = "hippocampus_001"
    scan = load_volume(shared_data / f"hippocampus/imagesTr/{case}_0000.nii.gz")
    truth = load_labels(shared_data / f"hippocampus/labelsTr/{case}.nii.gz").array
    plain = predictor.predict(scan, depth=4, want=PredictionRequest(mirror=False)).labels.array
    torch.flip = counting_flip  # type: ignore[assignment]
    try:
        mirrored = predictor.predict(scan, depth=4, want=PredictionRequest(mirror=True)).labels.array
    finally:
        torch.flip = real_flip  # type: ignore[assignment]
    assert flips and set(flips) <= {(3,), (4,), (3, 4)}  # (B, C, Z, Y, X): never the first axis
    plain_dice, mirrored_dice = case_mean_dice(plain, truth, [1, 2]), case_mean_dice(mirrored, truth, [1, 2])
    assert plain_dice > 0.8 and mirrored_dice > plain_dice - 0.02


def test_the_card_decides_mirroring_unless_asked(lgg: Volume) -> None:
    """``mirror=None`` follows the card's ``test_time_mirroring``; a card trained without flips
    mirrors nothing (and a mirror axis outside the network's dimensions is refused)."""
    from cascadeseg.errors import CheckpointError
    from cascadeseg.inference.checkpoint import ModelCard

    block = crop(lgg, slice(10, 12), slice(64, 192), slice(64, 192))
    model, card = tiny("unet", 2, [("FLAIR", ZSCORE)], [0, 1], test_time_mirroring=True)
    by_card = Predictor(model, card, device="cpu").predict(block, want=PredictionRequest(probabilities=True))
    asked = Predictor(model, card, device="cpu").predict(block, want=PredictionRequest(probabilities=True, mirror=True))
    plain = Predictor(model, card, device="cpu").predict(block, want=PredictionRequest(probabilities=True, mirror=False))
    assert np.array_equal(by_card.probabilities.array, asked.probabilities.array)
    assert not np.allclose(by_card.probabilities.array, plain.probabilities.array, atol=1e-3)
    model, unflipped = tiny("unet", 2, [("FLAIR", ZSCORE)], [0, 1], mirror_axes=[])
    mirrored = Predictor(model, unflipped, device="cpu").predict(block, want=PredictionRequest(probabilities=True, mirror=True))
    plain = Predictor(model, unflipped, device="cpu").predict(block, want=PredictionRequest(probabilities=True))
    assert np.allclose(mirrored.probabilities.array, plain.probabilities.array, atol=1e-6)
    legacy = {**unflipped.to_dict(), "mirror_axes": None, "training": {"augmentation": {"flip": False}}}
    assert ModelCard.from_dict(legacy).test_time_mirror_axes == ()
    assert ModelCard.from_dict({**legacy, "training": {}}).test_time_mirror_axes == (0, 1)
    with pytest.raises(CheckpointError, match="mirror_axes"):
        ModelCard.from_dict({**legacy, "mirror_axes": [2]})


def test_inference_folds_batch_norm_and_leaves_the_callers_model_trainable(shared_data: Path) -> None:
    """The shipped ANU-Net on real slices: the predictor's copy has no batch norm left and gives
    the same logits (float rounding); the model handed in keeps its batch norms."""
    from cascadeseg.inference.batchnorm_folding import fold_batch_norms
    from cascadeseg.inference.checkpoint import load_checkpoint, resolve_checkpoint
    from cascadeseg.inference.predictor import _preprocess_channel

    model, card = load_checkpoint(resolve_checkpoint("lgg_flair_anu_net_2d"), device=None)
    norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    predictor = Predictor(model, card, device="cpu")
    assert norms > 0 and predictor.folded_batch_norms == norms
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in predictor.model.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == norms
    scan = load_volume(shared_data / "lgg-flair/imagesTr/TCGA_DU_6404_19850629_0000.nii.gz")
    x = torch.from_numpy(_preprocess_channel(scan.array[0, 20:24], ZSCORE))[:, None]
    x = torch.nn.functional.interpolate(x, size=(128, 128), mode="bilinear", align_corners=False)
    with torch.inference_mode():
        reference = model.eval()(x, depth=4).logits
        folded = predictor.model(x.contiguous(memory_format=torch.channels_last), depth=4).logits
        again, count = fold_batch_norms(predictor.model)
    assert count == 0  # nothing left to fold
    assert torch.allclose(reference, folded, atol=1e-4)
    assert (reference.argmax(1) == folded.argmax(1)).float().mean() > 0.9999


def test_folding_reaches_a_norm_that_opens_the_next_sequence(shared_data: Path) -> None:
    """MONAI's BasicUNet (the benchmark's peer) keeps each norm first in an ADN sequence after its
    conv: all of them fold, a norm after an activation does not, and real slices give the same
    logits."""
    from monai.networks.nets import BasicUNet

    from cascadeseg.inference.batchnorm_folding import fold_batch_norms
    from cascadeseg.inference.predictor import _preprocess_channel

    torch.manual_seed(0)
    net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=(4, 8, 16, 32, 64, 4), norm=("batch", {}))
    scan = load_volume(shared_data / "lgg-flair/imagesTr/TCGA_DU_6404_19850629_0000.nii.gz")
    x = torch.from_numpy(_preprocess_channel(scan.array[0, 18:26], ZSCORE))[:, None]
    x = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    with torch.no_grad():
        net.train()(x)  # running statistics that are not the identity
    net.eval()
    norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    folded, count = fold_batch_norms(net)
    assert norms == 18 and count == norms
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-4)
    act_then_norm = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Sequential(torch.nn.ReLU(), torch.nn.BatchNorm2d(4)))
    assert fold_batch_norms(act_then_norm.eval())[1] == 0


@pytest.mark.parametrize("spatial, patch, overlap", [
    ((112, 101, 122), (64, 64, 64), 0.5), ((36, 50, 35), (40, 56, 40), 0.5), ((155, 240, 240), (128, 128, 128), 0.25),
    ((20, 256, 256), (8, 48, 48), 0.25), ((33, 97, 65), (16, 32, 32), 0.7), ((64, 64, 64), (64, 64, 64), 0.5),
])
def test_count_windows_is_monais_number_of_windows(spatial, patch, overlap) -> None:
    """The progress bar's total is exactly the number of windows MONAI's sliding window visits."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    padded = tuple(max(s, p) for s, p in zip(spatial, patch))
    interval = _get_scan_interval(padded, patch, 3, (overlap,) * 3)
    assert count_windows(spatial, patch, overlap) == len(dense_patch_slices(padded, patch, interval))


def test_wrong_input_gets_a_warning_before_running(shared_data: Path) -> None:
    """The shipped FLAIR model warns (before running) for the real abdomen CT, the real T1
    post-contrast DICOM series and a coronal slicing axis, and says nothing for an LGG FLAIR scan."""
    from cascadeseg.io import load_volume

    predictor = Predictor.from_checkpoint("lgg_flair_anu_net_2d", device="cpu")
    flair = load_volume(shared_data / "lgg-flair" / "imagesTr" / "TCGA_DU_6404_19850629_0000.nii.gz")
    assert predictor.input_warnings(flair) == []
    ct = load_volume(shared_data / "totalseg" / "example_ct.nii.gz")
    (warning,) = predictor.input_warnings(ct)
    assert "looks like CT values" in warning and "trained on MR" in warning and "example_ct" in warning
    t1c = load_volume(shared_data / "dicom" / "PGBM-001_19920402" / "T1post")
    (warning,) = predictor.input_warnings(t1c)
    assert "named 'T1post'" in warning and "expects 'FLAIR'" in warning
    (warning,) = predictor.input_warnings(flair, axis=1)
    assert "axial (z) slices" in warning and "coronal (y)" in warning and "use axis 0" in warning
    # predict() returns them with its result too.
    small = flair.with_array(flair.array[:, 20:22].copy())
    assert predictor.predict(small, axis=1).warnings and not predictor.predict(small).warnings


def test_every_depth_of_one_mirrored_pass_is_that_depth_run_alone(shared_data: Path) -> None:
    """The Compare view takes every depth's map from one pass of the full network
    (``PredictionRequest(depths=True)``). With the card's test-time mirroring (the shipped 3D
    hippocampus model mirrors), each head is mirrored too, so every map is what the predictor gives
    at that depth alone, really pruned; on this crop mirroring changes the masks, so a head left
    unmirrored would show."""
    from cascadeseg.inference.checkpoint import load_checkpoint, resolve_checkpoint

    model, card = load_checkpoint(resolve_checkpoint("hippocampus_unet_plus_plus_3d"), device=None)
    assert card.test_time_mirroring
    predictor = Predictor(model, card, device="cpu")
    scan = load_volume(shared_data / "hippocampus/imagesTr/hippocampus_001_0000.nii.gz")
    every = predictor.predict(scan, depth=4, want=PredictionRequest(depths=True)).depth_labels
    mirroring_mattered = 0
    for depth in (1, 2, 3, 4):
        alone = predictor.predict(scan, depth=depth).labels.array
        plain = predictor.predict(scan, depth=depth, want=PredictionRequest(mirror=False)).labels.array
        assert np.count_nonzero(every[depth].array != alone) <= 2, depth
        mirroring_mattered += int(np.count_nonzero(alone != plain) > 10)
    assert mirroring_mattered >= 2
