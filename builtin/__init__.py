"""The built-in world: the project's own data, recipe and models for CPU runs, beside the paper's pipeline in the
repository root (as nanoGPT keeps its datasets under data/).

- `scenes.py`: the question families (what a clip shows, its question, answer and reasoning);
- `synthetic.py`: the built-in dataset made of them (rendered clips whose answers depend on frame order, plus
  static controls; splits train, COT, test, perception);
- `shortcut.py`: the static-shortcut benchmark and the shortcut-start SFT data;
- `coldstart.py`: the built-in cold start (perception, temporal and COT SFT of the tiny model: three sft.py runs);
- `tiny.py`: the random models the project builds (the tiny default, a tiny Qwen3-VL, the 7B's or 8B's structure).

These modules may import the pipeline's lower layers (data, pixels, model, plan, common, ...); the pipeline reaches
them only through common.py's defaults. Each file with a command runs as a script from anywhere:
`python builtin/coldstart.py`, `python builtin/tiny.py`, `python builtin/shortcut.py`, `python builtin/synthetic.py`.
"""
