"""Many processes (``torchrun``): one rank per device, each a disjoint shard of the inputs.

Launched by torchrun (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT in the environment),
``from_environment`` joins the process group: NCCL when every rank has a GPU, gloo otherwise.
Alone (no WORLD_SIZE, or 1) nothing is initialised and every method is the identity.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def shard(self, items: Sequence[T]) -> list[T]:
        """Every ``world``-th item from ``rank``: disjoint, together complete, deterministic
        for a sorted input list, and balanced within one item."""
        return list(items)[self.rank :: self.world]

    def device_for(self, device: str) -> str:
        """Each rank on its own GPU (cuda:LOCAL_RANK) when asked for auto or cuda."""
        import torch

        if self.active and device in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return device

    def all_reduce_sum(self, array: np.ndarray) -> np.ndarray:
        """Elementwise sum over ranks (exact for integer counts)."""
        if not self.active:
            return array
        import torch
        import torch.distributed as dist

        t = torch.from_numpy(np.ascontiguousarray(array)).to(_collective_device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().numpy()

    def all_gather(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def _collective_device():
    import torch
    import torch.distributed as dist

    return (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )


_CURRENT: Dist | None = None


def from_environment() -> Dist:
    """The Dist of this process; joins the process group on first call under torchrun."""
    global _CURRENT
    if _CURRENT is not None:
        return _CURRENT
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        _CURRENT = Dist()
        return _CURRENT
    import torch
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_nccl = torch.cuda.is_available() and torch.cuda.device_count() > local_rank
    if use_nccl:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if use_nccl else "gloo", timeout=datetime.timedelta(minutes=30)
        )
    _CURRENT = Dist(rank, world, local_rank)
    return _CURRENT


def shutdown() -> None:
    """Leave the process group (end of a command)."""
    global _CURRENT
    if _CURRENT is not None and _CURRENT.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    _CURRENT = None
