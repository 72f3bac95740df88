"""Process-group setup for ``torchrun``: gloo on CPU, NCCL on CUDA; a no-op for one process."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist

from vaekit.errors import VaekitError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files."""
        return self.rank == 0

    @property
    def device_ids(self) -> list[int] | None:
        """What DistributedDataParallel wants: the local GPU, or None on CPU."""
        return [self.device.index] if self.device.type == "cuda" else None

    def barrier(self) -> None:
        if self.world_size > 1:
            torch_dist.barrier()


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` means this process's GPU if there is one, else the CPU. A device this machine does not
    have (``cuda`` without a GPU, ``cuda:3`` with two) is a :class:`VaekitError`."""
    asked = name
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise VaekitError(f"unknown device {asked!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise VaekitError(f"device {asked!r}: this PyTorch sees no CUDA GPU; use cpu (or auto)")
        if device.index is not None and device.index >= count:
            raise VaekitError(
                f"device {asked!r}: there are only {count} CUDA GPU(s), cuda:0..cuda:{count - 1}"
            )
    return device


def setup_distributed(device_name: str = "auto") -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if world_size == 1:
        return DistInfo(0, 1, device)
    if not torch_dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch_dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(torch_dist.get_rank(), torch_dist.get_world_size(), device)


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` over all ranks (every rank must call it); ``values`` itself for one process."""
    if not (torch_dist.is_available() and torch_dist.is_initialized()) or torch_dist.get_world_size() == 1:
        return values
    values = values.clone()
    torch_dist.all_reduce(values)
    return values / torch_dist.get_world_size()


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's ``value`` (any picklable object) on every rank (every rank must call it)."""
    if not (torch_dist.is_available() and torch_dist.is_initialized()) or torch_dist.get_world_size() == 1:
        return value
    box = [value]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def cleanup_distributed() -> None:
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
