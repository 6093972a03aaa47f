"""SFT cold start of Qwen2.5-VL on chain-of-thought data (Video-R1 stage 1, notes §6): raw PyTorch.

    python sft.py                     # tiny random Qwen2.5-VL, built-in COT clips (CPU, 2 min):
                                      # format-reward rate 0.00 -> 1.00 on 64 held-out prompts
    torchrun --nproc_per_node 2 sft.py  # the same on 2 ranks (gloo on CPU, nccl on GPU)
    torchrun --nproc_per_node 8 sft.py --model Qwen2.5-VL-7B-Instruct \\
        --data Video-R1-COT-165k.json --media-root Video-R1-data
                                      # the paper's recipe (lr 1e-6, 1 epoch, batch 1 x accum 2)
    python train.py --model runs/sft/final --preset tiny   # T-GRPO from the tiny SFT output
    python sft.py --help                               # every knob, with its help
    torchrun --nproc_per_node 8 sft.py ... --save-every 200 --resume auto
                                      # resumable; rerun the same line to resume
On SIGTERM every rank finishes the current step, writes a resumable checkpoint and exits with code
143 (as train.py).

One optimizer step: each rank takes `grad_accum` micro-batches of `batch_size` samples -> decodes
frames and renders the T-GRPO user turn (pixels.prepare: same template, frames and pixels) ->
appends the assistant turn `process + "\\n" + solution` + `<|im_end|>` + "\\n" exactly as the chat
template renders it -> one right-padded forward per micro-batch (each sample with its own visual,
mRoPE from model.rope_positions) -> token-level cross-entropy -> backward, clip (5.0), AdamW,
linear decay.
Departures from the official sft_video.py (docs/departures.md; the ID stands at the line):
  S1  system prompt: the template's "You are a helpful assistant." as T-GRPO sees it
      (`--system-prompt official`)
  S2  loss on the assistant turn and its <|im_end|> only (official: everything but <|image_pad|>;
      `--loss-on all`)
  S3  several samples per device, each with its own media (the official collator keeps the last's)
  S4  the mean cross-entropy over all trained tokens of an optimizer step, whatever the batch layout
  S5  mRoPE time from the clip's real sample fps, as train.py (`--rope-time official`: fixed 2 fps)
  S6  a sample whose media cannot be used is skipped and counted, never replaced
  S7  fp32 weights and AdamW state with bf16 compute on CUDA (`--precision bf16` would round
      lr-1e-6 updates away)
The format-reward rate is measured on held-out prompts (the built-in test split, or `--eval-data`):
one completion per prompt sampled like the T-GRPO rollout (temperature 1.0, top-p 0.95, notes §1
step 5), decoded with skip_special_tokens, scored with rewards.format_reward and
rewards.accuracy_reward.
Outputs under ./runs/sft/: metrics.jsonl (one JSON line per step and per evaluation), curves.png
(curves.py: loss and the held-out format / accuracy rates, drawn at the end), config.json, final/.
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
import curves
import config as cfglib
import data
import decode
import distributed
import heldout
import pixels
import preflight
import rollout
import loader
import lora
import tracking
from config import opt
from data import PAD_TOKEN, encode_prompt, expand_media_tokens
from model import Visual

# None: the template's default
SYSTEM_PROMPTS = {"default": None, "official": "You are a helpful assistant"}
LOSS_ON = ("assistant", "all")


@dataclass
class Config(common.Training):
    # --- where things are ---
    model: str = opt("", "HF folder to fine-tune (e.g. Qwen2.5-VL-7B-Instruct); empty: the tiny "
                     "random Qwen2.5-VL in cache_dir")
    data: str = opt("", "Video-R1-COT-165k-schema JSON/JSONL (needs 'process'); empty: the "
                    "built-in COT split")
    media_root: str = opt("", "folder the JSONs' ./paths are relative to (also --eval-data's); "
                          "empty: each JSON's folder")
    eval_data: str = opt("", "held-out JSON for the format-reward rate, or NAME=FILE repeated; "
                         "empty: the built-in test split (none with --data)", repeat=True)
    eval_media_root: str = opt("", "--eval-data's media folder; empty: --media-root or the JSON's")
    out_dir: str = opt("runs/sft", "metrics.jsonl, config.json and the final HF folder go here")
    # --- the run (notes §4 SFT) ---
    epochs: float = opt(1.0, "passes over the data (paper: 1)")
    steps: int = opt(0, "> 0: optimizer steps instead of epochs")
    batch_size: int = opt(1, "samples per device per micro-batch (official: 1)")
    grad_accum: int = opt(2, "micro-batches per optimizer step (official: 2)")
    seed: int = opt(42, "base seed; rank r uses seed + r")
    loss_on: str = opt("assistant", "assistant: answer + <|im_end|>; all: everything but "
                       "<|image_pad|> (official)", choices=LOSS_ON)
    system_prompt: str = opt("default", "default: the template's 'You are a helpful assistant.' "
                             "(as T-GRPO); official: no period", choices=SYSTEM_PROMPTS)
    # --- optimisation (notes §4 SFT) ---
    lr: float = opt(1e-6, "AdamW peak learning rate")
    weight_decay: float = opt(0.0, "AdamW weight decay, never on biases (as the official Trainer)")
    decay_norms: bool = opt(True, "decay RMSNorm weights too (official); false: as HF 5.x")
    max_grad_norm: float = opt(5.0, "gradient-norm clip")
    warmup_steps: int = opt(0, "linear warm-up steps, then linear decay to 0")
    freeze_vision: bool = opt(False, "no gradients into the vision tower (tiny preset: true)")
    logprob_chunk: int = opt(512, "tokens per lm_head call (bounds the fp32 logits memory)")
    # --- frames and pixels (notes §4, §8): the same fields and defaults as train.py ---
    fps: float = opt(pixels.FPS, "frames per second sampled by the fps rule")
    min_frames: int = opt(pixels.FPS_MIN_FRAMES, "fewest frames per video")
    max_frames: int = opt(pixels.FPS_MAX_FRAMES, "most frames per video (training: 16)")
    nframes: int = opt(0, "> 0: a fixed frame count instead of the fps rule")
    video_min_pixels: int = opt(pixels.VIDEO_MIN_PIXELS, "per-frame pixel floor")
    video_max_pixels: int = opt(pixels.VIDEO_MAX_PIXELS, "per-frame pixel budget (128·28·28)")
    image_min_pixels: int = opt(pixels.IMAGE_MIN_PIXELS, "image pixel floor")
    image_max_pixels: int = opt(pixels.IMAGE_MAX_PIXELS, "image pixel budget")
    rope_time: str = opt("sample", "mRoPE time: the clip's real fps, or official (2 fps)",
                         choices=("sample", "official"))
    # --- format-reward evaluation ---
    eval_every: int = opt(0, "evaluate every k optimizer steps (0: only before and after)")
    eval_samples: int = opt(64, "held-out prompts per evaluation (0: no evaluation)")
    eval_batch: int = opt(16, "prompts per generate call")
    eval_max_new_tokens: int = opt(768, "max new tokens per evaluation completion")

def finish_config(cfg: Config, explicit: set[str]) -> Config:
    """Apply the preset to fields the user did not set and check values. Raises config.UserError
    naming the field."""
    common.apply_preset(cfg, explicit, common.SFT_TINY, "sft.py")
    cfglib.check(cfg, {"batch_size": (cfg.batch_size >= 1, ">= 1"),
                       "grad_accum": (cfg.grad_accum >= 1, ">= 1"),
                       "epochs": (cfg.epochs > 0 or cfg.steps > 0, "> 0, or --steps > 0"),
                       "steps": (cfg.steps >= 0, ">= 0"),
                       "eval_batch": (cfg.eval_batch >= 1, ">= 1")})
    tracking.parse_backends(cfg.report_to)
    lora.check(cfg)
    return cfg


# ---- conversations and labels (notes §6 "Messages", "Labels") -------------------------------

@dataclass
class Example:
    """One SFT conversation: ids (T,) long = prompt + assistant + <|im_end|> + "\\n"; labels (T,)
    bool, True where token t is a training target (never position 0); prompt_len P; the sample's
    Visual; the Sample."""
    ids: torch.Tensor
    labels: torch.Tensor
    prompt_len: int
    visual: Visual
    sample: data.Sample


def assistant_text(sample: data.Sample) -> str:
    """The assistant turn of the official SFT: process + "\\n" + solution (notes §6 "Messages")."""
    return sample.process + "\n" + sample.solution


def build_example(prepared: pixels.Prepared, tokenizer, loss_on: str = "assistant",
                  system: str | None = None) -> Example:
    """Token ids and label mask of one conversation, built as the chat template renders [user,
    assistant].

    The prompt is pixels.prepare's T-GRPO prompt (re-encoded when `system` is not None); the
    assistant ids are tokenizer(answer + "<|im_end|>") followed by tokenizer("\\n"). loss_on
    "assistant": labels on the answer and <|im_end|>; "all": every position >= 1 except
    <|image_pad|> (official, §6 "Labels").
    Raises ValueError for another loss_on.
    """
    if loss_on not in LOSS_ON:
        raise ValueError(f"sft.py: loss_on must be one of {LOSS_ON}, got {loss_on!r}")
    s = prepared.sample
    prompt = prepared.prompt_ids
    if system is not None:
        prompt = encode_prompt(tokenizer, data.build_prompt_text(s, "train"), s.data_type,
                               prepared.visual.grid_thw, system=system,
                               timestamps=prepared.visual.timestamps)                     # (P,)
    enc = lambda t: torch.tensor(tokenizer(t, add_special_tokens=False)["input_ids"],
                                 dtype=torch.long)
    answer = enc(assistant_text(s) + "<|im_end|>")                              # (A,)
    ids = torch.cat([prompt, answer, enc("\n")])                                 # (T,)
    labels = torch.zeros_like(ids, dtype=torch.bool)                            # (T,)
    if loss_on == "assistant":
        labels[prompt.numel():prompt.numel() + answer.numel()] = True
    else:
        labels[1:] = ids[1:] != tokenizer.convert_tokens_to_ids(PAD_TOKEN["image"])
    return Example(ids, labels, prompt.numel(), prepared.visual, s)


def template_ids(tokenizer, sample: data.Sample, grid_thw, system: str | None = None,
                 timestamps=None) -> torch.Tensor:
    """(T,) long ids of [system?, user, assistant] rendered by the tokenizer's own chat template
    (no generation prompt) with the media pad expanded (data.expand_media_tokens; Qwen3-VL:
    `timestamps`, one timestamped block per temporal patch): what `build_example` must reproduce."""
    messages = [{"role": "user",
                 "content": [{"type": sample.data_type},
                             {"type": "text", "text": data.build_prompt_text(sample, "train")}]},

                {"role": "assistant", "content": assistant_text(sample)}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    text = expand_media_tokens(text, sample.data_type, grid_thw, timestamps=timestamps)
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def check_against_template(example: Example, tokenizer, system: str | None = None) -> None:
    """Raise ValueError (naming the sample) unless `example.ids` equal the chat template's own
    rendering."""
    ref = template_ids(tokenizer, example.sample, example.visual.grid_thw, system,
                       example.visual.timestamps)                                          # (T,)
    if not torch.equal(ref, example.ids):
        raise ValueError(f"sft.py: sample {example.sample.problem_id}: prompt + assistant ids "
                         f"differ from the chat template's rendering ({example.ids.numel()} vs "
                         f"{ref.numel()} tokens)")


def collate(examples: list[Example], pad_id: int):
    """Right-pad a micro-batch. Returns ids (B, T) long, attention_mask (B, T) long, labels (B, T)
    bool, visuals (list of B Visual) and owner [0..B-1] (row b uses visuals[b])."""
    T = max(e.ids.numel() for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)               # (B, T)
    attn = torch.zeros((len(examples), T), dtype=torch.long)                     # (B, T)
    labels = torch.zeros((len(examples), T), dtype=torch.bool)                  # (B, T)
    for b, e in enumerate(examples):
        n = e.ids.numel()
        ids[b, :n], attn[b, :n], labels[b, :n] = e.ids, 1, e.labels
    return ids, attn, labels, [e.visual for e in examples], list(range(len(examples)))


def batch_logprobs(module, examples: list[Example], pad_id: int, device,
                   loss_on: str = "assistant"):
    """Forward one micro-batch: returns log-probs (B, L) float32 and the matching label mask (B, L)
    float, L = T - first with first = the shortest prompt length ("assistant") or 1 ("all")."""
    ids, attn, labels, visuals, owner = collate(examples, pad_id)
    first = min(e.prompt_len for e in examples) if loss_on == "assistant" else 1
    lp = module(ids.to(device), attn.to(device), first, visuals, owner,
                media_in_prompt=False)                                                # (B, L)
    return lp, labels[:, first:].to(device).float()                              # (B, L), (B, L)


def per_sample_losses(logprobs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each row over its trained tokens: (B, L) float, (B, L) float 0/1 ->
    (B,) float."""
    return -(logprobs * labels).sum(1) / labels.sum(1).clamp(min=1)


