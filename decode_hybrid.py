"""The decode step's decoder for Qwen3.5's hybrid layers: one new token per row, Gated DeltaNet and
gated attention.

decode.py owns the loop, the sampler and the buffers every family shares; this module is what
differs when the decoder is Qwen3.5's (qwen3_5.py): `HybridWeights`, the states of decode.State
that only it has (`recurrent_states`) and `forward_token`, which decode.decode_step calls in place
of its own when it is handed HybridWeights.
Per layer kind (transformers 5.23 models/qwen3_5):

- "linear_attention" (Gated DeltaNet): x -> in_proj_qkv, in_proj_z, in_proj_b, in_proj_a; the
  depthwise causal conv (kernel K) over the last K inputs, then SiLU (`conv_step`: its state is the
  last K - 1 inputs, per row and channel); q and k L2-normalised, q scaled by dk^-1/2, each key head
  serving HV / HK value heads; the gated delta rule (`delta_rule_step`, per value head, state S of
  (dk, dv) in float32):
      S <- exp(g) S,  g = -exp(A_log) softplus(a + dt_bias)       (decay)
      S <- S + k (beta (v - S^T k))^T,  beta = sigmoid(b)         (the delta update)
      o  = S^T q                                                  (read-out)
  then RMSNorm(o) * weight * SiLU(z) per value head (`gated_norm`) and out_proj;
- "full_attention": q_proj gives the query and an output gate per head; q and k RMSNorm per head
  (zero-centred weights, 1 + w), rotary on the first quarter of each head's dims
  (partial_rotary_factor; mRoPE is plain RoPE for a text token whose three positions are equal,
  decode.py's docstring), attention over the static KV cache, the output times sigmoid(gate), then
  o_proj.
Both kinds: the decoder RMSNorms are zero-centred (x * (1 + w), in float32), the MLP is SwiGLU.

The states live in decode.State and are updated IN PLACE: per linear layer conv (Rb, C, K - 1) in
the compute dtype and rec (Rb, HV, dk, dv) float32 (mamba_ssm_dtype); k / v (NF, Rb, KV, S, hd)
for the full-attention layers only. The prefill (HF's forward with a DynamicCache, left padding
zeroed by HF before the linear layers) hands them to the rows in `load_prefill`:
DynamicCache.batch_select_indices fails on linear-attention layers, so the rows are laid out here.

Departures (docs/departures.md):
  L15 a static-cache decode step of our own (this module is its hybrid decoder)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def is_hybrid(hf) -> bool:
    """Whether `hf`'s decoder has Qwen3.5's layer kinds (linear_attention in
    config.text_config.layer_types)."""
    return "linear_attention" in (getattr(hf.config.text_config, "layer_types", None) or [])


@dataclass
class HybridWeights:
    """Qwen3.5's decoder as the decode step reads it (NL layers = NLin linear + NF full; width D;
    MLP I; vocab V): embed (V, D); ln1, ln2 (NL, D) zero-centred; gate_up (NL, 2I, D); down (NL, D,
    I); norm (D,); lm_head (V, D). Linear layers: lin_in (NLin, C + HV·dv + 2HV, D): in_proj_qkv (C
    = 2 HK·dk + HV·dv conv channels), in_proj_z, in_proj_b, in_proj_a stacked; conv (NLin, C, K);
    neg_A (NLin, HV) float32 = -exp(A_log); dt_bias (NLin, HV); gnorm (NLin, dv); lin_out (NLin, D,
    HV·dv). Full layers: q (NF, 2H·hd, D) (query and gate interleaved per head, as q_proj); kv (NF,
    2KV·hd, D); q_norm, k_norm (NF, hd) zero-centred; o (NF, D, H·hd); inv_freq (rd/2,) float32 over
    the rotary dims rd. `kinds`: per layer (is_linear, index within its kind)."""
    embed: torch.Tensor
    ln1: torch.Tensor
    ln2: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor
    norm: torch.Tensor
    lm_head: torch.Tensor
    lin_in: torch.Tensor
    conv: torch.Tensor
    neg_A: torch.Tensor
    dt_bias: torch.Tensor
    gnorm: torch.Tensor
    lin_out: torch.Tensor
    q: torch.Tensor
    kv: torch.Tensor
    q_norm: torch.Tensor
    k_norm: torch.Tensor
    o: torch.Tensor
    inv_freq: torch.Tensor
    kinds: tuple
    heads: int
    kv_heads: int
    head_dim: int
    k_heads: int
    v_heads: int
    k_dim: int
    v_dim: int
    eps: float
    rope_scale: float


def allocate_weights(hf, dtype: torch.dtype, device) -> HybridWeights:
    """Empty HybridWeights for `hf` (a Qwen3_5ForConditionalGeneration; only its config and rotary
    embedding are read). Raises ValueError for an activation other than SiLU or a layer kind not in
    qwen3_5.LAYER_KINDS."""
    c = hf.config.text_config
    kinds_ok = all(k in ("linear_attention", "full_attention") for k in c.layer_types)
    if c.hidden_act != "silu" or not kinds_ok:
        raise ValueError(f"hybrid decode step: needs SiLU and linear/full attention layers, got "
                         f"{c.hidden_act!r}, {c.layer_types}")
    NL, D, I, V = c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.vocab_size
    H, KV, hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    HK, HV, dk, dv, K = (c.linear_num_key_heads, c.linear_num_value_heads, c.linear_key_head_dim,
                         c.linear_value_head_dim, c.linear_conv_kernel_dim)
    linear = [k == "linear_attention" for k in c.layer_types]
    kinds = tuple((is_lin, sum(linear[:i]) if is_lin else i - sum(linear[:i]))
                  for i, is_lin in enumerate(linear))             # (is_linear, index in kind)
    NLin, NF, C = sum(linear), NL - sum(linear), 2 * HK * dk + HV * dv
    rot = hf.model.language_model.rotary_emb
    e = lambda *shape, dtype=dtype: torch.zeros(*shape, dtype=dtype, device=device)
    return HybridWeights(
        e(V, D), e(NL, D), e(NL, D), e(NL, 2 * I, D), e(NL, D, I), e(D), e(V, D),
        e(NLin, C + HV * dv + 2 * HV, D), e(NLin, C, K), e(NLin, HV, dtype=torch.float32),
        e(NLin, HV), e(NLin, dv), e(NLin, D, HV * dv),
        e(NF, 2 * H * hd, D), e(NF, 2 * KV * hd, D), e(NF, hd), e(NF, hd), e(NF, D, H * hd),
        rot.inv_freq.detach().float().to(device).clone(), kinds, H, KV, hd, HK, HV, dk, dv,
        float(c.rms_norm_eps), float(rot.attention_scaling))


def refresh(w: HybridWeights, hf, effective_weight) -> None:
    """Copy `hf`'s current decoder into `w` in place (LoRA merged by `effective_weight`,
    decode.effective_weight), so the compiled step's inputs keep their addresses. Call with full
    weights (distributed.full_weights)."""
    lm = hf.model.language_model
    with torch.no_grad():
        w.embed.copy_(lm.embed_tokens.weight)
        w.norm.copy_(lm.norm.weight)
        w.lm_head.copy_(hf.lm_head.weight)
        for i, layer in enumerate(lm.layers):
            w.ln1[i].copy_(layer.input_layernorm.weight)
            w.ln2[i].copy_(layer.post_attention_layernorm.weight)
            I = w.gate_up.shape[1] // 2
            w.gate_up[i, :I].copy_(effective_weight(layer.mlp.gate_proj))
            w.gate_up[i, I:].copy_(effective_weight(layer.mlp.up_proj))
            w.down[i].copy_(effective_weight(layer.mlp.down_proj))
            linear, j = w.kinds[i]
            if linear:
                a = layer.linear_attn
                projs = (a.in_proj_qkv, a.in_proj_z, a.in_proj_b, a.in_proj_a)
                torch.cat([effective_weight(p) for p in projs], out=w.lin_in[j])
                w.conv[j].copy_(a.conv1d.weight[:, 0])                         # (C, 1, K) -> (C, K)
                w.neg_A[j].copy_(-a.A_log.float().exp())
                w.dt_bias[j].copy_(a.dt_bias)
                w.gnorm[j].copy_(a.norm.weight)
                w.lin_out[j].copy_(effective_weight(a.out_proj))
            else:
                a = layer.self_attn
                w.q[j].copy_(effective_weight(a.q_proj))
                torch.cat([effective_weight(a.k_proj), effective_weight(a.v_proj)], out=w.kv[j])
                w.q_norm[j].copy_(a.q_norm.weight)
                w.k_norm[j].copy_(a.k_norm.weight)
                w.o[j].copy_(effective_weight(a.o_proj))


def recurrent_states(w: HybridWeights, rows: int) -> tuple[tuple, tuple]:
    """Zeroed (conv, rec) of decode.State for `rows` rows: conv, one (rows, C, K - 1) tensor per
    linear layer, the last K - 1 conv inputs in the compute dtype; rec, one (rows, HV, dk, dv)
    float32 tensor per linear layer, the delta-rule states. Tuples of separate tensors, not one
    stacked buffer: compiled, in-place writes to several views of one buffer made inductor copy the
    whole buffer every step (measured), while each separate tensor is updated where it lies."""
    dev, dt = w.embed.device, w.embed.dtype
    NLin, (C, K) = w.conv.shape[0], w.conv.shape[1:]
    conv = tuple(torch.zeros(rows, C, K - 1, dtype=dt, device=dev) for _ in range(NLin))
    rec = tuple(torch.zeros(rows, w.v_heads, w.k_dim, w.v_dim, dtype=torch.float32, device=dev)
                for _ in range(NLin))
    return conv, rec


def load_prefill(w: HybridWeights, s, cache, rows: torch.Tensor, P: int) -> None:
    """Lay the prefill's states out per row: `cache` (HF's DynamicCache over B prompts of P tokens)
    -> the first R = len(rows) rows of s, a decode.State (rows[r] = row r's prompt): each linear
    layer's conv state (B, C, K) -> its last K - 1 inputs, its recurrent state (B, HV, dk, dv)
    float32; each full layer's K/V (B, KV, P, hd) -> cache columns [0, P)."""
    R = rows.numel()
    for i, layer in enumerate(cache.layers):
        linear, j = w.kinds[i]
        if linear:
            km1 = s.conv[j].shape[-1]
            s.conv[j][:R] = layer.conv_states[0].index_select(0, rows)[..., -km1:]
            s.rec[j][:R] = layer.recurrent_states[0].index_select(0, rows).float()
        else:
            s.k[j, :R, :, :P] = layer.keys.index_select(0, rows)
            s.v[j, :R, :, :P] = layer.values.index_select(0, rows)


def rms_norm_1p(x, weight, eps):
    """Qwen3_5RMSNorm: x / rms(x) * (1 + weight), computed in float32, returned in x's dtype.
    (..., D) -> (..., D)."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return (h * (1.0 + weight.float())).to(x.dtype)


def gated_norm(o, z, weight, eps):
    """Qwen3_5RMSNormGated: RMSNorm of o (..., dv) in float32, times weight (in o's dtype), times
    SiLU(z) in float32; returned in o's dtype."""
    h = o.float()
    h = weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(o.dtype)
    return (h * F.silu(z.float())).to(o.dtype)


def conv_step(x, state, weight):
    """One token of the depthwise causal conv with SiLU: x (R, C), state (R, C, K - 1) the previous
    K - 1 inputs (updated IN PLACE: shifted left, x appended), weight (C, K). Returns (R, C) in x's
    dtype; equal to transformers' causal_conv1d_update (whose state keeps K inputs)."""
    window = torch.cat([state, x[:, :, None].to(state.dtype)], dim=-1)         # (R, C, K)
    state.copy_(window[..., 1:])
    return F.silu((window * weight).sum(-1)).to(x.dtype)                       # (R, C)


def delta_rule_step(q, k, v, g, beta, state):
    """One token of the gated delta rule (module docstring): q, k (R, HK, dk); v (R, HV, dv); g,
    beta (R, HV); state (R, HV, dk, dv) float32, updated IN PLACE. q and k are L2-normalised (eps
    1e-6, as FLA) and q scaled by dk^-1/2 here; key head h serves value heads h·HV/HK .. (h+1)·HV/HK
    - 1. Returns the read-out (R, HV, dv) float32. Equal to transformers'
    torch_recurrent_gated_delta_rule with use_qk_l2norm_in_kernel.

    Written so that the old state is only read (S^T k, S^T q) before one pointwise in-place write:
    with d = exp(g), the new state is d S + k δ^T with δ = β (v - d S^T k), and the read-out (d S +
    k δ^T)^T q = d S^T q + (k·q) δ. Compiled, the state is then updated where it lies (no
    state-sized temporary; test_qwen3_5's cost test)."""
    rep = v.shape[1] // k.shape[1]
    q, k = (t.float().repeat_interleave(rep, dim=1) for t in (q, k))           # (R, HV, dk)
    q = q * torch.rsqrt((q * q).sum(-1, keepdim=True) + 1e-6) * q.shape[-1] ** -0.5
    k = k * torch.rsqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    d = g.float().exp()[..., None]                                             # (R, HV, 1) decay
    Sk, Sq = (state * k[..., None]).sum(-2), (state * q[..., None]).sum(-2)    # (R, HV, dv), old S
    delta = (v.float() - d * Sk) * beta.float()[..., None]                     # (R, HV, dv)
    out = d * Sq + (k * q).sum(-1, keepdim=True) * delta                       # (R, HV, dv)
    state.copy_(state * d[..., None] + k[..., None] * delta[..., None, :])     # decay + update
    return out


def _rotate_part(x, cos, sin):
    """RoPE on the first cos.shape[-1] dims of x (R, heads, hd), the rest passed through; cos, sin
    (R, 1, rd)."""
    rd = cos.shape[-1]
    r, rest = x[..., :rd], x[..., rd:]
    r = r * cos + torch.cat((-r[..., rd // 2:], r[..., :rd // 2]), dim=-1) * sin
    return torch.cat([r, rest], dim=-1)


def forward_token(w: HybridWeights, s, live: int | None = None) -> torch.Tensor:
    """The hybrid decoder on one token per row of s, a decode.State: embeds s.tok at position
    s.pos, updates every linear layer's conv and recurrent state in place, writes every full
    layer's K/V to cache column s.col (marked in s.key_ok) and attends to the marked columns among
    the first `live` (default: all S; needs s.col < live). Returns logits (Rb, V) float32."""
    R, H, KV, hd = s.tok.shape[0], w.heads, w.kv_heads, w.head_dim
    HV, dv, C = w.v_heads, w.v_dim, w.conv.shape[1]
    x = w.embed[s.tok]                                                         # (R, D)
    freqs = s.pos[:, None].float() * w.inv_freq                                # (R, rd/2) float32
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]                           # (R, 1, rd)
    cos, sin = (emb.cos() * w.rope_scale).to(x.dtype), (emb.sin() * w.rope_scale).to(x.dtype)
    s.key_ok.index_fill_(1, s.col, True)
    L = s.key_ok.shape[1] if live is None else live
    mask = s.key_ok[:, None, None, :L]                                         # (R, 1, 1, L)
    for i, (linear, j) in enumerate(w.kinds):
        h = rms_norm_1p(x, w.ln1[i], w.eps)
        if linear:                                                             # Gated DeltaNet
            mixed, z, b, a = F.linear(h, w.lin_in[j]).split([C, HV * dv, HV, HV], dim=-1)
            mixed = conv_step(mixed, s.conv[j], w.conv[j])                     # (R, C)
            q, k, v = mixed.split([w.k_heads * w.k_dim, w.k_heads * w.k_dim, HV * dv], dim=-1)
            g = w.neg_A[j] * F.softplus(a.float() + w.dt_bias[j])              # (R, HV) log-decay
            q, k = q.view(R, -1, w.k_dim), k.view(R, -1, w.k_dim)              # (R, HK, dk)
            o = delta_rule_step(q, k, v.view(R, HV, dv), g, b.sigmoid(), s.rec[j]).to(x.dtype)
            o = gated_norm(o, z.view(R, HV, dv), w.gnorm[j], w.eps).reshape(R, HV * dv)
            x = x + F.linear(o, w.lin_out[j])
        else:                                                          # gated full attention
            q, gate = F.linear(h, w.q[j]).view(R, H, 2 * hd).chunk(2, dim=-1)  # (R, H, hd) each
            k, v = F.linear(h, w.kv[j]).view(R, 2 * KV, hd).split([KV, KV], dim=1)
            q = _rotate_part(rms_norm_1p(q, w.q_norm[j], w.eps), cos, sin)     # (R, H, hd)
            k = _rotate_part(rms_norm_1p(k, w.k_norm[j], w.eps), cos, sin)     # (R, KV, hd)
            # index the whole buffer: compiled, this writes one column in place (a view's
            # index_copy_ copied the layer's cache)
            layer = torch.full_like(s.col, j)                                  # (1,)
            s.k[layer, :, :, s.col] = k[None]                          # cache (R, KV, S, hd), col
            s.v[layer, :, :, s.col] = v[None]
            qg = q.reshape(R, KV, H // KV, hd)                                 # grouped by KV head
            keys, values = s.k[j, :, :, :L], s.v[j, :, :, :L]                  # (R, KV, L, hd) live
            att = (qg @ keys.transpose(-1, -2)).float() * hd ** -0.5           # (R, KV, H/KV, L)
            att = att.masked_fill(~mask, float("-inf")).softmax(-1).to(x.dtype)
            o = (att @ values).reshape(R, H * hd) * torch.sigmoid(gate.reshape(R, H * hd))
            x = x + F.linear(o, w.o[j])
        h = rms_norm_1p(x, w.ln2[i], w.eps)
        gate_, up = F.linear(h, w.gate_up[i]).chunk(2, dim=-1)                 # (R, I) each
        x = x + F.linear(F.silu(gate_) * up, w.down[i])
    return F.linear(rms_norm_1p(x, w.norm, w.eps), w.lm_head).float()          # (R, V)
