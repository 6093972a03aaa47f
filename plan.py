"""Per-GPU memory plan for T-GRPO: `python plan.py --model preset:qwen2.5-vl-7b --nproc 8 --dist
fsdp` (or `--model preset:qwen3-vl-8b`, `preset:qwen3.5-9b`, or any Qwen2.5-VL / Qwen3-VL / Qwen3.5
folder), with train.py's flags.

The model is built on the meta device (no memory, no weights), so Φ (parameter count) is exact; the
rest are estimates in bytes per GPU, W = --nproc, for the config's frames, pixels, G, G̃, lengths
and sharding:

  params      fp32 master weights (--precision bf16-mixed, the default on CUDA): fsdp 4Φ/W (shards;
              compute in bf16 via MixedPrecisionPolicy), ddp and one GPU 4Φ (compute in bf16 via
              autocast)
  grads       fp32: fsdp 4Φ/W (after the fp32 reduce-scatter); ddp 4Φ + 4Φ (.grad and DDP's
              all-reduce buckets); one GPU 4Φ (FSDP over one GPU is not applied: train.py runs it
              unsharded)
  optimizer   AdamW m and v in fp32: fsdp 8Φ/W, otherwise 8Φ
  reference   the frozen KL reference in fp32 (only when β > 0): fsdp 4Φ/W, otherwise 4Φ
  gathered    bf16 copies of the weights, 2Φ: under FSDP `distributed.full_weights` keeps the whole
              model gathered for the rollout (the log-prob pass gathers one block plus the root unit
              at a time); without FSDP, autocast caches the bf16 copy of every weight it casts
              during a forward.
  decode copy the decode step's persistent bf16 copy of the decoder, embeddings and lm_head
              (decode.Weights, 2Φ_lm; LoRA merged into it), held for the whole run: in the rollout
              and the training peak alike
  decode step the compiled step's temporaries (decode_step_bytes): one layer's and the sampler's
              fresh tensors counted as if none were fused or reused (inductor reuses a layer's freed
              buffers for the next; under CUDA graphs they stay in the graph's pool). Its writes
              land in the cache in place (tests/test_decode_cost.py), so no copy of the cache is
              counted: a few hundred MB at the 7B
  KV cache    rollout: the decode step's static cache, R = prompts_per_rank·(G + G̃) rows padded to
              a multiple of 8 (decode.ROW_MULTIPLE), each of P + L tokens rounded up to a multiple
              of 256 (decode.CACHE_MULTIPLE), every decoder layer keeps K and V:
              R·(P + L)·layers·2·kv_heads·head_dim·2 bytes (bf16), plus the prefill's cache of the
              2·prompts_per_rank distinct prompts (P tokens each); for Qwen3.5 only its
              full-attention layers (8 of the 9B's 32) keep K and V
  recurrent   Qwen3.5's Gated DeltaNet layers: per row and per linear layer (not per token) a
              float32 state of value heads × key dim × value dim plus the conv's last K-1 inputs in
              bf16, for the R rows and the prefill's distinct prompts
              (decode_hybrid.recurrent_states); 0 for the other families. Their activations are
              counted with the attention layers' formula (an approximation: no K/V, but q/k/v, z,
              conv)
  activations log-prob pass, one micro-batch of M = G·groups_per_micro_batch rows of T = P + L
              tokens: decoder per token per layer, bf16 saved tensors: without checkpointing
              2·(6D + 2·kv + 4I) (norm outputs, q/k/v, attention output, residuals,
              gate/up/act/product of the MLP); with checkpointing 2D per layer (the block input)
              plus one block's full set during its recompute; lm_head: chunk of 128 positions, fp32
              logits, log-softmax and its gradient: 3·M·128·V·4; vision tower (once per distinct
              visual, Pv patch tokens): 2·(6Dv + 4Iv)·Pv per block (checkpointed: 2Dv per block +
              one block); the reference's no-grad pass needs far less.
LoRA (--lora-rank r > 0; lora.py): Φ_A = Σ r·(in + out) over the targeted Linears (counted on the
meta model); the frozen base is held in bf16 (2Φ, sharded under fsdp) and the adapters in fp32
(4Φ_A); grads 4Φ_A, AdamW 8Φ_A; no reference copy (the reference is the base with the adapters off);
no bf16 cache of the base (it is bf16 already); `--lora-vision merger|tower` adds the trained copy
of those modules in fp32 with its grads and AdamW state (16 bytes per parameter) and keeps the base
in fp32. LoRA's own activations (r values per token per targeted Linear) are negligible next to the
block's.
CPU offload (--cpu-offload, FSDP2): params, grads, optimizer and the reference shards move to host
memory ("host", per rank); the GPU keeps the gathered copies (2Φ for the rollout, one block at a
time in the log-prob pass), the KV cache and the activations.
Under fsdp the log-prob pass also holds the root unit (embeddings, lm_head, norms, patch embed and
merger: Φ_root) gathered in bf16 with its gradient before the fp32 reduce-scatter: 6Φ_root.
`plan.py` also prints the settings that fit `--gpu-memory-gib` (full fine-tuning, LoRA, offload,
checkpointing) for --nproc GPUs.
P (prompt tokens) = frames/2 · pixels/f² visual tokens + 250 text tokens for a video, f = patch ×
merge = 28 (Qwen2.5-VL) or 32 (Qwen3-VL; plus 8 tokens of timestamp and block markers per temporal
patch); the 2x2 merger and the temporal patch of 2 each shrink the token count; L =
max_completion_length. Qwen3-VL's DeepStack features (one (visual tokens, D) tensor per level, added
after the first decoder layers) are counted with the activations. Allocator fragmentation, CUDA
context (~1 GB) and NCCL buffers come on top: keep the total under ~85 % of the GPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

import config
import pixels
from config import UserError, opt

GIB = 1024 ** 3
# Qwen2.5-VL-7B-Instruct's configuration (the numbers of its config.json), so the plan needs no
# download.
QWEN25_VL_7B = {
    "model_type": "qwen2_5_vl", "hidden_size": 3584, "intermediate_size": 18944,
    "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
    "max_position_embeddings": 128000, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "vocab_size": 152064, "tie_word_embeddings": False, "hidden_act": "silu",
    "bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652,
    "vision_end_token_id": 151653, "vision_token_id": 151654, "image_token_id": 151655,
    "video_token_id": 151656,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280,
                      "intermediate_size": 3420, "num_heads": 16, "in_chans": 3,
                      "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2,
                      "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
                      "tokens_per_second": 2, "temporal_patch_size": 2},
}
# Qwen3-VL-8B-Instruct's config.json (../shared/qwen3_vl_8b_instruct; its SOURCE.md gives the
# provenance).
QWEN3_VL_8B = {
    "model_type": "qwen3_vl", "image_token_id": 151655, "video_token_id": 151656,
    "vision_start_token_id": 151652, "vision_end_token_id": 151653, "tie_word_embeddings": False,
    "text_config": {"model_type": "qwen3_vl_text", "hidden_size": 4096, "intermediate_size": 12288,
                    "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
                    "head_dim": 128, "attention_bias": False, "attention_dropout": 0.0,
                    "hidden_act": "silu", "rms_norm_eps": 1e-6, "max_position_embeddings": 262144,
                    "vocab_size": 151936, "bos_token_id": 151643, "eos_token_id": 151645,
                    "rope_theta": 5000000,
                    "rope_scaling": {"mrope_interleaved": True, "mrope_section": [24, 20, 20],
                                     "rope_type": "default"}},
    "vision_config": {"model_type": "qwen3_vl", "depth": 27, "hidden_size": 1152,
                      "intermediate_size": 4304, "num_heads": 16, "hidden_act": "gelu_pytorch_tanh",
                      "in_channels": 3, "out_hidden_size": 4096, "patch_size": 16,
                      "spatial_merge_size": 2, "temporal_patch_size": 2,
                      "num_position_embeddings": 2304, "deepstack_visual_indexes": [8, 16, 24]},
}
# Qwen3.5-9B's config.json (../shared/qwen3_5_9b; its SOURCE.md gives the provenance): 24 Gated
# DeltaNet layers and 8 full-attention layers (every 4th), 16 key / 32 value linear heads of 128,
# head_dim 256, vocabulary 248,320.
QWEN3_5_9B = {
    "model_type": "qwen3_5", "image_token_id": 248056, "video_token_id": 248057,
    "vision_start_token_id": 248053, "vision_end_token_id": 248054, "tie_word_embeddings": False,
    "text_config": {"model_type": "qwen3_5_text", "attention_bias": False, "attn_output_gate": True,
                    "eos_token_id": 248044, "full_attention_interval": 4, "head_dim": 256,
                    "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 12288,
                    "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128,
                    "linear_num_key_heads": 16, "linear_num_value_heads": 32,
                    "linear_value_head_dim": 128, "num_attention_heads": 16,
                    "num_key_value_heads": 4, "num_hidden_layers": 32, "rms_norm_eps": 1e-6,
                    "vocab_size": 248320, "mamba_ssm_dtype": "float32", "mtp_num_hidden_layers": 1,
                    "mtp_use_dedicated_embeddings": False, "tie_word_embeddings": False,
                    "rope_parameters": {"mrope_interleaved": True, "mrope_section": [11, 11, 10],
                                        "rope_type": "default", "rope_theta": 10000000,
                                        "partial_rotary_factor": 0.25}},
    "vision_config": {"model_type": "qwen3_5_vision", "depth": 27, "hidden_size": 1152,
                      "hidden_act": "gelu_pytorch_tanh", "in_channels": 3,
                      "intermediate_size": 4304, "num_heads": 16, "num_position_embeddings": 2304,
                      "out_hidden_size": 4096, "patch_size": 16, "spatial_merge_size": 2,
                      "temporal_patch_size": 2},
}
PRESETS = {"preset:qwen2.5-vl-7b": QWEN25_VL_7B, "preset:qwen3-vl-8b": QWEN3_VL_8B,
           "preset:qwen3.5-9b": QWEN3_5_9B}


def load_config(model: str):
    """A Qwen2_5_VLConfig or Qwen3VLConfig from a preset name (PRESETS) or an HF folder. Raises
    ValueError for an unknown preset or a folder without config.json."""
    from transformers import AutoConfig, Qwen2_5_VLConfig, Qwen3_5Config, Qwen3VLConfig
    if model.startswith("preset:"):
        if model not in PRESETS:
            raise UserError(f"--model {model}: unknown preset; known: {sorted(PRESETS)}")
        if PRESETS[model]["model_type"] in ("qwen3_vl", "qwen3_5"):
            kind = Qwen3VLConfig if PRESETS[model]["model_type"] == "qwen3_vl" else Qwen3_5Config
            return kind(**{k: (dict(v) if isinstance(v, dict) else v)
                           for k, v in PRESETS[model].items()})
        cfg = dict(PRESETS[model])
        text = {k: v for k, v in cfg.items() if k != "vision_config"}
        return Qwen2_5_VLConfig(text_config=text, vision_config=cfg["vision_config"], **{
            k: cfg[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                "vision_end_token_id")})
    if not (Path(model) / "config.json").exists():
        raise UserError(f"plan.py needs --model {' or '.join(PRESETS)} or an HF folder with "
                        f"config.json, got {model!r}")
    return AutoConfig.from_pretrained(model)


_META: dict[int, tuple] = {}


def meta_model(config):
    """The family's model class (model.family(config).MODEL_CLASS) built from `config` on the meta
    device (no memory, no weights), once per config object: the plan estimates several settings of
    one model."""
    hit = _META.get(id(config))
    if hit is None or hit[0] is not config:
        from model import family
        with torch.device("meta"):
            hit = _META[id(config)] = (config, family(config).MODEL_CLASS(config))
    return hit[1]


def count_params(config) -> tuple[int, int, int]:
    """(total, vision tower, root) parameter counts of the model built on the meta device (no memory
    used); root: the parameters outside the decoder layers and vision blocks (embeddings, lm_head,
    norms, patch embed, merger), FSDP2's root unit."""
    model = meta_model(config)
    blocks = sum(p.numel() for m in [*model.model.language_model.layers, *model.model.visual.blocks]
                 for p in m.parameters())
    total = sum(p.numel() for p in model.parameters())
    return total, sum(p.numel() for p in model.model.visual.parameters()), total - blocks


