"""Per-GPU memory plan for T-GRPO: `python train.py --plan --model preset:qwen2.5-vl-7b --nproc 8 --dist fsdp`.

The model is built on the meta device (no memory, no weights), so Φ (parameter count) is exact; the rest are
estimates in bytes per GPU, W = --nproc, for the config's frames, pixels, G, G̃, lengths and sharding:

  params      fp32 master weights (--precision bf16-mixed, the default on CUDA): fsdp 4Φ/W (shards; compute
              in bf16 via MixedPrecisionPolicy), ddp and one GPU 4Φ (compute in bf16 via autocast)
  grads       fp32: fsdp 4Φ/W (after the fp32 reduce-scatter); ddp 4Φ + 4Φ (.grad and DDP's all-reduce
              buckets); one GPU 4Φ (FSDP over one GPU is not applied: train.py runs it unsharded)
  optimizer   AdamW m and v in fp32: fsdp 8Φ/W, otherwise 8Φ
  reference   the frozen KL reference in fp32 (only when β > 0): fsdp 4Φ/W, otherwise 4Φ
  gathered    bf16 copies of the weights, 2Φ: under FSDP `distributed.full_weights` keeps the whole model
              gathered for the rollout (the log-prob pass gathers one block plus the root unit at a time);
              without FSDP, autocast caches the bf16 copy of every weight it casts during a forward.
  KV cache    rollout: R = prompts_per_rank·(G + G̃) rows, each of (P + L) tokens, every decoder layer keeps K
              and V: R·(P + L)·layers·2·kv_heads·head_dim·2 bytes (bf16)
  activations log-prob pass, one micro-batch of M = G·groups_per_micro_batch rows of T = P + L tokens:
              decoder per token per layer, bf16 saved tensors: without checkpointing 2·(6D + 2·kv + 4I)
              (norm outputs, q/k/v, attention output, residuals, gate/up/act/product of the MLP); with
              checkpointing 2D per layer (the block input) plus one block's full set during its recompute;
              lm_head: chunk of 128 positions, fp32 logits, log-softmax and its gradient: 3·M·128·V·4;
              vision tower (once per distinct visual, Pv patch tokens): 2·(6Dv + 4Iv)·Pv per block
              (checkpointed: 2Dv per block + one block); the reference's no-grad pass needs far less.
P (prompt tokens) = frames/2 · pixels/28² visual tokens + 250 text tokens for a video (the 2x2 merger and
the temporal patch of 2 each shrink the token count); L = max_completion_length. Allocator fragmentation,
CUDA context (~1 GB) and NCCL buffers come on top: keep the total under ~85 % of the GPU.
"""
from __future__ import annotations

from pathlib import Path

import torch

GIB = 1024 ** 3
# Qwen2.5-VL-7B-Instruct's configuration (the numbers of its config.json), so the plan needs no download.
QWEN25_VL_7B = {
    "model_type": "qwen2_5_vl", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 128000, "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0, "vocab_size": 152064, "tie_word_embeddings": False, "hidden_act": "silu",
    "bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652, "vision_end_token_id": 151653,
    "vision_token_id": 151654, "image_token_id": 151655, "video_token_id": 151656,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
                      "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14,
                      "spatial_merge_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
                      "tokens_per_second": 2, "temporal_patch_size": 2},
}
PRESETS = {"preset:qwen2.5-vl-7b": QWEN25_VL_7B}


