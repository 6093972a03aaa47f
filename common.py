"""Glue shared by the entry points (train.py, sft.py, eval.py) and the bench scripts: the tiny
presets, the frames/pixels of a config, seeding, stop ids, HF export. No entry point imports
another; they all import this (nanochat's common.py pattern). The built-in data and models are
builtin/'s (builtin.resolve).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

import checkpoint
import decode
import distributed
import lora
import pixels
import preflight
from config import UserError, opt
from model import PolicyLogprobs, load_policy
from builtin.cache import TINY_MODELS
from builtin.coldstart import RECORD
from builtin.tiny import TINY_MEDIA

# The tiny presets: what a randomly initialised few-million-parameter model on 2 CPU cores needs,
# applied to the fields a user did not set when --model is empty (or with --preset tiny). The frames
# and pixels (TINY_MEDIA) are the same in all three, so SFT, T-GRPO and eval see identical prompts.
# The vision tower stays frozen: trained from scratch it collapses to one constant output within ~50
# steps (the decoder then cannot tell clips apart), while its centred random features
# (tiny.center_visual_features) are informative enough to learn to read. Measured on the perception
# stage (720 steps): trained with each clip's mean gradient removed (a training-only change that
# keeps the model plain Qwen2.5-VL), the mean pairwise cosine of 32 clips' features still went 0.045
# -> 0.95 and the colour was stated right for 0.31 of held-out clips, against 1.00 with the tower
# frozen.
# T-GRPO's steps and lr: measured from the built-in cold start (held-out accuracy, 200 prompts x 4
# completions): lr 5e-5 rose 0.491 -> 0.600 in 60 steps (seed 42; seed 1: 0.496 -> 0.604) and
# stayed near 0.59 to step 120; lr 1e-4 peaked at step 40 (0.585) and fell to 0.532 by step 120;
# 30 steps at 2e-5 changed nothing (README).
TRAIN_TINY = dict(steps=60, prompts_per_rank=4, eval_samples=200, eval_completions=4, eval_every=20,
                  max_completion_length=96, min_len=40, max_len=80, lr=5e-5, freeze_vision=True,
                  **TINY_MEDIA)
SFT_TINY = dict(epochs=6.0, batch_size=8, grad_accum=1, lr=2e-3, warmup_steps=20,
                freeze_vision=True, eval_max_new_tokens=128, **TINY_MEDIA)
EVAL_TINY = dict(max_new_tokens=64, template="train", **TINY_MEDIA)   # the tiny world's only prompt


def apply_preset(cfg, explicit: set[str], tiny: dict, where: str,
                 groups: tuple[str, ...] = ("media",)) -> str:
    """Resolve cfg.preset and copy `tiny`'s values into the fields not given on the command line
    when it is "tiny". "auto" is, in this order: the preset recorded in --model's
    preflight.SETTINGS (an export of train.py or sft.py), whose `groups` ("media", "sampling") are
    then taken too (preflight.take_settings; a flag given that differs is used and printed); "tiny"
    for an empty --model, a TINY_MODELS preset or a built-in cold start (its RECORD); else "paper".
    Returns the preset. Raises config.UserError naming `where` (the entry point) for an unknown
    preset or --model preset:NAME (`check_model_flag`)."""
    check_model_flag(cfg.model, where)
    record = preflight.read_settings(cfg.model) if cfg.preset == "auto" else None
    if record is not None:
        preset = record["preset"]
    elif cfg.preset == "auto":
        built_in = not cfg.model or cfg.model in TINY_MODELS or (Path(cfg.model) / RECORD).is_file()
        preset = "tiny" if built_in else "paper"
    else:
        preset = cfg.preset
    if preset not in ("tiny", "paper"):
        raise UserError(f"{where}: --preset must be auto, tiny or paper, got {preset!r}")
    if preset == "tiny":
        for k, v in tiny.items():
            if k not in explicit:
                setattr(cfg, k, v)
    cfg.preset = preset
    if record is not None:
        contradicted = preflight.take_settings(cfg, explicit, record, groups)
        if preflight.on_main_rank():
            instead = f"; given instead: {', '.join(contradicted)}" if contradicted else ""
            print(f"{where}: {cfg.model} was exported by a {preset}-preset run: its settings "
                  f"({preflight.SETTINGS}) apply{instead}", flush=True)
    return preset


def check_model_flag(model: str, where: str) -> None:
    """--model preset:NAME is the same in every entry point, checked when the flags are read: a
    TINY_MODELS preset (built on first use) for a run; a plan.PRESETS one (a config, no weights)
    for plan.py (`builtin.cache.resolve_model` refuses it for a run). Raises config.UserError
    listing the known presets for an unknown name."""
    if not model.startswith("preset:") or model in TINY_MODELS:
        return
    from plan import PRESETS
    if model not in PRESETS:
        known = ", ".join(TINY_MODELS + tuple(PRESETS))
        raise UserError(f"{where}: --model {model}: unknown preset; known: {known}")


def media_config(cfg, model_config=None) -> pixels.MediaConfig:
    """The frame/pixel fields of a config as a pixels.MediaConfig (fields the config lacks keep
    their defaults), with the model family's constants (patch size, merge size, mean and std,
    timestamps: model.family(...).MEDIA) when `model_config` (the HF model's config) is given;
    without it, Qwen2.5-VL's. Raises ValueError for an unsupported model_type."""
    names = {f.name for f in fields(pixels.MediaConfig)}
    media = pixels.MediaConfig(**{k: getattr(cfg, k) for k in names if hasattr(cfg, k)})
    if model_config is not None:
        from model import family
        # Q5: Video-R1's frame rules, the family's pixels
        for k, v in family(model_config).MEDIA.items():
            setattr(media, k, v)
        media.merge_size = model_config.vision_config.spatial_merge_size
    return media


ROOT = Path(__file__).resolve().parent


def seed_everything(seed: int, proc: distributed.Dist) -> None:
    """Seed python, numpy and torch with seed + rank (a per-rank seed offset: ranks sample
    differently)."""
    random.seed(seed + proc.rank)
    np.random.seed(seed + proc.rank)
    torch.manual_seed(seed + proc.rank)


def stop_ids(tokenizer) -> list[int]:
    """The ids that end a completion: <|im_end|> and the pad token <|endoftext|> (rollout.py
    header)."""
    return [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id]


def clip_and_step(module, optimizer, max_grad_norm: float, loss: float, proc: distributed.Dist,
                  where: str) -> float:
    """Clip the gradients to `max_grad_norm`, then take the optimizer step and free the gradients --
    unless the loss (this rank's sum, float) or the gradient norm is NaN or inf on any rank: then
    raise FloatingPointError on every rank alike, naming `where` (e.g. "train.py: step 12") and the
    term, before the step and so before any checkpoint could hold the damage. Returns the gradient
    norm before clipping (float, same on all ranks)."""
    grad_norm = distributed.clip_grad_norm(module, max_grad_norm)
    # the same answer on every rank
    bad = distributed.nonfinite({"loss": loss, "grad_norm": grad_norm}, proc)
    if bad:
        raise FloatingPointError(f"{where}: non-finite {' and '.join(bad)} (loss {loss}, "
                                 f"grad_norm {grad_norm}); stopped before the optimizer step and "
                                 f"before any checkpoint of this step")
    optimizer.step()
    # free the gradients before the next rollout (plan.py counts it so)
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def checkpoint_if_due(step: int, cfg, preemption: distributed.Preemption, module, optimizer,
                      proc: distributed.Dist, generators: dict, position: int,
                      run_config: dict) -> tuple[bool, Path | None]:
    """After optimizer step `step` (1-based): every rank agrees whether SIGTERM arrived (L12), and a
    resumable checkpoint (checkpoint.save, collective) is written every cfg.save_every steps and on
    SIGTERM, holding the RNG states of `generators`, the stream `position` and `run_config`. Returns
    (stop now, folder or None)."""
    stop = preemption.requested(proc)
    if (cfg.save_every > 0 and step % cfg.save_every == 0) or stop:
        extra = {"rng": checkpoint.rng_state(generators), "position": position,
                 "config": run_config}
        return stop, checkpoint.save(cfg.out_dir, step, module, optimizer, proc, extra,
                                     keep=cfg.keep_checkpoints)
    return stop, None


def missed_at_resume(start: int, total: int, cfg, out_dir: Path,
                     proc: distributed.Dist) -> tuple[bool, bool]:
    """(evaluate, export): whether the held-out evaluation and the HF export due after step `start`
    (a resumed run's checkpoint step; `total` the run's steps) never ran. A SIGTERM at that step
    checkpoints and stops before them (L12), and the resumed loop starts after it, so the entry
    points run them first. Evaluation: due every cfg.eval_every steps before the last, missing when
    metrics.jsonl has no "eval_accuracy" row (named sets: "eval_accuracy/NAME") for `start`;
    export: due every cfg.export_every steps, missing when out_dir/step_<start> does not exist. The
    same answer on every rank (rank 0 reads, then broadcasts)."""
    answer = (False, False)
    if proc.main and start > 0:
        path = Path(out_dir) / "metrics.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        evaluated = any(r.get("step") == start and any(k.startswith("eval_accuracy") for k in r)
                        for r in rows)
        answer = ((cfg.eval_every > 0 and start % cfg.eval_every == 0 and start < total
                   and not evaluated),
                  (cfg.export_every > 0 and start % cfg.export_every == 0
                   and not (Path(out_dir) / f"step_{start}").exists()))
    return tuple(distributed.broadcast_object(answer, proc))


