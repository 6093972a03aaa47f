"""Where a T-GRPO step's time goes: train.py's step re-run piece by piece with timers (its own functions).

    python bench/step.py                          # tiny preset: 2 prompts/rank, G = 8, G̃ = 4, 48 new tokens
    python bench/step.py --steps 4 --G 4

Pieces (reference §1 steps 2–13): decode (media decode + patchify + prompt tokens, `loader.prepare`
in the main thread; train.py overlaps it with the step through `loader.Prefetcher`),
ordered rollout (G per prompt), shuffled rollout (G̃ per video prompt), rewards (+ bonuses and advantages),
policy log-probs (forward with grad), reference log-probs (no grad), backward, optimizer (clip + AdamW).
train.py runs the ordered and shuffled rollouts in one `rollout.generate` call; here they are two calls so
each has its own time (one extra prefill batch). The first step is a warm-up and is not counted.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
import loader  # noqa: E402
import distributed as D  # noqa: E402
import rollout  # noqa: E402
import tgrpo  # noqa: E402
import train  # noqa: E402
from model import PolicyLogprobs, load_policy  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    p.add_argument("--G", type=int, default=8)
    p.add_argument("--cache-dir", default="runs/cache")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: stable figures on a shared CPU)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    argv = ["--G", str(a.G), "--cache-dir", a.cache_dir, "--device", "cpu"]
    cfg = train.finish_config(*train.cfglib.parse(train.Config, argv, ""))
    d = D.Dist()
    torch.manual_seed(cfg.seed)
    model_dir, train_json = train.resolve_model_and_data(cfg, d)
    hf, tok = load_policy(model_dir, torch.float32, d.device)
    policy = PolicyLogprobs(hf, cfg.logprob_chunk)
    ref_hf, _ = load_policy(model_dir, torch.float32, d.device)
    reference = PolicyLogprobs(ref_hf.eval().requires_grad_(False), cfg.logprob_chunk)
    hf.model.visual.requires_grad_(not cfg.freeze_vision)                 # as train.py (frozen in the tiny preset)
    opt = torch.optim.AdamW([q for q in hf.parameters() if q.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    stream = train.prompt_stream(data.load_samples(train_json), d, cfg.seed)
    media = train.media_config(cfg)
    sp = rollout.SamplingParams(cfg.temperature, cfg.top_p, cfg.top_k, cfg.repetition_penalty, cfg.max_completion_length)
    gen = torch.Generator().manual_seed(cfg.seed)
    shuffle = cfg.temporal and cfg.G_shuffled > 0
    pad_id, stop_ids = tok.pad_token_id, [tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id]
    times = defaultdict(list)

    class timer:
        def __init__(self, name):
            self.name = name

        def __enter__(self):
            self.t = time.perf_counter()

        def __exit__(self, *exc):
            times[self.name].append(time.perf_counter() - self.t)

    for step in range(a.steps + 1):
        with timer("decode"):
            batch = [loader.prepare(next(stream), tok, media, shuffle, "train", loader.sample_generator(cfg.seed, 0, i))
                     for i in range(step * cfg.prompts_per_rank, (step + 1) * cfg.prompts_per_rank)]
        hf.eval()
        with timer("ordered rollout"):
            ordered = rollout.generate(hf, [b.prompt_ids for b in batch], [b.visual for b in batch],
                                       [cfg.G] * len(batch), sp, pad_id, stop_ids, gen)
        sh = [b for b in batch if b.shuffled_visual is not None]
        with timer("shuffled rollout"):
            shuffled = rollout.generate(hf, [b.shuffled_ids for b in sh], [b.shuffled_visual for b in sh],
                                        [cfg.G_shuffled] * len(sh), sp, pad_id, stop_ids, gen) if sh else []
        hf.train()
        it = iter(shuffled)
        groups = [(o, next(it) if b.shuffled_visual is not None else None) for o, b in zip(ordered, batch)]
        with timer("rewards"):
            acc, fmt, lengths, sacc = train.score(batch, groups, tok, cfg)
            is_video = torch.tensor([b.shuffled_visual is not None for b in batch])
            total, adv, *_ = train.compute_advantages(acc, fmt, lengths, sacc, is_video, cfg)
        ids, attn, P, cmask, old_lp, vis, owner = train.sequences(batch, groups, pad_id)
        with timer("reference log-probs"), torch.no_grad():
            ref_lp = reference(ids, attn, P, vis, owner)                       # (N, L)
        opt.zero_grad(set_to_none=True)
        with timer("policy log-probs"):
            lp = policy(ids, attn, P, vis, owner)                              # (N, L)
            loss, _ = tgrpo.policy_loss(lp, None, ref_lp, adv.reshape(-1), cmask, cfg.clip_eps, None, cfg.beta,
                                        cfg.loss_agg, num_sequences=float(ids.shape[0]), num_tokens=float(cmask.sum()),
                                        max_len=cfg.max_completion_length)
        with timer("backward"):
            loss.backward()
        with timer("optimizer"):
            torch.nn.utils.clip_grad_norm_(hf.parameters(), cfg.max_grad_norm)
            opt.step()
        if step == 0:
            times.clear()
            shape = (len(batch), ids.shape, sum(v.pixel_values.shape[0] for v in vis))
    med = {k: statistics.median(v) for k, v in times.items()}
    total_t = sum(med.values())
    print(f"command: python bench/step.py --steps {a.steps} --G {a.G}")
    print(f"tiny preset: {cfg.prompts_per_rank} prompts, G = {cfg.G}, G̃ = {cfg.G_shuffled}, max {cfg.max_completion_length} "
          f"new tokens, frames <= {cfg.max_frames} at {cfg.video_max_pixels} px; warm-up step batch {shape[0]} prompts, "
          f"sequences {tuple(shape[1])}, {shape[2]} patches; torch threads {torch.get_num_threads()}")
    for k, v in med.items():
        print(f"{k:20s} {v * 1000:8.1f} ms  {100 * v / total_t:5.1f} %   runs {[round(x * 1000) for x in times[k]]}")
    print(f"{'step (sum of medians)':20s} {total_t * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