def load_config(model: str):
    """A Qwen2_5_VLConfig from a preset name or an HF folder. Raises ValueError for an unknown preset or a
    folder without config.json."""
    from transformers import AutoConfig, Qwen2_5_VLConfig
    if model.startswith("preset:"):
        if model not in PRESETS:
            raise ValueError(f"--model {model}: unknown preset; known: {sorted(PRESETS)}")
        cfg = dict(PRESETS[model])
        text = {k: v for k, v in cfg.items() if k != "vision_config"}
        return Qwen2_5_VLConfig(text_config=text, vision_config=cfg["vision_config"], **{
            k: cfg[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")})
    if not (Path(model) / "config.json").exists():
        raise ValueError(f"--plan needs --model preset:qwen2.5-vl-7b or an HF folder with config.json, got {model!r}")
    return AutoConfig.from_pretrained(model)


def count_params(config) -> tuple[int, int]:
    """(total, vision tower) parameter counts of the model built on the meta device (no memory used)."""
    from transformers import Qwen2_5_VLForConditionalGeneration
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    return sum(p.numel() for p in model.parameters()), sum(p.numel() for p in model.model.visual.parameters())


def estimate(config, cfg) -> dict:
    """Bytes per GPU for each term of the module docstring; cfg is train.Config (after finish_config).
    Returns {"phi": Φ, "phi_vision": ..., "P": prompt tokens, term name: bytes, "total": peak estimate}."""
    phi, phi_v = count_params(config)
    tc, vc = config.text_config, config.vision_config
    W = max(1, cfg.nproc)
    mode = ("fsdp" if cfg.dist in ("auto", "fsdp") else "ddp") if W > 1 else "one GPU"
    D, I, layers, V = tc.hidden_size, tc.intermediate_size, tc.num_hidden_layers, tc.vocab_size
    head_dim = D // tc.num_attention_heads
    kv = tc.num_key_value_heads * head_dim
    frames = cfg.nframes or cfg.max_frames
    visual_tokens = (frames // 2) * (cfg.video_max_pixels // (28 * 28))        # after temporal 2 and 2x2 merge
    patches = visual_tokens * 4                                                 # vision tokens before the merger
    P, L = visual_tokens + 250, cfg.max_completion_length
    T, M = P + L, cfg.G * cfg.groups_per_micro_batch
    out = {"phi": phi, "phi_vision": phi_v, "P": P}
    if mode == "fsdp":
        out |= {"params": 4 * phi / W, "grads": 4 * phi / W, "optimizer": 8 * phi / W,
                "reference": 4 * phi / W if cfg.beta > 0 else 0, "gathered": 2 * phi}
    else:
        out |= {"params": 4 * phi, "grads": 8 * phi if mode == "ddp" else 4 * phi, "optimizer": 8 * phi,
                "reference": 4 * phi if cfg.beta > 0 else 0, "gathered": 2 * phi}
    rows = cfg.prompts_per_rank * (cfg.G + cfg.G_shuffled)
    out["kv_cache"] = rows * T * layers * 2 * kv * 2
    full_layer = 2 * (6 * D + 2 * kv + 4 * I)                                  # bytes per token per layer
    dv, iv = vc.hidden_size, vc.intermediate_size
    full_block = 2 * (6 * dv + 4 * iv)
    if cfg.activation_checkpointing:
        dec = M * T * (layers * 2 * D + full_layer)
        vis = patches * (vc.depth * 2 * dv + full_block)
    else:
        dec = M * T * layers * full_layer
        vis = patches * vc.depth * full_block
    out["activations"] = dec + vis + 3 * M * min(128, L) * V * 4
    train_peak = out["params"] + out["grads"] + out["optimizer"] + out["reference"] + out["activations"]
    rollout_peak = out["params"] + out["optimizer"] + out["reference"] + out["gathered"] + out["kv_cache"]
    if mode == "fsdp":
        train_peak += 2 * (phi - phi_v) / layers                                # one gathered block at a time
    out["total"] = max(train_peak, rollout_peak)
    out["mode"] = mode
    return out


def report(cfg) -> str:
    """The plan as a printable table (GiB per GPU). Raises ValueError when --model is not usable."""
    if not cfg.model:
        raise ValueError("--plan needs --model (an HF folder or preset:qwen2.5-vl-7b)")
    config = load_config(cfg.model)
    e = estimate(config, cfg)
    lines = [f"memory plan: {cfg.model} | {e['phi'] / 1e9:.2f}B parameters ({e['phi_vision'] / 1e9:.2f}B vision) | "
             f"--dist {e['mode']} on {cfg.nproc} GPU(s) | activation checkpointing {cfg.activation_checkpointing}",
             f"G={cfg.G} G̃={cfg.G_shuffled} prompts/rank={cfg.prompts_per_rank} frames={cfg.nframes or cfg.max_frames} "
             f"pixels/frame={cfg.video_max_pixels} prompt≈{e['P']} tokens, completion≤{cfg.max_completion_length}",
             f"{'term':<14}{'GiB/GPU':>10}"]
    for k in ("params", "grads", "optimizer", "reference", "gathered", "kv_cache", "activations", "total"):
        lines.append(f"{k:<14}{e[k] / GIB:>10.2f}")
    return "\n".join(lines)
