"""Group sampling: G completions per prompt on ordered frames, G̃ on shuffled (notes §1 steps 4–6).

No repeated work (L8; the official trainer tiles pixels G times and prefills each prompt G times):
1. every distinct prompt (an ordered video, its shuffled copy, an image) is prefilled ONCE, its
   visual features computed once, in one left-padded batch;
2. each row's prompt K/V is copied from the prefill's cache into the decoder's static cache,
   G (or G̃) rows per prompt (decode.py);
3. all continuations decode together, one token per step (L15: eager or compiled, no host sync per
   token), with explicit sampling (L7): temperature, top-p, top-k and repetition penalty are always
   passed in, never read from the checkpoint (notes §9 item 17: a 7B's config is near-greedy).

Stop tokens (L4): `<|im_end|>` and `<|endoftext|>`; the completion mask runs up to and including the
first one (the official mask looks only for `<|im_end|>`, notes §9 item 18).
Cut: the official vLLM/HF generate path and its pixel tiling.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from transformers import DynamicCache

import tracking
from decode import Decoder
from model import Visual, embed_with_visuals, rope_positions
from pixels import Prepared


@dataclass
class SamplingParams:
    """Every sampling knob, explicit (notes §1 step 5: temperature 1, top_p 0.95, 768 tokens)."""
    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 0                  # 0 = off
    repetition_penalty: float = 1.0  # 1.0 = off
    max_new_tokens: int = 768


@dataclass
class Completions:
    """n sampled continuations of one prompt."""
    ids: torch.Tensor        # (n, L) long, the pad id after the stop token
    mask: torch.Tensor       # (n, L) float, 1 up to and including the first stop token
    lengths: torch.Tensor    # (n,) long = mask.sum(1), counts the stop token (notes §1 step 12)
    logprobs: torch.Tensor   # (n, L) float32, the sampler's at temperature 1; 0 where mask is 0


def left_pad(seqs: list[torch.Tensor], pad_id: int):
    """Stack 1-D long tensors left-padded: ids (B, P) long and attention_mask (B, P) long."""
    P = max(s.numel() for s in seqs)
    ids = torch.full((len(seqs), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), P), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, P - s.numel():] = s
        mask[i, P - s.numel():] = 1
    return ids, mask


class Prefill(NamedTuple):
    """One prefill of a batch's distinct prompts, its rows laid out for decode.Decoder.run."""
    cache: DynamicCache      # over the B prompts, P tokens, left-padded
    rows: torch.Tensor       # (R,) long, each row's prompt
    ids: torch.Tensor        # (R, P) long, the rows' prompt ids
    attn: torch.Tensor       # (R, P) long, their masks
    logits: torch.Tensor     # (R, V) float32, the first completion token's
    next_pos: torch.Tensor   # (R,) long, its position on all three mRoPE axes


@torch.no_grad()
def prefill(hf, prompts: list[torch.Tensor], visuals: list[Visual], n: list[int],
            pad_id: int) -> Prefill | None:
    """Prefill each distinct prompt once (L8), lay out n[i] rows for prompt i; None if no rows."""
    device = hf.lm_head.weight.device
    ids, attn = left_pad(prompts, pad_id)                                      # (B, P)
    ids, attn = ids.to(device), attn.to(device)
    owner = list(range(len(prompts)))
    position_ids, _ = rope_positions(hf, ids, attn, visuals, owner)            # (3, B, P)
    embeds, extra = embed_with_visuals(hf, ids, visuals, owner)       # (B, P, D), DeepStack inputs
    cache = DynamicCache(config=hf.config.text_config)
    out = hf.model.language_model(inputs_embeds=embeds, attention_mask=attn,
                                  position_ids=position_ids, past_key_values=cache, use_cache=True,
                                  **extra)
    rows = torch.tensor([i for i, k in enumerate(n) for _ in range(k)], dtype=torch.long,
                        device=device)                                         # (R,)
    if rows.numel() == 0:
        return None
    logits = hf.lm_head(out.last_hidden_state[:, -1][rows]).float()           # (R, V)
    # Completion token j sits at (last prompt position + 1 + j) on all three mRoPE axes, as in a
    # full-sequence forward (model.rope_positions), so the log-prob pass matches.
    return Prefill(cache, rows, ids[rows], attn[rows], logits, position_ids[0, :, -1][rows] + 1)


