"""T-GRPO, the RL stage of Video-R1 (arXiv 2503.21776), in raw PyTorch: `step` below is the paper's
algorithm box, `main` the setup and the loop.

    python train.py                       # the built-in cold start on the built-in clips (~3 min)
    torchrun --nproc_per_node 2 train.py  # the same on 2 ranks (gloo on CPU, NCCL on GPU)
    torchrun --nproc_per_node 8 train.py --model runs/sft/final --data Video-R1-260k.json \\
        --media-root Video-R1-data --dist fsdp --activation-checkpointing --save-every 50 \\
        --resume auto                     # the paper's recipe from an SFT checkpoint
    python train.py --model runs/sft/final --data Video-R1-260k.json --media-root Video-R1-data \\
        --lora-rank 64 --lora-alpha 128 --lr 1e-5 --activation-checkpointing   # LoRA, one GPU
    python train.py --steps 2 --eval-samples 0 --out-dir runs/try   # a quick run
    python eval.py --model runs/tgrpo/final   # evaluate the export, at its recorded settings
    python train.py --help                # every knob (the paper's defaults; the built-in run
                                          # uses the tiny preset's, common.TRAIN_TINY)
    python plan.py --model preset:qwen2.5-vl-7b --nproc 8   # per-GPU memory, no GPU needed

One step (notes §1), each file entered once, in this order (tests/test_docs.py checks it):
  loader.py   take the next prompts (decoded in the background)
  rollout.py  G completions on ordered frames and, for a video, G̃ on shuffled frames; the
              ordered ones become the policy batch (shuffled completions only supply p̃)
  rewards.py  accuracy and format of every completion
  tgrpo.py    temporal and length bonus, R_i, group advantages; then the clipped surrogate
              with k3 KL against the frozen reference; backward, clip, AdamW
SIGTERM finishes the step, writes a resumable checkpoint and exits 143; `--resume auto` continues it
exactly. Resuming with other settings is refused, listing the differences; a fresh run refuses an
--out-dir that holds another run (`--overwrite` clears it).

Departures of the loop (docs/departures.md; tgrpo.py's math has its own, T1-T11):
  L1  mRoPE time from the clip's real sample fps, in training as in eval (`--rope-time`)
  L2  a sample whose media cannot be used is skipped and counted (`skipped_media`), never replaced
  L3  any number of prompts per rank (the official trainer takes exactly one)
  L5  fp32 master weights with bf16 compute on CUDA (the official run keeps bf16 weights)
  L6  the next samples are decoded while the current step runs (loader.py)
  L12 SIGTERM: finish the step, checkpoint, exit 143 (the official trainer loses unsaved steps)
  L13 a constant learning rate (the official cosine over ~65.8k nominal steps, at ~1k steps)
  L14 LoRA as an option (lora.py): the reference is the policy with its adapters off
  L15 the rollout decodes through decode.py's step over a static cache, compiled on CUDA
Cut: vLLM, DeepSpeed and the HF Trainer (raw DDP/FSDP2 and our own decode step do their jobs); the
official "fake" steps of its gradient accumulation; reward functions other than the paper's.
"""
from __future__ import annotations

import json
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

import builtin
import checkpoint
import common
import config as cfglib
import curves
import decode
import distributed
import heldout
import loader
import lora
import pixels
import preflight
import records
import rewards
import rollout
import tgrpo
import tracking
from config import opt


