"""Random Qwen2.5-VL models with the real 7B structure, built by the project (no download, no weights).

    python tiny.py --out runs/narrow --width narrow --tokenizer ../shared/qwen2_5_vl_7b_instruct
    python tiny.py --out runs/full8 --width full                 # the 7B's widths, 8 of its 28 decoder layers

`build_like_7b` starts from Qwen2.5-VL-7B-Instruct's config (a folder's config.json, or plan.py's copy of it)
and changes only sizes: every architectural feature stays (vocabulary 152,064, head_dim 128 with
mrope_section [16, 24, 24], windowed vision blocks with full attention at the configured indexes, the 2x2
patch merger, untied lm_head). Two presets:
- "narrow": hidden 512 (4 heads of 128, 2 KV heads), 2 decoder layers, vision depth 4 (full attention at
  blocks 1 and 3) -- small enough for 2 CPU cores, so CPU tests run the real structure end to end;
- "full": the 7B's widths with 8 of its 28 decoder layers and the whole vision tower -- what one GPU holds
  with its optimizer state, for bench/gpu_check.sh.
With a real tokenizer folder (tokenizer + chat template) the special-token ids are the real ones;
without one, the tiny default's byte-level BPE tokenizer (model.build_tokenizer) is used and the config's
special-token ids are set to its ids (the embedding keeps 152,064 rows).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

WIDTHS = {
    "narrow": {"text": dict(hidden_size=512, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2),
               "vision": dict(depth=4, hidden_size=320, intermediate_size=640, num_heads=4, fullatt_block_indexes=[1, 3])},
    "full": {"text": dict(num_hidden_layers=8), "vision": {}},
}


def config_like_7b(width: str, source: str = "preset:qwen2.5-vl-7b", tokenizer=None):
    """Qwen2.5-VL-7B's config (`source`: an HF folder or plan.py's preset) with the sizes of WIDTHS[width].

    `tokenizer`: when it is not the real Qwen tokenizer, the special-token ids are taken from it.
    Returns a Qwen2_5_VLConfig. Raises ValueError for an unknown width, or when head_dim would not be 128
    or the vision out size would not equal the text hidden size (the structure would not be the 7B's)."""
    import plan
    from transformers import Qwen2_5_VLConfig
    if width not in WIDTHS:
        raise ValueError(f"unknown width {width!r}; expected one of {sorted(WIDTHS)}")
    d = plan.load_config(source).to_dict()
    d["text_config"].pop("layer_types", None)            # derived from num_hidden_layers again
    d["text_config"].update(WIDTHS[width]["text"])
    d["vision_config"].update(WIDTHS[width]["vision"], out_hidden_size=d["text_config"]["hidden_size"])
    cfg = Qwen2_5_VLConfig(**d)
    head_dim = cfg.text_config.hidden_size // cfg.text_config.num_attention_heads
    if head_dim != 128:
        raise ValueError(f"width {width}: head_dim {head_dim}, the 7B's is 128 (mrope_section [16, 24, 24])")
    if tokenizer is not None and tokenizer.convert_tokens_to_ids("<|video_pad|>") != cfg.video_token_id:
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in
               ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_end|>", "<|endoftext|>")}
        cfg.image_token_id, cfg.video_token_id = ids["<|image_pad|>"], ids["<|video_pad|>"]
        cfg.vision_start_token_id, cfg.vision_end_token_id = ids["<|vision_start|>"], ids["<|vision_end|>"]
        for c in (cfg, cfg.text_config):
            c.eos_token_id, c.pad_token_id, c.bos_token_id = ids["<|im_end|>"], ids["<|endoftext|>"], None
    return cfg


def build_like_7b(folder: str | Path, width: str = "narrow", tokenizer_from: str | Path | None = None,
                  source: str = "preset:qwen2.5-vl-7b", seed: int = 0) -> Path:
    """Write a randomly initialised HF folder (float32 safetensors, tokenizer, chat template, processor
    settings) with `config_like_7b(width)`; returns `folder`. Idempotent (a complete folder is kept).

    tokenizer_from: a folder with the real Qwen2.5-VL tokenizer and chat template (e.g.
    ../shared/qwen2_5_vl_7b_instruct); None: the tiny BPE tokenizer. Weights: HF's initialisers under
    torch.manual_seed(seed). Raises ValueError as config_like_7b; FileNotFoundError for a missing folder."""
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    from model import build_tokenizer, save_hf
    folder = Path(folder)
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        return folder
    if tokenizer_from is not None:
        if not (Path(tokenizer_from) / "tokenizer_config.json").exists():
            raise FileNotFoundError(f"{tokenizer_from}: no tokenizer_config.json")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    else:
        tokenizer = build_tokenizer(["What happens in the video? <think>first</think> <answer>A</answer>"] * 4)
    config = config_like_7b(width, source, tokenizer)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).float()
    return save_hf(model, tokenizer, folder)                                 # atomic: never a partial folder


def main():
    p = argparse.ArgumentParser(description="Build a random Qwen2.5-VL with the 7B's structure.")
    p.add_argument("--out", required=True, help="output HF folder")
    p.add_argument("--width", default="narrow", choices=sorted(WIDTHS), help="narrow (CPU tests) or full (one GPU)")
    p.add_argument("--tokenizer", default="", help="folder with the real Qwen2.5-VL tokenizer; empty: the tiny one")
    p.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    a = p.parse_args()
    print(build_like_7b(a.out, a.width, a.tokenizer or None, seed=a.seed))


if __name__ == "__main__":
    main()
