"""Process groups, model wrapping, precision and every collective, shared by train.py, sft.py
and eval.py.

    torchrun --nproc_per_node 2 train.py
    # gloo on CPU; gloo (CPU tensors) + nccl (CUDA tensors) on GPU

Conventions: `init_distributed()` is a no-op for one process; rank r seeds its
RNGs with seed + r; rank 0 alone writes logs and checkpoints; no other module calls a
torch.distributed collective (FSDP's and DCP's own excepted); every rank makes the same sequence of
collectives whatever its data (one vision-tower call per forward, the same number of micro-batches,
a non-finite check every step).
"""
from __future__ import annotations

import contextlib
import datetime
import gc
import math
import os
import signal
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from config import UserError


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


def backend_spec(device_type: str, accelerator: str = "nccl") -> str:
    """The process-group backend string for a run computing on `device_type`.

    CPU: "gloo". CUDA: "cpu:gloo,cuda:nccl" -- NCCL serves CUDA tensors only (a CPU tensor in an
    NCCL-only group raises "No backend type associated with device type cpu"), and the loop reduces
    small CPU tensors (metrics, token counts), so CPU tensors go through gloo in the same group.
    `accelerator` replaces nccl (tests pass a CUDA-only fake backend to emulate NCCL's contract on
    CPU). Raises ValueError otherwise.
    """
    if device_type == "cpu":
        return "gloo"
    if device_type == "cuda":
        return f"cpu:gloo,cuda:{accelerator}"
    raise ValueError(f"no process-group backend for device type {device_type!r}")


TIMEOUT_MINUTES = 30.0   # collectives' timeout: covers one rank's cold decode compile


def init_distributed(device: str = "auto", backend: str = "auto",
                     timeout_minutes: float = TIMEOUT_MINUTES) -> Dist:
    """Start the process group when launched by torchrun (WORLD_SIZE > 1).

    device: "auto" (cuda:LOCAL_RANK when CUDA is available, else cpu), "cpu" or "cuda".
    backend: "auto" (`backend_spec` of the device: gloo on CPU, gloo + nccl on CUDA) or any torch
    backend string (e.g. "cpu:gloo,cuda:nccl"). timeout_minutes: how long a collective waits for the
    others (> 0). Returns a `Dist`. Raises ValueError for an unknown device string or a
    timeout <= 0.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"device must be auto, cpu or cuda, got {device!r}")
    if not timeout_minutes > 0:
        raise UserError(f"--dist-timeout-min must be > 0, got {timeout_minutes}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        spec = backend_spec(dev.type) if backend == "auto" else backend
        dist.init_process_group(spec, device_id=dev if use_cuda else None,
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return Dist(rank, world, local, dev)


def barrier(proc: Dist) -> None:
    """Wait for every rank (no-op for one process)."""
    if proc.world > 1:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, proc: Dist) -> torch.Tensor:
    """Sum a tensor over ranks; returns a new tensor on the input's device (the input itself for one
    process). Any shape, float or int, on CPU (served by gloo) or on the compute device. Every
    collective of the project goes through this module (tests/test_gpu_contract.py checks that none
    is called elsewhere)."""
    if proc.world > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def nonfinite(values: dict[str, float], proc: Dist) -> list[str]:
    """Names of the `values` that are NaN or inf on ANY rank (the same list on every rank, so that
    every rank stops at the same step; one all-reduce, issued whatever the values). `values`: name
    -> float."""
    names = sorted(values)
    bad = torch.tensor([0.0 if math.isfinite(values[k]) else 1.0 for k in names],
                       dtype=torch.float64)                                                 # (K,)
    bad = all_reduce_sum(bad, proc)
    return [k for k, b in zip(names, bad.tolist()) if b > 0]


class Preemption:
    """SIGTERM (what SLURM and Kubernetes send before killing a job) as a request to stop after the
    current step.

    The handler only sets a flag; `requested(proc)` all-reduces it once per call, so every rank
    agrees to stop after the same step even when the signal reached only some of them (torchrun
    forwards it to its workers and gives them 30 s before SIGKILL). Install in the main thread.
    `signum` is the signal that was seen.
    """

    def __init__(self):
        self.signum = 0
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.signum = signum

    def requested(self, proc: Dist) -> bool:
        """True on every rank when any rank has received SIGTERM (one all-reduce, made on every
        call)."""
        return bool(all_reduce_sum(torch.tensor(float(self.signum != 0)), proc) > 0)

    def restore(self) -> None:
        """Put back the handler that was there before."""
        signal.signal(signal.SIGTERM, self._previous)


def broadcast_object(obj, proc: Dist):
    """Rank 0's Python object on every rank (the object travels through gloo on CPU)."""
    if proc.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj, proc: Dist) -> list:
    """Every rank's Python object, in rank order (a one-element list for one process)."""
    if proc.world == 1:
        return [obj]
    box = [None] * proc.world
    dist.all_gather_object(box, obj)
    return box


