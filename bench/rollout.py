"""Rollout speed. Default: the decode step (decode.py) eager against compiled, ms per decode step
and new tokens/s, on the tiny default at train.py's rollout shape and on the narrow 7B-structured
model (needs ../shared for its tokenizer). --versus-hf: `rollout.generate` (one prefill per prompt,
its K/V copied to G rows) against HF `generate(num_return_sequences=G)`, which tiles the clip's
pixels G times and prefills the same prompt G times, as the official trainer does (notes §1 step 5).

    python bench/rollout.py                  # eager vs compiled; ends with
                                             # "decode: eager A ms/step, compiled B ..."
    python bench/rollout.py --versus-hf      # tiny model, a built-in clip at 8 frames x 448x448,
                                             # G = 8
    python bench/rollout.py --versus-hf --pixels 224 --new-tokens 256 --repeats 3

Eager vs compiled: each setting prefills its prompts once, then times `Decoder.run` (the weight
refresh, token 0 and N - 1 decode steps; stop ids disabled, so every row runs N tokens) alternately
eager and compiled after one warm-up each; ms per decode step = median time / N. The compiled side's
warm-up is its compile: its seconds are printed. The tiny default's setting is train.py's rollout: 4
video prompts x (G = 8 + G̃ = 4) = 48 rows, 96 new tokens (tiny preset); the narrow model's (at 2
and at 8 decoder layers, so that the cost per layer shows): 1 video prompt x 12 rows at 8 frames
(all of a built-in clip's) of 128·28·28 pixels, 64 tokens.

--versus-hf: the default clip has 1024 video tokens, about the official training prompt's 960 (16
frames at 224x420, notes §8 "Worked numbers"); both sides do equal work: the same prompt and pixels,
G rows, temperature 1, top-p 0.95, no top-k, exactly --new-tokens tokens per row (stop tokens
disabled in ours; min_new_tokens = max_new_tokens in HF), alternately after one warm-up each; the
figure is the median of per-pair ratios.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402
import data  # noqa: E402
import decode  # noqa: E402
import distributed  # noqa: E402
import pixels  # noqa: E402
import rollout  # noqa: E402
from builtin import cache, tiny  # noqa: E402
from model import load_policy, mm_token_types  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "qwen2_5_vl_7b_instruct"


def prefill(hf, preps, G, G_shuffled, pad_id) -> rollout.Prefill:
    """rollout.prefill of the prompts (each ordered clip with G rows, its shuffled copy with G̃)."""
    prompts, visuals, n = [], [], []
    for p in preps:
        prompts += [p.prompt_ids, p.shuffled_ids]
        visuals += [p.visual, p.shuffled_visual]
        n += [G, G_shuffled]
    return rollout.prefill(hf, prompts, visuals, n, pad_id)


def eager_vs_compiled(name, hf, tok, preps, G, G_shuffled, new_tokens, repeats, device):
    """Time Decoder.run eager and compiled on one setting; prints its line, returns (eager ms,
    compiled ms)."""
    pre = prefill(hf, preps, G, G_shuffled, tok.pad_token_id)
    args = (pre.cache, pre.rows, pre.attn, pre.logits, pre.next_pos)
    sp = rollout.SamplingParams(temperature=1.0, top_p=0.95, top_k=50, max_new_tokens=new_tokens)
    decoders = {"eager": decode.Decoder("off"), "compiled": decode.Decoder("on")}
    sync = (lambda: torch.cuda.synchronize()) if device.startswith("cuda") else (lambda: None)

    def timed(dec):
        sync()
        t = time.perf_counter()
        ids, _ = dec.run(hf, *args, None, sp, tok.pad_token_id, [-1],
                         torch.Generator(device=device).manual_seed(0))
        sync()
        assert ids.shape == (pre.rows.numel(), new_tokens)
        return time.perf_counter() - t, ids

    warm = {k: timed(d) for k, d in decoders.items()}              # the compiled warm-up compiles
    same = torch.equal(warm["eager"][1], warm["compiled"][1])
    times = {k: [] for k in decoders}
    for _ in range(repeats):
        for k, d in decoders.items():
            times[k].append(timed(d)[0])
    ms = {k: 1000 * statistics.median(v) / new_tokens for k, v in times.items()}
    rows = pre.rows.numel()
    print(f"{name}: {rows} rows, prompt {pre.attn.shape[1]} tokens, {new_tokens} new tokens | "
          f"eager {ms['eager']:.2f} "
          f"ms/step ({1000 * rows / ms['eager']:.0f} tok/s) | "
          f"compiled {ms['compiled']:.2f} ms/step "
          f"({1000 * rows / ms['compiled']:.0f} tok/s), compile "
          f"{warm['compiled'][0] - statistics.median(times['compiled']):.1f} s, "
          f"{len(decoders['compiled'].graphs)} graph(s) | "
          f"speed-up {ms['eager'] / ms['compiled']:.2f}x | "
          f"same tokens: {same}")
    return ms['eager'], ms['compiled']


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--versus-hf", action="store_true",
                   help="rollout.generate against HF generate with tiled pixels")
    p.add_argument("--G", type=int, default=8)
    p.add_argument("--pixels", type=int, default=448,
                   help="--versus-hf: frame side in pixels (per-frame budget pixels**2)")
    p.add_argument("--frames", type=int, default=8, help="--versus-hf: frames per clip")
    p.add_argument("--new-tokens", type=int, default=64,
                   help="--versus-hf: new tokens per completion")
    p.add_argument("--repeats", type=int, default=3, help="timed pairs after one warm-up each")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache-dir", default="runs/cache")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (1: stable figures on a shared CPU)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.versus_hf:
        return versus_hf(a)
    torch.manual_seed(0)
    paths = cache.paths(a.cache_dir, distributed.Dist())
    videos = [s for s in data.load_samples(paths["train"]) if s.data_type == "video"]
    print(f"command: python bench/rollout.py --repeats {a.repeats} --device {a.device} "
          f"--threads {torch.get_num_threads()}")
    hf, tok = load_policy(paths["tiny"], torch.float32, a.device)
    hf.eval()
    media = pixels.MediaConfig(**common.TINY_MEDIA)
    preps = [pixels.prepare(s, tok, media, shuffled=True,
                            generator=torch.Generator().manual_seed(i))
             for i, s in enumerate(videos[:4])]
    default = eager_vs_compiled("tiny default (train.py's rollout)", hf, tok, preps, 8, 4, 96,
                                a.repeats, a.device)
    if (SHARED / "tokenizer.json").exists():
        for width in ("narrow", "narrow8"):
            folder = Path(a.cache_dir) / f"like7b_{width}_realtok"
            folder = tiny.build_like_7b(folder, width, SHARED)
            hf, tok = load_policy(folder, torch.float32, a.device)
            hf.eval()
            media = pixels.MediaConfig(max_frames=8, nframes=8, video_max_pixels=128 * 28 * 28)
            gen = torch.Generator().manual_seed(0)                             # a clip's 8 frames
            preps = [pixels.prepare(videos[0], tok, media, shuffled=True, generator=gen)]
            name = f"narrow 7B-structured, {hf.config.text_config.num_hidden_layers} layers"
            eager_vs_compiled(name, hf, tok, preps, 8, 4, 64, a.repeats, a.device)
    else:
        print(f"narrow 7B-structured: not run ({SHARED} absent: its tokenizer)")
    print(f"decode: eager {default[0]:.2f} ms/step, compiled {default[1]:.2f} ms/step, "
          f"speed-up {default[0] / default[1]:.2f}x")


def versus_hf(a):
    torch.manual_seed(0)
    paths = cache.paths(a.cache_dir, distributed.Dist())
    model_dir, train_json = paths["tiny"], paths["train"]
    hf, tok = load_policy(model_dir, torch.float32, a.device)
    hf.eval()
    sample = next(s for s in data.load_samples(train_json) if s.data_type == "video")
    media = pixels.MediaConfig(max_frames=a.frames, nframes=a.frames,
                               video_min_pixels=a.pixels ** 2,
                               video_max_pixels=a.pixels ** 2)
    prep = pixels.prepare(sample, tok, media)
    vis = prep.visual
    n_video = int(vis.grid_thw.prod()) // 4
    sp = rollout.SamplingParams(temperature=1.0, top_p=0.95, top_k=0, max_new_tokens=a.new_tokens)
    gen = torch.Generator(device=a.device).manual_seed(0)
    ids = prep.prompt_ids[None].to(a.device)                                  # (1, P)
    hf_kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids),
                 mm_token_type_ids=mm_token_types(ids, hf.config),
                 pixel_values_videos=vis.pixel_values.to(a.device),
                 video_grid_thw=vis.grid_thw[None].to(a.device),
                 second_per_grid_ts=torch.tensor([vis.second_per_grid], device=a.device),
                 do_sample=True, temperature=1.0, top_p=0.95, top_k=0, repetition_penalty=1.0,
                 num_return_sequences=a.G, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens,
                 eos_token_id=[tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id],
                 pad_token_id=tok.pad_token_id, use_cache=True)

    def sync():
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()

    def ours():
        out = rollout.generate(hf, [prep.prompt_ids], [vis], [a.G], sp, tok.pad_token_id, [-1],
                               gen)[0]
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
    print(f"command: python bench/rollout.py --versus-hf --G {a.G} --pixels {a.pixels} "
          f"--frames {a.frames} "
          f"--new-tokens {a.new_tokens} --repeats {a.repeats} --device {a.device}")
    print(f"model {model_dir} ({sum(p.numel() for p in hf.parameters()) / 1e6:.1f} M params) "
          f"on {a.device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"prompt {ids.shape[1]} tokens ({n_video} video tokens, grid {vis.grid_thw.tolist()}, "
          f"{vis.pixel_values.shape[0]} patches), G = {a.G}, "
          f"{a.new_tokens} new tokens per completion")
    for name, ts in (("rollout.generate", t_ours), ("HF generate (tiled)", t_hf)):
        m = statistics.median(ts)
        print(f"{name:22s} median {m:7.3f} s  {a.G / m:7.2f} completions/s  "
              f"{toks / m:8.1f} tokens/s  "
              f"runs {[round(t, 3) for t in ts]}")
    print(f"speed-up (median of per-pair ratios HF / ours): {statistics.median(ratios):.2f}x  "
          f"pairs {[round(r, 2) for r in ratios]}")



if __name__ == "__main__":
    main()
