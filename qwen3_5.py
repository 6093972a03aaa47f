"""Qwen3.5: what this model family does its own way (model.FAMILIES picks this module for model_type
"qwen3_5"; read from transformers 5.23's models/qwen3_5; docs/departures.md H1-H3).

- pixels: Qwen3-VL's (patches of 16, mean = std = 0.5, timestamps in the prompt; MEDIA);
- placement: Qwen3-VL's one timestamped (1, h/m, w/m) block per temporal patch of a video, one block
  per image (`blocks` is qwen3_vl.blocks: 5.23's Qwen3_5Model.get_rope_index follows the same rule);
- vision: the tower's merged features only -- there is no DeepStack in this family (`vision`);
- decoder: hybrid. `config.text_config.layer_types` names each layer "linear_attention" (Gated
  DeltaNet, a recurrent state instead of a KV cache) or "full_attention" (gated attention with
  partial rotary); `layer_kinds` checks them;
- export: Qwen3-VL's processor files with this family's classes (`processor_files`); the MTP head
  that a released checkpoint carries (`mtp.*`) is dropped by transformers on load
  (`_keys_to_ignore_on_load_unexpected`), so it is not trained; `carried_tensors` reads it from the
  source folder and checkpoint.save_hf writes it into the export unchanged (H2), so the export keeps
  what speculative decoding needs.

Departures (docs/departures.md):
  H1 positions by our rope_positions over Qwen3-VL's block layout (equal to 5.23's get_rope_index,
  tested)
  H2 the MTP head is not trained; it is carried unchanged from the source folder into the export
  H3 LoRA's default targets are every decoder layer's Linears, both layer kinds
  (lora.decoder_targets)
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

import qwen3_vl
from config import UserError

MODEL_CLASS, CONFIG_CLASS = Qwen3_5ForConditionalGeneration, Qwen3_5Config
MEDIA = qwen3_vl.MEDIA            # pixels.MediaConfig: patch 16, mean = std = 0.5, timestamps
# what Qwen3_5DecoderLayer builds a token mixer for (any other kind builds none)
LAYER_KINDS = ("linear_attention", "full_attention")
blocks = qwen3_vl.blocks          # the same placement rule (H1: equal to 5.23's get_rope_index)


def layer_kinds(text_config: dict, where: str) -> list[str]:
    """The decoder's `layer_types` from a config.json's text_config dict, checked: one entry per
    layer, each in LAYER_KINDS. `where` names the file in errors. Returns the list. Raises
    ValueError naming `where` and the field (transformers would build a layer with no token mixer
    for an unknown kind and fail only in the forward)."""
    kinds = text_config.get("layer_types")
    n = text_config.get("num_hidden_layers")
    if kinds is None:
        return []                             # transformers derives them (full_attention_interval)
    bad = [(i, k) for i, k in enumerate(kinds) if k not in LAYER_KINDS]
    if bad:
        i, k = bad[0]
        raise UserError(f"{where}: text_config.layer_types[{i}] = {k!r} is not a known layer "
                        f"kind; expected one of {LAYER_KINDS}")
    if n is not None and len(kinds) != n:
        raise UserError(f"{where}: text_config.layer_types has {len(kinds)} entries for "
                        f"num_hidden_layers {n}")
    return list(kinds)


def vision(hf, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> tuple[torch.Tensor, list]:
    """The vision tower on concatenated patches (n, 3*2*16*16) with grids (U, 3): (merged features
    (n/4, D), []) -- this family has no DeepStack features."""
    return hf.model.visual(pixel_values, grid_thw=grid_thw).pooler_output, []


def processor_files(config) -> dict[str, dict]:
    """{file name: JSON} of the processor settings written next to an exported model: Qwen3-VL's
    image and video processor settings (transformers 5.23 maps model_type qwen3_5 to
    Qwen3VLProcessor, Qwen2VLImageProcessor and Qwen3VLVideoProcessor; not verified against a
    released checkpoint's files)."""
    return qwen3_vl.processor_files(config)


def carried_tensors(model) -> dict[str, torch.Tensor]:
    """The MTP head's tensors {name: tensor} (`mtp.*`, as stored) in the safetensors files of the
    folder `model` was loaded from (model.name_or_path), which transformers drops on load:
    checkpoint.save_hf writes them into the export unchanged (H2). {} when that is not a folder or
    holds none (the project's random models)."""
    from safetensors import safe_open
    folder = Path(getattr(model, "name_or_path", "") or "")
    out = {}
    for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        with safe_open(str(path), "pt") as f:
            out |= {k: f.get_tensor(k) for k in f.keys() if k.startswith("mtp.")}   # noqa: SIM118
    return out
