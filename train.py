"""T-GRPO training of Qwen2.5-VL (Video-R1, arXiv 2503.21776): the RL stage, raw PyTorch.

    python train.py                                    # T-GRPO of the built-in cold start on the built-in clips (CPU,
                                                       # ~4 min; the cold start ships in assets/coldstart)
    torchrun --nproc_per_node 2 train.py               # the same on 2 ranks (gloo on CPU, nccl on GPU)
    torchrun --nproc_per_node 8 train.py --model runs/sft/final --data Video-R1-260k.json \\
        --media-root Video-R1-data                     # the paper's recipe from an SFT checkpoint
    python train.py --steps 2 --eval-samples 0 --out-dir runs/try   # quick: no held-out evaluation
    python eval.py --model runs/tgrpo/final            # evaluate an export (with its settings)
    python train.py --help                             # every knob, the paper's defaults shown (a
                                                       # run without --model takes the tiny preset)
    python train.py --model runs/sft/final --data Video-R1-260k.json --media-root Video-R1-data \\
        --lora-rank 64 --lora-alpha 128 --lr 1e-5 --activation-checkpointing --report-to tensorboard
                                                       # 7B T-GRPO with LoRA on ONE 80 GB GPU (lr: see README)
    torchrun --nproc_per_node 2 train.py --model ... --dist fsdp --cpu-offload --activation-checkpointing
                                                       # full fine-tuning on two 80 GB GPUs (~80 GB host RAM per rank)
    python train.py --plan --model preset:qwen2.5-vl-7b --nproc 8 --activation-checkpointing
                                                       # per-GPU memory plan (plan.py), no GPU needed
    torchrun --nnodes 2 --nproc_per_node 4 --rdzv-backend c10d --rdzv-endpoint HOST0:29500 \\
        --rdzv-id vr1 train.py --model runs/sft/final --data ... --dist fsdp \\
        --activation-checkpointing --save-every 50 --resume auto
                                                       # FSDP2 on 2 nodes; rerun the line to resume
On SIGTERM (a preempted job) every rank finishes the current step, a resumable checkpoint is written and the
run exits with code 143; `--resume auto` continues it. Resuming with other settings (G, lr, seed, data, ...)
is refused, listing the differences, unless `--allow-config-change true`.

One step (notes §1), as main's loop reads; read this file, then loader.py, rollout.py, rewards.py and tgrpo.py,
each once, in that order (the step's calls into them come in that order; tests/test_docs.py checks it):
  prefetch.take (prompts_per_rank samples, decoded in the background by loader.py) -> rollout.rollout (a Group
  per prompt: G completions on ordered frames and, for videos, G̃ on shuffled frames) -> rollout.policy_batch
  (the ordered completions only) -> rule_rewards (rewards.py) -> advantages (temporal bonus, length bonus, R_i,
  group normalisation: tgrpo.advantages) -> train_step (log-probs of policy and frozen reference, model.py's
  module -> clipped surrogate with k3 KL, tgrpo.policy_loss -> backward, clip, AdamW step) -> log -> save.
Departures of the loop (docs/departures.md; the math's are T1–T11 in tgrpo.py; the ID stands at the line):
  L1  mRoPE time from the clip's real sample fps in training as in eval (`--rope-time official`: fixed 2 fps)
  L2  a sample whose media cannot be used is skipped and counted (`skipped_media`), never replaced
  L3  any number of prompts per rank (the official trainer takes exactly one)
  L5  fp32 master weights with bf16 compute on CUDA (the official run keeps DeepSpeed's bf16 weights)
  L6  the next samples are decoded while the current step runs (loader.py)
  L12 SIGTERM: finish the step, checkpoint, exit 143 (the official trainer loses the steps since its last save)
  L13 a constant learning rate (what the official cosine over ~65.8k nominal steps amounts to at ~1k)
  L14 LoRA as an option (lora.py): the reference is the policy with its adapters off; the frozen base in bf16 on CUDA
  L15 the rollout decodes through decode.py's step over a static cache, compiled on CUDA (`--compile-decode`)
With --eval-samples N (the tiny preset: the 200 prompts of the built-in test split, 4 completions each) the
policy answers N held-out prompts, sampled like the rollout, before the first step, every --eval-every steps and
after the last (heldout.py): the "eval_*" rows of metrics.jsonl, the one figure that says whether the policy got
better (the accuracy reward also moves with the prompts each step drew).
A fresh run refuses an --out-dir holding an earlier run (`--resume auto` continues it, `--overwrite`
clears it).
Everything is written under ./runs/ by default: the built-in data and tiny model (runs/cache), the metrics
(runs/tgrpo/metrics.jsonl, one JSON line per step; curves.png beside it, drawn at the end by curves.py) and
the final HF folder (runs/tgrpo/final).
"""
from __future__ import annotations