def block_classes(hf) -> tuple[str, str]:
    """(decoder layer, vision block) class names of `hf`, read from the model: the classes of its
    first decoder layer and first vision block, which must be among the model's `_no_split_modules`
    (Qwen2.5-VL: Qwen2_5_VLDecoderLayer, Qwen2_5_VLVisionBlock; Qwen3-VL: Qwen3VLTextDecoderLayer,
    Qwen3VLVisionBlock). Raises ValueError otherwise (the blocks would not be FSDP's units)."""
    names = (type(hf.model.language_model.layers[0]).__name__,
             type(hf.model.visual.blocks[0]).__name__)
    missing = [n for n in names if n not in (hf._no_split_modules or [])]
    if missing:
        raise ValueError(f"{type(hf).__name__}: block class(es) {missing} not in _no_split_modules "
                         f"{hf._no_split_modules}")
    return names


def resolve_mode(mode: str, proc: Dist) -> str:
    """--dist value to the mode used: "auto" is fsdp on CUDA and ddp on CPU. Raises ValueError if
    unknown."""
    if mode not in ("auto", "fsdp", "ddp", "none"):
        raise UserError(f"unknown --dist mode {mode!r}; expected auto, fsdp, ddp or none")
    if mode == "auto":
        return "fsdp" if proc.device.type == "cuda" else "ddp"
    return mode


PRECISIONS = ("auto", "fp32", "bf16-mixed", "bf16")


def resolve_precision(flag: str, proc: Dist,
                      cuda_default: str = "bf16-mixed") -> tuple[str, torch.dtype, torch.dtype]:
    """--precision to (name, weight dtype, compute dtype).

    "fp32": fp32 weights and compute. "bf16-mixed": fp32 weights (the master copy AdamW updates: an
    lr-1e-6 update is below bf16's resolution and would round away), bf16 compute, fp32 gradient
    reduction -- under FSDP through its MixedPrecisionPolicy, otherwise through `autocast`. "bf16":
    bf16 weights and compute (inference). "auto": `cuda_default` on CUDA, fp32 on CPU. The choice is
    a flag so that CPU tests run the GPU's precision path. Raises ValueError for an unknown name.
    """
    if flag not in PRECISIONS:
        raise UserError(f"unknown --precision {flag!r}; expected one of {PRECISIONS}")
    name = (cuda_default if proc.device.type == "cuda" else "fp32") if flag == "auto" else flag
    weights = torch.bfloat16 if name == "bf16" else torch.float32
    return name, weights, torch.float32 if name == "fp32" else torch.bfloat16


