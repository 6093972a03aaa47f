"""What the question needs of the media: the same prompt with the media removed or cut to one frame.

A policy that answers as well without the video (`none`) or from its first frame (`first-frame`) as
from the ordered frames did not need the frames' order, or the frames at all, for that question
(VidGround, "Watch Before You Answer": 30.9 % of Video-R1-260k answerable from the text alone).
eval.py --media reports these baselines beside ordered and shuffled frames; blind_filter.py drops
the training samples the policy answers blind. Variants (VARIANTS):
  ordered      the sampled frames in order (pixels.prepare)
  shuffled     the same frames permuted (pixels.prepare with shuffled; images stay as they are)
  none         the same chat template and question with no media item: no vision tokens at all
  first-frame  a video cut to its first sampled frame (one temporal patch; the same video
               template); an image stays as it is
"""

from __future__ import annotations


import torch

import data
import pixels

VARIANTS = ("ordered", "shuffled", "none", "first-frame")


def parse(spec: str) -> list[str]:
    """'ordered,none' -> ['ordered', 'none'] (order kept, duplicates dropped). Raises ValueError
    naming an unknown variant or an empty list."""
    names = list(dict.fromkeys(n.strip() for n in spec.split(",") if n.strip()))
    bad = [n for n in names if n not in VARIANTS]
    if bad or not names:
        raise ValueError(
            f"--media {spec!r}: expected a comma-separated list of {', '.join(VARIANTS)}"
        )
    return names


def prepare(
    sample: data.Sample,
    tokenizer,
    media: pixels.MediaConfig,
    variant: str,
    template: str = "train",
    generator: torch.Generator | None = None,
) -> pixels.Prepared:
    """The sample as the policy sees it under `variant` (module docstring). `none` reads no media
    file: its Prepared has visual None (model.py treats a None visual as a text-only prompt) and no
    frames. With `shuffled` the permuted copy is in shuffled_ids/shuffled_visual as pixels.prepare
    makes it. Raises pixels.MediaError for unreadable media (not for `none`), ValueError for an
    unknown variant."""
    if variant in ("ordered", "shuffled"):
        return pixels.prepare(
            sample,
            tokenizer,
            media,
            shuffled=variant == "shuffled",
            variant=template,
            generator=generator,
        )
    text = data.build_prompt_text(sample, template)
    if variant == "none":
        return pixels.Prepared(sample, data.encode_prompt(tokenizer, text, None, None), None)
    if variant != "first-frame":
        raise ValueError(f"unknown media variant {variant!r}; expected one of {VARIANTS}")
    if sample.data_type != "video":
        return pixels.prepare(sample, tokenizer, media, variant=template)
    frames, fps, times, indices = pixels.load_visual(sample, media)  # (T, 3, H, W) uint8
    visual = pixels.to_visual(
        frames[:1], fps, times[:1], "video", media, sample.media_path
    )  # t = 1
    ids = data.encode_prompt(
        tokenizer, text, "video", visual.grid_thw, media.merge_size, timestamps=visual.timestamps
    )
    return pixels.Prepared(sample, ids, visual, frames=frames[:1], frame_times=tuple(times[:1]),
                           frame_indices=tuple(indices[:1]))


