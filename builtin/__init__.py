"""The built-in world: the project's own data, recipe and models for CPU runs, beside the paper's
pipeline in the repository root (as nanoGPT keeps its datasets under data/).

- `scenes.py`: the question families (what a clip shows, its question, answer and reasoning);
- `synthetic.py`: the built-in dataset made of them (rendered clips whose answers depend on frame
  order, plus static controls; splits train, COT, test, perception);
- `shortcut.py`: the static-shortcut benchmark and the shortcut-start SFT data;
- `coldstart.py`: the built-in cold start (perception, temporal and COT SFT of the tiny model: three
  sft.py runs), and where a run finds it (`coldstart.find_or_build`);
- `tiny.py`: the random models the project builds (the tiny default, a tiny Qwen3-VL, the 7B's or
  8B's structure);
- `cache.py`: what is built under --cache-dir once (the data, the tiny default, the --model
  presets).

These modules may import the pipeline's lower layers (data, pixels, model, plan, ...), never
common.py or an entry point. The entry points reach them through one call, `resolve` below;
common.py takes only constants (TINY_MEDIA, TINY_MODELS, RECORD). Each file with a command runs as a
script from anywhere: `python builtin/coldstart.py`, `python builtin/tiny.py`,
`python builtin/shortcut.py`, `python builtin/synthetic.py`.
"""
from __future__ import annotations

from typing import NamedTuple


class Resolved(NamedTuple):
    """What an entry point runs on: the policy's HF folder, the JSON it trains on or evaluates, and
    the held-out JSON ("" for none)."""
    model: str
    data: str
    heldout: str


def resolve(cfg, proc, start: str = "coldstart", split: str = "train") -> Resolved:
    """The folders an entry point's config names, with the built-in world filling what is empty:
    cfg.model (a TINY_MODELS preset is built: cache.resolve_model), else the built-in cold start
    (start "coldstart": coldstart.find_or_build, what train.py, eval.py and blind_filter.py start
    from) or the tiny default (start "tiny": sft.py's); cfg.data, else the built-in `split`; the
    held-out JSON cfg.eval_data (where the config has one), else the built-in test split when
    cfg.data is empty too. Everything is built once under cfg.cache_dir on rank 0 while the other
    ranks wait: every rank makes the same calls, so they issue the same barriers."""
    from builtin import cache, coldstart
    model = cache.resolve_model(cfg.model, cfg.cache_dir, proc)
    eval_data = getattr(cfg, "eval_data", "")
    if model and cfg.data:
        return Resolved(model, cfg.data, eval_data)
    tiny = not model and start == "tiny"
    paths = cache.paths(cfg.cache_dir, proc, model=tiny)
    if not model:
        model = str(paths["tiny"] if tiny else coldstart.find_or_build(cfg.cache_dir, proc))
    return Resolved(model, cfg.data or str(paths[split]),
                    eval_data or ("" if cfg.data else str(paths["test"])))