def autocast(proc: Dist, precision: str, module: torch.nn.Module | None = None):
    """A context factory for the forward passes: torch.autocast to bf16 on `proc.device` for
    "bf16-mixed" unless `module` is FSDP-sharded (FSDP casts the gathered parameters itself); a null
    context otherwise."""
    if precision == "bf16-mixed" and not (module is not None and is_fsdp(module)):
        return lambda: torch.autocast(proc.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def enable_activation_checkpointing(module: torch.nn.Module) -> None:
    """Recompute every decoder layer and vision block in backward (non-reentrant
    torch.utils.checkpoint).

    Both block classes are transformers `GradientCheckpointingLayer`s, so HF's switch works even
    though `model.PolicyLogprobs` calls `hf.model.language_model` and `hf.model.visual` directly;
    parameter names are unchanged (no wrapper module), so checkpoints and HF export are unaffected.
    Under FSDP2 the recomputation runs inside the block's own hooks (its all-gather happens in the
    pre-backward hook)."""
    hf = unwrap(module).hf
    if hasattr(hf, "activation_checkpointing_enable"):     # transformers >= 5.x name
        hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def wrap(module: torch.nn.Module, proc: Dist, mode: str = "ddp",
         activation_checkpointing: bool = False, param_dtype: torch.dtype = torch.float32,
         vision_unit: str = "block", offload: bool = False) -> torch.nn.Module:
    """Wrap the log-prob module (a module with an `.hf` Qwen2.5-VL) for data parallelism.

    mode: "ddp" (default; DistributedDataParallel), "fsdp" (FSDP2 `fully_shard` on every decoder
    layer and on the vision tower's blocks, then on the root `module`, torchtitan style), "auto"
    (fsdp on CUDA, ddp on CPU) or "none". With one process the module is returned unwrapped
    (single-process FSDP would only add overhead). A module without trainable parameters (the frozen
    reference) under "ddp" is returned unwrapped too (DDP refuses it; its forward needs no
    communication).
    activation_checkpointing: recompute blocks in backward (applied before sharding).
    param_dtype: FSDP's compute dtype (bf16 for `resolve_precision`'s "bf16-mixed"); gradients are
    always reduced in fp32. FSDP wants fp32 parameters loaded (the sharded master copy AdamW
    updates) and casts each all-gather to `param_dtype`.
    vision_unit: "block" (one FSDP unit per vision block) or "tower" (the whole vision tower one
    unit, torchtitan's choice for encoders; bench/fsdp_vision.py times both). Either way every
    forward calls the tower once (model.embed_with_visuals), so every rank issues the same
    all-gathers whatever its media.
    offload: FSDP2's CPUOffloadPolicy: parameter shards, gradients and AdamW state live in host
    memory and the optimizer step runs on the CPU; each unit is copied to the GPU for its forward
    and backward. Needs mode "fsdp"; applied with one process too (a one-rank process group over an
    in-memory store), since that is what lets one GPU train a model whose fp32 state does not fit
    it. Load the model on the CPU for it. Raises ValueError for an unknown mode or vision_unit, or
    offload without fsdp.
    """
    mode = resolve_mode(mode, proc)
    if vision_unit not in ("block", "tower"):
        raise ValueError(f"vision_unit must be block or tower, got {vision_unit!r}")
    if offload and mode != "fsdp":
        raise ValueError(f"CPU offload is FSDP2's: it needs --dist fsdp, got {mode!r}")
    if activation_checkpointing:
        enable_activation_checkpointing(module)
    if (proc.world == 1 and not offload) or mode == "none":
        return module
    if mode == "ddp":
        if not any(p.requires_grad for p in module.parameters()):
            return module
        return DDP(module, device_ids=[proc.device.index] if proc.device.type == "cuda" else None)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import (CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy,
                                        fully_shard)
    if not dist.is_initialized():        # one process with offload: a one-rank group, no rendezvous
        dist.init_process_group(backend_spec(proc.device.type), store=dist.HashStore(), rank=0,
                                world_size=1)
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    policy = CPUOffloadPolicy(pin_memory=proc.device.type == "cuda") if offload else OffloadPolicy()
    mesh = init_device_mesh(proc.device.type, (proc.world,))
    decoder_block, vision_block = block_classes(unwrap(module).hf)
    names = (decoder_block, vision_block) if vision_unit == "block" else (decoder_block,)
    units = [m for m in module.modules() if type(m).__name__ in names]
    if vision_unit == "tower":
        units.append(unwrap(module).hf.model.visual)
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=mp, offload_policy=policy)
    fully_shard(module, mesh=mesh, mp_policy=mp, offload_policy=policy)
    # Average gradients over ranks explicitly: FSDP2's default divide factor has been wrong on gloo
    # in some releases (pytorch/pytorch#162338: gradients summed). torch 2.13's default already
    # averages on gloo; the explicit factor keeps it so elsewhere. The setter does not recurse
    # (torch 2.13: it sets the unit's own parameter groups), so every unit gets it.
    # tests/test_distributed.py compares magnitudes with 1 process.
    for unit in [*units, module]:
        unit.set_gradient_divide_factor(float(proc.world))
    return module


