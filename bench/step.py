"""Where a T-GRPO step's time goes: train.py's own step functions, each timed.

    python bench/step.py                          # tiny preset: 4 prompts/rank, G = 8, G̃ = 4,
                                                  # <= 96 new tokens
    python bench/step.py --steps 4 --G 4

The step is main's loop in train.py, call by call: decode (media decode + patchify + prompt tokens,
`pixels.prepare`, here in the main thread; train.py overlaps it with the step through
`loader.Prefetcher`), rollout (`rollout.rollout`: G ordered + G̃ shuffled completions per prompt,
one generate call), rewards (`train.rule_rewards`), advantages (`tgrpo.advantages`), and the update
(`train.train_step`: reference log-probs, policy forward, backward, clip, AdamW). The first step is
a warm-up and is not counted.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import builtin  # noqa: E402
import common  # noqa: E402
import data  # noqa: E402
import distributed  # noqa: E402
import loader  # noqa: E402
import pixels  # noqa: E402
import rollout  # noqa: E402
import tgrpo  # noqa: E402
import train  # noqa: E402
from model import PolicyLogprobs, load_policy  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    p.add_argument("--G", type=int, default=8)
    p.add_argument("--cache-dir", default="runs/cache")
    p.add_argument("--model", default="",
                   help="policy folder; empty: the built-in cold start (built once, minutes)")
    p.add_argument("--data", default="", help="training JSON; empty: the built-in training split")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (1: stable figures on a shared CPU)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    argv = ["--G", str(a.G), "--cache-dir", a.cache_dir, "--device", "cpu", "--model", a.model,
            "--data", a.data, "--preset", "tiny"]
    cfg = train.finish_config(*train.cfglib.parse(train.Config, argv, ""))
    proc = distributed.Dist()
    torch.manual_seed(cfg.seed)
    model_dir, train_json, _ = builtin.resolve(cfg, proc)
    hf, tok = load_policy(model_dir, torch.float32, proc.device)
    hf.model.visual.requires_grad_(not cfg.freeze_vision)  # as train.py (frozen in the tiny preset)
    policy = PolicyLogprobs(hf, cfg.logprob_chunk)
    ref_hf, _ = load_policy(model_dir, torch.float32, proc.device)
    reference = PolicyLogprobs(ref_hf.eval().requires_grad_(False), cfg.logprob_chunk)
    opt = torch.optim.AdamW(common.param_groups(hf, cfg.weight_decay, cfg.decay_norms), lr=cfg.lr)
    stream = loader.prompt_stream(data.load_samples(train_json), proc, cfg.seed)
    media = common.media_config(cfg, hf.config)
    sp = rollout.SamplingParams(cfg.temperature, cfg.top_p, cfg.top_k, cfg.repetition_penalty,
                                cfg.max_completion_length)
    gen = torch.Generator().manual_seed(cfg.seed)
    shuffle = cfg.temporal and cfg.G_shuffled > 0
    pad_id = tok.pad_token_id
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
            batch = [pixels.prepare(next(stream), tok, media, shuffle, "train",
                                    loader.sample_generator(cfg.seed, 0, i))
                     for i in range(step * cfg.prompts_per_rank, (step + 1) * cfg.prompts_per_rank)]
        hf.eval()
        with timer("rollout"):
            groups = rollout.rollout(hf, batch, cfg.G, cfg.G_shuffled, sp, pad_id,
                                     common.stop_ids(tok), gen)
        hf.train()
        with timer("rewards"):
            acc, fmt, lengths, sacc, is_video = train.rule_rewards(groups, tok, cfg.G_shuffled)
        with timer("advantages"):
            adv = tgrpo.advantages(acc, fmt, lengths, sacc, is_video, train.tgrpo_settings(cfg))
        b = rollout.policy_batch(groups, pad_id)
        with timer("train_step"):
            train.train_step(policy, reference, opt, b, adv.advantages.reshape(-1), step, cfg, proc,
                             nullcontext)
        if step == 0:
            times.clear()
            shape = (len(batch), tuple(b.input_ids.shape),
                     sum(v.pixel_values.shape[0] for v in b.visuals))
    med = {k: statistics.median(v) for k, v in times.items()}
    total_t = sum(med.values())
    print(f"command: python bench/step.py --steps {a.steps} --G {a.G}")
    print(f"tiny preset: {cfg.prompts_per_rank} prompts, G = {cfg.G}, G̃ = {cfg.G_shuffled}, "
          f"max {cfg.max_completion_length} "
          f"new tokens, frames <= {cfg.max_frames} at {cfg.video_max_pixels} px; "
          f"warm-up step batch {shape[0]} prompts, "
          f"sequences {shape[1]}, {shape[2]} patches; torch threads {torch.get_num_threads()}")
    for k, v in med.items():
        print(f"{k:20s} {v * 1000:8.1f} ms  {100 * v / total_t:5.1f} %   "
              f"runs {[round(x * 1000) for x in times[k]]}")
    print(f"{'step (sum of medians)':20s} {total_t * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
