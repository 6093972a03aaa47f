"""Plain GRPO step time: this repo's step (rollout.generate + PolicyLogprobs + tgrpo.policy_loss)
against TRL's `GRPOTrainer` on the same tiny Qwen2.5-VL, image prompts, same G, lengths, sampling, β
and learning rate.

    python -m venv --system-site-packages /tmp/venv-bench && \\
        /tmp/venv-bench/bin/pip install -r bench/requirements.txt
    /tmp/venv-bench/bin/python bench/trl_grpo.py                   # G = 8, 48 new tokens,
                                                                   # 448x448 images, 5 timed steps
    /tmp/venv-bench/bin/python bench/trl_grpo.py --image-size 112  # the built-in images at their
                                                                   # own size (16 tokens)

TRL (optional, benchmark only; pinned in bench/requirements.txt) cannot load this model's processor
through AutoProcessor: transformers' Qwen2_5_VLProcessor always builds a video processor, which
imports torchvision (not installable here). The script therefore gives TRL an image-only subclass of
that processor (Pillow image processor + our tokenizer); everything else is TRL's own code path.
Images: the built-in 112x112 PNGs upscaled (bicubic, Pillow) to `--image-size` and written once to a
temporary folder that both sides read; the default 448x448 is what the official recipe feeds the
model for a typical photo (qwen_vl_utils MAX_PIXELS = 256*28*28: a 1000x1000 image becomes 448x448,
notes §8), 256 image tokens. Both sides: 1 prompt x G completions per step, temperature 1,
top-p 0.95, no top-k, max 48 new tokens, accuracy + format rewards (rewards.py), β = 0.04 with a
frozen reference, loss "grpo" (sequence mean, then batch mean), one optimizer pass per rollout. The
first step of each side is a warm-up and is not counted.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
import distributed  # noqa: E402
import rewards  # noqa: E402
import rollout  # noqa: E402
import tgrpo  # noqa: E402
from builtin import cache  # noqa: E402
from model import PolicyLogprobs, load_policy  # noqa: E402


def ours(model_dir, samples, a, pixels: int) -> list[float]:
    """Step times (s) of this repo's plain GRPO step on one image prompt per step."""
    hf, tok = load_policy(model_dir)
    ref_hf, _ = load_policy(model_dir)
    policy, reference = PolicyLogprobs(hf), PolicyLogprobs(ref_hf.eval().requires_grad_(False))
    opt = torch.optim.AdamW(hf.parameters(), lr=a.lr, weight_decay=0.0)
    media = pixels.MediaConfig(image_max_pixels=pixels)
    sp = rollout.SamplingParams(1.0, 0.95, 0, 1.0, a.new_tokens)
    gen = torch.Generator().manual_seed(0)
    pad, stop = tok.pad_token_id, [tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id]
    times = []
    for step in range(a.steps + 1):
        t = time.perf_counter()
        p = pixels.prepare(samples[step % len(samples)], tok, media)
        hf.eval()
        c = rollout.generate(hf, [p.prompt_ids], [p.visual], [a.G], sp, pad, stop, gen)[0]
        hf.train()
        texts = tok.batch_decode(c.ids, skip_special_tokens=True)
        r = torch.tensor([[rewards.accuracy_reward(x, p.sample.solution, p.sample.problem_type)
                           + rewards.format_reward(x)
                           for x in texts]])                                   # (1, G)
        adv = tgrpo.group_advantages(r).reshape(-1)                            # (G,)
        b = rollout.policy_batch([rollout.Group(p, c)], pad)                 # (G, P + L)
        with torch.no_grad():
            ref_lp = reference(b.input_ids, b.attention_mask, b.prompt_len, b.visuals,
                               b.owner)                                        # (G, L)
        lp = policy(b.input_ids, b.attention_mask, b.prompt_len, b.visuals, b.owner)  # (G, L)
        loss, _ = tgrpo.policy_loss(lp, None, ref_lp, adv, b.completion_mask, beta=0.04)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return times[1:]


