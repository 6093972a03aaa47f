"""Qwen2.5-VL: what this model family does its own way (model.FAMILIES picks this module for
model_type "qwen2_5_vl").

- pixels: patches of 14 (resize factor 28), OpenAI CLIP's mean and std; no timestamps in the prompt
  (MEDIA);
- placement: one vision block per visual; a video's temporal patch i sits at time s + trunc(i *
  second_per_grid * tokens_per_second), s being the block's start (`blocks`; the rule itself is
  model.rope_positions', D6);
- vision: the tower's merged features, nothing else (`vision`);
- export: the Qwen2-VL image processor's settings (`processor_files`).
"""
from __future__ import annotations

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from pixels import CLIP_MEAN, CLIP_STD

MODEL_CLASS, CONFIG_CLASS = Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLConfig
# pixels.MediaConfig fields
MEDIA = dict(patch_size=14, image_mean=CLIP_MEAN, image_std=CLIP_STD, timestamps=False)


def blocks(config, visual) -> list[tuple[torch.Tensor, int, int]]:
    """The vision blocks `visual` (pixels.Visual) fills in a prompt: one, as [(time offsets (t,)
    long, h/m, w/m)] for its grid (t, h, w) and merge m. Offset i = trunc(i * second_per_grid *
    tokens_per_second), the product in float32 as the processor's Python float times an int64 tensor
    gives (second_per_grid 0 for images; notes §8)."""
    m = config.vision_config.spatial_merge_size
    t, h, w = (int(x) for x in visual.grid_thw)
    spg = torch.tensor(visual.second_per_grid if visual.data_type == "video" else 0.0,
                       dtype=torch.float32)
    offsets = (torch.arange(t).float() * spg
               * config.vision_config.tokens_per_second).long()   # (t,)
    return [(offsets, h // m, w // m)]


def vision(hf, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> tuple[torch.Tensor, list]:
    """The vision tower on concatenated patches (n, 3*2*14*14) with grids (U, 3): (merged features
    (n/4, D), []) -- this family has no DeepStack features."""
    return hf.model.visual(pixel_values, grid_thw=grid_thw).pooler_output, []


def processor_files(config) -> dict[str, dict]:
    """{file name: JSON} of the processor settings written next to an exported model (transformers'
    Qwen2-VL image processor, as in Qwen2.5-VL-7B-Instruct's preprocessor_config.json)."""
    v = config.vision_config
    return {"preprocessor_config.json": {
        "min_pixels": 3136, "max_pixels": 12845056, "patch_size": v.patch_size,
        "temporal_patch_size": v.temporal_patch_size, "merge_size": v.spatial_merge_size,
        "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor"}}