@dataclass
class Config(common.Training):
    # Every flag of train.py: the fields below, then the machinery it shares with sft.py (devices,
    # sharding, LoRA, checkpoints, tracking: common.Training). --help lists them in that order.
    # --- the paper's knobs (notes §4; the built-in run takes its preset's instead) ---
    model: str = opt("", "HF folder of the policy (runs/sft/final); empty: the built-in cold start")
    data: str = opt("", "Video-R1-260k-schema JSON/JSONL; empty: the built-in clips (train split)")
    media_root: str = opt("", "folder the JSON's ./paths are relative to; empty: the JSON's folder")
    steps: int = opt(1000, "optimizer steps (paper: ~1k)")
    G: int = opt(8, "G: completions per prompt on ordered frames")
    G_shuffled: int = opt(-1, "G̃: completions on shuffled frames per video prompt; -1: G // 2")
    alpha: float = opt(0.3, "α: temporal bonus of correct ordered completions")
    mu: float = opt(0.8, "μ: the bonus fires when p >= μ·p̃ (official trigger)")
    beta: float = opt(0.04, "β: KL weight against the frozen reference; 0 loads no reference")
    clip_eps: float = opt(0.2, "ε: PPO clip (live only when num_iterations > 1)")
    len_weight: float = opt(0.2, "ω: length bonus of correct completions in [min_len, max_len]")
    min_len: int = opt(320, "length bonus lower bound, tokens incl. the stop token")
    max_len: int = opt(512, "length bonus upper bound, tokens incl. the stop token")
    lr: float = opt(1e-6, "AdamW learning rate")
    temperature: float = opt(1.0, "sampling temperature")
    top_p: float = opt(0.95, "nucleus sampling mass")
    top_k: int = opt(50, "top-k sampling, 0 = off (HF's default, which the official code gets)")
    repetition_penalty: float = opt(1.0, "repetition penalty, 1.0 = off")
    max_completion_length: int = opt(768, "max new tokens per completion")
    fps: float = opt(pixels.FPS, "frames per second sampled by the fps rule")
    min_frames: int = opt(pixels.FPS_MIN_FRAMES, "fewest frames per video")
    max_frames: int = opt(pixels.FPS_MAX_FRAMES, "most frames per video (training: 16)")
    nframes: int = opt(0, "> 0: a fixed frame count instead of the fps rule")
    video_min_pixels: int = opt(pixels.VIDEO_MIN_PIXELS, "per-frame pixel floor")
    video_max_pixels: int = opt(pixels.VIDEO_MAX_PIXELS, "per-frame pixel budget (128·28·28)")
    image_min_pixels: int = opt(pixels.IMAGE_MIN_PIXELS, "image pixel floor")
    image_max_pixels: int = opt(pixels.IMAGE_MAX_PIXELS, "image pixel budget")
    # --- research variants (docs/departures.md T-rows; each named in the log's variant line) ---
    temporal: bool = opt(True, "the temporal reward; false: plain GRPO")
    temporal_trigger: str = opt("official", "official: p >= μ·p̃; contrast (T11): p > p̃ + margin",
                                choices=tgrpo.TRIGGERS)
    trigger_margin: float = opt(0.0, "the contrast trigger's margin on p − p̃ (>= 0)")
    correct_threshold: float = opt(0.1, "accuracy above which a completion counts as correct")
    bonus_placement: str = opt("reward", "add α to the reward (official) or after normalisation",
                               choices=("reward", "advantage"))
    len_control: bool = opt(True, "the length bonus ω")
    adv_scale: str = opt("group", "group: divide by the group std (GRPO); none: Dr. GRPO",
                         choices=("group", "none"))
    loss_agg: str = opt("seq-mean-token-mean", "loss aggregation (official | DAPO | Dr. GRPO)",
                        choices=tgrpo.LOSS_AGGS)
    clip_eps_high: float = opt(-1.0, "ε_high (DAPO clip-higher); -1: clip_eps")
    num_iterations: int = opt(1, "optimizer passes per rollout (1: on-policy, as official)")
    rope_time: str = opt("sample", "mRoPE time: the clip's real fps, or official (2 fps)",
                         choices=("sample", "official"))
    lr_schedule: str = opt("constant", "constant (L13) or cosine", choices=("constant", "cosine"))
    warmup_steps: int = opt(0, "linear warm-up steps")
    weight_decay: float = opt(0.01, "AdamW weight decay, never on biases (common.param_groups)")
    decay_norms: bool = opt(True, "decay RMSNorm weights too (official); false: as HF 5.x")
    max_grad_norm: float = opt(5.0, "gradient-norm clip")
    # --- held-out evaluation (heldout.py): better on prompts it never trains on? ---
    eval_data: str = opt("", "held-out JSON, or NAME=FILE repeated; empty: the built-in test split",
                         repeat=True)
    eval_media_root: str = opt("", "--eval-data's media folder; empty: --media-root or the JSON's")
    eval_samples: int = opt(0, "held-out prompts per evaluation (0: none)")
    eval_completions: int = opt(1, "sampled completions per held-out prompt")
    eval_every: int = opt(0, "> 0: also evaluate every this many steps")
    eval_batch: int = opt(16, "held-out prompts per generate call")
    # --- machinery: the step's size and where its files go; the rest (devices, sharding, LoRA,
    # checkpoints, tracking) is common.Training's, shared with sft.py ---
    out_dir: str = opt("runs/tgrpo", "metrics.jsonl, curves.png and the final HF folder go here")
    seed: int = opt(42, "base seed; rank r uses seed + r")
    prompts_per_rank: int = opt(1, "prompts per rank per step (official: 1)")
    groups_per_micro_batch: int = opt(1, "prompt groups per forward/backward of the log-prob pass")
    freeze_vision: bool = opt(False, "no gradients into the vision tower (tiny preset: true)")
    log_rollouts: int = opt(10, "every this many steps: its rollouts to out_dir/rollouts (0: off)")


