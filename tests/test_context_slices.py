"""2.5D networks (``context_slices``): what training feeds them is what the predictor feeds them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cascadeseg.errors import CheckpointError, ModelConfigError
from cascadeseg.inference.checkpoint import ModelCard, save_checkpoint
from cascadeseg.inference.predictor import PAD_VALUE, PredictionRequest, Predictor, prepare_scan, slices_with_context
from cascadeseg.io import load_labels, load_volume
from cascadeseg.models import create_model
from cascadeseg.training.augmentation import augment_batch
from cascadeseg.training.config import AugmentationConfig, TrainConfig
from cascadeseg.training.datasets import TrainingCase
from cascadeseg.training.sampling import PatchDataset
from cascadeseg.training.transfer import load_for_data

LGG_CASE = "TCGA_DU_6404_19850629"
ZSCORE = {"type": "mri_zscore", "percentiles": [0.5, 99.5]}


@pytest.fixture(scope="module")
def lgg_scan(shared_data: Path):
    root = shared_data / "lgg-flair"
    image = load_volume(root / "imagesTr" / f"{LGG_CASE}_0000.nii.gz")
    labels = load_labels(root / "labelsTr" / f"{LGG_CASE}.nii.gz", reference=image).array.astype(np.uint8)
    return image, prepare_scan(image, [ZSCORE], None, 0), labels


def test_context_stack_is_the_slice_and_its_neighbours_padded_beyond_the_volume(lgg_scan) -> None:
    _, scan, _ = lgg_scan
    planes = scan.image  # (1, Z, 256, 256), axis 0
    n = planes.shape[1]
    x = slices_with_context(planes, 0, 3, 2)
    assert x.shape == (3, 5, 256, 256)
    # slice 0: two pad slices before it, then slices 0, 1, 2
    assert np.all(x[0, :2] == PAD_VALUE)
    assert np.array_equal(x[0, 2:], planes[0, 0:3])
    assert np.array_equal(x[2], planes[0, 0:5])
    last = slices_with_context(planes, n - 1, n, 1)
    assert np.array_equal(last[0, :2], planes[0, n - 2 :]) and np.all(last[0, 2] == PAD_VALUE)
    assert last.flags.writeable and last.flags.c_contiguous  # torch.from_numpy needs no copy and warns not
    # no context: exactly the old (B, C, H, W) batch
    assert np.array_equal(slices_with_context(planes, 4, 9, 0), planes[:, 4:9].swapaxes(0, 1))


def test_two_channels_stack_channel_major() -> None:
    planes = np.stack([np.full((6, 4, 4), 10.0), np.full((6, 4, 4), 20.0)]).astype(np.float32)
    planes[:, :, 0, 0] += np.arange(6)  # slice index in one pixel
    x = slices_with_context(planes, 2, 4, 1)
    assert x.shape == (2, 6, 4, 4)
    assert list(x[0, :, 0, 0]) == [11, 12, 13, 21, 22, 23]
    assert list(x[1, :, 0, 0]) == [12, 13, 14, 22, 23, 24]


def test_training_sample_is_what_the_predictor_feeds_for_that_slice(lgg_scan) -> None:
    """A whole-slice 2.5D sample of a real LGG case, centred on a lesion voxel, equals the
    predictor's network input for that slice, and its label is the centre slice's."""
    _, scan, labels = lgg_scan
    case = TrainingCase("lgg", scan, labels, labels, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0))
    sampler = PatchDataset([case], 2, 0, (256, 256), 1.0, 8, seed=3, context_slices=2)
    for index in range(8):
        image, label = sampler[index]
        assert image.shape == (5, 256, 256)
        z = [k for k in range(labels.shape[0]) if np.array_equal(labels[k], label.numpy())]
        assert z, "the label is one slice of the case"
        expected = slices_with_context(scan.image, z[0], z[0] + 1, 2)[0]
        assert np.array_equal(image.numpy(), expected)


def test_intensity_augmentation_changes_a_channels_slices_together(lgg_scan) -> None:
    _, scan, _ = lgg_scan
    x = torch.from_numpy(slices_with_context(scan.image, 18, 22, 1))  # (4, 3, H, W): 3 copies of neighbours
    same = x[:, 1:2].repeat(1, 3, 1, 1)  # the centre slice three times: one scan channel
    cfg = AugmentationConfig(
        flip=False, rotate_degrees=0, scale_range=(1, 1), elastic_probability=0, noise_probability=0,
        bias_probability=0, gamma_probability=1.0, contrast_probability=1.0,
    )
    labels = torch.zeros(4, *x.shape[2:], dtype=torch.long)
    out, _ = augment_batch(same, labels, cfg, torch.Generator().manual_seed(0), channel_slices=3)
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])
    per_channel, _ = augment_batch(same, labels, cfg, torch.Generator().manual_seed(0))
    assert not torch.allclose(per_channel[:, 0], per_channel[:, 1])  # without grouping they differ


def _card(context: int, names=("FLAIR",)) -> ModelCard:
    return ModelCard(
        architecture="unet",
        model_options={"in_channels": len(names) * (2 * context + 1), "num_classes": 2, "dims": 2, "base_width": 4, "levels": 3},
        dims=2,
        input_channels=[{"name": n, "preprocessing": ZSCORE} for n in names],
        classes=[{"value": 0, "name": "background"}, {"value": 1, "name": "lesion"}],
        context_slices=context,
    )


def test_card_checks_context_slices() -> None:
    assert _card(2).network_in_channels == 5
    bad = _card(1).to_dict()
    bad["model_options"]["in_channels"] = 1
    with pytest.raises(CheckpointError, match="x 3 slices"):
        ModelCard.from_dict(bad)
    three_d = {**_card(0).to_dict(), "dims": 3, "context_slices": 1}
    three_d["model_options"] = {**three_d["model_options"], "dims": 3, "in_channels": 3}
    with pytest.raises(CheckpointError, match="needs a 2D model"):
        ModelCard.from_dict(three_d)
    with pytest.raises(ModelConfigError, match="context_slices"):
        TrainConfig(data="x", dims=3, context_slices=1).validate()


def test_a_one_slice_checkpoint_becomes_2_5d_computing_what_it_did(tmp_path: Path, lgg_scan) -> None:
    """Fine-tuning a one-slice model as 2.5D: its weights go to the centre slice, zeros to the
    neighbours, so on a real scan it predicts exactly what it did before any training."""
    image, _, _ = lgg_scan
    torch.manual_seed(0)
    model = create_model("unet", in_channels=1, num_classes=2, dims=2, base_width=4, levels=3)
    folder = save_checkpoint(model, _card(0), tmp_path / "one_slice")
    adapted, card, mapping = load_for_data(str(folder), 1, ["FLAIR"], context_slices=2)
    assert mapping == [0] and card.context_slices == 0
    want = PredictionRequest(probabilities=True)
    plain = Predictor(model.eval(), _card(0), device="cpu").predict(image, want=want)
    wide = Predictor(adapted.eval(), _card(2), device="cpu").predict(image, want=want)
    assert plain.probabilities is not None and wide.probabilities is not None
    assert np.allclose(plain.probabilities.array, wide.probabilities.array, atol=1e-5)
    two_slice = save_checkpoint(adapted, _card(2), tmp_path / "five_slices")
    with pytest.raises(CheckpointError, match="same context_slices"):
        load_for_data(str(two_slice), 1, ["FLAIR"], context_slices=1)
