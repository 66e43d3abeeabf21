"""Data-parallel training helpers: process group set-up from torchrun's environment, reductions, device choice."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

__all__ = ["DistInfo", "all_reduce_mean", "init_distributed", "pick_device", "shutdown_distributed",
           "wrap_data_parallel"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a (possibly single-process) run.

    Attributes
    ----------
    rank, world_size
        Global rank and number of processes (0 and 1 without torchrun).
    device
        The device this process trains on.
    owns_group
        Whether ``init_distributed`` created the process group (and ``shutdown_distributed`` should end it).
    """

    rank: int
    world_size: int
    device: torch.device
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes logs and checkpoints."""
        return self.rank == 0


def pick_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cpu``; ``cuda`` (ValueError if not available)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {name!r}")
    return torch.device(name)


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group that torchrun describes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_*``).

    Without those variables (or with ``WORLD_SIZE=1``) this is a single process and nothing is initialised.
    The backend is NCCL on CUDA (one GPU per local rank) and Gloo on CPU.

    Parameters
    ----------
    device
        ``auto``, ``cpu`` or ``cuda``.
    """
    target = pick_device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistInfo(0, 1, target)
    if target.type == "cuda":
        target = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(target)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), target, owns)


def shutdown_distributed(info: DistInfo) -> None:
    """End the process group if ``init_distributed`` started it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of ``values`` over all processes (returned unchanged in a single process)."""
    if info.world_size == 1:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / info.world_size


class _ForwardingDDP(DistributedDataParallel):
    """DDP wrapper that also exposes the wrapped module's attributes (``config``, ``sigma_grid``...).

    Losses such as mrdpm.diffusion.losses.denoising_loss read those attributes and call the module; calling
    through this wrapper keeps DDP's gradient synchronisation.
    """

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def wrap_data_parallel(module: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """``module`` wrapped in DistributedDataParallel in a multi-process run; itself otherwise."""
    if info.world_size == 1:
        return module
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return _ForwardingDDP(module, device_ids=device_ids)