@torch.no_grad()
def generate(hf, prompts: list[torch.Tensor], visuals: list[Visual], n: list[int],
             sp: SamplingParams, pad_id: int, stop_ids: list[int],
             generator: torch.Generator | None = None,
             decoder: Decoder | None = None) -> list[Completions]:
    """n[i] completions (L: the batch's longest) of prompt i, (P_i,) long, one prefill per prompt.

    hf has full weights; decoder is the run's (weights, cache, compiled step reused; default eager).
    """
    if not len(prompts) == len(visuals) == len(n):
        raise ValueError(f"prompts ({len(prompts)}), visuals ({len(visuals)}) and n ({len(n)}) "
                         "must match")
    if not prompts:                                # a rank whose share of a batch is empty
        return []
    t0 = tracking.now(hf.lm_head.weight.device)
    pre = prefill(hf, prompts, visuals, n, pad_id)
    if decoder is not None:                                  # perf/time_prefill (train.py)
        decoder.prefill_seconds += tracking.now(hf.lm_head.weight.device) - t0
    if pre is None:
        return [_empty(hf.lm_head.weight.device) for _ in prompts]
    seen = None
    if sp.repetition_penalty != 1.0:
        seen = torch.zeros_like(pre.logits, dtype=torch.long)                  # (R, V)
        seen = seen.scatter_add_(1, pre.ids, pre.attn) > 0                      # prompt tokens seen
    comp, lp = (decoder or Decoder("off")).run(hf, pre.cache, pre.rows, pre.attn, pre.logits,
                                               pre.next_pos, seen, sp, pad_id, stop_ids,
                                               generator)                     # (R, N) each
    del pre
    mask = completion_mask(comp, stop_ids)                                     # (R, N)
    L = int(mask.sum(1).max())                                                 # the longest
    comp, mask, lp = comp[:, :L], mask[:, :L], lp[:, :L]                       # (R, L)
    comp = torch.where(mask.bool(), comp, torch.full_like(comp, pad_id))
    result, start = [], 0
    for k in n:
        sl = slice(start, start + k)
        result.append(Completions(comp[sl], mask[sl], mask[sl].sum(1).long(),
                                  lp[sl] * mask[sl]))
        start += k
    return result


def completion_mask(ids: torch.Tensor, stop_ids: list[int]) -> torch.Tensor:
    """(R, L) long -> (R, L) float: 1 up to and including the first stop token; the whole row
    when there is none (a truncated completion, notes §1 step 6)."""
    is_stop = torch.isin(ids, torch.tensor(stop_ids, device=ids.device))      # (R, L)
    before = is_stop.long().cumsum(1) - is_stop.long()                         # stops before t
    return (before == 0).float()


def _empty(device) -> Completions:
    z = torch.zeros(0, 1, device=device)
    return Completions(z.long(), z, torch.zeros(0, dtype=torch.long, device=device), z)


# ---- groups and the batch the loss eats (notes §1 steps 5–7) -------------------------------

@dataclass
class Group:
    """One prompt's group of completions."""
    prepared: Prepared
    ordered: Completions                  # G on ordered frames
    shuffled: Completions | None = None   # G̃ on shuffled frames; None for images and plain GRPO


def rollout(model, batch: list[Prepared], G: int, G_shuffled: int, sp: SamplingParams, pad_id: int,
            stop_ids: list[int], generator: torch.Generator | None = None,
            decoder: Decoder | None = None) -> list[Group]:
    """One Group per sample, all sampled in one `generate` call: G ordered completions each, and G̃
    shuffled ones where the loader made a shuffled copy. `model` holds full weights."""
    prompts, visuals, n = [], [], []
    for p in batch:
        prompts.append(p.prompt_ids)
        visuals.append(p.visual)
        n.append(G)
        if p.shuffled_visual is not None:                  # videos under T-GRPO
            prompts.append(p.shuffled_ids)
            visuals.append(p.shuffled_visual)
            n.append(G_shuffled)
    outs = iter(generate(model, prompts, visuals, n, sp, pad_id, stop_ids, generator, decoder))
    return [Group(p, next(outs), next(outs) if p.shuffled_visual is not None else None)
            for p in batch]


@dataclass
class PolicyBatch:
    """What the log-prob pass eats: N = B·G rows, left-padded prompt + right-padded completion."""
    input_ids: torch.Tensor        # (N, P+L) long
    attention_mask: torch.Tensor   # (N, P+L) long
    prompt_len: int                # P
    completion_mask: torch.Tensor  # (N, L) float, 1 up to and including the stop token
    old_logprobs: torch.Tensor     # (N, L) float32, the sampler's
    visuals: list[Visual]          # one per group
    owner: list[int]               # (N,): row -> index into visuals

    def to(self, device) -> PolicyBatch:
        """The same batch with its tensors on `device`."""
        return PolicyBatch(self.input_ids.to(device), self.attention_mask.to(device),
                           self.prompt_len, self.completion_mask.to(device),
                           self.old_logprobs.to(device), self.visuals, self.owner)


def policy_batch(groups: list[Group], pad_id: int) -> PolicyBatch:
    """The loss's batch: the ordered completions only (the shuffled ones just supply p̃,
    notes §1 step 7)."""
    prompts, owner = [], []
    for b, g in enumerate(groups):
        prompts += [g.prepared.prompt_ids] * g.ordered.ids.shape[0]
        owner += [b] * g.ordered.ids.shape[0]
    ids, attn = left_pad(prompts, pad_id)                                      # (N, P)
    L = max(g.ordered.ids.shape[1] for g in groups)

    def pad(t, v):
        return F.pad(t.cpu(), (0, L - t.shape[1]), value=v)                    # right-pad to L

    cids = torch.cat([pad(g.ordered.ids, pad_id) for g in groups])            # (N, L)
    cmask = torch.cat([pad(g.ordered.mask, 0.0) for g in groups])             # (N, L)
    old = torch.cat([pad(g.ordered.logprobs, 0.0) for g in groups])           # (N, L)
    return PolicyBatch(torch.cat([ids, cids], 1), torch.cat([attn, cmask.long()], 1), ids.shape[1],
                       cmask, old, [g.prepared.visual for g in groups], owner)
