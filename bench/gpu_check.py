"""T-GRPO steps of a random 7B-structured Qwen2.5-VL on one GPU: per-phase time, tokens/s and peak
memory next to plan.py's estimate for the same model and settings (bench/gpu_check.sh runs it three
times: narrow, full width, full width with LoRA; figures from one H200 in bench/README.md).

    python bench/gpu_check.py --width narrow              # hidden 512, 2 layers (tiny.py), paper
                                                          # settings, CUDA
    python bench/gpu_check.py --width full --steps 3      # the 7B's widths, 8 of 28 decoder layers
    python bench/gpu_check.py --width full --compile-decode off    # the same with the eager
                                                                   # decode step
    python bench/gpu_check.py --width full28 --steps 1 --lora-rank 64  # all 28 layers, LoRA r = 64
                                                                       # (fits one GPU)
    python bench/gpu_check.py --family qwen3 --width narrow        # Qwen3-VL-8B's structure
                                                                   # narrowed (tiny.WIDTHS_QWEN3)
    python bench/gpu_check.py --family qwen3 --width full36 --steps 1 --lora-rank 64
                                                          # all 36 layers of the 8B, LoRA
    python bench/gpu_check.py --family qwen3.5 --width full    # Qwen3.5-9B's widths, 8 of 32 layers
                                                               # (6 linear, 2 full)
    python bench/gpu_check.py --dry-run                   # CPU, narrow model, small settings: keeps
                                                          # it working in CI

One step, as train.py runs it on one process (--precision bf16-mixed: fp32 master weights, bf16
autocast): rollout (1 video prompt, G ordered + G̃ shuffled completions, one prefill), rewards and
advantages, reference log-probs (no grad), policy log-probs (forward), backward, optimizer (clip +
AdamW). Paper settings (reference
§4): G = 8, G̃ = 4, 16 frames at 128·28·28 pixels, up to 768 new tokens (a random model rarely
stops, so completions run to the limit: the worst case for memory). The first step is a warm-up and
is not counted. Peak memory per phase is torch.cuda.max_memory_allocated after resetting it at the
phase's start (CPU: n/a). The decode line: the rollout's median seconds over its decode steps (the
longest completion; the prefill is inside, so this errs slow), the bytes one decode step reads (the
decode copy's weights and the KV cache's live columns, decode.LIVE_MULTIPLE, averaged over the
steps; for Qwen3.5 also the recurrent and conv states, which it reads and writes) and that figure
over --bandwidth-tbs (H200 4.8, H100 SXM 3.35 TB/s) as the roofline, then the graphs compiled and
their seconds (decode.Decoder.summary).
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
import config as cfglib  # noqa: E402
import data  # noqa: E402
import decode  # noqa: E402
import distributed  # noqa: E402
import loader  # noqa: E402
import pixels  # noqa: E402
import plan  # noqa: E402
import rollout  # noqa: E402
from builtin import synthetic  # noqa: E402
import tgrpo  # noqa: E402
from builtin import tiny  # noqa: E402
import train  # noqa: E402

GIB = 1024 ** 3
PHASES = ["rollout", "rewards", "reference log-probs", "policy log-probs", "backward", "optimizer"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--width", default="narrow",
                   choices=sorted(tiny.WIDTHS | tiny.WIDTHS_QWEN3 | tiny.WIDTHS_QWEN3_5),
                   help="tiny.py width preset (WIDTHS; with --family qwen3 WIDTHS_QWEN3, "
                        "qwen3.5 WIDTHS_QWEN3_5)")
    p.add_argument("--family", default="qwen2.5", choices=["qwen2.5", "qwen3", "qwen3.5"],
                   help="qwen2.5: Qwen2.5-VL-7B's structure; "
                        "qwen3: Qwen3-VL-8B-Instruct's (plan.py's preset); "
                        "qwen3.5: Qwen3.5-9B's hybrid decoder (../shared/qwen3_5_9b, "
                        "the tiny tokenizer)")
    p.add_argument("--steps", type=int, default=2, help="timed steps (after one warm-up step)")
    p.add_argument("--lora-rank", type=int, default=0,
                   help="> 0: LoRA adapters of this rank (lora.py): bf16 base, "
                   "adapters in fp32, the reference = the policy with its adapters off")
    p.add_argument("--dry-run", action="store_true",
                   help="CPU, narrow, 4 frames at 84x84, 8 new tokens, G = 2")
    p.add_argument("--compile-decode", default="auto", choices=decode.COMPILE_MODES,
                   help="the decode step (decode.py)")
    p.add_argument("--bandwidth-tbs", type=float, default=0.0,
                   help="GPU memory bandwidth for the roofline, TB/s "
                   "(0: from the device name, H200 4.8, H100 3.35)")
    p.add_argument("--cache-dir", default="runs/cache",
                   help="built-in clips and the random models go here")
    p.add_argument("--tokenizer",
                   default=str(Path(__file__).resolve().parents[2] / "shared"
                               / "qwen2_5_vl_7b_instruct"),
                   help="folder with the real Qwen2.5-VL tokenizer; the tiny one when it is absent")
    a = p.parse_args()
    cuda = torch.cuda.is_available() and not a.dry_run
    if a.dry_run:
        # qwen3.5: the tiny hybrid (248,320 rows: slow)
        a.width = "tiny" if a.family == "qwen3.5" else "narrow"
        argv = ["--G", "2", "--max-frames", "4", "--video-min-pixels", str(84 * 84),
                "--video-max-pixels", str(84 * 84),
                "--max-completion-length", "8", "--device", "cpu", "--precision", "fp32",
                "--compile-decode", "off"]
    else:
        argv = ["--device", "cuda" if cuda else "cpu",
                "--precision", "bf16-mixed" if cuda else "fp32"]
    cache = Path(a.cache_dir)
    tok_dir = a.tokenizer if (Path(a.tokenizer) / "tokenizer.json").exists() else None
    source = tiny.QWEN3_SOURCE if a.family == "qwen3" else "preset:qwen2.5-vl-7b"
    name = (("like8b_qwen3_" if a.family == "qwen3" else "like7b_") + a.width
            + ("_realtok" if tok_dir else ""))
    paths = synthetic.make_dataset(cache / "data")
    if a.family == "qwen3.5":                 # no public Qwen3.5 tokenizer here: the tiny one
        corpus = tiny.tokenizer_corpus(data.load_samples(paths["train_cot"], require_process=True))
        tok_dir, model_dir = None, tiny.build_qwen3_5(cache / f"qwen3_5_{a.width}", corpus, a.width)
    else:
        model_dir = tiny.build_like_7b(cache / name, a.width, tok_dir, source=source)
    cfg = train.finish_config(*cfglib.parse(train.Config,
                                            argv + ["--model", str(model_dir), "--preset", "paper",
                                                    "--prompts-per-rank", "1",
                                                    "--lora-rank", str(a.lora_rank),
                                                    "--compile-decode", a.compile_decode], ""))
    proc = distributed.Dist(device=torch.device("cuda:0" if cuda else "cpu"))
    precision, dtype, compute = distributed.resolve_precision(cfg.precision, proc)
    amp = distributed.autocast(proc, precision)
    torch.manual_seed(0)
    # one process: nothing is wrapped
    built = common.build_policy(cfg, str(model_dir), proc, dtype, compute)
    hf, tok, policy, opt = built.hf, built.tokenizer, built.module, built.opt
    # LoRA: adapters off
    reference = common.build_reference(cfg, built, str(model_dir), proc, dtype, compute)
    videos = [s for s in data.load_samples(paths["train"]) if s.data_type == "video"]
    media = common.media_config(cfg, hf.config)
    sp = rollout.SamplingParams(cfg.temperature, cfg.top_p, cfg.top_k, cfg.repetition_penalty,
                                cfg.max_completion_length)
    gen = torch.Generator(device=proc.device).manual_seed(0)
    pad_id, stop_ids = tok.pad_token_id, common.stop_ids(tok)
    decoder = decode.Decoder(cfg.compile_decode)
    times, peaks, tokens = {k: [] for k in PHASES}, {k: 0 for k in PHASES}, {}

    class phase:
        def __init__(self, name):
            self.name = name

        def __enter__(self):
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            self.t = time.perf_counter()

        def __exit__(self, *exc):
            if cuda:
                torch.cuda.synchronize()
                peaks[self.name] = max(peaks[self.name], torch.cuda.max_memory_allocated())
            times[self.name].append(time.perf_counter() - self.t)

    for step in range(a.steps + 1):
        pr = pixels.prepare(videos[step], tok, media, True, "train",
                            loader.sample_generator(0, 0, step))
        hf.eval()
        with phase("rollout"), amp():
            groups = rollout.rollout(hf, [pr], cfg.G, cfg.G_shuffled, sp, pad_id, stop_ids, gen,
                                     decoder)
        hf.train()
        with phase("rewards"):
            acc, fmt, lengths, sacc, is_video = train.rule_rewards(groups, tok, cfg.G_shuffled)
            adv = tgrpo.advantages(acc, fmt, lengths, sacc, is_video,
                                   train.tgrpo_settings(cfg)).advantages
        b = rollout.policy_batch(groups, pad_id).to(proc.device)
        ids, attn, P, cmask, vis, owner = (b.input_ids, b.attention_mask, b.prompt_len,
                                           b.completion_mask, b.visuals, b.owner)
        with phase("reference log-probs"), torch.no_grad(), amp():
            ref_lp = reference(ids, attn, P, vis, owner)                       # (G, L)
        opt.zero_grad(set_to_none=True)
        with phase("policy log-probs"), amp():
            lp = policy(ids, attn, P, vis, owner)                              # (G, L)
            loss, _ = tgrpo.policy_loss(lp, None, ref_lp, adv.reshape(-1).to(proc.device), cmask,
                                        cfg.clip_eps, None,
                                        cfg.beta, cfg.loss_agg, num_sequences=float(ids.shape[0]),
                                        num_tokens=float(cmask.sum()),
                                        norm_len=cfg.max_completion_length)
        with phase("backward"):
            loss.backward()
        with phase("optimizer"):
            distributed.clip_grad_norm(policy, cfg.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
        new = int(groups[0].ordered.lengths.sum() + groups[0].shuffled.lengths.sum())
        # decode steps run
        steps = max(groups[0].ordered.ids.shape[1], groups[0].shuffled.ids.shape[1])
        tokens = {"rollout": new, "reference log-probs": ids.numel(),
                  "policy log-probs": ids.numel(), "backward": ids.numel()}
        if step == 0:
            times = {k: [] for k in PHASES}
            shape = (tuple(ids.shape), P, int(pr.visual.pixel_values.shape[0]))
    from dataclasses import fields      # plan.py's own Config (train.py has no --nproc): one GPU
    est = plan.estimate(hf.config, plan.Config(**{f.name: getattr(cfg, f.name)
                                                  for f in fields(plan.Config)
                                                  if hasattr(cfg, f.name)} | {"nproc": 1}))
    print(f"command: python bench/gpu_check.py --family {a.family} --width {a.width} "
          f"--steps {a.steps} --compile-decode {a.compile_decode}"
          f"{' --dry-run' if a.dry_run else ''}"
          + (f" --lora-rank {a.lora_rank} ({est['phi_lora'] / 1e6:.1f}M adapter parameters)"
             if a.lora_rank else ""))
    print(f"model {model_dir}: {est['phi'] / 1e9:.3f}B parameters "
          f"({est['phi_vision'] / 1e9:.3f}B vision), "
          f"{hf.config.text_config.num_hidden_layers} decoder layers, "
          f"hidden {hf.config.text_config.hidden_size}, "
          f"vocab {hf.config.text_config.vocab_size}, tokenizer {'real' if tok_dir else 'tiny'}")
    print(f"device {torch.cuda.get_device_name(0) if cuda else 'cpu'} | precision {precision} | "
          f"G {cfg.G}, G̃ "
          f"{cfg.G_shuffled}, {cfg.max_frames} frames at {cfg.video_max_pixels} px, "
          f"<= {cfg.max_completion_length} "
          f"new tokens | last step: sequences {shape[0]}, prompt {shape[1]} tokens, "
          f"{shape[2]} patches")
    print(f"{'phase':22s}{'median s':>10s}{'tokens/s':>12s}{'peak GiB':>10s}")
    for k in PHASES:
        med = statistics.median(times[k])
        tps = f"{tokens[k] / med:12.0f}" if k in tokens and med > 0 else f"{'':12s}"
        peak = f"{peaks[k] / GIB:10.2f}" if cuda else f"{'n/a':>10s}"
        print(f"{k:22s}{med:10.3f}{tps}{peak}")
    rollout_plan, train_plan = est["rollout_peak"], est["train_peak"]
    read = sum(t.nbytes for t in vars(decoder.weights).values() if isinstance(t, torch.Tensor))
    if decoder.state is not None:   # the cache's live columns, averaged over the last rollout
        S = decoder.state.key_ok.shape[1]
        live = statistics.mean(min(S, -(-(P + n) // decode.LIVE_MULTIPLE) * decode.LIVE_MULTIPLE)
                               for n in range(1, max(2, steps)))
        read += (decoder.state.k.nbytes + decoder.state.v.nbytes) * live / S
    if decoder.state is not None and hasattr(decoder.state, "rec"):   # Qwen3.5: read and written
        read += sum(t.nbytes for t in (*decoder.state.rec, *decoder.state.conv))
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    tbs = a.bandwidth_tbs or (4.8 if "H200" in name else 3.35 if "H100" in name else 0.0)
    ms = 1000 * statistics.median(times["rollout"]) / steps
    roof = (f", roofline {read / (tbs * 1e9):.2f} ms at {tbs} TB/s = "
            f"{read / (tbs * 1e9) / ms:.0%} of it" if tbs else "")
    print(f"decode ({'compiled' if decoder.is_compiled(proc.device) else 'eager'}): "
          f"{ms:.2f} ms per step over {steps} "
          f"steps (prefill included), {read / 1e9:.2f} GB read per step{roof} | "
          f"{decoder.summary()}")
    measured = {"rollout": peaks["rollout"],
                "training": max(peaks["policy log-probs"], peaks["backward"], peaks["optimizer"])}
    print(f"plan.py (1 GPU, {est['mode']}): rollout peak {rollout_plan / GIB:.2f} GiB, "
          f"training peak {train_plan / GIB:.2f} "
          f"GiB; measured: rollout {measured['rollout'] / GIB:.2f} GiB, "
          f"training {measured['training'] / GIB:.2f} GiB"
          if cuda else f"plan.py (1 GPU, {est['mode']}): rollout peak {rollout_plan / GIB:.2f} "
          f"GiB, training peak "
          f"{train_plan / GIB:.2f} GiB "
          f"(estimates for these settings; no GPU memory to measure on CPU)")


if __name__ == "__main__":
    main()
