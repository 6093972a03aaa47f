"""Qwen3-VL: what this model family does its own way (model.FAMILIES picks this module for
model_type "qwen3_vl"; read from transformers 5.23's models/qwen3_vl and the official 4.57
processor; docs/departures.md Q1-Q6).

- pixels: patches of 16 (resize factor 32), mean = std = 0.5 per channel (MEDIA);
- prompt: every temporal patch of a video is its own `<|vision_start|> … <|vision_end|>` block,
  preceded by the text timestamp `<{t:.1f} seconds>` (t = the mean of the patch's first and last
  source frame times, pixels.patch_times; the text is data.expand_media_tokens'). The layout
  replaces the template's `<|vision_start|><|video_pad|><|vision_end|>` as a whole, as the
  official 4.57 processor does (Q2);
- placement: each block is a (1, h/m, w/m) grid whose time axis is the block's start s; there is no
  tokens_per_second term, so --rope-time (L1, S5) changes nothing here (`blocks`); interleaved mRoPE
  is the model's own business, the position ids passed in are still (3, B, T);
- vision: the tower's merged features plus DeepStack features from intermediate vision blocks, which
  the decoder adds to the visual tokens' hidden states after its first layers (`vision`,
  model.embed_with_visuals);
- export: Qwen3-VL's image and video processor settings (`processor_files`).
"""
from __future__ import annotations

import torch
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

MODEL_CLASS, CONFIG_CLASS = Qwen3VLForConditionalGeneration, Qwen3VLConfig
MEAN = STD = (0.5, 0.5, 0.5)
# pixels.MediaConfig fields
MEDIA = dict(patch_size=16, image_mean=MEAN, image_std=STD, timestamps=True)


def blocks(config, visual) -> list[tuple[torch.Tensor, int, int]]:
    """The vision blocks `visual` (pixels.Visual) fills in a prompt, as [(time offsets (t,) long,
    h/m, w/m)]: for a video of grid (t, h, w), t blocks of one temporal patch each at offset 0; for
    an image one block, offsets arange(t) (t = 1 for an image). Raises ValueError when a video
    carries no timestamps or a number other than t (its prompt would not hold one block per temporal
    patch)."""
    m = config.vision_config.spatial_merge_size
    t, h, w = (int(x) for x in visual.grid_thw)
    if visual.data_type != "video":
        return [(torch.arange(t), h // m, w // m)]
    if visual.timestamps is None or len(visual.timestamps) != t:
        got = None if visual.timestamps is None else len(visual.timestamps)
        raise ValueError(f"Qwen3-VL video of grid {[t, h, w]}: needs {t} timestamps "
                         f"(one per temporal patch), got {got}")
    return [(torch.zeros(1, dtype=torch.long), h // m, w // m)] * t


def vision(hf, pixel_values: torch.Tensor,
           grid_thw: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The vision tower on concatenated patches (n, 3*2*16*16) with grids (U, 3): (merged features
    (n/4, D), DeepStack features: one (n/4, D) tensor per entry of
    vision_config.deepstack_visual_indexes, in decoder-layer order)."""
    out = hf.model.visual(pixel_values, grid_thw=grid_thw)
    return out.pooler_output, list(out.deepstack_features)


def processor_files(config) -> dict[str, dict]:
    """{file name: JSON} of the processor settings written next to an exported model: the image
    processor (Qwen2-VL's class with this family's patch, mean and std) and Qwen3-VL's video
    processor (fps 2, 4-768 frames, its pixel budget), as in Qwen3-VL-8B-Instruct's files (shared
    SOURCE.md; not verified byte for byte)."""
    v = config.vision_config
    common = {"patch_size": v.patch_size, "temporal_patch_size": v.temporal_patch_size,
              "merge_size": v.spatial_merge_size, "image_mean": list(MEAN), "image_std": list(STD),
              "processor_class": "Qwen3VLProcessor"}
    return {"preprocessor_config.json": common | {
                "image_processor_type": "Qwen2VLImageProcessorFast",
                "size": {"shortest_edge": 65536, "longest_edge": 16777216}},
            "video_preprocessor_config.json": common | {
                "video_processor_type": "Qwen3VLVideoProcessor", "fps": 2, "min_frames": 4,
                "max_frames": 768, "do_sample_frames": True,
                "size": {"shortest_edge": 4096, "longest_edge": 25165824}}}
