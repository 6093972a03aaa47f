"""Held-out evaluation during training: K sampled completions per held-out prompt, scored by the rule rewards.

sft.py and train.py call `evaluate` before the first step, every `--eval-every` steps and after the last, and
write its row ({"step", "eval_format", "eval_accuracy", "eval_length", "eval_n"}) into metrics.jsonl, where
curves.py draws it with markers. It answers "did the policy get better?" on prompts the run never trains on,
which a T-GRPO run's own accuracy reward cannot: that mean moves with which prompts each step drew (the top
README's "The built-in recipe": a run at learning rate 0 saw its reward rise as much as a real run's).
"""
from __future__ import annotations

import sys

import torch

import common
import data
import distributed
import pixels
import rewards
import rollout


def load(path: str, media_root: str | None, n: int, tokenizer, media: pixels.MediaConfig,
         proc: distributed.Dist) -> list[pixels.Prepared]:
    """The first `n` samples of the held-out JSON `path`, this rank's share (every world-th, so the ranks
    together hold all n), each prepared like a training prompt (pixels.prepare, ordered frames).
    A sample whose media cannot be read is left out and named on stderr (departure L2: never replaced).
    Raises what data.load_samples raises for a bad file (naming the file, entry and field), and ValueError on every
    rank (one all-reduce, made on every rank) when not one of the n samples could be read: an evaluation of no
    prompt would log accuracy 0.0 (e.g. media resolved against the wrong root; train.py's --eval-media-root)."""
    out, asked = [], data.load_samples(path, media_root)[:n]
    for s in asked[proc.rank::proc.world]:
        try:
            out.append(pixels.prepare(s, tokenizer, media))
        except pixels.MediaError as e:
            print(f"[skip eval] {e}", file=sys.stderr)
    if asked and int(distributed.all_reduce_sum(torch.tensor(len(out)), proc)) == 0:
        raise ValueError(f"{path}: none of its {len(asked)} held-out samples has readable media, resolved against "
                         f"{media_root or 'the JSON folder'} (e.g. {asked[0].media_path}); set --eval-media-root")
    return out


@torch.no_grad()
def evaluate(module, tokenizer, prompts: list[tuple[torch.Tensor, pixels.Visual, data.Sample]],
             sampling: rollout.SamplingParams, batch: int, proc: distributed.Dist, seed: int, amp,
             completions: int = 1, decoder=None) -> dict:
    """Sample `completions` (K >= 1) completions per prompt and score each (rewards.py): with K the figure's
    sampling noise shrinks like 1/sqrt(K x prompts) (one completion on 128 prompts: about ±0.044).

    module: the policy as wrapped for training (its full weights are gathered for generation; its train/eval
    mode is restored); prompts: (prompt ids (P,) long, Visual, Sample) of this rank; sampling: as the
    rollout's (T-GRPO) or the SFT default (temperature 1.0, top-p 0.95, top-k 50); batch: prompts per
    generate call; seed: the sampling generator is seeded with seed + rank at every call, so two
    evaluations of one policy draw the same random numbers and a before/after difference is the policy's;
    decoder: the run's decode.Decoder (default: a new eager one).
    Returns {"eval_format": share with format reward 1, "eval_accuracy": mean accuracy reward (0..1),
    "eval_length": mean completion tokens (incl. the stop token), "eval_n": prompts} over all completions of all ranks
    (a collective: every rank calls it, with any number of prompts, 0 included). Raises nothing of its own.
    """
    gen = torch.Generator(device=proc.device).manual_seed(seed + proc.rank)
    stops = common.stop_ids(tokenizer)
    sums = torch.zeros(4, dtype=torch.float64)                     # format, accuracy, length, completions
    hf_train = distributed.unwrap(module).hf.training
    with distributed.full_weights(module) as hf, amp():
        hf.eval()
        for s in range(0, len(prompts), batch):
            chunk = prompts[s:s + batch]
            outs = rollout.generate(hf, [p[0] for p in chunk], [p[1] for p in chunk], [completions] * len(chunk),
                                    sampling, tokenizer.pad_token_id, stops, gen, decoder)
            for (_, _, sample), c in zip(chunk, outs):                   # c.ids: (K, L) long, c.lengths: (K,)
                for k, text in enumerate(tokenizer.batch_decode(c.ids, skip_special_tokens=True)):
                    sums += torch.tensor([rewards.format_reward(text) == 1.0,
                                          rewards.accuracy_reward(text, sample.solution, sample.problem_type),
                                          float(c.lengths[k]), 1.0], dtype=torch.float64)
        hf.train(hf_train)
    sums = distributed.all_reduce_sum(sums, proc)
    n = max(1.0, sums[3].item())                                                  # completions scored
    return {"eval_format": sums[0].item() / n, "eval_accuracy": sums[1].item() / n, "eval_length": sums[2].item() / n,
            "eval_n": round(sums[3].item()) // completions}


def line(row: dict) -> str:
    """The one-line summary both entry points print after an evaluation."""
    return (f"eval @ step {row['step']}: accuracy {row['eval_accuracy']:.3f} format {row['eval_format']:.3f} "
            f"length {row['eval_length']:.1f} (n={row['eval_n']} prompts)")
