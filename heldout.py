"""Held-out evaluation during training: K sampled completions per held-out prompt, scored by the
rule rewards.

sft.py and train.py call `evaluate_sets` before the first step, every `--eval-every` steps and after
the last, and write its row into metrics.jsonl, where curves.py draws it with markers: {"step",
"eval_format", "eval_accuracy", "eval_length", "eval_n"} for one unnamed set (`--eval-data FILE`),
and for named sets (`--eval-data reversed=FILE --eval-data following=FILE`, `parse_sets`) the same
four per set, named "eval_accuracy/reversed" and so on (`key`), which the trackers show as
eval/accuracy/reversed. It answers "did the policy get better?" on prompts the run never trains on,
which a T-GRPO run's own accuracy reward cannot: that mean moves with which prompts each step drew
(the top README's "The built-in recipe": a run at learning rate 0 saw its reward rise as much as a
real run's).
"""
from __future__ import annotations

import sys

import torch

import common
import data
import distributed
import pixels
import records
import rewards
import rollout
from config import UserError


def parse_sets(spec: str) -> list[tuple[str, str]]:
    """--eval-data's value -> [(set name, held-out JSON path)], in the order given. Entries are
    comma-separated (a repeated --eval-data flag joins its values with commas, config.parse):
    NAME=FILE names a set; a bare FILE is the one unnamed set (name "", logged as eval_accuracy,
    ...) and must stand alone. "" -> []. Raises ValueError naming the entry for an empty file, a
    name other than letters, digits, "_", "-", ".", a name given twice, or a bare FILE beside other
    sets."""
    import re
    sets = []
    for entry in (e.strip() for e in spec.split(",") if e.strip()):
        name, sep, path = entry.partition("=")
        name, path = (name.strip(), path.strip()) if sep else ("", entry)
        if not path or (sep and not re.fullmatch(r"[A-Za-z0-9_.-]+", name)):
            raise UserError(f"--eval-data {entry!r}: expected NAME=FILE (NAME of letters, digits, "
                            f"_ - .) or FILE")
        if any(n == name for n, _ in sets):
            raise UserError(f"--eval-data: the set name {name!r} is given twice")
        sets.append((name, path))
    if len(sets) > 1 and any(n == "" for n, _ in sets):
        raise UserError(f"--eval-data {spec!r}: with several sets every one needs a name "
                        f"(NAME=FILE)")
    return sets


def key(metric: str, name: str) -> str:
    """The metrics.jsonl key of `metric` ("accuracy", "format", "length", "n") for held-out set
    `name`: "eval_accuracy" for the unnamed set, "eval_accuracy/NAME" for a named one."""
    return f"eval_{metric}" + (f"/{name}" if name else "")


def load(path: str, media_root: str | None, n: int, tokenizer, media: pixels.MediaConfig,
         proc: distributed.Dist) -> list[pixels.Prepared]:
    """The first `n` samples of the held-out JSON `path`, this rank's share (every world-th, so the
    ranks together hold all n), each prepared like a training prompt (pixels.prepare, ordered
    frames). A sample whose media cannot be read is left out and named on stderr (departure L2:
    never replaced). Raises what data.load_samples raises for a bad file (naming the file, entry and
    field), and ValueError on every rank (one all-reduce, made on every rank) when not one of the n
    samples could be read: an evaluation of no prompt would log accuracy 0.0 (e.g. media resolved
    against the wrong root; train.py's --eval-media-root)."""
    out, asked = [], data.load_samples(path, media_root)[:n]
    for s in asked[proc.rank::proc.world]:
        try:
            out.append(pixels.prepare(s, tokenizer, media))
        except pixels.MediaError as e:
            print(f"[skip eval] {e}", file=sys.stderr)
    if asked and int(distributed.all_reduce_sum(torch.tensor(len(out)), proc)) == 0:
        raise UserError(f"{path}: none of its {len(asked)} held-out samples has readable media, "
                        f"resolved against {media_root or 'the JSON folder'} (e.g. "
                        f"{asked[0].media_path}); set --eval-media-root")
    return out


