"""DDP under ``torchrun``: joining the process group, averaging scalars over ranks, leaving it."""

from __future__ import annotations

import gc
import os

import torch
import torch.distributed as dist

__all__ = ["all_mean", "leave_distributed", "setup_distributed"]


def setup_distributed(device: str | None) -> tuple[int, int, torch.device]:
    """Join the ``torchrun`` process group (NCCL on CUDA, gloo on CPU); return (rank, world, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device_obj = torch.device(device)
    if device_obj.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} asked for CUDA, but CUDA is not available; use --device cpu")
    if world == 1:
        return 0, 1, device_obj
    if device_obj.type == "cuda":
        device_obj = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device_obj)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_obj.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device_obj


def all_mean(value: float, world: int) -> float:
    """Mean of a per-rank scalar over all ranks."""
    if world == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor.item()) / world


def leave_distributed(world: int) -> None:
    """Free the engines' DDP model, then destroy the process group (a no-op for one process).

    The engines hold the DDP model in reference cycles; left to interpreter shutdown, its gloo reducer
    is destroyed with worker threads still joinable and the process aborts ("terminate called without
    an active exception"). So it is freed while the group is alive.
    """
    if world > 1 and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