# ---- schedule, data, evaluation -------------------------------------------------------------

def lr_at(step: int, total: int, cfg) -> float:
    """LR of optimizer step `step` (0-based) of `total`: linear warm-up to cfg.lr over warmup_steps,
    then linear decay to 0 at step `total` (HF's "linear" schedule, notes §4 SFT; official warm-up:
    none)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr * max(0.0, (total - step) / max(1, total - cfg.warmup_steps))


def main(argv=None):
    cfg, explicit = cfglib.parse(Config, argv, description=__doc__)
    cfg = finish_config(cfg, explicit)
    proc = distributed.init_distributed(cfg.device, cfg.dist_backend, cfg.dist_timeout_min)
    preflight.claim_out_dir(cfg.out_dir, cfg.resume, cfg.overwrite, proc, "sft.py")    # no 2 runs
    common.seed_everything(cfg.seed, proc)
    precision, dtype, compute = distributed.resolve_precision(cfg.precision, proc)       # S7
    # the built-in COT split and test split, and the tiny model, where the flags name none
    model_dir, train_json, eval_json = builtin.resolve(cfg, proc, start="tiny", split="train_cot")
    samples = preflight.check_data(cfg, train_json, heldout.parse_sets(eval_json), True)   # 1st
    hf, tokenizer, module, adapters, opt = common.build_policy(cfg, model_dir, proc, dtype, compute)
    amp = distributed.autocast(proc, precision, module)         # FSDP casts through its own policy
    media = common.media_config(cfg, hf.config)
    per_step = cfg.batch_size * cfg.grad_accum * proc.world
    total = cfg.steps if cfg.steps > 0 else max(1, math.ceil(cfg.epochs * len(samples) / per_step))
    system = SYSTEM_PROMPTS[cfg.system_prompt]
    eval_sets = []   # [(set name, [(prompt ids, visual, sample)])]: the SFT prompt, its system line
    if eval_json and cfg.eval_samples > 0:
        root = (cfg.eval_media_root or cfg.media_root or None) if cfg.eval_data else None
        for name, prepared in heldout.load_sets(eval_json, root, cfg.eval_samples, tokenizer,
                                                media, proc):
            examples = [build_example(p, tokenizer, cfg.loss_on, system) for p in prepared]
            eval_sets.append((name, [(e.ids[:e.prompt_len], e.visual, e.sample) for e in examples]))
    # sampled as the T-GRPO rollout, by the run's decode step
    eval_sampling = rollout.SamplingParams(1.0, 0.95, 50, 1.0, cfg.eval_max_new_tokens)
    decoder = decode.Decoder(cfg.compile_decode)
    pad_id = tokenizer.pad_token_id
    out_dir = Path(cfg.out_dir)
    run_config = asdict(cfg) | {"model": model_dir, "data": train_json, "eval_data": eval_json,
                                "world_size": proc.world, "total_steps": total}
    start, position = checkpoint.resume(cfg.resume, out_dir, module, opt, proc, run_config,
                                        cfg.allow_config_change, {}, "sft.py")
    # the next samples are decoded while the current step runs; undecodable media are skipped and
    # counted
    prefetch = loader.Prefetcher(loader.prompt_stream(samples, proc, cfg.seed, position), tokenizer,
                                 media, shuffled=False, seed=cfg.seed, rank=proc.rank,
                                 workers=cfg.data_workers, start_index=position,
                                 max_consecutive_skips=len(samples),          # all failed: stop
                                 cache=loader.FrameCache(cfg.frame_cache) if cfg.frame_cache
                                 else None)
    if proc.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(run_config, indent=2))
        print(f"model {model_dir} | data {train_json} ({len(samples)} samples) | {total} steps of "
              f"{per_step} samples | {proc.world} rank(s) on {proc.device}\n"
              f"frames/pixels: {asdict(media)}")
    # one row per step, to metrics.jsonl and the same rows to TensorBoard / wandb
    metrics = checkpoint.open_metrics(out_dir / "metrics.jsonl", start) if proc.main else None
    tracker = tracking.Tracker(cfg, out_dir, run_config, proc.main, start)
    preemption, preempted = distributed.Preemption(), False

    def log(row):
        if proc.main:
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
            tracker.log(row)

    def run_eval(step):
        if cfg.eval_samples > 0 and eval_json:
            row = {"step": step} | heldout.evaluate_sets(module, tokenizer, eval_sets,
                                                         eval_sampling, cfg.eval_batch, proc,
                                                         cfg.seed + 7, amp, decoder=decoder)
            log(row)
            if proc.main:
                tqdm.write(heldout.line(row))

    if start == 0:
        run_eval(0)
    # a SIGTERM at an evaluation or export step: do what the stopped run missed
    evaluate, export = common.missed_at_resume(start, total, cfg, out_dir, proc)
    if evaluate:
        run_eval(start)
    if export:
        common.export(module, tokenizer, out_dir / f"step_{start}", proc, adapters, model_dir,
                      run_config)
    hf.train()
    bar = tqdm(range(start, total), initial=start, total=total, disable=not proc.main, desc="SFT")
    for step in bar:
        t0 = time.time()
        micro, skipped = [], 0
        for _ in range(cfg.grad_accum):
            prepared, sk = prefetch.take(cfg.batch_size)
            micro.append([build_example(p, tokenizer, cfg.loss_on, system) for p in prepared])
            skipped += sk
        if step == start:
            check_against_template(micro[0][0], tokenizer, system)
        local_tok = sum(int(e.labels.sum()) for exs in micro for e in exs)
        # trained tokens, all ranks
        n_tok = float(distributed.all_reduce_sum(torch.tensor(float(local_tok)), proc))
        lr = lr_at(step, total, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        nll_sum = 0.0
        for i, exs in enumerate(micro):
            with distributed.no_sync(module, skip=i < len(micro) - 1), amp():
                lp, lab = batch_logprobs(module, exs, pad_id, proc.device,
                                         cfg.loss_on)                            # (B, L), (B, L)
                nll = -(lp * lab).sum()
                # DDP averages gradients over ranks, hence * world: the step's gradient is that of
                # the mean cross-entropy over all n_tok trained tokens (S4).
                (nll * proc.world / max(n_tok, 1.0)).backward()
            nll_sum += nll.item()
        grad_norm = common.clip_and_step(module, opt, cfg.max_grad_norm, nll_sum, proc,
                                         f"sft.py: step {step + 1}")
        summed = distributed.all_reduce_sum(torch.tensor([nll_sum, float(skipped)],
                                                         dtype=torch.float64), proc)
        row = {"step": step + 1, "epoch": (step + 1) * per_step / len(samples),
               "loss": summed[0].item() / max(n_tok, 1.0), "lr": lr, "tokens": int(n_tok),
               "grad_norm": float(grad_norm), "skipped_media": int(summed[1].item()),
               "step_time": time.time() - t0}
        log(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{lr:.1e}")
        if cfg.eval_every > 0 and (step + 1) % cfg.eval_every == 0 and step + 1 < total:
            run_eval(step + 1)
        preempted, saved = common.checkpoint_if_due(step + 1, cfg, preemption, module, opt, proc,
                                                    {}, prefetch.consumed,
                                                    run_config)          # SIGTERM -> save, stop
        if preempted:
            break
        if cfg.export_every > 0 and (step + 1) % cfg.export_every == 0:
            common.export(module, tokenizer, out_dir / f"step_{step + 1}", proc, adapters,
                          model_dir, run_config)
    prefetch.close()
    preemption.restore()
    if preempted:   # SIGTERM: the step finished and was checkpointed; no final evaluation or export
        tracker.close()
        if proc.main:
            metrics.close()
            curves.draw(out_dir / "metrics.jsonl")
            print(f"SIGTERM: stopped after step {step + 1}; resumable checkpoint {saved}; rerun "
                  f"the same command with --resume auto to continue", flush=True)
        module = None
        distributed.cleanup(proc)
        sys.exit(128 + signal.SIGTERM)                       # 143, the shell's code for SIGTERM

    run_eval(total)
    tracker.close()
    final = common.export(module, tokenizer, out_dir / "final", proc, adapters, model_dir,
                          run_config)
    if proc.main:
        metrics.close()
        print(decoder.summary())
        print(f"done: metrics {out_dir / 'metrics.jsonl'} | curves "
              f"{curves.draw(out_dir / 'metrics.jsonl')} | checkpoint {final}")
    # drop the wrapper before the process group: a DDP reducer outliving it can hang gloo
    module = None

    distributed.cleanup(proc)


if __name__ == "__main__":
    cfglib.run_main(main)