def finish_config(cfg: Config, explicit: set[str]) -> Config:
    """Apply the preset to the fields not given, derive G̃, check values. Raises UserError."""
    common.apply_preset(cfg, explicit, common.TRAIN_TINY, "train.py", ("media", "sampling"))
    if cfg.G_shuffled < 0:
        cfg.G_shuffled = cfg.G // 2
    if not cfg.temporal:
        cfg.G_shuffled = 0
    cfglib.check(cfg, {"steps": (cfg.steps >= 1, ">= 1"),
                       "G": (cfg.G >= 2, ">= 2 (group-relative advantages)"),
                       "trigger_margin": (cfg.trigger_margin >= 0, ">= 0"),
                       "num_iterations": (cfg.num_iterations >= 1, ">= 1"),
                       "prompts_per_rank": (cfg.prompts_per_rank >= 1, ">= 1"),
                       "eval_samples": (cfg.eval_samples >= 0, ">= 0"),
                       "eval_completions": (cfg.eval_completions >= 1, ">= 1"),
                       "eval_batch": (cfg.eval_batch >= 1, ">= 1"),
                       "log_rollouts": (cfg.log_rollouts >= 0, ">= 0 (0: off)")})
    tracking.parse_backends(cfg.report_to)
    lora.check(cfg)
    return cfg


def step(i: int, run: Run) -> dict:
    """One T-GRPO step (notes §1), the paper's algorithm box; returns its metrics row."""
    cfg, t0, clock = run.cfg, time.time(), tracking.StepClock(run.proc.device)   # perf/time_*
    batch, skipped = run.prefetch.take(cfg.prompts_per_rank)                  # L2, L3, L6
    clock.lap("data")
    # Rollout: sample G ordered (+ G̃ shuffled per video) completions with the current weights.
    run.decoder.prefill_seconds = 0.0
    run.hf.eval()
    with distributed.full_weights(run.policy) as model, run.amp():
        groups = rollout.rollout(model, batch, cfg.G, cfg.G_shuffled, run.sampling, run.pad_id,
                                 run.stops, run.gen, run.decoder)
    run.hf.train()
    clock.lap("decode", ("prefill", run.decoder.prefill_seconds))
    ordered = rollout.policy_batch(groups, run.pad_id).to(run.proc.device)   # B·G rows: the loss's
    # Rewards and advantages: rule rewards, then temporal bonus, length bonus, R_i, A_i.
    acc, fmt, lengths, sacc, is_video = rule_rewards(groups, run.tokenizer, cfg.G_shuffled)
    adv = tgrpo.advantages(acc, fmt, lengths, sacc, is_video, run.settings)
    # Update: clipped surrogate with k3 KL against the reference, backward, clip, AdamW.
    update = train_step(run.policy, run.reference, run.opt, ordered,
                        adv.advantages.reshape(-1).to(run.proc.device), i, cfg, run.proc, run.amp)
    clock.lap("update", ("reference", update["time_reference"]))   # rewards, reference, update
    row = step_metrics(i, adv, acc, fmt, lengths, is_video, update, skipped, cfg, run.proc, t0)
    if cfg.log_rollouts and (i + 1) % cfg.log_rollouts == 0:    # every rank's groups, to rank 0
        records.log(records.train_records(groups, run.tokenizer, acc, fmt, sacc, adv, i + 1,
                                          run.proc.rank), run.proc, run.out_dir,
                    f"step_{i + 1:06d}", i + 1, run.tracker)
    return row | clock.row()


