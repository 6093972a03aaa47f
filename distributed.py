"""Process groups and model wrapping shared by train.py, sft.py and eval.py (raw PyTorch, no Trainer).

    torchrun --nproc_per_node 2 train.py      # gloo on CPU, nccl on GPU; one process needs no torchrun

Conventions (DESIGN.md "Distributed"): `init_distributed()` is a no-op for one process; rank r seeds its
RNGs with seed + r; rank 0 alone writes logs and checkpoints.
"""
from __future__ import annotations

import contextlib
import gc
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


BLOCKS = ("Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock")   # the units sharded (and checkpointed) one by one


def resolve_mode(mode: str, d: Dist) -> str:
    """--dist value to the mode used: "auto" is fsdp on CUDA and ddp on CPU. Raises ValueError if unknown."""
    if mode not in ("auto", "fsdp", "ddp", "none"):
        raise ValueError(f"unknown --dist mode {mode!r}; expected auto, fsdp, ddp or none")
    if mode == "auto":
        return "fsdp" if d.device.type == "cuda" else "ddp"
    return mode


def enable_activation_checkpointing(module: torch.nn.Module) -> None:
    """Recompute every decoder layer and vision block in backward (non-reentrant torch.utils.checkpoint).

    Both block classes are transformers `GradientCheckpointingLayer`s, so HF's switch works even though
    `model.PolicyLogprobs` calls `hf.model.language_model` and `hf.model.visual` directly; parameter names
    are unchanged (no wrapper module), so checkpoints and HF export are unaffected. Under FSDP2 the
    recomputation runs inside the block's own hooks (its all-gather happens in the pre-backward hook)."""
    hf = unwrap(module).hf
    if hasattr(hf, "activation_checkpointing_enable"):     # transformers >= 5.x name
        hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def wrap(module: torch.nn.Module, d: Dist, mode: str = "ddp", activation_checkpointing: bool = False,
         param_dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Wrap the log-prob module (a module with an `.hf` Qwen2.5-VL) for data parallelism.

    mode: "ddp" (default; DistributedDataParallel), "fsdp" (FSDP2 `fully_shard` on every
    Qwen2_5_VLDecoderLayer and Qwen2_5_VLVisionBlock, then on the root `module`, torchtitan style), "auto"
    (fsdp on CUDA, ddp on CPU) or "none". With one process the module is returned unwrapped (single-process
    FSDP would only add overhead). A module without trainable parameters (the frozen reference) under "ddp"
    is returned unwrapped too (DDP refuses it; its forward needs no communication).
    activation_checkpointing: recompute blocks in backward (applied before sharding).
    param_dtype: FSDP mixed precision; default bf16 compute with fp32 gradient reduction on CUDA, fp32 on CPU.
    FSDP wants fp32 parameters loaded (the sharded master copy AdamW updates) and casts each all-gather to
    `param_dtype`. Raises ValueError for an unknown mode.
    """
    mode = resolve_mode(mode, d)
    if activation_checkpointing:
        enable_activation_checkpointing(module)
    if d.world == 1 or mode == "none":
        return module
    if mode == "ddp":
        if not any(p.requires_grad for p in module.parameters()):
            return module
        return DDP(module, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    if param_dtype is None:
        param_dtype = torch.bfloat16 if d.device.type == "cuda" else torch.float32
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    mesh = init_device_mesh(d.device.type, (d.world,))
    for block in [m for m in module.modules() if type(m).__name__ in BLOCKS]:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(module, mesh=mesh, mp_policy=mp)
    # Average gradients over ranks explicitly: FSDP2's default divide factor has been wrong on gloo in some
    # releases (PyTorch issue #162338: gradients summed). torch 2.13's default already averages on gloo; the
    # explicit factor keeps it so elsewhere. tests/test_distributed.py compares magnitudes with 1 process.
    module.set_gradient_divide_factor(float(d.world))
    return module


def is_fsdp(module: torch.nn.Module) -> bool:
    """True when `module` was sharded by FSDP2 `fully_shard`."""
    from torch.distributed.fsdp import FSDPModule
    return isinstance(module, FSDPModule)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside a DDP wrapper (FSDP2 shards in place, so an FSDP module is its own inner module)."""
    return module.module if isinstance(module, DDP) else module


@contextlib.contextmanager
def full_weights(module: torch.nn.Module):
    """Context in which `unwrap(module).hf` holds full weights for generation (reference §1 step 5).

    DDP / one process: every rank already holds them; a no-op. FSDP2: every sharded unit is all-gathered ONCE
    on entry (in `param_dtype`) and kept gathered for the whole phase (reshard-after-forward off), so the
    many small forwards of autoregressive decoding issue no collectives at all; ranks may therefore run
    different numbers of forwards (different completion lengths, image vs video prompts) without deadlock.
    On exit the units are resharded and their reshard-after-forward setting restored. Costs one full copy
    of the weights in `param_dtype` per GPU for the phase (plan.py counts it).
    """
    if not is_fsdp(module):
        yield unwrap(module).hf
        return
    from torch.distributed.fsdp import FSDPModule
    module._get_fsdp_state()._lazy_init()   # make `module` the FSDP root before any block runs a forward alone
    units = [m for m in module.modules() if isinstance(m, FSDPModule)]
    saved = [[g.post_forward_mesh_info for g in m._get_fsdp_state()._fsdp_param_groups] for m in units]
    try:
        for m in units:
            m.unshard()
            m.set_reshard_after_forward(False, recurse=False)
        yield module.hf
    finally:
        for m, infos in zip(units, saved):
            for g, info in zip(m._get_fsdp_state()._fsdp_param_groups, infos):
                g.post_forward_mesh_info = info
            m.reshard()


def no_sync(module: torch.nn.Module, skip: bool):
    """Skip the gradient all-reduce / reduce-scatter for a micro-batch that is not the last of the step:
    DDP's no_sync(), FSDP2's set_requires_gradient_sync(False); a null context otherwise."""
    if skip and isinstance(module, DDP):
        return module.no_sync()
    if skip and is_fsdp(module):
        return _fsdp_no_sync(module)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(module):
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def clip_grad_norm(module: torch.nn.Module, max_norm: float) -> float:
    """Clip the gradients of `module`'s parameters to total norm `max_norm`; returns the norm before clipping
    as a float (the same on every rank). Works with FSDP2's DTensor gradients (the norm is reduced over ranks)."""
    norm = torch.nn.utils.clip_grad_norm_([p for p in module.parameters() if p.grad is not None], max_norm)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


def full_state_dict(module: torch.nn.Module) -> dict:
    """The full, gathered `hf` state dict (keys as `hf.state_dict()`) on CPU on rank 0; {} on other ranks.
    Collective under FSDP (every rank must call it). Uses torch.distributed.checkpoint.state_dict with
    full_state_dict=True, cpu_offload=True, so no GPU holds the whole model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    inner = unwrap(module)
    if not is_fsdp(inner):
        if dist.is_initialized() and dist.get_rank() != 0:
            return {}
        return {k: v.detach().cpu() for k, v in inner.hf.state_dict().items()}
    sd = get_model_state_dict(inner, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k[len("hf."):]: v for k, v in sd.items() if k.startswith("hf.")}


def cleanup(d: Dist) -> None:
    """Wait for every rank, then destroy the process group if one was started.

    Drop every DDP/FSDP-wrapped module first (`del`): a DDP reducer freed after the group is destroyed joins a
    gloo worker thread in its destructor, which was seen to hang the process at exit."""
    if d.world > 1 and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
