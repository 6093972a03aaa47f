"""What the built-in world builds under --cache-dir, once: the built-in data (cache_dir/data), the
tiny default (cache_dir/tiny) and the --model presets (TINY_MODELS). Rank 0 builds while the other
ranks wait at one barrier, so every rank issues the same collectives.
"""
from __future__ import annotations

from pathlib import Path

import distributed
from builtin import synthetic
from builtin.tiny import build_builtin_tiny, build_builtin_tiny_qwen3, build_builtin_tiny_qwen3_5
from config import UserError

# --model presets built (under --cache-dir) on first use
TINY_MODELS = ("preset:tiny-qwen3-vl", "preset:tiny-qwen3.5")


def resolve_model(model: str, cache_dir: str | Path, proc: distributed.Dist) -> str:
    """The HF folder for --model: `model` itself, or for "preset:tiny-qwen3-vl"
    ("preset:tiny-qwen3.5") the tiny random Qwen3-VL (Qwen3.5: tiny.build_builtin_tiny_qwen3 /
    build_builtin_tiny_qwen3_5, the tokenizer trained on the built-in data's text) built on rank 0
    under cache_dir/tiny-qwen3-vl (tiny-qwen3.5) while the other ranks wait. Idempotent. Raises
    config.UserError for a plan.PRESETS name (a config without weights: plan.py only)."""
    if model.startswith("preset:") and model not in TINY_MODELS:    # plan.PRESETS: check_model_flag
        raise UserError(f"--model {model} is the model's config without weights, for plan.py "
                        f"only; to run, pass the folder of the downloaded weights "
                        f"(docs/first_hour.md: data and weights)")
    if model not in TINY_MODELS:
        return model
    qwen3_5 = model == "preset:tiny-qwen3.5"
    build = build_builtin_tiny_qwen3_5 if qwen3_5 else build_builtin_tiny_qwen3
    folder = Path(cache_dir) / model.removeprefix("preset:")
    built = paths(cache_dir, proc, model=False)
    if proc.main:
        build(folder, built["train_cot"])
    distributed.barrier(proc)
    return str(folder)


def paths(cache_dir: str | Path, proc: distributed.Dist, model: bool = True) -> dict:
    """The built-in dataset's paths (synthetic.make_dataset: "train", "train_cot", "test", ...),
    built on rank 0 under cache_dir/data while the other ranks wait; with `model`, also the tiny
    default in cache_dir/tiny (returned as paths["tiny"]). Idempotent: a second call only returns
    the paths."""
    cache, made = Path(cache_dir), None
    if proc.main:
        made = synthetic.make_dataset(cache / "data")
        if model:
            build_builtin_tiny(cache / "tiny", made["train_cot"])
    distributed.barrier(proc)
    made = made or synthetic.make_dataset(cache / "data")       # built by rank 0: only read here
    return made | ({"tiny": cache / "tiny"} if model else {})
