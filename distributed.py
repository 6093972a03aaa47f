"""Process groups and model wrapping shared by train.py, sft.py and eval.py (raw PyTorch, no Trainer).

    torchrun --nproc_per_node 2 train.py      # gloo on CPU, nccl on GPU; one process needs no torchrun

Conventions (DESIGN.md "Distributed"): `init_distributed()` is a no-op for one process; rank r seeds its
RNGs with seed + r; rank 0 alone writes logs and checkpoints.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP


@dataclass
class Dist:
    """This process's place: rank, world size, local rank, and its torch device."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> Dist:
    """Start the process group when launched by torchrun (WORLD_SIZE > 1): nccl on CUDA, gloo on CPU.

    device: "auto" (cuda:LOCAL_RANK when CUDA is available, else cpu), "cpu" or "cuda".
    Returns a `Dist`. Raises ValueError for an unknown device string.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None)
    return Dist(rank, world, local, dev)


def barrier(d: Dist) -> None:
    """Wait for every rank (no-op for one process)."""
    if d.world > 1:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum a tensor over ranks (returns the input unchanged for one process). Any shape, float or int."""
    if d.world > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj, d: Dist):
    """Rank 0's Python object on every rank."""
    if d.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap(module: torch.nn.Module, d: Dist, mode: str = "ddp") -> torch.nn.Module:
    """Wrap the log-prob module for data parallelism. mode: "ddp" (default, also the only mode needed for a
    single process: it is then returned unwrapped) or "none". Raises ValueError for an unknown mode."""
    if mode not in ("ddp", "none"):
        raise ValueError(f"unknown --dist mode {mode!r}; expected ddp or none")
    if d.world == 1 or mode == "none":
        return module
    return DDP(module, device_ids=[d.device.index] if d.device.type == "cuda" else None)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside a DDP wrapper (or the module itself)."""
    return module.module if isinstance(module, DDP) else module


@contextlib.contextmanager
def full_weights(module: torch.nn.Module):
    """Context in which `unwrap(module).hf` holds full weights for generation. With DDP every rank already
    holds them, so this is a no-op; it exists so that rollout code reads the same under every wrapper."""
    yield unwrap(module).hf


def no_sync(module: torch.nn.Module, skip: bool):
    """DDP's no_sync() when `skip` (a micro-batch that is not the last of the step), else a null context."""
    if skip and isinstance(module, DDP):
        return module.no_sync()
    return contextlib.nullcontext()


def cleanup(d: Dist) -> None:
    """Destroy the process group if one was started."""
    if d.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