def decoder_params(config) -> int:
    """Φ_lm: the parameters decode.Weights copies (decoder, embeddings, final norm and lm_head; a
    tied lm_head counts twice, since the copy holds both)."""
    model = meta_model(config)
    return (sum(p.numel() for p in model.model.language_model.parameters())
            + model.lm_head.weight.numel())


def lora_params(config, cfg) -> tuple[int, int]:
    """(Φ_A, trained vision copy) parameter counts for cfg's LoRA settings: Σ r·(in + out) over the
    Linears whose names match cfg.lora_targets (re.fullmatch, as PEFT), and the modules
    --lora-vision trains in full."""
    import re
    from lora import decoder_targets
    model = meta_model(config)
    targets = decoder_targets(model, cfg.lora_targets)
    phi_a = sum(cfg.lora_rank * (m.in_features + m.out_features) for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear) and re.fullmatch(targets, n))
    trained = {"frozen": None, "merger": model.model.visual.merger,
               "tower": model.model.visual}[cfg.lora_vision]
    return phi_a, 0 if trained is None else sum(p.numel() for p in trained.parameters())


def decode_step_bytes(rows: int, live: int, hidden: int, inter: int, heads: int, head_dim: int,
                      vocab: int) -> int:
    """Bytes of the compiled decode step's temporaries: the fresh tensors of one decoder layer and
    of the sampler over `rows` rows attending to `live` cache columns, 4 bytes each, none fused or
    reused. Counted from the tiny model's post-grad graph (tests/test_plan.py checks the bound
    against it): per layer ~10 (R, D), 6 (R, H, L) scores, 5 (R, I) and 4 (R, H, hd) tensors; the
    sampler ~20 (R, V) float32 and 3 (R, V) bool."""
    layer = 12 * hidden + 8 * heads * live + 8 * inter + 8 * heads * head_dim
    return rows * 4 * (layer + 25 * vocab)