def rule_rewards(groups: list[rollout.Group], tokenizer, G_shuffled: int):
    """Accuracy and format of every completion, decoded with skip_special_tokens as the official
    code (notes §2 "Inputs"). Returns acc (B, G), fmt (B, G), lengths (B, G) long, sacc (B, G̃),
    is_video (B,) bool."""
    B, G = len(groups), groups[0].ordered.ids.shape[0]
    acc, fmt, sacc = torch.zeros(B, G), torch.zeros(B, G), torch.zeros(B, G_shuffled)
    for b, g in enumerate(groups):
        s = g.prepared.sample
        for j, text in enumerate(tokenizer.batch_decode(g.ordered.ids, skip_special_tokens=True)):
            acc[b, j] = rewards.accuracy_reward(text, s.solution, s.problem_type)
            fmt[b, j] = rewards.format_reward(text)
        if g.shuffled is not None:                       # shuffled: accuracy only, for p̃
            texts = tokenizer.batch_decode(g.shuffled.ids, skip_special_tokens=True)
            for j, text in enumerate(texts):
                sacc[b, j] = rewards.accuracy_reward(text, s.solution, s.problem_type)
    lengths = torch.stack([g.ordered.lengths.cpu() for g in groups])             # (B, G) incl. stop
    is_video = torch.tensor([g.prepared.sample.data_type == "video" and g.shuffled is not None
                             for g in groups])                                   # (B,)
    return acc, fmt, lengths, sacc, is_video


def tgrpo_settings(cfg) -> tgrpo.Settings:
    """This config's T-GRPO knobs (tgrpo.Settings), built once per run."""
    return tgrpo.Settings(                      # no shuffled completions (G̃ = 0): plain GRPO
        temporal=cfg.temporal and cfg.G_shuffled > 0, alpha=cfg.alpha, mu=cfg.mu,
        threshold=cfg.correct_threshold, trigger=cfg.temporal_trigger, margin=cfg.trigger_margin,
        len_control=cfg.len_control, len_weight=cfg.len_weight, min_len=cfg.min_len,
        max_len=cfg.max_len,
        placement=cfg.bonus_placement, scale=cfg.adv_scale)


