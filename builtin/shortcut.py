"""The static-shortcut benchmark: order-dependent questions where a static cue predicts the answer
in training and misleads at test time, so only an answer read from frame order is right (issue:
T-GRPO's mechanism).

    python builtin/shortcut.py --out runs/shortcut              # q = 0.8: the cue agrees with the
                                                                # answer in 80 % of training clips
    python builtin/shortcut.py --out runs/shortcut_q1 --q 1.0   # a perfect shortcut in training

The families are the built-in ones the cold start reads from frame order (size change, direction:
the top README's seeing table); the cue is the moving shape's colour (scenes.CUES: warm colours go
with "bigger" / "right", cool ones with "smaller" / "left"). The colour is visible in every frame
and named in the question, so the cue survives shuffling: a model that answers from it does as well
on shuffled frames as on ordered ones, which is the static shortcut the paper's contrastive reward
is meant to move a policy off.

Splits (Video-R1 schema, notes §5; videos only, 8 frames at 2 fps like the built-in dataset):
- train.json: n_train clips, half of them the cue families (the cue follows the answer in round(q·k)
  of those k clips and is reversed in the rest), half the static controls (colour, shape, count);
- test_following.json / test_reversed.json: n_test cue-family clips with the cue always following /
  always reversed (the same answers, other clips); shortcut reliance = accuracy on following − on
  reversed;
- test_free.json: n_test cue-family clips with the colour drawn from all six (no cue);
- test_static.json: n_test static-control clips.
Answers are balanced within every split and family; each split has its own random stream.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

# run as a script (python builtin/shortcut.py): the repository root
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from builtin.scenes import CUES, STATIC_FAMILIES, VERSION, answers  # noqa: E402
from builtin.synthetic import balanced, is_built, render_sample, write_json  # noqa: E402

SPLITS = ("train", "test_following", "test_reversed", "test_free", "test_static")


def _plan(rng, split: str, n: int, q: float) -> list[tuple[str, object, str | None]]:
    """(family, answer, cue) of each sample of `split`, in a seeded random order. Answers balanced
    per family."""
    cue_families, static = tuple(CUES), STATIC_FAMILIES
    if split == "train":
        k = n // 2
        follow = round(q * k)
        specs = (list(zip(balanced(rng, cue_families, k),
                          ["follow"] * follow + ["reverse"] * (k - follow)))
                 + [(f, None) for f in balanced(rng, static, n - k)])
    elif split == "test_static":
        specs = [(f, None) for f in balanced(rng, static, n)]
    else:
        cue = {"test_following": "follow", "test_reversed": "reverse", "test_free": "free"}[split]
        specs = [(f, cue) for f in balanced(rng, cue_families, n)]
    # answers balanced within each (family, cue) cell, so the cue's agreement does not depend on
    # the answer
    pools = {cell: balanced(rng, answers(cell[0])[0], count)
             for cell, count in Counter(specs).items()}
    out = [(f, pools[(f, c)].pop(), c) for f, c in specs]
    return [out[i] for i in rng.permutation(len(out))]


def make_shortcut_dataset(out_dir, seed: int = 0, q: float = 0.8, n_train: int = 320,
                          n_test: int = 120, frames: int = 8, fps: float = 2.0,
                          size: int = 112) -> dict[str, Path]:
    """Render the benchmark under `out_dir` (idempotent: a folder whose manifest records the same
    parameters is reused) and return {split: path of its JSON, ..., "root": out_dir}; media paths in
    the JSON are relative to root. q: share of the training split's cue-family clips whose colour
    follows the answer, in [0, 1]. Raises ValueError for bad arguments; RuntimeError as
    synthetic.render_sample."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"shortcut: q must be in [0, 1], got {q}")
    if n_train < 2 or n_test < 1 or frames < 6 or size < 56 or size % 28:
        raise ValueError("shortcut: need n_train >= 2, n_test >= 1, frames >= 6, "
                         "size a multiple of 28 >= 56; got "
                         f"{n_train}, {n_test}, {frames}, {size}")
    root = Path(out_dir)
    params = {"version": VERSION, "seed": seed, "q": q, "n_train": n_train, "n_test": n_test,
              "frames": frames, "fps": fps, "size": size}
    paths = {s: root / f"{s}.json" for s in SPLITS} | {"root": root}
    if is_built(root, params):
        return paths
    (root / "videos").mkdir(parents=True, exist_ok=True)
    files = []
    for stream, split in enumerate(SPLITS):
        plan = _plan(np.random.default_rng([seed, 100 + stream]), split,
                     n_train if split == "train" else n_test, q)
        entries = []
        for i, (family, answer, cue) in enumerate(plan):
            entry, _ = render_sample(root, split, i, "video", family, answer,
                                     np.random.default_rng([seed, 100 + stream, 1, i]), frames, fps,
                                     size, cue=cue)
            entries.append(entry | {"cue": cue or "none"})      # extra key: data.py ignores it
        write_json(paths[split], entries)
        files += [paths[split].name] + [e["path"][2:] for e in entries]
    write_json(root / "manifest.json", {"params": params, "files": files})
    return paths