def estimate(config, cfg) -> dict:
    """Bytes per GPU for each term of the module docstring; cfg is a `Config` (or train.py's,
    finished).
    Returns {"phi": Φ, "phi_vision": ..., "phi_lora": Φ_A, "P": prompt tokens, term name: bytes,
    "host": bytes of host memory per rank (offload), "rollout_peak" and "train_peak": the two
    phases' estimates, "total": the larger, "mode": the sharding}."""
    phi, phi_v, root = count_params(config)
    tc, vc = config.text_config, config.vision_config
    W = max(1, cfg.nproc)
    offload = getattr(cfg, "cpu_offload", False)
    mode = ("fsdp" if cfg.dist in ("auto", "fsdp") else "ddp") if W > 1 or offload else "one GPU"
    D, I, layers, V = tc.hidden_size, tc.intermediate_size, tc.num_hidden_layers, tc.vocab_size
    head_dim = getattr(tc, "head_dim", None) or D // tc.num_attention_heads
    kv = tc.num_key_value_heads * head_dim
    frames = cfg.nframes or cfg.max_frames
    factor, merge = vc.patch_size * vc.spatial_merge_size, vc.spatial_merge_size ** 2
    # after temporal 2 and 2x2 merge
    visual_tokens = (frames // 2) * (cfg.video_max_pixels // factor ** 2)
    patches = visual_tokens * merge  # vision tokens before the merger
    # Qwen3-VL: DeepStack levels
    deepstack = len(getattr(vc, "deepstack_visual_indexes", None) or [])
    from model import family
    stamps = family(config).MEDIA["timestamps"]  # Qwen3-VL, Qwen3.5: timestamped blocks
    P, L = visual_tokens + 250 + (8 * (frames // 2) if stamps else 0), cfg.max_completion_length
    T, M = P + L, cfg.G * cfg.groups_per_micro_batch
    shard = W if mode == "fsdp" else 1
    ref = cfg.beta > 0
    if getattr(cfg, "lora_rank", 0) > 0:
        phi_a, phi_t = lora_params(config, cfg)
        trained = phi_a + phi_t
        base = (2 if phi_t == 0 else 4) * phi
        out = {"params": (base + 4 * trained) / shard,
               "grads": 4 * trained * (2 if mode == "ddp" else 1) / shard,
               "optimizer": 8 * trained / shard, "reference": 0,
               "gathered": 2 * phi if mode == "fsdp" else 2 * trained}
    else:
        phi_a = 0
        out = {"params": 4 * phi / shard, "grads": 4 * phi * (2 if mode == "ddp" else 1) / shard,
               "optimizer": 8 * phi / shard, "reference": 4 * phi / shard if ref else 0,
               "gathered": 2 * phi}
    out |= {"phi": phi, "phi_vision": phi_v, "phi_lora": phi_a, "P": P, "host": 0}
    if offload:
        out["host"] = out["params"] + out["grads"] + out["optimizer"] + out["reference"]
        out["params"] = out["grads"] = out["optimizer"] = out["reference"] = 0
    from decode import CACHE_MULTIPLE, ROW_MULTIPLE
    rows = -(-cfg.prompts_per_rank * (cfg.G + cfg.G_shuffled) // ROW_MULTIPLE) * ROW_MULTIPLE
    length = -(-T // CACHE_MULTIPLE) * CACHE_MULTIPLE
    kinds = getattr(tc, "layer_types", None) or ["full_attention"] * layers
    n_linear = sum(k == "linear_attention" for k in kinds)  # Qwen3.5: Gated DeltaNet layers
    out["kv_cache"] = ((rows * length + 2 * cfg.prompts_per_rank * P) * (layers - n_linear)
                       * 2 * kv * 2)
    # Qwen3.5's linear layers keep a state per row, not per token: float32 (HV, dk, dv) plus the
    # conv's last K - 1 inputs of C = 2 HK dk + HV dv channels in bf16
    # (decode_hybrid.recurrent_states), for the rows and the prefill
    out["recurrent"] = 0
    if n_linear:
        HK, HV = tc.linear_num_key_heads, tc.linear_num_value_heads
        dk, dv, K = tc.linear_key_head_dim, tc.linear_value_head_dim, tc.linear_conv_kernel_dim
        per_row = HV * dk * dv * 4 + (2 * HK * dk + HV * dv) * (K - 1) * 2
        out["recurrent"] = (rows + 2 * cfg.prompts_per_rank) * n_linear * per_row
    out["decode_copy"] = 2 * decoder_params(config)
    out["decode_step"] = decode_step_bytes(rows, length, D, I, tc.num_attention_heads, head_dim, V)
    full_layer = 2 * (6 * D + 2 * kv + 4 * I)  # bytes per token per layer
    dv, iv = vc.hidden_size, vc.intermediate_size
    full_block = 2 * (6 * dv + 4 * iv)
    if cfg.activation_checkpointing:
        dec = M * T * (layers * 2 * D + full_layer)
        vis = patches * (vc.depth * 2 * dv + full_block)
    else:
        dec = M * T * layers * full_layer
        vis = patches * vc.depth * full_block
    vis += deepstack * visual_tokens * 2 * D * 2  # DeepStack features and grads, bf16
    out["activations"] = dec + vis + 3 * M * min(128, L) * V * 4
    train_peak = (out["params"] + out["grads"] + out["optimizer"] + out["reference"]
                  + out["activations"] + out["decode_copy"])
    rollout_peak = (out["params"] + out["optimizer"] + out["reference"] + out["gathered"]
                    + out["kv_cache"] + out["recurrent"] + out["decode_copy"] + out["decode_step"])
    # one gathered block at a time, and the root unit gathered (bf16) with its fp32 gradient
    if mode == "fsdp":
        train_peak += 2 * (phi - phi_v) / layers + 6 * root
    out["rollout_peak"], out["train_peak"] = rollout_peak, train_peak
    out["total"] = max(train_peak, rollout_peak)
    out["mode"] = mode
    return out


TERMS = ("params", "grads", "optimizer", "reference", "gathered", "decode_copy", "decode_step",
         "kv_cache", "recurrent", "activations", "total", "host")
# keep the estimate under this share of the GPU (fragmentation, CUDA context, NCCL buffers)
FIT = 0.85


def options(config, cfg) -> list[tuple[str, dict]]:
    """The estimate for each way of running cfg on cfg.nproc GPUs: full fine-tuning or LoRA (cfg's
    rank, else 64), with or without activation checkpointing, and CPU offload for full fine-tuning.
    [(label, estimate)]."""
    from dataclasses import replace
    rank = cfg.lora_rank or 64
    ways = []
    for lora_rank, offload in ((0, False), (0, True), (rank, False)):
        for ckpt in (False, True):
            c = replace(cfg, lora_rank=lora_rank, cpu_offload=offload,
                        activation_checkpointing=ckpt, dist="fsdp" if offload else cfg.dist)
            label = ((f"LoRA r={lora_rank}" if lora_rank else "full")
                     + (" + offload" if offload else "") + (" + act. ckpt" if ckpt else ""))
            ways.append((label, estimate(config, c)))
    return ways


def report(cfg) -> str:
    """The plan as a printable table (GiB per GPU), then which settings fit cfg.gpu_memory_gib on
    cfg.nproc GPUs. Raises ValueError when --model is not usable."""
    if not cfg.model:
        raise UserError(f"plan.py needs --model (an HF folder or one of {', '.join(PRESETS)})")
    config = load_config(cfg.model)
    e = estimate(config, cfg)
    lora = (f" | LoRA r={cfg.lora_rank}: {e['phi_lora'] / 1e6:.1f}M adapter parameters"
            if cfg.lora_rank else "")
    lines = [f"memory plan: {cfg.model} | {e['phi'] / 1e9:.2f}B parameters "
             f"({e['phi_vision'] / 1e9:.2f}B vision) | "
             f"--dist {e['mode']} on {cfg.nproc} GPU(s) | "
             f"activation checkpointing {cfg.activation_checkpointing} | "
             f"CPU offload {cfg.cpu_offload}{lora}",
             f"G={cfg.G} G̃={cfg.G_shuffled} prompts/rank={cfg.prompts_per_rank} "
             f"frames={cfg.nframes or cfg.max_frames} "
             f"pixels/frame={cfg.video_max_pixels} prompt≈{e['P']} tokens, "
             f"completion≤{cfg.max_completion_length}",
             f"{'term':<14}{'GiB/GPU':>10}"]
    for k in TERMS:
        lines.append(f"{k if k != 'host' else 'host (rank)':<14}{e[k] / GIB:>10.2f}")
    lines += ["",
              f"fits {cfg.nproc} x {cfg.gpu_memory_gib:g} GiB (estimate <= {FIT:.0%} of the GPU)?",
              f"{'setting':<32}{'GiB/GPU':>10}{'host GiB/rank':>15}  fits"]
    for label, est in options(config, cfg):
        fits = est["total"] <= FIT * cfg.gpu_memory_gib * GIB
        lines.append(f"{label:<32}{est['total'] / GIB:>10.1f}{est['host'] / GIB:>15.1f}  "
                     f"{'yes' if fits else 'no'}")
    return "\n".join(lines)


@dataclass
class Config:
    """train.py's flags that the plan reads, with the same defaults (tests/test_plan.py checks
    them)."""
    model: str = opt("", "an HF folder or a preset (preset:qwen2.5-vl-7b, preset:qwen3-vl-8b)")
    nproc: int = opt(8, "GPUs")
    gpu_memory_gib: float = opt(80.0, "GPU memory, for the table of settings that fit")
    G: int = opt(8, "G: completions per prompt on ordered frames")
    G_shuffled: int = opt(-1, "G̃: completions on shuffled frames per video prompt; -1: G // 2")
    beta: float = opt(0.04, "β: KL weight; 0 holds no reference")
    prompts_per_rank: int = opt(1, "prompts per rank per step")
    groups_per_micro_batch: int = opt(1, "prompt groups per forward/backward of the log-prob pass")
    max_frames: int = opt(pixels.FPS_MAX_FRAMES, "most frames per video")
    nframes: int = opt(0, "> 0: a fixed frame count")
    video_max_pixels: int = opt(pixels.VIDEO_MAX_PIXELS, "per-frame pixel budget")
    max_completion_length: int = opt(768, "max new tokens per completion")
    dist: str = opt("auto", "auto: fsdp | fsdp | ddp | none",
                    choices=("auto", "fsdp", "ddp", "none"))
    activation_checkpointing: bool = opt(False, "recompute decoder layers and vision blocks")
    cpu_offload: bool = opt(False, "FSDP2 CPU offload of params, grads, AdamW")
    lora_rank: int = opt(0, "r: LoRA rank; 0: full fine-tuning")
    lora_targets: str = opt("auto", "regex of adapted modules; auto: every decoder-layer Linear")
    lora_vision: str = opt("frozen", "the vision tower under LoRA",
                           choices=("frozen", "merger", "tower"))


def main(argv=None) -> None:
    cfg, _ = config.parse(Config, argv, description=__doc__)
    if cfg.G_shuffled < 0:
        cfg.G_shuffled = cfg.G // 2
    config.check(cfg, {"nproc": (cfg.nproc >= 1, ">= 1"), "G": (cfg.G >= 1, ">= 1")})
    print(report(cfg))


if __name__ == "__main__":
    main()