def is_fsdp(module: torch.nn.Module) -> bool:
    """True when `module` was sharded by FSDP2 `fully_shard`."""
    from torch.distributed.fsdp import FSDPModule
    return isinstance(module, FSDPModule)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside a DDP wrapper (FSDP2 shards in place, so an FSDP module is its own
    inner module)."""
    return module.module if isinstance(module, DDP) else module


@contextlib.contextmanager
def full_weights(module: torch.nn.Module):
    """Context in which `unwrap(module).hf` holds full weights for generation (notes §1 step 5).

    DDP / one process: every rank already holds them; a no-op. FSDP2: every sharded unit is
    all-gathered ONCE on entry (in `param_dtype`) and kept gathered for the whole phase
    (reshard-after-forward off), so the many small forwards of autoregressive decoding issue no
    collectives at all; ranks may therefore run different numbers of forwards (different completion
    lengths, image vs video prompts) without deadlock. On exit the units are resharded and their
    reshard-after-forward setting restored. Costs one full copy of the weights in `param_dtype` per
    GPU for the phase (plan.py counts it).
    """
    if not is_fsdp(module):
        yield unwrap(module).hf
        return
    from torch.distributed.fsdp import FSDPModule
    # make `module` the FSDP root before any block runs a forward alone
    module._get_fsdp_state()._lazy_init()
    units = [m for m in module.modules() if isinstance(m, FSDPModule)]
    saved = [[g.post_forward_mesh_info for g in m._get_fsdp_state()._fsdp_param_groups]
             for m in units]
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
    """Skip the gradient all-reduce / reduce-scatter for a micro-batch that is not the last of the
    step: DDP's no_sync(), FSDP2's set_requires_gradient_sync(False); a null context otherwise."""
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
    """Clip the gradients of `module`'s parameters to total norm `max_norm`; returns the norm before
    clipping as a float (the same on every rank). Works with FSDP2's DTensor gradients (the norm is
    reduced over ranks)."""
    norm = torch.nn.utils.clip_grad_norm_([p for p in module.parameters() if p.grad is not None],
                                          max_norm)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


def full_state_dict(module: torch.nn.Module) -> dict:
    """The full, gathered `hf` state dict (keys as `hf.state_dict()`) on CPU on rank 0; {} on other
    ranks. Collective under FSDP (every rank must call it). Uses
    torch.distributed.checkpoint.state_dict with full_state_dict=True, cpu_offload=True, so no GPU
    holds the whole model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    inner = unwrap(module)
    if not is_fsdp(inner):
        if dist.is_initialized() and dist.get_rank() != 0:
            return {}
        return {k: v.detach().cpu() for k, v in inner.hf.state_dict().items()}
    sd = get_model_state_dict(inner, options=StateDictOptions(full_state_dict=True,
                                                              cpu_offload=True))
    return {k[len("hf."):]: v for k, v in sd.items() if k.startswith("hf.")}


def cleanup(proc: Dist) -> None:
    """Wait for every rank, then destroy the process group if one was started.

    Drop every DDP/FSDP-wrapped module first (`del`): a DDP reducer freed after the group is
    destroyed joins a gloo worker thread in its destructor, which was seen to hang the process at
    exit."""
    if dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