class Policy(NamedTuple):
    """What an entry point trains: the HF model `hf` (adapters inside under LoRA), its tokenizer,
    the wrapped log-prob module `module` (DDP / FSDP2 / plain), `adapters` (the PeftModel, or None)
    and the AdamW optimizer over the trainable parameters."""
    hf: torch.nn.Module
    tokenizer: object
    module: torch.nn.Module
    adapters: object
    opt: torch.optim.Optimizer


def build_policy(cfg, model_dir: str, proc: distributed.Dist, weights: torch.dtype,
                 compute: torch.dtype) -> Policy:
    """Load the policy from `model_dir`, add LoRA adapters (cfg.lora_rank > 0, lora.attach) or
    freeze the vision tower (cfg.freeze_vision), wrap it (distributed.wrap: cfg.dist, activation
    checkpointing, FSDP units, CPU offload) and build AdamW(lr) over the trainable parameters,
    weight decay as the official trainer applies it (`param_groups`: not on biases; cfg.decay_norms
    False: not on norm weights either).

    Under LoRA with the vision tower frozen, the frozen base is held in the compute dtype (bf16 on
    GPU; fp32 master weights are only needed for what AdamW updates, L5 and L14) and the adapters in
    fp32. With cfg.cpu_offload the model is loaded on the CPU and FSDP2 keeps its shards there.
    weights / compute: the torch dtypes of distributed.resolve_precision (fp32 / bf16 on CUDA's
    bf16-mixed). Raises ValueError, before loading anything, when --cpu-offload is asked for without
    FSDP; load_policy's errors (FileNotFoundError, ValueError) for a folder that is not a usable
    Qwen2.5-VL."""
    if cfg.cpu_offload and distributed.resolve_mode(cfg.dist, proc) != "fsdp":
        raise UserError(f"--cpu-offload is FSDP2's: it needs --dist fsdp (got --dist {cfg.dist} "
                        f"on {proc.device.type})")
    base_in_compute = cfg.lora_rank > 0 and cfg.lora_vision == "frozen"
    hf, tokenizer = load_policy(model_dir, compute if base_in_compute else weights,
                                "cpu" if cfg.cpu_offload else proc.device)
    adapters = lora.attach(hf, cfg, cfg.seed)
    if adapters is None:
        hf.model.visual.requires_grad_(not cfg.freeze_vision)    # before wrapping (DDP/FSDP see it)
    module = distributed.wrap(PolicyLogprobs(hf, cfg.logprob_chunk), proc, cfg.dist,
                              cfg.activation_checkpointing, compute, cfg.fsdp_vision_unit,
                              offload=cfg.cpu_offload)
    opt = torch.optim.AdamW(param_groups(hf, cfg.weight_decay, cfg.decay_norms), lr=cfg.lr)
    return Policy(hf, tokenizer, module, adapters, opt)


