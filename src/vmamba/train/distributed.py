"""Distributed helpers for torchrun (DistributedDataParallel): set-up, rank queries, reductions.

Without torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) everything degrades to a single
process; nothing here needs a GPU (the gloo backend runs on CPU).
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed(device: str = "auto") -> torch.device:
    """Join the torchrun process group if launched by torchrun; return this process's device."""
    want_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if want_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if want_cuda else "gloo")
    if want_cuda:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu" if device == "auto" else device)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this is rank 0, the only process that prints and writes files."""
    return rank() == 0


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (a no-op in a single process)."""
    if is_distributed():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()
