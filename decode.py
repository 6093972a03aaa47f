"""The decode step: one new token per row over a static KV cache, one pure function run eager or
compiled (L15).

gpt-fast's recipe in plain PyTorch. `rollout.generate` prefills every distinct prompt once with the
HF model (visual features, 3-D mRoPE), then hands the prompt's K/V to a `Decoder`, which copies them
into a cache allocated once and calls `decode_step` once per new token. The step reads nothing the
graph cannot keep: the decoder's weights live in a persistent copy (`Weights`, stacked per layer, in
the dtype the rollout computes in) refreshed in place at every `Decoder.run`, so after each
optimizer step; the cache, the sampled tokens and the noise live in buffers (`State`) that the step
updates in place. So `torch.compile(decode_step, fullgraph=True)` traces it once per bucket of
shapes, and on CUDA ("reduce-overhead") replays it as one CUDA graph per token instead of ~100
kernel launches per layer.

    python bench/rollout.py              # eager vs compiled ms per decode step
                                         # (CPU: tiny and narrow 7B)
    python train.py --compile-decode on  # compiled on CPU too
                                         # (auto: compiled on CUDA, eager on CPU)

What the step computes, per row (R rows: a prompt's G ordered and G̃ shuffled continuations, plus
dummy rows):
- the decoder for one text token (Qwen2.5-VL's, or Qwen3-VL's with its RMSNorm on each query and key
  head before RoPE; Qwen3-VL's interleaved mRoPE lays the three axes' bands out differently, which
  changes nothing when the three positions are equal). A text token carries the same position on
  mRoPE's three axes (model.rope_positions), and mRoPE only chooses, per frequency band, which
  axis's position to rotate by: with equal positions every band rotates by the same one, so mRoPE is
  plain 1-D RoPE at the row's position here;
- grouped-query attention over the cache that reads each KV head once: the H query heads are viewed
  as (KV heads, H / KV) and multiplied with their own head's keys (no `repeat_kv` copy); it reads
  only the live columns: the cache viewed up to the next multiple of LIVE_MULTIPLE past the
  column written (chosen on the host, one graph per live length); scores in the compute dtype,
  float32 only inside the softmax (as HF's eager attention);
- the lm_head, then the sampler (`sample`): `filter_logits` (repetition penalty, temperature, top-k,
  top-p) and an exact categorical draw by the exponential race, argmax(p / E) with E ~ Exp(1) drawn
  outside the step from the run's generator (P(argmax = i) = p_i / Σ p: the same distribution as
  `torch.multinomial`).

No host sync per token: "all rows done" is read every DONE_EVERY steps; a finished row keeps
emitting the pad id with log-prob 0, and the output is cut to the longest completion, so the result
is the one an every-step check gives. When compiled, rows are padded with dummy rows to a multiple
of ROW_MULTIPLE and the cache length rounded up to a multiple of CACHE_MULTIPLE; a state grows only,
and a smaller call reuses it, so a run compiles one graph per growth and live length (logged by
`Decoder.summary`). Every write of the step lands in place in the compiled graph too
(tests/test_decode_cost.py reads inductor's graph for it).

Departures (docs/departures.md):
  L15 a static-cache decode step of our own, exponential-race sampling, a merged bf16 copy of the
  decoder
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import decode_hybrid as hybrid

DONE_EVERY = 32          # decode steps between host reads of "all rows done"
ROW_MULTIPLE = 8         # compiled: rows padded with dummy rows to a multiple of this
CACHE_MULTIPLE = 256     # compiled: cache length rounded up to a multiple of this (tokens)
LIVE_MULTIPLE = 256      # attention reads the cache up to the next multiple of this past the column
                         # written (tokens)
COMPILE_MODES = ("auto", "on", "off")


@dataclass
class Weights:
    """The decoder's weights as the decode step reads them, stacked per layer (NL layers, width D, H
    query heads and KV key/value heads of head_dim hd, MLP width I, vocabulary V), in one dtype on
    one device: embed (V, D); ln1, ln2 (NL, D); qkv (NL, (H + 2 KV)·hd, D) with qkv_bias (NL, (H + 2
    KV)·hd): q, k, v projections stacked (bias zeros where the model has none); q_norm, k_norm (NL,
    hd): Qwen3-VL's per-head RMSNorm weights (all ones and unused when qk_norm is False); o (NL, D,
    H·hd); gate_up (NL, 2I, D): gate then up; down (NL, D, I); norm (D,); lm_head (V, D); inv_freq
    (hd/2,) float32, RoPE's inverse frequencies; rope_scale: RoPE's attention scaling."""
    embed: torch.Tensor
    ln1: torch.Tensor
    qkv: torch.Tensor
    qkv_bias: torch.Tensor
    q_norm: torch.Tensor
    k_norm: torch.Tensor
    o: torch.Tensor
    ln2: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor
    norm: torch.Tensor
    lm_head: torch.Tensor
    inv_freq: torch.Tensor
    heads: int
    kv_heads: int
    head_dim: int
    eps: float
    rope_scale: float
    qk_norm: bool = False


def allocate_weights(hf, dtype: torch.dtype, device) -> Weights:
    """Empty `Weights` for the decoder of `hf` (a Qwen2.5-VL or Qwen3-VL; only its config, rotary
    embedding and first layer's modules are read: q_norm / k_norm on the attention mean per-head
    query/key norms).
    Raises ValueError for a decoder the step does not implement (sliding-window layers, an
    activation other than SiLU)."""
    c = hf.config.text_config
    if getattr(c, "use_sliding_window", False) or c.hidden_act != "silu":
        raise ValueError(f"decode step: needs full attention and SiLU, got use_sliding_window="
                         f"{getattr(c, 'use_sliding_window', False)}, hidden_act={c.hidden_act!r}")
    NL, D, I, V = c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.vocab_size
    H, KV = c.num_attention_heads, c.num_key_value_heads
    hd = getattr(c, "head_dim", None) or D // H
    rot = hf.model.language_model.rotary_emb
    e = lambda *shape: torch.zeros(*shape, dtype=dtype, device=device)
    qk_norm = hasattr(hf.model.language_model.layers[0].self_attn, "q_norm")
    return Weights(e(V, D), e(NL, D), e(NL, (H + 2 * KV) * hd, D), e(NL, (H + 2 * KV) * hd),
                   e(NL, hd) + 1, e(NL, hd) + 1, e(NL, D, H * hd), e(NL, D), e(NL, 2 * I, D),
                   e(NL, D, I), e(D), e(V, D), rot.inv_freq.detach().float().to(device).clone(),
                   H, KV, hd, float(c.rms_norm_eps), float(rot.attention_scaling), qk_norm)


def effective_weight(linear: torch.nn.Module) -> torch.Tensor:
    """The weight (out, in) a Linear applies: its own (in its dtype), or under PEFT LoRA the base
    weight plus each active adapter's delta (alpha / r) B A from PEFT's `get_delta_weight`, summed
    in float32. Raises ValueError for a weight that is still an FSDP shard (call inside
    distributed.full_weights) or for a DoRA adapter."""
    base = getattr(linear, "base_layer", None)
    w = (base if base is not None else linear).weight
    from torch.distributed.tensor import DTensor
    if isinstance(w, DTensor):
        raise ValueError("decode weights: an FSDP-sharded weight; "
                         "refresh inside distributed.full_weights")
    if base is None or linear.merged or linear.disable_adapters:
        return w.detach()
    w = w.detach().float()
    for name in linear.active_adapters:
        if name in linear.lora_A:
            if linear.use_dora.get(name, False):
                raise ValueError(f"decode weights: DoRA adapter {name!r} "
                                 f"cannot be merged into the decode copy")
            w = w + linear.get_delta_weight(name).float()
    return w


def refresh(w: Weights, hf) -> None:
    """Copy `hf`'s current decoder, embedding, final norm and lm_head into `w` in place (LoRA
    adapters merged), so the compiled step's inputs keep their addresses. Call with full weights
    (distributed.full_weights)."""
    lm = hf.model.language_model
    bias = lambda m: (getattr(m, "base_layer", m)).bias
    with torch.no_grad():
        w.embed.copy_(lm.embed_tokens.weight)
        w.norm.copy_(lm.norm.weight)
        w.lm_head.copy_(hf.lm_head.weight)
        for i, layer in enumerate(lm.layers):
            a, mlp = layer.self_attn, layer.mlp
            w.ln1[i].copy_(layer.input_layernorm.weight)
            w.ln2[i].copy_(layer.post_attention_layernorm.weight)
            start = 0
            for proj in (a.q_proj, a.k_proj, a.v_proj):
                wt = effective_weight(proj)                                    # (out, D)
                w.qkv[i, start:start + wt.shape[0]].copy_(wt)
                if bias(proj) is not None:  # Qwen3-VL: no qkv bias (stays 0)
                    w.qkv_bias[i, start:start + wt.shape[0]].copy_(bias(proj))
                start += wt.shape[0]
            if w.qk_norm:
                w.q_norm[i].copy_(a.q_norm.weight)
                w.k_norm[i].copy_(a.k_norm.weight)
            w.o[i].copy_(effective_weight(a.o_proj))
            I = w.gate_up.shape[1] // 2
            w.gate_up[i, :I].copy_(effective_weight(mlp.gate_proj))
            w.gate_up[i, I:].copy_(effective_weight(mlp.up_proj))
            w.down[i].copy_(effective_weight(mlp.down_proj))


@dataclass
class State:
    """The buffers one decode step reads and updates in place (Rb rows incl. dummies, cache length
    S, N new tokens at most, vocabulary V, NL layers, KV heads of hd):
    k, v (NL, Rb, KV, S, hd): post-RoPE keys and values, prompt in columns [0, P), new tokens from
    P;
    key_ok (Rb, S) bool: columns a row attends to; tok (Rb,) long: the last sampled token, fed next;
    pos (Rb,) long: its position; col (1,) long: its cache column; j (1,) long: the output column of
    the next token; done (Rb,) bool; seen (Rb, V) bool: tokens in the prompt or completion
    (repetition penalty); noise (Rb, C) float32: Exp(1) draws for the next token (C = candidates);
    ids (Rb, N) long, logps (Rb, N) float32: the output; conv, rec: Qwen3.5's per-linear-layer
    states (decode_hybrid.recurrent_states; its k and v hold the full-attention layers only), empty
    for the other families."""
    k: torch.Tensor
    v: torch.Tensor
    key_ok: torch.Tensor
    tok: torch.Tensor
    pos: torch.Tensor
    col: torch.Tensor
    j: torch.Tensor
    done: torch.Tensor
    seen: torch.Tensor
    noise: torch.Tensor
    ids: torch.Tensor
    logps: torch.Tensor
    conv: tuple = ()
    rec: tuple = ()


def allocate_state(w: Weights, rows: int, length: int, new_tokens: int, noise_width: int) -> State:
    """Zeroed `State` for `rows` rows, a cache of `length` tokens, `new_tokens` outputs and
    `noise_width` noise draws per row (`candidates`), on w's device (the noise starts at 1). w may
    be decode_hybrid.HybridWeights: K/V for its full-attention layers, and its conv and rec."""
    hybrid_decoder = isinstance(w, hybrid.HybridWeights)
    NL = (w.q if hybrid_decoder else w.ln1).shape[0]           # layers with K/V
    dev, V = w.embed.device, w.embed.shape[0]
    z = lambda *shape, dtype=torch.long: torch.zeros(*shape, dtype=dtype, device=dev)
    kv = (NL, rows, w.kv_heads, length, w.head_dim)
    return State(z(*kv, dtype=w.embed.dtype), z(*kv, dtype=w.embed.dtype),
                 z(rows, length, dtype=torch.bool), z(rows), z(rows), z(1), z(1),
                 z(rows, dtype=torch.bool), z(rows, V, dtype=torch.bool),
                 torch.ones(rows, noise_width, device=dev), z(rows, new_tokens),
                 z(rows, new_tokens, dtype=torch.float32),
                 *(hybrid.recurrent_states(w, rows) if hybrid_decoder else ()))


def _rms_norm(x, weight, eps):
    """Qwen2RMSNorm (and Qwen3-VL's): normalise the last axis in float32, scale in the input dtype.
    x (..., D) -> (..., D)."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _rotate(x, cos, sin):
    """RoPE on x (R, heads, hd) with cos, sin (R, 1, hd): x·cos + rotate_half(x)·sin."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def forward_token(w: Weights, s: State, live: int | None = None) -> torch.Tensor:
    """The decoder on one token per row: embeds s.tok at position s.pos, writes its K/V to cache
    column s.col (and marks the column in s.key_ok), attends to every marked column among the first
    `live` (default: all S; needs s.col < live). Returns logits (Rb, V) float32."""
    R, H, KV, hd = s.tok.shape[0], w.heads, w.kv_heads, w.head_dim
    L = s.key_ok.shape[1] if live is None else live
    x = w.embed[s.tok]                                                         # (R, D)
    freqs = s.pos[:, None].float() * w.inv_freq  # (R, hd/2) float32, as HF's rotary
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # (R, 1, hd): all 3 mRoPE axes equal
    cos, sin = (emb.cos() * w.rope_scale).to(x.dtype), (emb.sin() * w.rope_scale).to(x.dtype)
    s.key_ok.index_fill_(1, s.col, True)
    mask = s.key_ok[:, None, None, :L]                                         # (R, 1, 1, L)
    rows = torch.arange(R, device=x.device)[:, None]                          # (R, 1)
    heads = torch.arange(KV, device=x.device)[None]                           # (1, KV)
    for i in range(w.ln1.shape[0]):
        h = _rms_norm(x, w.ln1[i], w.eps)
        qkv = F.linear(h, w.qkv[i], w.qkv_bias[i])                             # (R, (H + 2KV)·hd)
        q, k, v = qkv.split([H * hd, KV * hd, KV * hd], dim=-1)
        q, k = q.view(R, H, hd), k.view(R, KV, hd)
        if w.qk_norm:  # Qwen3-VL: RMSNorm per head, pre-RoPE
            q, k = _rms_norm(q, w.q_norm[i], w.eps), _rms_norm(k, w.k_norm[i], w.eps)
        q = _rotate(q, cos, sin)                                               # (R, H, hd)
        k = _rotate(k, cos, sin)                                               # (R, KV, hd)
        # K/V (R, KV, hd) into column col of the base (NL, R, KV, S, hd) tensor: a write through the
        # view s.k[i] becomes, once functionalized for compiling, a copy of the whole cache
        cell = (s.col.new_full((1,), i), rows, heads, s.col)                 # broadcast to (R, KV)
        s.k.index_put_(cell, k)
        s.v.index_put_(cell, v.view(R, KV, hd))
        qg = q.view(R, KV, H // KV, hd)  # query heads grouped by KV head
        keys, values = s.k[i, :, :, :L], s.v[i, :, :, :L]                      # (R, KV, L, hd) live
        att = (qg @ keys.transpose(-1, -2)) * hd ** -0.5                       # (R, KV, H/KV, L)
        att = att.masked_fill(~mask, float("-inf"))                            # x.dtype, as HF's
        att = att.softmax(-1, dtype=torch.float32).to(x.dtype)                 # fp32 inside only
        o = (att @ values).reshape(R, H * hd)                                  # (R, H·hd)
        x = x + F.linear(o, w.o[i])
        # (R, I) each
        gate, up = F.linear(_rms_norm(x, w.ln2[i], w.eps), w.gate_up[i]).chunk(2, dim=-1)
        x = x + F.linear(F.silu(gate) * up, w.down[i])
    return F.linear(_rms_norm(x, w.norm, w.eps), w.lm_head).float()            # (R, V)


def filter_logits(logits: torch.Tensor, sp, seen: torch.Tensor | None) -> torch.Tensor:
    """Apply repetition penalty (HF's rule), temperature, top-k and top-p to logits (R, V) float32;
    returns (R, V) with excluded entries at -inf. sp: rollout.SamplingParams; `seen` (R, V) bool
    marks tokens already in the prompt or completion (for the penalty). Raises ValueError for
    temperature <= 0 or top_p outside (0, 1]."""
    logits = _penalise_and_scale(logits, sp, seen)
    if sp.top_k > 0:
        kth = torch.topk(logits, min(sp.top_k, logits.shape[-1]), dim=-1).values[..., -1:]  # (R, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sp.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)     # (R, V)
        drop = _top_p_drop(sorted_logits, sp.top_p)
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def _penalise_and_scale(logits, sp, seen):
    """The repetition penalty (HF's rule: a seen token's logit divided by the penalty when positive,
    multiplied when negative), then the temperature. (R, V) -> (R, V). Raises ValueError for
    temperature <= 0 or top_p outside (0, 1]."""
    if sp.temperature <= 0 or not 0 < sp.top_p <= 1:
        raise ValueError(f"need temperature > 0 and 0 < top_p <= 1, "
                         f"got {sp.temperature}, {sp.top_p}")
    if sp.repetition_penalty != 1.0 and seen is not None:
        penalised = torch.where(logits > 0, logits / sp.repetition_penalty,
                                logits * sp.repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    return logits / sp.temperature


def _top_p_drop(sorted_logits, top_p: float):
    """(R, n) logits in descending order -> (R, n) bool, True where top-p drops the token: the kept
    set is the smallest prefix whose probability mass reaches top_p."""
    probs = sorted_logits.softmax(-1)
    return probs.cumsum(-1) - probs >= top_p


def candidates(sp, vocab: int) -> int:
    """How many tokens one draw chooses among, and so the width of its noise: top-k's k when top-k
    is on (no other token can be drawn), else the whole vocabulary."""
    return min(sp.top_k, vocab) if sp.top_k > 0 else vocab


def sample(logits, noise, seen, done, sp, pad_id: int, stop_ids: tuple[int, ...]):
    """One token per row. logits (R, V) float32; noise (R, C) float32 Exp(1) draws, C =
    candidates(sp, V); seen (R, V) bool (used when sp.repetition_penalty != 1); done (R,) bool: rows
    already stopped get pad_id and log-prob 0. Returns (tok (R,) long, logp (R,) float32 =
    log-softmax of the unfiltered logits at the token, i.e. at temperature 1, done (R,) bool updated
    with the stop ids). The draw: argmax over p / E of p = softmax of `filter_logits` (the
    exponential race; tokens filtered out have p = 0 and are never drawn). With top-k on, the race
    runs over the k best tokens only (`topk`, then top-p on those k, already in order): the same
    distribution without sorting the vocabulary or drawing noise for it (ties at the k-th logit,
    which filter_logits keeps all of, are broken by topk). Raises ValueError as filter_logits
    (temperature <= 0, top_p outside (0, 1])."""
    logp = F.log_softmax(logits, dim=-1)                                       # (R, V)
    seen = seen if sp.repetition_penalty != 1.0 else None
    if sp.top_k > 0:
        # (R, k), descending
        vals, idx = _penalise_and_scale(logits, sp, seen).topk(noise.shape[-1], dim=-1)
        if sp.top_p < 1.0:
            vals = vals.masked_fill(_top_p_drop(vals, sp.top_p), float("-inf"))
        tok = idx.gather(1, (vals.softmax(-1) / noise).argmax(-1, keepdim=True))[:, 0]    # (R,)
    else:
        tok = (filter_logits(logits, sp, seen).softmax(-1) / noise).argmax(-1)           # (R,)
    lp = torch.where(done, torch.zeros_like(logp[:, 0]), logp.gather(1, tok[:, None])[:, 0])
    tok = torch.where(done, torch.full_like(tok, pad_id), tok)
    stop = torch.zeros_like(done)
    for t in stop_ids:
        stop = stop | (tok == t)
    return tok, lp, done | stop


def decode_step(w: Weights, s: State, sp, pad_id: int, stop_ids: tuple[int, ...],
                live: int | None = None) -> None:
    """Feed s.tok, sample the next token from s.noise, write it and its log-prob to output column
    s.j, and advance (tok, pos, col, j, done, seen) in place. Attention reads the first `live` cache
    columns (default all; needs s.col < live). Pure in what it computes: every input is an argument,
    every output a write into `s`. The same function runs eager or under torch.compile (one graph
    per `live`)."""
    hybrid_decoder = isinstance(w, hybrid.HybridWeights)  # Qwen3.5 (decode_hybrid.py)
    logits = (hybrid.forward_token if hybrid_decoder else forward_token)(w, s, live)   # (Rb, V)
    tok, lp, done = sample(logits, s.noise, s.seen, s.done, sp, pad_id, stop_ids)
    s.ids.index_copy_(1, s.j, tok[:, None])
    s.logps.index_copy_(1, s.j, lp[:, None])
    every, true = torch.arange(tok.shape[0], device=tok.device), torch.ones((), dtype=torch.bool,
                                                                            device=tok.device)
    s.seen.index_put_((every, tok), true)                                  # scatter_: a copy
    s.tok.copy_(tok)
    s.done.copy_(done)
    s.pos.add_(1)
    s.col.add_(1)
    s.j.add_(1)


def _mark_static(t: torch.Tensor) -> None:
    """torch._dynamo.mark_static_address without a guard: on torch 2.7/2.8 the compiled code keeps
    a guarded tensor alive, so a State that grows would never free the old cache. Older torch
    has no `guard` argument."""
    import inspect
    mark = torch._dynamo.mark_static_address
    if "guard" in inspect.signature(mark).parameters:
        mark(t, guard=False)
    else:
        mark(t)


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


class Decoder:
    """The decode loop of one run: the weight copy, the cache, the (compiled) step and its compile
    record.

    compile: "auto" (compiled on CUDA, eager on CPU), "on" or "off"; bucket: pad rows and round the
    cache length (default: when compiled). One Decoder serves every generate call of a run
    (train.py's rollout and held-out evaluation share one). Raises ValueError for an unknown compile
    mode.
    """

    def __init__(self, compile: str = "auto", bucket: bool | None = None,
                 done_every: int = DONE_EVERY):
        if compile not in COMPILE_MODES:
            raise ValueError(f"--compile-decode must be one of {COMPILE_MODES}, got {compile!r}")
        self.mode, self.bucket, self.done_every = compile, bucket, done_every
        self.weights: Weights | None = None
        self.state: State | None = None
        self.compiled = None
        self.graphs: list[tuple] = []            # (rows, live, cache length, sampling...) per graph
        self.calls: dict[tuple, int] = {}        # calls of each graph, up to its CUDA graph's
        self.compile_seconds = 0.0               # compiling and recording (2 first calls on CUDA)
        self.prefill_seconds = 0.0               # rollout.generate adds each prefill's time

    def is_compiled(self, device: torch.device) -> bool:
        """Whether the step runs compiled on `device` (the "auto" rule)."""
        return self.mode == "on" or (self.mode == "auto" and device.type == "cuda")

    def _weights(self, hf, dtype, device) -> Weights:
        w = self.weights
        if w is None or w.embed.dtype != dtype or w.embed.device != device:
            alloc = hybrid.allocate_weights if hybrid.is_hybrid(hf) else allocate_weights
            self.weights = w = alloc(hf, dtype, device)
            self.state = None
            if self.is_compiled(device):
                for t in vars(w).values():
                    if isinstance(t, torch.Tensor):
                        _mark_static(t)
        if isinstance(w, hybrid.HybridWeights):
            hybrid.refresh(w, hf, effective_weight)
        else:
            refresh(w, hf)
        return w

    def _state(self, w: Weights, rows: int, length: int, new_tokens: int, width: int,
               bucket: bool) -> State:
        if not bucket:
            return allocate_state(w, rows, length, new_tokens, width)
        rows, length = _round_up(rows, ROW_MULTIPLE), _round_up(length, CACHE_MULTIPLE)
        s = self.state
        if (s is None or s.tok.shape[0] < rows or s.key_ok.shape[1] < length
                or s.ids.shape[1] != new_tokens or s.noise.shape[1] != width):
            if s is not None:  # grow: never smaller than before
                rows, length = max(rows, s.tok.shape[0]), max(length, s.key_ok.shape[1])
            self.state = s = None  # free the old cache first
            self.state = s = allocate_state(w, rows, length, new_tokens, width)
            if self.is_compiled(w.embed.device):
                for t in vars(s).values():
                    for x in (t if isinstance(t, tuple) else (t,)):  # Qwen3.5: a tensor per layer
                        _mark_static(x)
        return s

    def _step_fn(self, device):
        if not self.is_compiled(device):
            return decode_step
        if self.compiled is None:
            dyn = torch._dynamo.config  # one graph per bucket, several buckets
            # older torch's name
            limit = "recompile_limit" if hasattr(dyn, "recompile_limit") else "cache_size_limit"
            setattr(dyn, limit, max(getattr(dyn, limit), 64))
            mode = "reduce-overhead" if device.type == "cuda" else None
            self.compiled = torch.compile(decode_step, mode=mode, fullgraph=True, dynamic=False)
        return self.compiled

    @torch.no_grad()
    def run(self, hf, cache, rows: torch.Tensor, attn: torch.Tensor, logits: torch.Tensor,
            next_pos: torch.Tensor, seen: torch.Tensor | None, sp, pad_id: int, stop_ids: list[int],
            generator=None):
        """Sample up to sp.max_new_tokens tokens per row after a prefill.

        hf: the model with full weights (read into the weight copy); cache: the prefill's
        DynamicCache over B prompts of P tokens; rows (R,) long: the prompt of each row; attn (R, P)
        long: the rows' prompt masks; logits (R, V) float32: the prefill's next-token logits;
        next_pos (R,) long: the first completion token's position; seen (R, V) bool or None: prompt
        tokens (repetition penalty); generator: draws the noise.
        Returns (ids (R, N) long, logps (R, N) float32), N = sp.max_new_tokens: after a row's first
        stop token pad_id and 0 (the caller cuts the columns after the longest completion).
        """
        device, (R, P), N = logits.device, attn.shape, sp.max_new_tokens
        autocast = torch.is_autocast_enabled(device.type)  # the dtype the prefill computed in
        dtype = torch.get_autocast_dtype(device.type) if autocast else hf.lm_head.weight.dtype
        compiled = self.is_compiled(device)
        bucket = compiled if self.bucket is None else self.bucket
        stops = tuple(int(t) for t in stop_ids)
        with torch.autocast(device.type, enabled=False):
            w = self._weights(hf, dtype, device)
            s = self._state(w, R, P + N, N, candidates(sp, logits.shape[-1]), bucket)
            Rb = s.tok.shape[0]
            s.key_ok.zero_()
            s.key_ok[:R, :P] = attn.bool()
            s.key_ok[R:, 0] = True  # dummy rows: one column
            if isinstance(w, hybrid.HybridWeights):  # conv, recurrent states, K/V -> rows
                hybrid.load_prefill(w, s, cache, rows, P)
            else:                                    # prompt K/V -> rows
                for i, layer in enumerate(cache.layers):
                    s.k[i, :R, :, :P] = layer.keys.index_select(0, rows)
                    s.v[i, :R, :, :P] = layer.values.index_select(0, rows)
            s.seen.zero_()
            if seen is not None:
                s.seen[:R] = seen
            s.done.zero_()
            s.done[R:] = True
            s.ids.fill_(pad_id)
            s.logps.zero_()
            s.noise[:R].exponential_(generator=generator)
            # token 0
            tok, lp, done = sample(logits, s.noise[:R], s.seen[:R], s.done[:R], sp, pad_id, stops)
            s.ids[:R, 0], s.logps[:R, 0], s.done[:R] = tok, lp, done
            s.seen[:R].scatter_(1, tok[:, None], True)
            s.tok.fill_(pad_id)
            s.tok[:R] = tok
            s.pos.zero_()
            s.pos[:R] = next_pos
            s.col.fill_(P)
            s.j.fill_(1)
            step, S = self._step_fn(device), s.key_ok.shape[1]
            # compiled: the first call of a graph compiles it, the second records its CUDA graph
            cold_calls = 2 if device.type == "cuda" else 1
            for n in range(1, N):
                # the only host sync, every K steps
                if (n - 1) % self.done_every == 0 and bool(s.done.all()):
                    break
                s.noise[:R].exponential_(generator=generator)
                live = min(S, _round_up(P + n, LIVE_MULTIPLE))                 # writes column P+n-1
                key = (Rb, live, S, N, repr(sp), stops, pad_id, str(dtype))
                calls = self.calls.get(key, 0)
                if compiled and calls < cold_calls:
                    t0 = time.perf_counter()
                    step(w, s, sp, pad_id, stops, live)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    self.compile_seconds += time.perf_counter() - t0
                    self.calls[key] = calls + 1
                    if calls == 0:
                        self.graphs.append(key)
                else:
                    step(w, s, sp, pad_id, stops, live)
            return s.ids[:R].clone(), s.logps[:R].clone()

    def summary(self) -> str:
        """One line for the run's log: eager, or the graphs compiled (rows x live columns / cache
        length) and the seconds of their first calls (compiling, and on CUDA the second call's
        CUDA-graph recording), with the torch version that compiled them."""
        if not self.graphs:
            return ("decode step: "
                    f"{'compiled, no graph yet' if self.compiled is not None else 'eager'}")
        shapes = ", ".join(f"{g[0]}x{g[1]}/{g[2]}" for g in self.graphs)
        return (f"decode step: compiled {len(self.graphs)} graph(s) (rows x live columns/cache "
                f"length: {shapes}) in {self.compile_seconds:.1f} s, compile and CUDA-graph "
                f"recording, torch {torch.__version__}")
