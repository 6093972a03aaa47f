"""Peak memory of the log-prob pass (forward + backward) at Qwen's real vocabulary (151,936):
`model.PolicyLogprobs` (visual encoded once per prompt, lm_head + log_softmax in checkpointed
chunks) against the naive computation of the official trainer (tiled pixels -> model forward ->
(N, T, V) logits -> log_softmax -> gather; notes §1 step 7).

    python bench/logprob_memory.py                          # N = 4 rows, 64-token prompt,
                                                            # 512 completion tokens
    python bench/logprob_memory.py --N 4 --completion 256 --chunk 256

The model is a random Qwen2.5-VL with the real vocabulary and a small hidden size (128), so the
vocabulary-sized tensors dominate, as they do for the 7B at long completions. Each variant runs in
its own subprocess; on CPU the figure is the peak resident set size during forward+backward minus
the resident size just before it (Linux /proc/self/status VmHWM after resetting it through
/proc/self/clear_refs); on CUDA it is torch.cuda.max_memory_allocated minus the allocation before
the pass.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VOCAB = 151936


def _status_kb(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def build(a):
    """A random Qwen2.5-VL (real vocab), one video visual, and N = a.N sequences sharing its
    prompt."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from model import Visual

    torch.manual_seed(0)
    vid, vs, ve = VOCAB - 100, VOCAB - 101, VOCAB - 102
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=128, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "mrope_section": [4, 6, 6],
                                          "rope_theta": 1e6},
                         tie_word_embeddings=False),
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4,
                           out_hidden_size=128, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[1], tokens_per_second=2, in_channels=3),
        video_token_id=vid, image_token_id=VOCAB - 103, vision_start_token_id=vs,
        vision_end_token_id=ve,
        tie_word_embeddings=False)
    hf = Qwen2_5_VLForConditionalGeneration._from_config(
        cfg, attn_implementation="sdpa").float().to(a.device)
    grid = torch.tensor([2, 8, 8])                                  # 128 patches -> 32 video tokens
    visual = Visual("video", torch.randn(int(grid.prod()), 1176), grid, 1.0)
    n_text = a.prompt - 32 - 2
    prompt = torch.cat([torch.randint(0, 50000, (n_text // 2,)), torch.tensor([vs]),
                        torch.full((32,), vid), torch.tensor([ve]),
                        torch.randint(0, 50000, (n_text - n_text // 2,))])  # (P,)
    comp = torch.randint(0, 50000, (a.N, a.completion))                        # (N, L)
    ids = torch.cat([prompt.expand(a.N, -1), comp], 1).to(a.device)            # (N, T)
    return hf, visual, ids, prompt.numel()


def run_variant(a) -> dict:
    """One variant in this process: returns {"peak_mb": ..., "seconds": ...}."""
    from model import PolicyLogprobs, mm_token_types

    hf, visual, ids, P = build(a)
    attn = torch.ones_like(ids)
    owner = [0] * a.N
    if a.variant == "policy":
        fn = lambda: PolicyLogprobs(hf, a.chunk)(ids, attn, P, [visual], owner)  # (N, L)
    else:
        def fn():
            logits = hf(input_ids=ids, attention_mask=attn,
                        mm_token_type_ids=mm_token_types(ids, hf.config),
                        # tiled G times
                        pixel_values_videos=visual.pixel_values.repeat(a.N, 1).to(a.device),
                        video_grid_thw=visual.grid_thw[None].repeat(a.N, 1).to(a.device),
                        use_cache=False).logits
            logp = F.log_softmax(logits[:, P - 1:-1].float(), dim=-1)          # (N, L, V)
            return logp.gather(-1, ids[:, P:, None])[..., 0]                   # (N, L)
    cuda = a.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                                     # reset VmHWM to the current RSS
        before = _status_kb("VmRSS") * 1024
    t = time.perf_counter()
    fn().sum().backward()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _status_kb("VmHWM") * 1024
    return {"peak_mb": (peak - before) / 2**20, "seconds": time.perf_counter() - t}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--N", type=int, default=4,
                   help="sequences (a group of G completions of one prompt)")
    p.add_argument("--prompt", type=int, default=64, help="prompt tokens (32 of them video tokens)")
    p.add_argument("--completion", type=int, default=512, help="completion tokens per sequence")
    p.add_argument("--chunk", type=int, default=256,
                   help="PolicyLogprobs chunk: tokens (rows x positions) per lm_head call "
                        "(train.py --logprob-chunk default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--variant", choices=["policy", "naive"], help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (1: stable figures on a shared CPU)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.variant:
        print(json.dumps(run_variant(a)))
        return
    res = {}
    for v in ("policy", "naive"):
        cmd = [sys.executable, __file__, "--variant", v, "--N", str(a.N), "--prompt", str(a.prompt),
               "--completion", str(a.completion), "--chunk", str(a.chunk), "--device", a.device,
               "--threads", str(a.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                             env=os.environ | {"PYTHONWARNINGS": "ignore"})
        if out.returncode:
            raise SystemExit(f"{v} failed:\n{out.stderr[-3000:]}")
        res[v] = json.loads(out.stdout.strip().splitlines()[-1])
    T = a.prompt + a.completion
    print(f"command: python bench/logprob_memory.py --N {a.N} --prompt {a.prompt} "
          f"--completion {a.completion} "
          f"--chunk {a.chunk} --device {a.device}")
    print(f"random Qwen2.5-VL, vocab {VOCAB}, hidden 128, 2 layers; "
          f"N = {a.N} sequences of {T} tokens "
          f"({a.completion} completion); one (N, L, V) float32 tensor = "
          f"{a.N * a.completion * VOCAB * 4 / 2**20:.0f} MB")
    for v, name in (("policy", f"PolicyLogprobs (chunk {a.chunk})"),
                    ("naive", "naive full logits")):
        print(f"{name:28s} peak +{res[v]['peak_mb']:8.1f} MB   {res[v]['seconds']:.2f} s")
    print(f"ratio policy / naive: {res['policy']['peak_mb'] / res['naive']['peak_mb']:.3f}")


if __name__ == "__main__":
    main()
