"""Batch-norm statistics measured again on clean samples (``cascadeseg.training.batch_norm``), on
real LGG FLAIR slices: the running statistics become the plain average over the batches, the
weights, momentum and training mode stay as they were, and a Cancel mid-way leaves the statistics
the weights had."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cascadeseg.errors import CancelledError
from cascadeseg.io import load_volume
from cascadeseg.training.batch_norm import REESTIMATION_VOXELS, reestimate_batch_norm, reestimation_samples


@pytest.fixture(scope="module")
def flair_batches(shared_data: Path) -> list[torch.Tensor]:
    """Two batches of four real FLAIR slices (64 x 64 crops of the middle slices), z-scored."""
    image = load_volume(shared_data / "lgg-flair" / "imagesTr" / "TCGA_CS_4941_19960909_0000.nii.gz").array
    image = np.asarray(image, dtype=np.float32)[0]
    middle = image.shape[0] // 2
    slices = image[middle - 4 : middle + 4, 96:160, 96:160]
    slices = (slices - slices.mean()) / slices.std()
    tensor = torch.from_numpy(np.ascontiguousarray(slices))[:, None]
    return [tensor[:4], tensor[4:]]


def small_network() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1))


def test_the_statistics_become_the_plain_average_over_the_batches(flair_batches) -> None:
    model = small_network()
    model.train()
    for _ in range(5):  # moving averages of some other data, as training leaves them
        model(3.0 * flair_batches[0] + 1.0)
    norm = model[1]
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    model.eval()
    seen = reestimate_batch_norm(model, iter(flair_batches), lambda x: model(x))
    assert seen == 2
    with torch.no_grad():
        features = [model[0](x) for x in flair_batches]
    # torch's cumulative average: the batch means averaged, the unbiased batch variances averaged.
    expected_mean = torch.stack([f.mean(dim=(0, 2, 3)) for f in features]).mean(0)
    expected_var = torch.stack([f.transpose(0, 1).reshape(3, -1).var(dim=1, unbiased=True) for f in features]).mean(0)
    torch.testing.assert_close(norm.running_mean, expected_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(norm.running_var, expected_var, rtol=1e-5, atol=1e-6)
    assert int(norm.num_batches_tracked) == 2
    assert norm.momentum == 0.1 and not model.training  # left as they were
    for k, v in weights.items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)


def test_a_cancel_mid_way_leaves_the_statistics_the_weights_had(flair_batches) -> None:
    model = small_network()
    model.train()
    model(flair_batches[0])
    before = {k: v.clone() for k, v in model[1].state_dict().items()}

    def cancelled_after_one():
        yield flair_batches[0]
        raise CancelledError("cancelled")

    with pytest.raises(CancelledError):
        reestimate_batch_norm(model, cancelled_after_one(), lambda x: model(x))
    for k, v in model[1].state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert model[1].momentum == 0.1 and model.training


def test_a_network_without_batch_norm_is_left_alone(flair_batches) -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.InstanceNorm2d(2, track_running_stats=False))
    calls = []
    assert reestimate_batch_norm(model, iter(flair_batches), lambda x: calls.append(x)) == 0
    assert calls == []  # not even a forward pass


def test_the_sample_count_follows_the_voxels_of_a_patch() -> None:
    # 2D crops of 96 x 96 in batches of 8: 100 batches; a 3D hippocampus patch (48 x 64 x 48)
    # holds 16x the voxels of such a crop: 50 patches in batches of 2.
    assert reestimation_samples([96, 96], 8) == 800 == REESTIMATION_VOXELS // (96 * 96)
    assert reestimation_samples([48, 64, 48], 2) == 50
    assert reestimation_samples([512, 512, 512], 2) == 4  # never fewer than two batches