@torch.no_grad()
def evaluate(module, tokenizer, prompts: list[tuple[torch.Tensor, pixels.Visual, data.Sample]],
             sampling: rollout.SamplingParams, batch: int, proc: distributed.Dist, seed: int, amp,
             completions: int = 1, decoder=None, recs: list | None = None) -> dict:
    """Sample `completions` (K >= 1) completions per prompt and score each (rewards.py): with K the
    figure's sampling noise shrinks like 1/sqrt(K x prompts) (one completion on 128 prompts: about
    ±0.044).

    module: the policy as wrapped for training (its full weights are gathered for generation; its
    train/eval mode is restored); prompts: (prompt ids (P,) long, Visual, Sample) of this rank;
    sampling: as the rollout's (T-GRPO) or the SFT default (temperature 1.0, top-p 0.95, top-k 50);
    batch: prompts per generate call; seed: the sampling generator is seeded with seed + rank at
    every call, so two evaluations of one policy draw the same random numbers and a before/after
    difference is the policy's; decoder: the run's decode.Decoder (default: a new eager one); recs:
    a list to append this rank's rollout records to (records.scored_record; a prompt tuple's
    optional 4th item, records.Media, gives its frames). Returns {"eval_format": share with format
    reward 1, "eval_accuracy": mean accuracy reward (0..1), "eval_length": mean completion tokens
    (incl. the stop token), "eval_n": prompts} over all completions of all ranks (a collective:
    every rank calls it, with any number of prompts, 0 included). Raises nothing of its own.
    """
    gen = torch.Generator(device=proc.device).manual_seed(seed + proc.rank)
    stops = common.stop_ids(tokenizer)
    sums = torch.zeros(4, dtype=torch.float64)      # format, accuracy, length, completions
    hf_train = distributed.unwrap(module).hf.training
    with distributed.full_weights(module) as hf, amp():
        hf.eval()
        for s in range(0, len(prompts), batch):
            chunk = prompts[s:s + batch]
            outs = rollout.generate(hf, [p[0] for p in chunk], [p[1] for p in chunk],
                                    [completions] * len(chunk), sampling, tokenizer.pad_token_id,
                                    stops, gen, decoder)
            # c.ids: (K, L) long, c.lengths: (K,)
            for (_, _, sample, *media), c in zip(chunk, outs):
                texts, accs = tokenizer.batch_decode(c.ids, skip_special_tokens=True), []
                for k, text in enumerate(texts):
                    accs.append(rewards.accuracy_reward(text, sample.solution, sample.problem_type))
                    sums += torch.tensor([rewards.format_reward(text) == 1.0, accs[-1],
                                          float(c.lengths[k]), 1.0], dtype=torch.float64)
                if recs is not None:
                    recs.append(records.scored_record(sample, media[0] if media else None, texts,
                                                      c.lengths.tolist(), accs, 0, proc.rank,
                                                      "heldout"))
        hf.train(hf_train)
    sums = distributed.all_reduce_sum(sums, proc)
    n = max(1.0, sums[3].item())                                                # completions scored
    return {"eval_format": sums[0].item() / n, "eval_accuracy": sums[1].item() / n,
            "eval_length": sums[2].item() / n, "eval_n": round(sums[3].item()) // completions}


def load_sets(spec: str, media_root: str | None, n: int, tokenizer, media: pixels.MediaConfig,
              proc: distributed.Dist) -> list[tuple[str, list[pixels.Prepared]]]:
    """[(name, this rank's prepared prompts)] of every set of --eval-data `spec` (`parse_sets`;
    `load` on each file: its first n samples, every world-th on this rank). Raises what parse_sets
    and load raise."""
    return [(name, load(path, media_root, n, tokenizer, media, proc))
            for name, path in parse_sets(spec)]


def evaluate_sets(module, tokenizer, sets: list[tuple[str, list]], sampling: rollout.SamplingParams,
                  batch: int, proc: distributed.Dist, seed: int, amp, completions: int = 1,
                  decoder=None, recs: list | None = None) -> dict:
    """`evaluate` on every held-out set in order, [(name, this rank's prompts)] as `parse_sets`
    names them, with the same seed for each. Returns one row {key(metric, name): value} over all
    sets (`key`: "eval_accuracy" for the unnamed set, "eval_accuracy/NAME" otherwise). A collective:
    every rank passes the same names in the same order, with any share of each set, 0 prompts
    included. recs: as `evaluate` (each record's "set" names its set)."""
    row = {}
    for name, prompts in sets:
        mine = None if recs is None else []
        got = evaluate(module, tokenizer, prompts, sampling, batch, proc, seed, amp, completions,
                       decoder, mine)
        if recs is not None:
            recs += [r | {"set": name} for r in mine]
        row |= {key(k[len("eval_"):], name): v for k, v in got.items()}
    return row


def line(row: dict) -> str:
    """The one-line summary both entry points print after an evaluation: each set's accuracy,
    format, length and prompts (named sets prefixed by their name)."""
    names = sorted({k.partition("/")[2] for k in row if k.startswith("eval_accuracy")})
    parts = [(f"{n}: " if n else "")
             + f"accuracy {row[key('accuracy', n)]:.3f} format {row[key('format', n)]:.3f} "
             f"length {row[key('length', n)]:.1f} (n={row[key('n', n)]} prompts)" for n in names]
    return f"eval @ step {row['step']}: " + " | ".join(parts)
