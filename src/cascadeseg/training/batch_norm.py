"""Batch-norm statistics measured again on clean samples (``batch_norm_statistics = "clean"``).

A network with batch norm predicts with running averages of its layers' means and variances,
which training updates with momentum 0.1: they describe the last ~10 training batches, and those
batches were augmented (gamma, contrast, noise, bias field...), which inference never sees. On
one 5-minute LGG run the final weights validated 0.531 with those statistics and 0.700 once they
were measured again on clean training crops; on twelve more LGG runs (six of 5 minutes, six of 20)
scored on 48 held-out patients each, measuring them again changed nothing measurable, so the
planner keeps the moving averages and this is an option (docs/one_click_training.md, "Batch-norm
statistics"; ``benchmarks/batch_norm_statistics.py``).
:func:`reestimate_batch_norm` measures them: the average over a fixed number of clean samples,
with every weight unchanged (torch's ``swa_utils.update_bn`` does the same for averaged weights;
it takes a loader, this takes the batches the trainer draws)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

# Voxels of clean samples the statistics are measured on: 800 crops of 96 x 96 (on the 5-minute
# LGG run above 50 batches of 8 crops gave 0.695 and 200 batches 0.700: the estimate is stable
# well before the count matters). 3D patches hold more voxels each and need fewer samples.
REESTIMATION_VOXELS = 800 * 96 * 96


def batch_norm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The model's batch-norm layers that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def reestimation_samples(patch: Sequence[int], batch_size: int) -> int:
    """Samples to measure on: :data:`REESTIMATION_VOXELS` in patches of ``patch``, in whole
    batches, at least two batches."""
    per_sample = max(1, math.prod(int(p) for p in patch))
    batches = max(2, math.ceil(REESTIMATION_VOXELS / per_sample / max(1, batch_size)))
    return batches * max(1, batch_size)


def reestimate_batch_norm(
    model: nn.Module, batches: Iterable[torch.Tensor], forward: Callable[[torch.Tensor], object]
) -> int:
    """Replace every batch-norm layer's running mean and variance with their plain average over
    ``batches`` (each passed to ``forward``, which runs ``model`` in training mode, gradients off);
    the weights and the layers' momentum are left as they were. Returns the batches seen; a model
    without batch norm is left untouched (0)."""
    layers = batch_norm_layers(model)
    if not layers:
        return 0
    momenta = [m.momentum for m in layers]
    was_training = model.training
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in layers]
    seen = 0
    try:
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches, not a moving one
        model.train()
        with torch.no_grad():
            for images in batches:
                forward(images)
                seen += 1
    except BaseException:
        seen = 0  # a Cancel or a failure mid-way: not a partial average
        raise
    finally:
        for m, momentum, state in zip(layers, momenta, saved):
            m.momentum = momentum
            if seen == 0:  # the statistics the weights had
                m.load_state_dict(state)
        model.train(was_training)
    return seen


__all__ = ["REESTIMATION_VOXELS", "batch_norm_layers", "reestimate_batch_norm", "reestimation_samples"]
