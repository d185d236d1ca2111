"""Rank and world size under ``torchrun``, read from the environment it sets.

Inference needs no process group: each rank takes its share of the cases (round robin over the
sorted list, so every rank gets a similar count) and writes its own outputs. The helpers only read
``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``; they never initialise ``torch.distributed``, so they
are also safe for the training command to call before it sets up DDP.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence, TypeVar

from ..errors import CascadeSegError

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