def lr_at(step: int, cfg) -> float:
    """Learning rate at optimizer step `step` (0-based): linear warm-up, then constant or cosine."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "cosine":
        frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * frac))
    return cfg.lr


def train_step(policy, reference, opt, batch: rollout.PolicyBatch, adv: torch.Tensor, step: int,
               cfg, proc: distributed.Dist, amp) -> dict:
    """One update on one rollout (picotron's train_step): batch holds N = B·G ordered rows,
    adv (N,). Returns {"loss", "grad_norm", policy_loss's terms}; raises FloatingPointError on every
    rank alike for a non-finite loss or gradient norm, before the optimizer step."""
    N, rows = batch.input_ids.shape[0], cfg.G * cfg.groups_per_micro_batch
    P, vis, owner = batch.prompt_len, batch.visuals, batch.owner
    # Normalisers averaged over ranks: the micro-batch losses of all ranks sum to the batch's loss.
    n_seq = float(distributed.all_reduce_sum(torch.tensor(float(N)), proc)) / proc.world
    n_tok = float(distributed.all_reduce_sum(batch.completion_mask.sum().cpu(), proc)) / proc.world
    micro = [slice(s, s + rows) for s in range(0, N, rows)]
    ref_lp, t_ref = None, tracking.now(proc.device)
    gap = torch.zeros(3, dtype=torch.float64, device=proc.device)   # vs the rollout: Σ|Δ|, n, max
    if reference is not None:
        with torch.no_grad(), amp():
            ref_lp = torch.cat([reference(batch.input_ids[m], batch.attention_mask[m], P, vis,
                                          owner[m]) for m in micro])               # (N, L)
    t_ref = tracking.now(proc.device) - t_ref                                # perf/time_reference
    for it in range(cfg.num_iterations):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss_sum, logs = 0.0, []
        for m in micro:
            with distributed.no_sync(policy, skip=m.stop < N):   # reduce gradients once, at the end
                with amp():
                    lp = policy(batch.input_ids[m], batch.attention_mask[m], P, vis,
                                owner[m])                                          # (n, L) fp32
                # No old log-probs when on-policy: the ratio is 1 and only its gradient matters.
                old = batch.old_logprobs[m] if cfg.num_iterations > 1 else None
                loss, terms = tgrpo.policy_loss(
                    lp, old, None if ref_lp is None else ref_lp[m], adv[m],
                    batch.completion_mask[m], cfg.clip_eps,
                    None if cfg.clip_eps_high < 0 else cfg.clip_eps_high, cfg.beta, cfg.loss_agg,
                    num_sequences=n_seq, num_tokens=n_tok, norm_len=cfg.max_completion_length)
                loss.backward()
            if it == 0:          # the rollout's log-probs against this pass's, before any update
                records.add_gap(gap, lp, batch.old_logprobs[m], batch.completion_mask[m])
            loss_sum += loss.item()
            logs.append({k: float(v) * lp.shape[0] for k, v in terms.items()})
        grad_norm = common.clip_and_step(policy, opt, cfg.max_grad_norm, loss_sum, proc,
                                         f"train.py: step {step + 1}")
    terms = {k: sum(g[k] for g in logs) / N for k in logs[0]}                   # row means
    return {"loss": loss_sum, "grad_norm": grad_norm, **terms, "time_reference": t_ref,
            **records.reduce_gap(gap, proc)}


def step_metrics(step: int, a: tgrpo.Advantages, acc, fmt, lengths, is_video, update: dict,
                 skipped: int, cfg, proc: distributed.Dist, t0: float) -> dict:
    """One metrics row (notes §3 "Logged metrics"): means over every rank's groups; the video-only
    terms (p, p̃, trigger rate, bonus shift) over every rank's videos. The same collectives on every
    rank, one holding only images included."""
    local = {"loss": update["loss"], "accuracy": acc.mean().item(), "format": fmt.mean().item(),
             "reward": a.total.mean().item(),
             "reward_std": a.total.std(1).mean().item() if cfg.G > 1 else 0.0,
             "temporal_bonus": a.temporal.mean().item(), "length_bonus": a.length.mean().item(),
             "completion_length": lengths.float().mean().item(),
             "zero_std_groups": (a.total.amax(1) == a.total.amin(1)).float().mean().item(),
             **{k: v for k, v in update.items() if k not in ("loss", "grad_norm")}}
    row = mean_over_ranks(local, 1.0, proc)
    if a.stats is not None:
        v, ts = is_video, a.stats
        video = {"p": ts["p"][v].sum().item(), "p_shuffled": ts["p_shuffled"][v].sum().item(),
                 "temporal_rate": ts["triggered"][v].float().sum().item(),
                 "bonus_adv_shift": ts["bonus_adv_shift"][v].mean(1).sum().item()}
        row |= mean_over_ranks(video, float(v.sum()), proc)
    row["skipped_media"] = int(distributed.all_reduce_sum(torch.tensor(skipped), proc))
    return row | {"step": step + 1, "lr": lr_at(step, cfg), "grad_norm": float(update["grad_norm"]),
                  "step_time": time.time() - t0}


def mean_over_ranks(sums: dict[str, float], count: float, proc: distributed.Dist) -> dict:
    """{k: Σ_ranks sums[k] / Σ_ranks count} in one all-reduce; {} when the total count is 0."""
    keys = sorted(sums)
    total = distributed.all_reduce_sum(torch.tensor([sums[k] for k in keys] + [count],
                                                    dtype=torch.float64), proc)
    n = total[-1].item()
    return {k: total[i].item() / n for i, k in enumerate(keys)} if n > 0 else {}


@dataclass
class Run:
    """What a step needs, built once by main."""
    cfg: Config
    settings: tgrpo.Settings               # the T-GRPO knobs of cfg
    proc: distributed.Dist
    hf: torch.nn.Module                    # the HF model inside `policy` (train/eval mode)
    tokenizer: object
    policy: torch.nn.Module                # the wrapped log-prob module (DDP / FSDP2 / plain)
    reference: torch.nn.Module | None      # frozen, for the KL term; None when β = 0
    opt: torch.optim.Optimizer
    amp: object                            # autocast context factory (distributed.autocast)
    prefetch: loader.Prefetcher
    sampling: rollout.SamplingParams
    gen: torch.Generator                   # the rollout's noise; saved in checkpoints
    decoder: decode.Decoder
    pad_id: int
    stops: list[int]
    out_dir: Path
    tracker: tracking.Tracker              # TensorBoard / wandb (a no-op off rank 0)
    metrics_file: object                   # metrics.jsonl, open on rank 0 (None elsewhere)


def write_row(run: Run, row: dict) -> None:
    """Rank 0: one line of metrics.jsonl, flushed, and the same row to the trackers."""
    run.metrics_file.write(json.dumps(row) + "\n")
    run.metrics_file.flush()
    run.tracker.log(row)


def evaluate(run: Run, held, at: int) -> None:
    """The held-out evaluation's row at step `at` (heldout.py), and its rollout records; a
    collective: every rank calls."""
    if held is None:
        return
    recs = [] if run.cfg.log_rollouts else None
    row = {"step": at} | heldout.evaluate_sets(run.policy, run.tokenizer, held, run.sampling,
                                               run.cfg.eval_batch, run.proc, run.cfg.seed + 7,
                                               run.amp, run.cfg.eval_completions, run.decoder, recs)
    if recs is not None:
        records.log([r | {"step": at} for r in recs], run.proc, run.out_dir,
                    f"eval_step_{at:06d}", at, run.tracker)
    if run.proc.main:
        write_row(run, row)
        tqdm.write(heldout.line(row))


def exit_after_sigterm(run: Run, at: int, saved) -> None:
    """L12: the step finished and was checkpointed; the run is not complete (no final/)."""
    run.tracker.close()
    if run.proc.main:
        run.metrics_file.close()
        curves.draw(run.out_dir / "metrics.jsonl")
        print(f"SIGTERM: stopped after step {at}; resumable checkpoint {saved}; rerun the same "
              f"command with --resume auto to continue", flush=True)
    run.policy = run.reference = None
    distributed.cleanup(run.proc)
    sys.exit(128 + signal.SIGTERM)                         # 143, the shell's code for SIGTERM


def main(argv=None):
    cfg = finish_config(*cfglib.parse(Config, argv, description=__doc__))
    proc = distributed.init_distributed(cfg.device, cfg.dist_backend, cfg.dist_timeout_min)
    preflight.claim_out_dir(cfg.out_dir, cfg.resume, cfg.overwrite, proc, "train.py")  # 1 run each
    common.seed_everything(cfg.seed, proc)
    precision, dtype, compute = distributed.resolve_precision(cfg.precision, proc)       # L5
    model_dir, train_json, eval_json = builtin.resolve(cfg, proc)
    samples = preflight.check_data(cfg, train_json, heldout.parse_sets(eval_json))  # before models
    built = common.build_policy(cfg, model_dir, proc, dtype, compute)
    hf, tokenizer, policy, adapters, opt = built
    amp = distributed.autocast(proc, precision, policy)
    reference = common.build_reference(cfg, built, model_dir, proc, dtype, compute)   # LoRA: L14
    media = common.media_config(cfg, hf.config)
    sampling = rollout.SamplingParams(cfg.temperature, cfg.top_p, cfg.top_k, cfg.repetition_penalty,
                                      cfg.max_completion_length)
    gen = torch.Generator(device=proc.device).manual_seed(cfg.seed + proc.rank)
    decoder = decode.Decoder(cfg.compile_decode)           # one weight copy and cache per run
    held = None                       # [(set name, [(prompt ids, visual, sample, records.Media)])]
    if eval_json and cfg.eval_samples > 0:
        root = (cfg.eval_media_root or cfg.media_root or None) if cfg.eval_data else None
        held = [(name, [(p.prompt_ids, p.visual, p.sample,
                         records.media_of(p) if cfg.log_rollouts else None) for p in prepared])
                for name, prepared
                in heldout.load_sets(eval_json, root, cfg.eval_samples, tokenizer, media, proc)]
    out_dir = Path(cfg.out_dir)
    settings = tgrpo_settings(cfg)
    # What a resume must match (a cosine schedule decays over --steps, so its horizon too).
    run_config = asdict(cfg) | {"model": model_dir, "data": train_json, "eval_data": eval_json,
                                "world_size": proc.world, "variant": settings.name(),
                                "schedule_horizon": cfg.steps if cfg.lr_schedule == "cosine"
                                else None}
    start, position = checkpoint.resume(cfg.resume, out_dir, policy, opt, proc, run_config,
                                        cfg.allow_config_change, {"sampling": gen}, "train.py")
    # Each sample's shuffled-frame permutation is seeded by (seed, rank, position), not by threads.
    prefetch = loader.Prefetcher(loader.prompt_stream(samples, proc, cfg.seed, position), tokenizer,
                                 media, shuffled=cfg.temporal and cfg.G_shuffled > 0, seed=cfg.seed,
                                 rank=proc.rank, workers=cfg.data_workers, start_index=position,
                                 max_consecutive_skips=len(samples),             # all failed: stop
                                 cache=loader.FrameCache(cfg.frame_cache) if cfg.frame_cache
                                 else None)
    if proc.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(run_config, indent=2))
        print(f"policy {model_dir} | data {train_json} ({len(samples)} samples) | "
              f"{proc.world} rank(s) on {proc.device}")
        print(f"frames/pixels: {asdict(media)}")
        print(f"reward -> advantage: {settings.name()}")
    metrics_file = checkpoint.open_metrics(out_dir / "metrics.jsonl", start) if proc.main else None
    tracker = tracking.Tracker(cfg, out_dir, run_config, proc.main, start)   # TensorBoard / wandb
    run = Run(cfg, settings, proc, hf, tokenizer, policy, reference, opt, amp, prefetch, sampling,
              gen, decoder, tokenizer.pad_token_id, common.stop_ids(tokenizer), out_dir, tracker,
              metrics_file)
    preemption, preempted = distributed.Preemption(), False

    if start == 0:
        evaluate(run, held, 0)
    # A SIGTERM at an evaluation or export step checkpointed before them: run them first (L12).
    missed_eval, missed_export = common.missed_at_resume(start, cfg.steps, cfg, out_dir, proc)
    if missed_eval:
        evaluate(run, held, start)
    if missed_export:
        common.export(policy, tokenizer, out_dir / f"step_{start}", proc, adapters, model_dir,
                      run_config)
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not proc.main,
               desc="T-GRPO")
    for i in bar:
        row = step(i, run)
        if proc.main:
            write_row(run, row)
            bar.set_postfix(acc=f"{row['accuracy']:.2f}", fmt=f"{row['format']:.2f}",
                            kl=f"{row.get('kl', 0):.3f}")
        preempted, saved = common.checkpoint_if_due(                  # L12: SIGTERM -> save, stop
            i + 1, cfg, preemption, policy, opt, proc, {"sampling": gen}, prefetch.consumed,
            run_config)
        if preempted:
            break
        if cfg.export_every > 0 and (i + 1) % cfg.export_every == 0:
            common.export(policy, tokenizer, out_dir / f"step_{i + 1}", proc, adapters,
                          model_dir, run_config)
        if cfg.eval_every > 0 and (i + 1) % cfg.eval_every == 0 and i + 1 < cfg.steps:
            evaluate(run, held, i + 1)
    prefetch.close()
    preemption.restore()
    if preempted:
        del policy, reference
        exit_after_sigterm(run, i + 1, saved)
    evaluate(run, held, cfg.steps)
    tracker.close()                                        # after the final evaluation's row
    final = common.export(policy, tokenizer, out_dir / "final", proc, adapters, model_dir,
                          run_config)
    if proc.main:
        metrics_file.close()
        print(decoder.summary())
        print(f"done: metrics {out_dir / 'metrics.jsonl'} | curves "
              f"{curves.draw(out_dir / 'metrics.jsonl')} | checkpoint {final}")
    # The wrappers go before the process group: a DDP reducer outliving it can hang gloo at exit.
    del policy, reference
    run.policy = run.reference = None
    distributed.cleanup(proc)


if __name__ == "__main__":
    cfglib.run_main(main)