import json
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

import checkpoint
import common
import curves
import config as cfglib
import decode
import distributed
import heldout
import loader
import lora
import pixels
import preflight
import rewards
import rollout
import tgrpo
import tracking
from config import UserError


@dataclass
class Config:
    # where things are
    model: str = field(default="", metadata={"help": "HF folder of the policy (e.g. the SFT output); empty: the built-in cold start (common.coldstart: cache_dir/coldstart/final if coldstart.py built it there, else the shipped assets/coldstart)"})
    data: str = field(default="", metadata={"help": "Video-R1-260k-schema JSON/JSONL; empty: the built-in synthetic clips (train split)"})
    media_root: str = field(default="", metadata={"help": "folder the JSON's ./paths are relative to; empty: the JSON's folder"})
    out_dir: str = field(default="runs/tgrpo", metadata={"help": "metrics.jsonl and the final HF folder go here"})
    cache_dir: str = field(default="runs/cache", metadata={"help": "built-in data and tiny model are built here once"})
    # the run
    steps: int = field(default=1000, metadata={"help": "optimizer steps (paper: ~1k; notes §4)"})
    prompts_per_rank: int = field(default=1, metadata={"help": "prompts per rank per step (official: exactly 1)"})
    seed: int = field(default=42, metadata={"help": "base seed; rank r uses seed + r"})
    # held-out evaluation (heldout.py): did the policy get better on prompts it never trains on?
    eval_data: str = field(default="", metadata={"repeat": True, "help": "held-out JSON evaluated before the first step, every --eval-every steps and after the last; empty: the built-in test split (none with --data); NAME=FILE, repeated, for several named sets, each logged as eval_accuracy/NAME, ... (heldout.parse_sets)"})
    eval_media_root: str = field(default="", metadata={"help": "folder --eval-data's ./paths are relative to; empty: --media-root (or, without it, the eval JSON's folder)"})
    eval_samples: int = field(default=0, metadata={"help": "held-out prompts per evaluation, --eval-completions each, sampled like the rollout (0: no evaluation)"})
    eval_completions: int = field(default=1, metadata={"help": "sampled completions per held-out prompt (K: the figure's noise shrinks like 1/sqrt(K x prompts))"})
    eval_every: int = field(default=0, metadata={"help": "> 0: also evaluate every this many steps"})
    eval_batch: int = field(default=16, metadata={"help": "held-out prompts per generate call"})
    # T-GRPO (notes §1, §3; tgrpo.py)
    G: int = field(default=8, metadata={"help": "G: completions per prompt on ordered frames"})
    G_shuffled: int = field(default=-1, metadata={"help": "G̃: completions on shuffled frames per video prompt; -1: G // 2"})
    temporal: bool = field(default=True, metadata={"help": "T-GRPO temporal reward; false gives the plain GRPO ablation"})
    alpha: float = field(default=0.3, metadata={"help": "α: temporal bonus added to correct ordered completions"})
    mu: float = field(default=0.8, metadata={"help": "μ: bonus when p >= μ·p̃ (code 0.8; paper v4 ≈ 1.0); the official trigger only"})
    temporal_trigger: str = field(default="official", metadata={"help": "'official': bonus when p >= μ·p̃; 'contrast' (T11, ours): when p > p̃ + --trigger-margin"})
    trigger_margin: float = field(default=0.0, metadata={"help": "the contrast trigger's margin on p − p̃ (>= 0)"})
    correct_threshold: float = field(default=0.1, metadata={"help": "accuracy above which a completion counts as correct"})
    bonus_placement: str = field(default="reward", metadata={"help": "'reward' (official) or 'advantage': add α after normalisation"})
    len_control: bool = field(default=True, metadata={"help": "length bonus ω for correct completions of length in [min_len, max_len]"})
    len_weight: float = field(default=0.2, metadata={"help": "ω, the length bonus (paper v4 and code 0.2; v1 0.1)"})
    min_len: int = field(default=320, metadata={"help": "length bonus lower bound, tokens incl. the stop token"})
    max_len: int = field(default=512, metadata={"help": "length bonus upper bound, tokens incl. the stop token"})
    beta: float = field(default=0.04, metadata={"help": "β: KL weight against the frozen reference; 0 loads no reference"})
    clip_eps: float = field(default=0.2, metadata={"help": "ε: PPO clip (live only when num_iterations > 1)"})
    clip_eps_high: float = field(default=-1.0, metadata={"help": "ε_high (DAPO clip-higher); -1: same as clip_eps"})
    loss_agg: str = field(default="seq-mean-token-mean", metadata={"help": "seq-mean-token-mean (official) | token-mean (DAPO) | seq-mean-token-sum-norm (Dr. GRPO)"})
    adv_scale: str = field(default="group", metadata={"help": "'group': divide by group std (GRPO); 'none': Dr. GRPO"})
    adv_eps: float = field(default=1e-4, metadata={"help": "added to the group std"})
    num_iterations: int = field(default=1, metadata={"help": "μ_GRPO: optimizer passes per rollout (1: on-policy like the official code)"})
    # sampling (notes §1 step 5; all explicit, notes §9 item 17)
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling mass"})
    top_k: int = field(default=50, metadata={"help": "top-k sampling; 0 = off (official: HF's default 50, its GenerationConfig sets none)"})
    repetition_penalty: float = field(default=1.0, metadata={"help": "1.0 = off"})
    max_completion_length: int = field(default=768, metadata={"help": "max new tokens per completion"})
    compile_decode: str = decode.compile_option()
    # optimisation (notes §4)
    lr: float = field(default=1e-6, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay, never on biases (common.param_groups, as the official HF Trainer)"})
    decay_norms: bool = field(default=True, metadata={"help": "decay the RMSNorm weights too (the official trainer does: Qwen's RMSNorm is no nn.LayerNorm); false: exempt them as transformers 5.x's Trainer does"})
    max_grad_norm: float = field(default=5.0, metadata={"help": "gradient-norm clip"})
    lr_schedule: str = field(default="constant", metadata={"help": "'constant' (what the official cosine over 65k steps amounts to at 1k) or 'cosine'"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps"})
    # frames and pixels (notes §4, §8)
    fps: float = field(default=pixels.FPS, metadata={"help": "frames per second of video sampled by the fps rule"})
    min_frames: int = field(default=pixels.FPS_MIN_FRAMES, metadata={"help": "fewest frames per video"})
    max_frames: int = field(default=pixels.FPS_MAX_FRAMES, metadata={"help": "most frames per video (training: 16)"})
    nframes: int = field(default=0, metadata={"help": "> 0: fixed frame count instead of the fps rule"})
    video_min_pixels: int = field(default=pixels.VIDEO_MIN_PIXELS, metadata={"help": "per-frame pixel floor"})
    video_max_pixels: int = field(default=pixels.VIDEO_MAX_PIXELS, metadata={"help": "per-frame pixel budget (training 128·28·28)"})
    image_min_pixels: int = field(default=pixels.IMAGE_MIN_PIXELS, metadata={"help": "image pixel floor"})
    image_max_pixels: int = field(default=pixels.IMAGE_MAX_PIXELS, metadata={"help": "image pixel budget"})
    rope_time: str = field(default="sample", metadata={"help": "'sample': mRoPE time from the clip's real fps; 'official': fixed 2 fps"})
    # machinery
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    precision: str = field(default="auto", metadata={"help": "auto (bf16-mixed on CUDA, fp32 on CPU) | fp32 | bf16-mixed (fp32 weights, bf16 compute, fp32 grad reduction) | bf16 (bf16 weights)"})
    dist_backend: str = field(default="auto", metadata={"help": "process-group backend: auto (gloo on CPU; cpu:gloo,cuda:nccl on CUDA) or a torch backend string"})
    fsdp_vision_unit: str = field(default="block", metadata={"help": "FSDP units of the vision tower: block (one per vision block) | tower (one for the whole tower)"})
    dist: str = field(default="auto", metadata={"help": "auto (fsdp on CUDA, ddp on CPU) | fsdp (FSDP2 per block + root) | ddp | none"})
    freeze_vision: bool = field(default=False, metadata={"help": "keep the vision tower fixed (no gradients); the tiny preset's default, whose random tower cannot be trained from scratch here"})
    cpu_offload: bool = distributed.offload_option()
    # LoRA (lora.py, through PEFT)
    lora_rank: int = lora.option("lora_rank")
    lora_alpha: float = lora.option("lora_alpha")
    lora_dropout: float = lora.option("lora_dropout")
    lora_targets: str = lora.option("lora_targets")
    lora_vision: str = lora.option("lora_vision")
    activation_checkpointing: bool = field(default=False, metadata={"help": "recompute decoder layers and vision blocks in backward (saves activation memory)"})
    save_every: int = field(default=0, metadata={"help": "> 0: resumable checkpoint (DCP) every this many steps under out_dir/checkpoints"})
    keep_checkpoints: int = field(default=2, metadata={"help": "resumable checkpoints kept (oldest deleted)"})
    resume: str = field(default="", metadata={"help": "checkpoint folder to continue from, or 'auto' (latest in out_dir, if any)"})
    allow_config_change: bool = field(default=False, metadata={"help": "resume even when the checkpoint was written with other settings (G, lr, seed, data, ...; the differences are printed)"})
    export_every: int = field(default=0, metadata={"help": "> 0: also write an HF folder out_dir/step_N every this many steps"})
    plan: bool = field(default=False, metadata={"help": "print the per-GPU memory plan for --model (folder or preset:qwen2.5-vl-7b) and exit"})
    nproc: int = field(default=8, metadata={"help": "GPUs assumed by --plan"})
    gpu_memory_gib: float = field(default=80.0, metadata={"help": "GPU memory assumed by --plan when it lists the settings that fit"})
    logprob_chunk: int = field(default=256, metadata={"help": "tokens (rows x positions) per lm_head call in the log-prob pass; bounds the fp32 logits memory"})
    data_workers: int = field(default=1, metadata={"help": "threads decoding and patchifying the next samples while the current step runs"})
    frame_cache: str = field(default="", metadata={"help": "folder for an on-disk cache of sampled, resized frames; empty: no cache"})
    groups_per_micro_batch: int = field(default=1, metadata={"help": "prompt groups per forward/backward in the log-prob pass"})
    preset: str = field(default="auto", metadata={"help": "auto: the preset a --model folder was exported with (its run_settings.json, with its frames/pixels and sampling), else 'tiny' for an empty --model or a tiny preset: model, else 'paper'; tiny | paper"})
    overwrite: bool = field(default=False, metadata={"help": "clear an --out-dir that holds an earlier run (metrics, checkpoints, exports) first; without it a fresh run there is refused"})
    # tracking (tracking.py): the metrics.jsonl rows, namespaced, to TensorBoard and/or wandb
    report_to: str = tracking.option("report_to")
    run_name: str = tracking.option("run_name")
    wandb_project: str = tracking.option("wandb_project")
    wandb_mode: str = tracking.option("wandb_mode")


def finish_config(cfg: Config, explicit: set[str]) -> Config:
    """Apply the preset to fields the user did not set, derive G̃, and check values. Raises
    config.UserError."""
    common.apply_preset(cfg, explicit, common.TRAIN_TINY, "train.py", ("media", "sampling"))
    common.check_ranges(cfg, {"steps": 1, "G": 2}, "train.py", {"G": "group-relative advantages"})
    if cfg.G_shuffled < 0:
        cfg.G_shuffled = cfg.G // 2
    if not cfg.temporal:
        cfg.G_shuffled = 0
    checks = {"bonus_placement": cfg.bonus_placement in ("reward", "advantage"),
              "temporal_trigger": cfg.temporal_trigger in tgrpo.TRIGGERS, "trigger_margin": cfg.trigger_margin >= 0,
              "loss_agg": cfg.loss_agg in tgrpo.LOSS_AGGS, "adv_scale": cfg.adv_scale in ("group", "none"),
              "num_iterations": cfg.num_iterations >= 1, "rope_time": cfg.rope_time in ("sample", "official"),
              "lr_schedule": cfg.lr_schedule in ("constant", "cosine"), "prompts_per_rank": cfg.prompts_per_rank >= 1,
              "precision": cfg.precision in distributed.PRECISIONS, "fsdp_vision_unit": cfg.fsdp_vision_unit in ("block", "tower"),
              "eval_samples": cfg.eval_samples >= 0, "eval_completions": cfg.eval_completions >= 1, "eval_batch": cfg.eval_batch >= 1,
              "compile_decode": cfg.compile_decode in decode.COMPILE_MODES}
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        raise UserError(f"invalid config value for {bad[0]}: {getattr(cfg, bad[0])!r}")
    tracking.parse_backends(cfg.report_to)
    lora.check(cfg)
    return cfg


def rule_rewards(groups: list[rollout.Group], tokenizer, G_shuffled: int):
    """Rule rewards of every completion (rewards.py), decoding with skip_special_tokens like the official code
    (notes §2 "Inputs"). Returns accuracy (B, G), format (B, G), lengths (B, G) long (tokens incl. the
    stop token), shuffled accuracy (B, G̃) and is_video (B,) bool (the groups that have a shuffled set)."""
    B, G = len(groups), groups[0].ordered.ids.shape[0]
    acc, fmt, sacc = torch.zeros(B, G), torch.zeros(B, G), torch.zeros(B, G_shuffled)
    for b, g in enumerate(groups):
        s = g.prepared.sample
        for i, text in enumerate(tokenizer.batch_decode(g.ordered.ids, skip_special_tokens=True)):
            acc[b, i] = rewards.accuracy_reward(text, s.solution, s.problem_type)
            fmt[b, i] = rewards.format_reward(text)
        if g.shuffled is not None:
            for i, text in enumerate(tokenizer.batch_decode(g.shuffled.ids, skip_special_tokens=True)):
                sacc[b, i] = rewards.accuracy_reward(text, s.solution, s.problem_type)
    lengths = torch.stack([g.ordered.lengths.cpu() for g in groups])           # (B, G)
    is_video = torch.tensor([g.prepared.sample.data_type == "video" and g.shuffled is not None for g in groups])
    return acc, fmt, lengths, sacc, is_video


def advantages(acc, fmt, lengths, sacc, is_video, cfg) -> tgrpo.Advantages:
    """tgrpo.advantages with this config's T-GRPO settings."""
    return tgrpo.advantages(acc, fmt, lengths, sacc, is_video, temporal=cfg.temporal, alpha=cfg.alpha, mu=cfg.mu,
                            threshold=cfg.correct_threshold, len_control=cfg.len_control, len_weight=cfg.len_weight,
                            min_len=cfg.min_len, max_len=cfg.max_len, placement=cfg.bonus_placement,
                            eps=cfg.adv_eps, scale=cfg.adv_scale, trigger=cfg.temporal_trigger,
                            margin=cfg.trigger_margin)


def variant(cfg) -> str:
    """This config's reward-to-advantage combination by name (tgrpo.variant), as logged and
    reported: plain GRPO when no shuffled completions are drawn (G̃ = 0: no p̃, no bonus)."""
    temporal = cfg.temporal and cfg.G_shuffled > 0
    return tgrpo.variant(temporal, cfg.temporal_trigger, cfg.mu, cfg.trigger_margin,
                         cfg.bonus_placement, cfg.adv_scale)


def lr_at(step: int, cfg) -> float:
    """Learning rate at optimizer step `step` (0-based): linear warm-up, then constant or cosine to 0."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "cosine":
        frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * frac))
    return cfg.lr


def train_step(policy, reference, opt, batch: rollout.PolicyBatch, adv: torch.Tensor, step: int, cfg,
               proc: distributed.Dist, amp) -> dict:
    """One T-GRPO update on one rollout (picotron's train_step): reference log-probs, then `num_iterations`
    passes of forward, clipped surrogate with KL (tgrpo.policy_loss), backward over micro-batches of
    `groups_per_micro_batch` groups, gradient clip, non-finite guard, AdamW step.

    batch: the ordered completions (N = B·G rows) on the compute device; adv (N,) float advantages.
    Loss normalisers (sequences, tokens) are averaged over ranks, so the micro-batch losses of all ranks sum to
    the whole batch's loss. Returns the last pass's {"loss", "grad_norm", and policy_loss's terms averaged over
    rows}. Raises FloatingPointError, on every rank alike, when the loss or the gradient norm is not finite:
    before the optimizer step, so no checkpoint holds the damage.
    """
    N, rows = batch.input_ids.shape[0], cfg.G * cfg.groups_per_micro_batch
    P, vis, owner = batch.prompt_len, batch.visuals, batch.owner
    n_seq = float(distributed.all_reduce_sum(torch.tensor(float(N)), proc)) / proc.world
    n_tok = float(distributed.all_reduce_sum(batch.completion_mask.sum().cpu(), proc)) / proc.world
    micro = [slice(s, s + rows) for s in range(0, N, rows)]
    ref_lp = None
    if reference is not None:
        with torch.no_grad(), amp():
            ref_lp = torch.cat([reference(batch.input_ids[m], batch.attention_mask[m], P, vis, owner[m])
                                for m in micro])                               # (N, L)
    for _ in range(cfg.num_iterations):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss_sum, logs = 0.0, []
        for m in micro:
            with distributed.no_sync(policy, skip=m.stop < N):                          # reduce gradients once, at the end
                with amp():
                    lp = policy(batch.input_ids[m], batch.attention_mask[m], P, vis, owner[m])   # (n, L) float32
                loss, terms = tgrpo.policy_loss(
                    lp, batch.old_logprobs[m] if cfg.num_iterations > 1 else None,
                    None if ref_lp is None else ref_lp[m], adv[m], batch.completion_mask[m], cfg.clip_eps,
                    None if cfg.clip_eps_high < 0 else cfg.clip_eps_high, cfg.beta, cfg.loss_agg,
                    num_sequences=n_seq, num_tokens=n_tok, norm_len=cfg.max_completion_length)
                loss.backward()
            loss_sum += loss.item()
            logs.append({k: float(v) * lp.shape[0] for k, v in terms.items()})
        grad_norm = common.clip_and_step(policy, opt, cfg.max_grad_norm, loss_sum, proc, f"train.py: step {step + 1}")
    return {"loss": loss_sum, "grad_norm": grad_norm, **{k: sum(l[k] for l in logs) / N for k in logs[0]}}


def step_metrics(step: int, a: tgrpo.Advantages, acc, fmt, lengths, is_video, update: dict, skipped: int, cfg,
                 proc: distributed.Dist, t0: float) -> dict:
    """One metrics row (notes §3 "Logged metrics"), averaged over ranks. Video-only terms (p, p̃, trigger
    rate, bonus shift) are summed over the videos of every rank, with the same keys on every rank (even one
    holding only images) so that the all-reduce matches across ranks."""
    local = {"loss": update["loss"], "accuracy": acc.mean().item(), "format": fmt.mean().item(),
             "reward": a.total.mean().item(), "reward_std": a.total.std(1).mean().item() if cfg.G > 1 else 0.0,
             "temporal_bonus": a.temporal.mean().item(), "length_bonus": a.length.mean().item(),
             "completion_length": lengths.float().mean().item(),
             "zero_std_groups": (a.total.amax(1) == a.total.amin(1)).float().mean().item(),
             **{k: v for k, v in update.items() if k not in ("loss", "grad_norm")}}
    v, ts = is_video, a.stats
    video = {"p": ts["p"][v].sum().item(), "p_shuffled": ts["p_shuffled"][v].sum().item(),
             "temporal_rate": ts["triggered"][v].float().sum().item(),
             "bonus_adv_shift": ts["bonus_adv_shift"][v].mean(1).sum().item()} if ts is not None else {}
    keys, vkeys = sorted(local), sorted(video)
    summed = distributed.all_reduce_sum(torch.tensor([local[k] for k in keys] + [1.0] + [video[k] for k in vkeys]
                                           + [float(v.sum())], dtype=torch.float64), proc)
    row = {k: summed[i].item() / summed[len(keys)].item() for i, k in enumerate(keys)}
    if vkeys and summed[-1].item() > 0:
        row |= {k: summed[len(keys) + 1 + i].item() / summed[-1].item() for i, k in enumerate(vkeys)}
    row["skipped_media"] = int(distributed.all_reduce_sum(torch.tensor(skipped), proc))
    return row | {"step": step + 1, "lr": lr_at(step, cfg), "grad_norm": float(update["grad_norm"]),
                  "step_time": time.time() - t0}


def main(argv=None):
    cfg, explicit = cfglib.parse(Config, argv, description=__doc__)
    cfg = finish_config(cfg, explicit)
    if cfg.plan:
        import plan
        print(plan.report(cfg))
        return
    proc = distributed.init_distributed(cfg.device, cfg.dist_backend)
    preflight.claim_out_dir(cfg.out_dir, cfg.resume, cfg.overwrite, proc, "train.py")   # no 2 runs
    common.seed_everything(cfg.seed, proc)
    precision, dtype, compute = distributed.resolve_precision(cfg.precision, proc)       # L5
    model_dir, train_json, eval_json = common.resolve_model_and_data(cfg, proc)
    samples = preflight.check_data(cfg, train_json, heldout.parse_sets(eval_json))   # before models
    built = common.build_policy(cfg, model_dir, proc, dtype, compute)
    hf, tokenizer, policy, adapters, opt = built
    amp = distributed.autocast(proc, precision, policy)
    reference = common.build_reference(cfg, built, model_dir, proc, dtype, compute)   # LoRA: adapters off (L14)
    media = common.media_config(cfg, hf.config)
    sampling = rollout.SamplingParams(cfg.temperature, cfg.top_p, cfg.top_k, cfg.repetition_penalty, cfg.max_completion_length)
    gen = torch.Generator(device=proc.device).manual_seed(cfg.seed + proc.rank)
    pad_id, stops = tokenizer.pad_token_id, common.stop_ids(tokenizer)
    decoder = decode.Decoder(cfg.compile_decode)                             # one weight copy and cache per run
    held = None                                              # [(set name, [(prompt ids, visual, sample)])]
    if eval_json and cfg.eval_samples > 0:
        root = (cfg.eval_media_root or cfg.media_root or None) if cfg.eval_data else None
        held = [(name, [(p.prompt_ids, p.visual, p.sample) for p in prepared])
                for name, prepared in heldout.load_sets(eval_json, root, cfg.eval_samples, tokenizer, media, proc)]
    out_dir = Path(cfg.out_dir)
    run_config = asdict(cfg) | {"model": model_dir, "data": train_json, "eval_data": eval_json, "world_size": proc.world,
                                "variant": variant(cfg),   # a cosine schedule decays over --steps: resuming with
                                "schedule_horizon": cfg.steps if cfg.lr_schedule == "cosine" else None}   # others is refused
    start, position = checkpoint.resume(cfg.resume, out_dir, policy, opt, proc, run_config, cfg.allow_config_change,
                                        {"sampling": gen}, "train.py")
    # Decoding and patchifying of the next samples overlaps the current step (loader.py); each sample's
    # shuffled-frame permutation is seeded by (seed, rank, position), so results do not depend on threads.
    prefetch = loader.Prefetcher(loader.prompt_stream(samples, proc, cfg.seed, position), tokenizer, media,
                                 shuffled=cfg.temporal and cfg.G_shuffled > 0, seed=cfg.seed, rank=proc.rank,
                                 workers=cfg.data_workers, start_index=position,
                                 max_consecutive_skips=len(samples),          # all failed: stop
                                 cache=loader.FrameCache(cfg.frame_cache) if cfg.frame_cache else None)
    if proc.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(run_config, indent=2))
        print(f"policy {model_dir} | data {train_json} ({len(samples)} samples) | {proc.world} rank(s) on {proc.device}")
        print(f"frames/pixels: {asdict(media)}")
        print(f"reward -> advantage: {variant(cfg)}")
    metrics_file = checkpoint.open_metrics(out_dir / "metrics.jsonl", start) if proc.main else None   # one row per step
    tracker = tracking.Tracker(cfg, out_dir, run_config, proc.main, start)   # the same rows to TensorBoard / wandb
    preemption, preempted = distributed.Preemption(), False

    def run_eval(step: int, module) -> None:                                   # a collective: every rank calls it
        if held is not None:
            row = {"step": step} | heldout.evaluate_sets(module, tokenizer, held, sampling, cfg.eval_batch, proc,
                                                         cfg.seed + 7, amp, cfg.eval_completions, decoder)
            if proc.main:
                metrics_file.write(json.dumps(row) + "\n"); metrics_file.flush()
                tracker.log(row)
                tqdm.write(heldout.line(row))

    if start == 0:
        run_eval(0, policy)
    evaluate, export = common.missed_at_resume(start, cfg.steps, cfg, out_dir, proc)   # SIGTERM at an eval/export step
    if evaluate:
        run_eval(start, policy)
    if export:
        common.export(policy, tokenizer, out_dir / f"step_{start}", proc, adapters, model_dir,
                      run_config)
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not proc.main, desc="T-GRPO")
    for step in bar:
        t0 = time.time()
        batch, skipped = prefetch.take(cfg.prompts_per_rank)                   # L2, L3, L6
        hf.eval()
        with distributed.full_weights(policy) as model, amp():                           # G ordered + G̃ shuffled per video
            groups = rollout.rollout(model, batch, cfg.G, cfg.G_shuffled, sampling, pad_id, stops, gen, decoder)
        hf.train()
        ordered = rollout.policy_batch(groups, pad_id).to(proc.device)          # B·G ordered rows: what the loss sees
        acc, fmt, lengths, sacc, is_video = rule_rewards(groups, tokenizer, cfg.G_shuffled)      # rule rewards
        adv = advantages(acc, fmt, lengths, sacc, is_video, cfg)               # bonuses, R_i, A_i
        update = train_step(policy, reference, opt, ordered, adv.advantages.reshape(-1).to(proc.device), step, cfg,
                            proc, amp)
        row = step_metrics(step, adv, acc, fmt, lengths, is_video, update, skipped, cfg, proc, t0)
        if proc.main:
            metrics_file.write(json.dumps(row) + "\n"); metrics_file.flush()
            tracker.log(row)
            bar.set_postfix(acc=f"{row['accuracy']:.2f}", fmt=f"{row['format']:.2f}", kl=f"{row.get('kl', 0):.3f}")
        preempted, saved = common.checkpoint_if_due(step + 1, cfg, preemption, policy, opt, proc, {"sampling": gen},
                                                    prefetch.consumed, run_config)     # L12: SIGTERM -> save, stop
        if preempted:
            break
        if cfg.export_every > 0 and (step + 1) % cfg.export_every == 0:
            common.export(policy, tokenizer, out_dir / f"step_{step + 1}", proc, adapters,
                          model_dir, run_config)
        if cfg.eval_every > 0 and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            run_eval(step + 1, policy)
    prefetch.close()
    preemption.restore()
    if preempted:   # SIGTERM: the step finished and was checkpointed; the run is not complete, so no final/
        tracker.close()
        if proc.main:
            metrics_file.close()
            curves.draw(out_dir / "metrics.jsonl")
            print(f"SIGTERM: stopped after step {step + 1}; resumable checkpoint {saved}; rerun the same command "
                  f"with --resume auto to continue", flush=True)
        del policy, reference
        distributed.cleanup(proc)
        sys.exit(128 + signal.SIGTERM)                                         # 143, the shell's code for SIGTERM
    run_eval(cfg.steps, policy)
    tracker.close()                                                            # after the final evaluation's row
    final = common.export(policy, tokenizer, out_dir / "final", proc, adapters, model_dir,
                          run_config)
    if proc.main:
        metrics_file.close()
        print(decoder.summary())
        print(f"done: metrics {out_dir / 'metrics.jsonl'} | curves {curves.draw(out_dir / 'metrics.jsonl')} | "
              f"checkpoint {final}")
    del policy, reference   # wrappers go before the process group: a DDP reducer outliving it can hang gloo at exit
    distributed.cleanup(proc)


if __name__ == "__main__":
    cfglib.run_main(main)
