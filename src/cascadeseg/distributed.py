"""Processes under ``torchrun``: who am I, and data-parallel training (NCCL on GPUs, Gloo on CPUs).

Rank and world size are read from the environment ``torchrun`` sets (:func:`rank_info`), without
initialising ``torch.distributed``: inference needs no process group, each rank takes its share of
the cases (:func:`shard`, round robin over the sorted list) and writes its own outputs.

Training runs the same code with one process or N (:func:`init_distributed` and the helpers below
hide the difference). Rank 0 alone writes the run folder and validates; the other ranks wait at a
barrier. Decisions that must be the same on every rank (stop for time, for cancellation, or at the
end of the data) are made with an all-reduce, so no rank is left waiting on a collective the
others skipped.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from .errors import CascadeSegError

T = TypeVar("T")


@dataclass(frozen=True)
class RankInfo:
    """This process's place among ``torchrun``'s workers (rank 0 of 1 when run plainly)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def rank_info() -> RankInfo:
    """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (unset: a single process)."""
    try:
        rank = int(os.environ.get("RANK", 0))
        world = int(os.environ.get("WORLD_SIZE", 1))
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError as exc:
        raise CascadeSegError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers (as torchrun sets them): {exc}") from exc
    if world < 1 or not 0 <= rank < world:
        raise CascadeSegError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return RankInfo(rank, world, local)


def shard(items: Sequence[T], info: RankInfo | None = None) -> list[T]:
    """This rank's share of ``items``: every ``world_size``-th item starting at ``rank``."""
    info = info or rank_info()
    return list(items[info.rank :: info.world_size])


@dataclass(frozen=True)
class DistContext(RankInfo):
    """A :class:`RankInfo` for training, plus whether this process initialised the process group
    (and so must destroy it)."""

    owns_group: bool = False


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group ``torchrun`` describes in the environment (no-op for one process)."""
    info = rank_info()
    if not info.is_distributed:
        return DistContext()
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # Validation on rank 0 can take minutes on a CPU while the others wait: a generous timeout.
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=60))
        owns = True
    return DistContext(
        rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=info.local_rank, owns_group=owns
    )


def wrap_model(model: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` when distributed (gradients averaged across
    ranks in backward; buffers such as batch-norm statistics broadcast from rank 0 each step)."""
    if not ctx.is_distributed:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_max(values: list[float], ctx: DistContext, device: torch.device) -> list[float]:
    """The element-wise maximum of ``values`` over all ranks (the same list on every rank).

    Used each step for the stop flags and the elapsed time: a time-based learning-rate schedule
    must see the same clock on every rank, or the ranks' weights would drift apart."""
    if not ctx.is_distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def barrier(ctx: DistContext) -> None:
    if ctx.is_distributed:
        dist.barrier()


def sync_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's buffers (batch-norm running statistics) to every rank.

    DDP broadcasts buffers only at the start of each forward, so after the last step every rank
    holds its own statistics; parameters need no copy (same averaged gradients, same optimiser:
    :func:`check_parameters_agree` verifies that instead of hiding a divergence)."""
    if not ctx.is_distributed:
        return
    with torch.no_grad():
        for tensor in model.buffers():
            dist.broadcast(tensor.data, src=0)


def check_parameters_agree(model: nn.Module, ctx: DistContext, device: torch.device) -> None:
    """Raise if the ranks' parameters differ (a broken sampler or optimiser would show here)."""
    if not ctx.is_distributed:
        return
    with torch.no_grad():
        checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).to(device)
        low, high = checksum.clone(), checksum.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if not torch.equal(low, high):
        raise RuntimeError("DDP ranks ended with different parameters: gradients were not synchronised")


def shutdown(ctx: DistContext, *, completed: bool = True) -> None:
    """Leave the process group this process joined. After a completed run the ranks first meet at
    a barrier: a rank that tore its Gloo connections down while rank 0 was still writing the run's
    result made rank 0 abort at exit ("terminate called without an active exception", seen once
    in CI). After a failure there is no barrier (the other ranks may never arrive)."""
    if ctx.owns_group and dist.is_initialized():
        if completed:
            dist.barrier()
        dist.destroy_process_group()