def trl_side(model_dir, samples, a, pixels: int) -> list[float]:
    """Step times (s) of TRL GRPOTrainer on the same prompts."""
    from datasets import Dataset
    from PIL import Image
    from transformers import (AutoTokenizer, Qwen2_5_VLForConditionalGeneration,
                              Qwen2_5_VLProcessor, Qwen2VLImageProcessorPil, TrainerCallback)
    from transformers.processing_utils import ProcessorMixin
    from trl import GRPOConfig, GRPOTrainer

    class ImageOnlyProcessor(Qwen2_5_VLProcessor):
        """Qwen2_5_VLProcessor without the torchvision-only video processor (images only)."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            self.video_processor = None

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    image_proc = Qwen2VLImageProcessorPil.from_pretrained(model_dir, max_pixels=pixels)
    processor = ImageOnlyProcessor(image_processor=image_proc, tokenizer=tok,
                                   chat_template=tok.chat_template)
    rows = [{"prompt": [{"role": "user",
                         "content": [{"type": "image"},
                                     {"type": "text",
                                      "text": data.build_prompt_text(s, "train")}]}],
             "image": Image.open(s.media_path).convert("RGB"), "solution": s.solution,
             "problem_type": s.problem_type}
            for s in samples]

    def accuracy(completions, solution, problem_type, **kw):
        return [rewards.accuracy_reward(c[0]["content"], s, t)
                for c, s, t in zip(completions, solution, problem_type)]

    def fmt(completions, **kw):
        return [rewards.format_reward(c[0]["content"]) for c in completions]

    times, t0 = [], [0.0]

    class Timer(TrainerCallback):
        def on_step_begin(self, *args, **kw):
            t0[0] = time.perf_counter()

        def on_step_end(self, *args, **kw):
            times.append(time.perf_counter() - t0[0])

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32,
                                                               attn_implementation="sdpa")
    args = GRPOConfig(output_dir=tempfile.mkdtemp(), num_generations=a.G,
                      per_device_train_batch_size=a.G, gradient_accumulation_steps=1,
                      max_completion_length=a.new_tokens, temperature=1.0, top_p=0.95, top_k=0,
                      repetition_penalty=1.0, beta=0.04, learning_rate=a.lr, weight_decay=0.0,
                      lr_scheduler_type="constant", loss_type="grpo", num_iterations=1,
                      max_steps=a.steps + 1, logging_steps=1, report_to="none", use_cpu=True,
                      bf16=False, save_strategy="no",
                      remove_unused_columns=False, seed=0, dataloader_num_workers=0)
    trainer = GRPOTrainer(model=model, reward_funcs=[accuracy, fmt], args=args,
                          train_dataset=Dataset.from_list(rows),
                          processing_class=processor, callbacks=[Timer()])
    trainer.train()
    return times[1:]


def upscaled(samples, size: int, folder: Path) -> list:
    """Copies of `samples` whose image is the original resized to size x size (bicubic) and saved
    under `folder`."""
    from dataclasses import replace

    from PIL import Image
    out = []
    for i, s in enumerate(samples):
        path = folder / f"{i}.png"
        Image.open(s.media_path).convert("RGB").resize((size, size), Image.BICUBIC).save(path)
        out.append(replace(s, media_path=str(path)))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--G", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--image-size", type=int, default=448,
                   help="side (px, multiple of 28) the 112x112 images are upscaled to")
    p.add_argument("--steps", type=int, default=5,
                   help="timed steps per side (after one warm-up step)")
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--cache-dir", default="runs/cache")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (1: stable figures on a shared CPU)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    paths = cache.paths(a.cache_dir, distributed.Dist())
    model_dir, train_json = paths["tiny"], paths["train"]
    if a.image_size % 28:
        raise ValueError(f"--image-size must be a multiple of 28 (patch 14 x merge 2), "
                         f"got {a.image_size}")
    samples = upscaled([s for s in data.load_samples(train_json) if s.data_type == "image"],
                       a.image_size, Path(tempfile.mkdtemp()))
    pixels = a.image_size ** 2
    t_ours = ours(model_dir, samples, a, pixels)
    import trl
    t_trl = trl_side(model_dir, samples, a, pixels)
    n_tok = (a.image_size // 28) ** 2
    print(f"command: python bench/trl_grpo.py --G {a.G} --new-tokens {a.new_tokens} "
          f"--image-size {a.image_size} "
          f"--steps {a.steps}")
    print(f"tiny Qwen2.5-VL {model_dir}, image prompts {a.image_size}x{a.image_size} "
          f"({n_tok} image tokens), G = {a.G}, <= {a.new_tokens} new "
          f"tokens, torch threads {torch.get_num_threads()}, TRL {trl.__version__}")
    for name, ts in (("this repo", t_ours), ("TRL GRPOTrainer", t_trl)):
        print(f"{name:16s} median step {statistics.median(ts):6.2f} s   "
              f"runs {[round(t, 2) for t in ts]}")
    print(f"TRL / ours: {statistics.median(t_trl) / statistics.median(t_ours):.2f}x")


if __name__ == "__main__":
    main()