def param_groups(hf, weight_decay: float, decay_norms: bool = True) -> list[dict]:
    """AdamW's parameter groups over `hf`'s trainable parameters, by the official trainer's rule (HF
    Trainer of transformers ≈4.49, `get_decay_parameter_names`): weight decay on every parameter
    except those whose name holds "bias" and those of nn.LayerNorm modules. Qwen2.5-VL's RMSNorm is
    not an nn.LayerNorm (nor registered in that Trainer's ALL_LAYERNORM_LAYERS), so the official run
    decays the norm weights: `decay_norms` True keeps that; False also exempts every module whose
    class name ends in "Norm" (RMSNorm; transformers 5.x's Trainer exempts norms by name). Returns
    [{"params": decayed, "weight_decay": weight_decay}, {"params": the rest,
    "weight_decay": 0.0}], empty groups left out; parameters in module order."""
    exempt = {id(p) for m in hf.modules()
              if isinstance(m, torch.nn.LayerNorm)
              or (not decay_norms and type(m).__name__.endswith("Norm"))
              for p in m.parameters(recurse=False)}
    named = [(n, p) for n, p in hf.named_parameters() if p.requires_grad]
    no = [p for n, p in named if "bias" in n or id(p) in exempt]
    no_ids = {id(p) for p in no}
    groups = [{"params": [p for _, p in named if id(p) not in no_ids],
               "weight_decay": weight_decay},
              {"params": no, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_reference(cfg, policy: Policy, model_dir: str, proc: distributed.Dist,
                    weights: torch.dtype, compute: torch.dtype):
    """The frozen KL reference for β > 0 (notes §3), called like `policy.module` under
    torch.no_grad(): under LoRA the policy with its adapters disabled (lora.Reference, no second
    copy; L14), otherwise a second copy of `model_dir` without gradients or optimizer, wrapped like
    the policy (FSDP-sharded and offloaded alike). Returns None when cfg.beta is 0 (no reference is
    loaded)."""
    if cfg.beta <= 0:
        return None
    if policy.adapters is not None:
        return lora.Reference(policy.module, policy.adapters)
    ref_hf, _ = load_policy(model_dir, weights, "cpu" if cfg.cpu_offload else proc.device)
    return distributed.wrap(PolicyLogprobs(ref_hf.eval().requires_grad_(False), cfg.logprob_chunk),
                            proc, cfg.dist, param_dtype=compute, vision_unit=cfg.fsdp_vision_unit,
                            offload=cfg.cpu_offload)


def export(module, tokenizer, folder: Path, proc: distributed.Dist, adapters=None,
           base_dir: str = "", run_config: dict | None = None) -> Path:
    """Write an HF folder (config, safetensors, tokenizer, chat template, processor settings) that
    plain transformers loads, from the full state dict gathered on rank 0 (collective under FSDP;
    atomic). Under LoRA (`adapters`, the PeftModel, and `base_dir`, the starting folder) the
    adapters are merged in and also written to `<folder>_lora` (lora.export). With `run_config` (the
    entry point's), the run's preset, frames/pixels and sampling go beside the weights
    (preflight.SETTINGS), for a later run's --preset auto on the folder."""
    if adapters is not None:
        lora.export(module, adapters, tokenizer, base_dir, folder, proc)
    else:
        state = distributed.full_state_dict(module)
        if proc.main:
            checkpoint.save_hf(distributed.unwrap(module).hf, tokenizer, folder, state_dict=state)
    if proc.main and run_config is not None:
        preflight.write_settings(folder, run_config)
    distributed.barrier(proc)
    return folder


# ---- the machinery flags the entry points share, each defined once (config.parse lists an entry
# point's own flags first, then these under their class's heading) ----

@dataclass
class Runtime:
    """where and how the process runs (train.py, sft.py, eval.py)"""
    cache_dir: str = opt("runs/cache", "the built-in data and tiny model are built here once")
    preset: str = opt("auto", "auto: a --model export's recorded one; tiny for an empty --model "
                      "or a built-in model; else paper", choices=("auto", "tiny", "paper"))
    device: str = opt("auto", "auto | cpu | cuda")
    precision: str = opt("auto", "auto: on CUDA bf16-mixed to train, bf16 to evaluate; fp32 on CPU",
                         choices=distributed.PRECISIONS)
    dist_backend: str = opt("auto", "process-group backend; auto: gloo on CPU, cpu:gloo,cuda:nccl")
    dist_timeout_min: float = opt(distributed.TIMEOUT_MINUTES, "minutes a collective waits for the "
                                  "others (covers a rank's cold decode compile; torch: 10)")
    compile_decode: str = opt("auto", "compile the decode step; auto: on CUDA",
                              choices=decode.COMPILE_MODES)
    # wandb's own variables set the rest: WANDB_PROJECT (video-r1), WANDB_MODE (offline),
    # WANDB_NAME (the out-dir's folder name)
    report_to: str = opt("none", "none | tensorboard | wandb, or both comma-separated")


@dataclass
class Training(Runtime):
    """how a training run is spread, checkpointed and adapted (train.py, sft.py)"""
    dist: str = opt("auto", "auto: fsdp on CUDA, ddp on CPU",
                    choices=("auto", "fsdp", "ddp", "none"))
    fsdp_vision_unit: str = opt("block", "FSDP units of the vision tower",
                                choices=("block", "tower"))
    activation_checkpointing: bool = opt(False, "recompute decoder layers and vision blocks")
    cpu_offload: bool = opt(False, "FSDP2 CPU offload of params, grads, AdamW (needs --dist fsdp)")
    logprob_chunk: int = opt(256, "tokens per lm_head call of the log-prob pass (fp32 logits)")
    data_workers: int = opt(1, "threads decoding the next samples during the current step")
    frame_cache: str = opt("", "folder of an on-disk cache of sampled frames; empty: none")
    lora_rank: int = opt(0, "r: LoRA rank (lora.py); 0: full fine-tuning")
    lora_alpha: float = opt(16.0, "LoRA alpha (adapter output scaled by alpha / r)")
    lora_targets: str = opt("auto", "regex of adapted modules; auto: every decoder-layer Linear")
    lora_vision: str = opt("frozen", "the vision tower under LoRA", choices=tuple(lora.VISION))
    save_every: int = opt(0, "> 0: resumable checkpoint every this many steps")
    keep_checkpoints: int = opt(2, "resumable checkpoints kept (oldest deleted)")
    resume: str = opt("", "checkpoint folder to continue, or auto (the latest in out_dir)")
    allow_config_change: bool = opt(False, "resume although settings differ (they are printed)")
    export_every: int = opt(0, "> 0: also write an HF folder out_dir/step_N every this many steps")
    overwrite: bool = opt(False, "clear an --out-dir holding an earlier run (else refused there)")
