"""Process group from the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK); a no-op without it."""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from exfacegan.devices import resolve_device

# Rank 0 evaluates while the others wait at a barrier; the default timeout (10 min for NCCL) is too short.
BARRIER_TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def init_processes(device: str = "auto") -> Processes:
    """gloo on CPU, nccl on CUDA (one GPU per local rank) when launched by torchrun; else one process."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    resolved = resolve_device(device, local_rank)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=BARRIER_TIMEOUT)
    return Processes(rank, local_rank, world_size, resolved)


def close_processes() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_mean(value: torch.Tensor, processes: Processes) -> torch.Tensor:
    """Mean over processes of a scalar tensor (itself when single-process)."""
    if not processes.distributed:
        return value
    value = value.detach().clone().to(processes.device)
    dist.all_reduce(value)
    return value / processes.world_size


def same_everywhere(value: object, processes: Processes) -> bool:
    """Whether every process holds an equal `value` (a small picklable object)."""
    if not processes.distributed:
        return True
    values: list[object] = [None] * processes.world_size
    dist.all_gather_object(values, value)
    return all(v == values[0] for v in values)