def make_shortcut_sft(out_dir, seed: int = 0, n: int = 320, frames: int = 8, fps: float = 2.0,
                      size: int = 112) -> Path:
    """The shortcut-start SFT data (bench/evidence.py --protocol shortcut-start): n clips, half of
    them the cue families with the colour always following the answer and the frames written in a
    random order, so that the colour is the only thing that predicts the answer; half the static
    controls (frames in order). Answered in the perception split's short form
    ("<think>bigger</think>" then the answer tag: the reasoning the cold start's first stage
    taught). Its own random stream (not the benchmark's clips). Idempotent (manifest). Returns the
    path of its COT JSON (train_cot.json). Raises ValueError and RuntimeError as
    make_shortcut_dataset."""
    if n < 2 or frames < 6 or size < 56 or size % 28:
        raise ValueError("shortcut: need n >= 2, frames >= 6, size a multiple of 28 >= 56; "
                         f"got {n}, {frames}, {size}")
    root = Path(out_dir)
    params = {"version": VERSION, "kind": "shortcut-sft", "seed": seed, "n": n, "frames": frames,
              "fps": fps, "size": size}
    path = root / "train_cot.json"
    if is_built(root, params):
        return path
    (root / "videos").mkdir(parents=True, exist_ok=True)
    plan = _plan(np.random.default_rng([seed, 200]), "train", n, 1.0)
    cots = []
    for i, (family, answer, cue) in enumerate(plan):
        _, cot = render_sample(root, "sft", i, "video", family, answer,
                               np.random.default_rng([seed, 200, 1, i]), frames, fps, size,
                               short=True, cue=cue, shuffle=cue is not None)
        cots.append(cot | {"cue": cue or "none", "frames": "shuffled" if cue else "ordered"})
    write_json(path, cots)
    write_json(root / "manifest.json",
               {"params": params, "files": [path.name] + [e["path"][2:] for e in cots]})
    return path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Render the static-shortcut benchmark "
                                             "(cue-following, cue-reversed, "
                                             "cue-free and static-control splits).")
    ap.add_argument("--out", default="runs/shortcut", help="output folder")
    ap.add_argument("--seed", type=int, default=0, help="random seed (>= 0)")
    ap.add_argument("--q", type=float, default=0.8,
                    help="share of training cue-family clips whose colour follows the answer")
    ap.add_argument("--n-train", type=int, default=320,
                    help="training clips (half cue families, half static controls)")
    ap.add_argument("--n-test", type=int, default=120, help="clips per test split")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    paths = make_shortcut_dataset(a.out, a.seed, a.q, a.n_train, a.n_test)
    print(f"static-shortcut benchmark in {paths['root']} ({time.perf_counter() - t0:.1f} s)")
    for s in SPLITS:
        print(f"  {s}: {paths[s]}")


if __name__ == "__main__":
    main()
