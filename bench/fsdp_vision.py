"""FSDP2 units for the vision tower: one per vision block (our default) or one for the whole tower
(torchtitan's choice for encoders)? Times the log-prob forward + backward of a mixed image/video
micro-batch under each.

    torchrun --nproc_per_node 2 bench/fsdp_vision.py                    # CPU (gloo): 2 ranks
    torchrun --nproc_per_node 8 bench/fsdp_vision.py --device cuda      # a GPU node (NCCL)

Model: tiny.py's "narrow" config (hidden 512, 2 decoder layers) with the 7B's vision depth of 32
blocks (full attention at 7, 15, 23, 31) and a trainable tower, random weights (seed 0 on every
rank). Batch per rank: one video (16 frames at 84x84, or --pixels) and one image prompt, 2
completions each of --tokens random tokens. Block units all-gather one block at a time (low peak
memory, 32 collectives per pass each way); one tower unit gathers the whole tower at once (one
collective, the tower's full parameters held during its forward).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import distributed  # noqa: E402
import pixels  # noqa: E402
from builtin import tiny  # noqa: E402
from model import PolicyLogprobs, Visual  # noqa: E402


def build(proc: distributed.Dist):
    from transformers import Qwen2_5_VLForConditionalGeneration
    cfg = tiny.config_like_7b("narrow")
    cfg.vision_config.depth, cfg.vision_config.fullatt_block_indexes = 32, [7, 15, 23, 31]
    torch.manual_seed(0)
    return Qwen2_5_VLForConditionalGeneration(cfg).float().to(proc.device)


def batch(hf, n_pixels: int, tokens: int, frames: int = 16):
    """input_ids (4, P + tokens), attention mask, P, [video, image] Visuals, owner [0, 0, 1, 1]."""
    g = torch.Generator().manual_seed(0)
    side = int(n_pixels ** 0.5) // 28 * 28
    clip = torch.randint(0, 256, (frames, 3, side, side), dtype=torch.uint8, generator=g)
    vis = []
    for kind, x in (("video", clip), ("image", clip[:1].expand(2, -1, -1, -1))):
        pv, grid = pixels.patchify(x)
        vis.append(Visual(kind, pv, grid, 1.0))
    c = hf.config
    rows = []
    for v, pad in ((vis[0], c.video_token_id), (vis[1], c.image_token_id)):
        n = int(v.grid_thw.prod()) // 4
        rows.append(torch.cat([torch.tensor([c.vision_start_token_id]), torch.full((n,), pad),
                               torch.tensor([c.vision_end_token_id]),
                               torch.randint(0, 1000, (8,), generator=g)]))
    lens = [r.numel() for r in rows]
    P = max(lens)
    ids = torch.stack([torch.cat([torch.zeros(P - n, dtype=torch.long), r])
                       for r, n in zip(rows, lens) for _ in (0, 1)])
    # (4, P) left padding
    attn = torch.stack([(torch.arange(P) >= P - n).long() for n in lens for _ in (0, 1)])
    comp = torch.randint(0, 1000, (4, tokens), generator=g)
    return (torch.cat([ids, comp], 1), torch.cat([attn, torch.ones_like(comp)], 1), P, vis,
            [0, 0, 1, 1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--iters", type=int, default=3,
                   help="timed iterations per setting (after one warm-up)")
    p.add_argument("--pixels", type=int, default=84 * 84,
                   help="pixels per frame (the paper trains at 128*28*28)")
    p.add_argument("--tokens", type=int, default=32, help="completion tokens per row")
    a = p.parse_args()
    proc = distributed.init_distributed(a.device)
    result = {}
    for unit in ("block", "tower"):
        hf = build(proc)
        module = distributed.wrap(PolicyLogprobs(hf, 256), proc, "fsdp", param_dtype=torch.float32,
                                  vision_unit=unit)
        ids, attn, P, vis, owner = batch(hf, a.pixels, a.tokens)
        ids, attn = ids.to(proc.device), attn.to(proc.device)
        times = []
        for it in range(a.iters + 1):
            distributed.barrier(proc)
            t0 = time.perf_counter()
            module(ids, attn, P, vis, owner).sum().backward()
            if proc.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        result[unit] = statistics.median(times[1:])
        del module, hf
    if proc.main:
        print(f"command: torchrun --nproc_per_node {proc.world} bench/fsdp_vision.py "
              f"--device {a.device} --iters {a.iters} "
              f"--pixels {a.pixels} --tokens {a.tokens}")
        print(f"{proc.world} ranks on {proc.device}; vision depth 32; "
              f"forward + backward of 4 rows ({ids.shape[1]} tokens), "
              f"{sum(v.pixel_values.shape[0] for v in vis)} patches per rank")
        for unit, t in result.items():
            print(f"vision FSDP unit = {unit:5s}: {t * 1000:8.1f} ms per forward+backward "
                  f"(median of {a.iters})")
    distributed.cleanup(proc)


if __name__ == "__main__":
    main()
