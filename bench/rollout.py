"""Group rollout speed: `rollout.generate` (one prefill per prompt, KV cache expanded to G rows) against HF
`generate(num_return_sequences=G)`, which tiles the clip's pixels G times (the vision tower runs G times) and
prefills the same prompt G times, as the official trainer does (notes §1 step 5).

    python bench/rollout.py        # tiny model, a built-in clip at 8 frames x 448x448 = 1024 video tokens, G = 8
    python bench/rollout.py --pixels 224 --new-tokens 256 --repeats 3

The default clip has 1024 video tokens, about the official training prompt's 960 (16 frames at 224x420,
notes §8 "Worked numbers"); the tiny model makes the vision tower and prefill cheap next to decoding, so the
speed-up shrinks as --new-tokens grows (decode steps cost the same on both sides).

Both sides do equal work: the same prompt and pixels, G rows, temperature 1, top-p 0.95, no top-k, and
exactly --new-tokens tokens per row (stop tokens disabled in ours; min_new_tokens = max_new_tokens in HF).
They run alternately (A, B, A, B, ...) after one warm-up each; the figure is the median of per-pair ratios.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
import distributed  # noqa: E402
import pixels  # noqa: E402
import rollout  # noqa: E402
import common  # noqa: E402
from model import load_policy, mm_token_types  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--G", type=int, default=8)
    p.add_argument("--pixels", type=int, default=448, help="frame side in pixels (per-frame budget pixels**2)")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="timed (ours, HF) pairs after one warm-up each")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache-dir", default="runs/cache")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: stable figures on a shared CPU)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    paths = common.builtin(a.cache_dir, distributed.Dist())
    model_dir, train_json = paths["tiny"], paths["train"]
    hf, tok = load_policy(model_dir, torch.float32, a.device)
    hf.eval()
    sample = next(s for s in data.load_samples(train_json) if s.data_type == "video")
    media = pixels.MediaConfig(max_frames=a.frames, nframes=a.frames, video_min_pixels=a.pixels ** 2,
                                video_max_pixels=a.pixels ** 2)
    prep = pixels.prepare(sample, tok, media)
    vis = prep.visual
    n_video = int(vis.grid_thw.prod()) // 4
    sp = rollout.SamplingParams(temperature=1.0, top_p=0.95, top_k=0, max_new_tokens=a.new_tokens)
    gen = torch.Generator(device=a.device).manual_seed(0)
    ids = prep.prompt_ids[None].to(a.device)                                  # (1, P)
    hf_kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=mm_token_types(ids, hf.config),
                 pixel_values_videos=vis.pixel_values.to(a.device), video_grid_thw=vis.grid_thw[None].to(a.device),
                 second_per_grid_ts=torch.tensor([vis.second_per_grid], device=a.device),
                 do_sample=True, temperature=1.0, top_p=0.95, top_k=0, repetition_penalty=1.0,
                 num_return_sequences=a.G, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens,
                 eos_token_id=[tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id],
                 pad_token_id=tok.pad_token_id, use_cache=True)

    def sync():
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()

    def ours():
        out = rollout.generate(hf, [prep.prompt_ids], [vis], [a.G], sp, tok.pad_token_id, [-1], gen)[0]
        return out.ids.shape

    def theirs():
        return hf.generate(**hf_kw)[:, ids.shape[1]:].shape

    def timed(fn):
        sync()
        t = time.perf_counter()
        shape = fn()
        sync()
        assert tuple(shape) == (a.G, a.new_tokens), shape                     # equal work
        return time.perf_counter() - t

    timed(ours), timed(theirs)                                                 # warm-up
    t_ours, t_hf = [], []
    for _ in range(a.repeats):
        t_ours.append(timed(ours))
        t_hf.append(timed(theirs))
    ratios = [h / o for o, h in zip(t_ours, t_hf)]
    toks = a.G * a.new_tokens
    print(f"command: python bench/rollout.py --G {a.G} --pixels {a.pixels} --frames {a.frames} "
          f"--new-tokens {a.new_tokens} --repeats {a.repeats} --device {a.device}")
    print(f"model {model_dir} ({sum(p.numel() for p in hf.parameters()) / 1e6:.1f} M params) on {a.device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"prompt {ids.shape[1]} tokens ({n_video} video tokens, grid {vis.grid_thw.tolist()}, "
          f"{vis.pixel_values.shape[0]} patches), G = {a.G}, {a.new_tokens} new tokens per completion")
    for name, ts in (("rollout.generate", t_ours), ("HF generate (tiled)", t_hf)):
        m = statistics.median(ts)
        print(f"{name:22s} median {m:7.3f} s  {a.G / m:7.2f} completions/s  {toks / m:8.1f} tokens/s  "
              f"runs {[round(t, 3) for t in ts]}")
    print(f"speed-up (median of per-pair ratios HF / ours): {statistics.median(ratios):.2f}x  "
          f"pairs {[round(r, 2) for r in ratios]}")


if __name__ == "__main__":
    main()
