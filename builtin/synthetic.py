"""The built-in dataset: tiny rendered clips whose answers depend on the ORDER of the frames.

Each sample is a short mp4 clip (default 8 frames at 2 fps, 112x112 RGB, plain dark background, flat
coloured circles, squares and triangles drawn with numpy, H.264 via PyAV) or a still PNG image, with
one question written in the Video-R1 JSON schema (notes §5): `problem_id, problem, data_type,
problem_type, options, solution, path, data_source`; the COT file adds
`process: "<think>...</think>"`. With 8 frames at 2 fps (4 s) the official 2-fps sampling rule
(notes §8, `smart_nframes`) keeps every frame, so the model sees exactly the frames drawn here.

Question families, rendering, reasoning and option order: scenes.py (its docstring). Splits:
train.json, train_cot.json (with `process`), test.json and train_perception.json (make_dataset).
shortcut.py renders its benchmark with the same `render_sample`.


Run:  python builtin/synthetic.py --out runs/data [--seed 0 --n-train 320 --n-test 200]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

# run as a script (python builtin/synthetic.py): the repository root
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from builtin.scenes import (BACKGROUND, LETTERS, STATIC_FAMILIES, TEMPORAL_FAMILIES,  # noqa: E402
                            VERSION, answers, render_frame, scene)


def balanced(rng, values, n: int) -> list:
    """n items, each value as equally often as possible (the remainder picked at random),
    shuffled."""
    values = list(values)
    out = (values * (n // len(values))
           + [values[i] for i in rng.permutation(len(values))[: n % len(values)]])
    return [out[i] for i in rng.permutation(n)]



def write_video(path: Path, frames: np.ndarray, fps: float) -> None:
    """Encode frames (T, H, W, 3) uint8 RGB, H and W even, as H.264 yuv420p mp4 (crf 18, no
    B-frames) at `fps` frames per second with PyAV. Raises ValueError for a bad array."""
    import av

    if (frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[1] % 2
            or frames.shape[2] % 2):
        raise ValueError(f"synthetic.write_video: {path}: "
                         "frames must be (T, H, W, 3) uint8 with even H, W")
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "18", "preset": "medium", "bf": "0", "threads": "1"}
        for t, arr in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            frame.pts = t
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def write_json(path: Path, obj) -> None:
    """Write JSON through a temporary file and an atomic rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def render_sample(root: Path, split: str, i: int, data_type: str, family: str, answer, rng,
                  frames: int, fps: float, size: int, short: bool = False, cue: str | None = None,
                  shuffle: bool = False) -> tuple[dict, dict]:
    """Render sample `i` of a split (scenes.scene with `answer` and `cue`), write its media under
    `root` (videos/<split>_<i>.mp4 or images/<split>_<i>.png) and return (entry, cot_entry) in the
    Video-R1 schema; with `short` the COT entry's reasoning is only the right answer's words; with
    `shuffle` a video's frames are written in a random order (drawn from rng after the scene), so
    the file's order carries nothing. rng: numpy Generator of this sample.
    Raises RuntimeError if decord cannot read the written clip back with `frames` frames."""
    import decord

    T = frames if data_type == "video" else 1
    objects, problem, options, sol, process = scene(family, rng, T, size, answer, data_type, cue)
    # (T, size, size, 3) uint8
    pixels = np.stack([render_frame(objs, size, BACKGROUND) for objs in objects])
    if shuffle and data_type == "video":
        pixels = pixels[rng.permutation(T)]
    if data_type == "video":
        rel = f"videos/{split}_{i:05d}.mp4"
        write_video(root / rel, pixels, fps)
        if len(decord.VideoReader(str(root / rel))) != frames:
            raise RuntimeError(f"synthetic: decord does not read {frames} frames from {root / rel}")
    else:
        from PIL import Image

        rel = f"images/{split}_{i:05d}.png"
        Image.fromarray(pixels[0]).save(root / rel)
    entry = {"problem_id": i, "problem": problem, "data_type": data_type,
             "problem_type": "multiple choice" if options else "numerical", "options": options,
             "solution": f"<answer>{sol}</answer>", "path": f"./{rel}",
             "data_source":
                 f"synthetic/{'temporal' if family in TEMPORAL_FAMILIES else 'static'}/{family}"}
    # the right option's text
    said = options[LETTERS.index(sol)].split(". ", 1)[1] if options else sol
    # Both splits' reasoning starts with the right answer's own words ("bigger", "red", "3"): the
    # perception split's is only that, the COT split's goes on to check it frame by frame
    # (scenes.py's docstring, "Reasoning").
    return entry, {**entry, "process": f"<think>{said}</think>" if short else
                   f"<think>{said}. {process} The answer is {sol}.</think>"}


def _make_split(root: Path, split: str, stream: int, n: int, seed: int, image_fraction: float,
                frames: int, fps: float, size: int,
                short: bool = False) -> tuple[list[dict], list[dict]]:
    """Render one split's media and return its (entries, cot_entries); with `short`, the COT
    entries' reasoning is only the words of the right answer ("<think>bigger</think>"), as the
    perception split has it."""
    plan_rng = np.random.default_rng([seed, stream])
    n_img = int(round(image_fraction * n))
    kinds = balanced(plan_rng, ("temporal", "static"), n - n_img)
    n_temporal = kinds.count("temporal")
    specs = ([("video", f) for f in balanced(plan_rng, TEMPORAL_FAMILIES, n_temporal)]
             + [("video", f) for f in balanced(plan_rng, STATIC_FAMILIES, n - n_img - n_temporal)]
             + [("image", f) for f in balanced(plan_rng, STATIC_FAMILIES, n_img)])
    specs = [specs[i] for i in plan_rng.permutation(n)]
    plans = {}
    for family in TEMPORAL_FAMILIES + STATIC_FAMILIES:
        values, _ = answers(family)
        count = sum(f == family for _, f in specs)
        plans[family] = balanced(plan_rng, values, count)
    entries, cots = [], []
    for i, (data_type, family) in enumerate(specs):
        entry, cot = render_sample(root, split, i, data_type, family, plans[family].pop(),
                                   np.random.default_rng([seed, stream, 1, i]), frames, fps, size,
                                   short)
        entries.append(entry)
        cots.append(cot)
    return entries, cots


def make_dataset(out_dir, seed: int = 0, n_train: int = 320, n_test: int = 200,
                 image_fraction: float = 0.15, frames: int = 8, fps: float = 2.0, size: int = 112,
                 n_perception: int | None = None) -> dict[str, Path]:
    """Render the synthetic dataset under `out_dir` (idempotent) and return its paths.

    Args: out_dir: folder (created). seed: int >= 0; the same seed gives byte-identical JSON and
    identical decoded frames; train and test use different random streams. n_train, n_test: number
    of samples (problem_id 0..n-1 in each file). n_perception: samples of the perception split
    (None: 9 * n_train, enough distinct temporal clips for coldstart.py's temporal stage; its own
    clips and random stream; the reasoning is the right answer's words, "<think>bigger</think>": the
    built-in recipe's stage 0, D8). image_fraction: share of still-image samples (static questions).
    frames: frames per clip (>= 6). fps: clip frame rate (frames per second). size: frame side in
    pixels, a multiple of 28 (Qwen2.5-VL's 14-px patches merged 2x2). Returns {"train": train.json,
    "train_cot": train_cot.json, "test": test.json, "train_perception": train_perception.json,
    "root": out_dir}; media paths inside the JSON start with "./" and are relative to "root".
    If `out_dir/manifest.json` records the same parameters and every file exists, nothing is
    rendered; the manifest is written last, so an interrupted run is redone. Raises ValueError for
    bad arguments and RuntimeError if decord cannot read a written clip back with `frames` frames.
    Schema: notes §5. Not safe for several processes rendering into one folder at once: in a
    distributed run call it on rank 0 and let the other ranks wait at a barrier.
    """
    root = Path(out_dir)
    n_perception = 9 * n_train if n_perception is None else n_perception
    params = {"version": VERSION, "seed": seed, "n_train": n_train, "n_test": n_test,
              "n_perception": n_perception, "image_fraction": image_fraction, "frames": frames,
              "fps": fps, "size": size}
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"synthetic.make_dataset: seed must be an int >= 0, got {seed!r}")
    if n_train < 1 or n_test < 0 or n_perception < 0:
        raise ValueError("synthetic.make_dataset: need n_train >= 1, n_test >= 0 and "
                         f"n_perception >= 0, got {n_train}, {n_test}, {n_perception}")
    if not 0.0 <= image_fraction < 1.0:
        raise ValueError("synthetic.make_dataset: image_fraction must be in [0, 1), "
                         f"got {image_fraction}")
    if frames < 6 or fps <= 0 or size < 56 or size % 28:
        raise ValueError("synthetic.make_dataset: need frames >= 6, fps > 0 and size a multiple "
                         f"of 28 >= 56, got frames={frames}, fps={fps}, size={size}")
    paths = {"train": root / "train.json", "train_cot": root / "train_cot.json",
             "test": root / "test.json", "train_perception": root / "train_perception.json",
             "root": root}
    if is_built(root, params):
        return paths
    (root / "videos").mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(parents=True, exist_ok=True)
    train, train_cot = _make_split(root, "train", 0, n_train, seed, image_fraction, frames, fps,
                                   size)
    test, _ = _make_split(root, "test", 1, n_test, seed, image_fraction, frames, fps, size)
    seen, perception = _make_split(root, "perception", 2, n_perception, seed, image_fraction,
                                   frames, fps, size, short=True)
    for key, obj in (("train", train), ("train_cot", train_cot), ("test", test),
                     ("train_perception", perception)):
        write_json(paths[key], obj)
    files = (["train.json", "train_cot.json", "test.json", "train_perception.json"]
             + [e["path"][2:] for e in train + test + seen])
    write_json(root / "manifest.json", {"params": params, "files": files})
    return paths


def is_built(root: Path, params: dict) -> bool:
    """True when root/manifest.json records exactly `params` and every file it lists exists;
    otherwise removes a stale manifest (the folder is then rendered again; the manifest is written
    last, so an interrupted render is redone) and returns False."""
    manifest = root / "manifest.json"
    if not manifest.exists():
        return False
    try:
        old = json.loads(manifest.read_text())
    except (json.JSONDecodeError, OSError):
        old = {}
    if old.get("params") == params and all((root / p).exists() for p in old.get("files", [])):
        return True
    manifest.unlink()
    return False


def main(argv=None) -> None:
    """CLI: render the dataset and print where it went."""
    ap = argparse.ArgumentParser(
        description="Render the synthetic order-dependent video QA dataset.")
    ap.add_argument("--out", required=True, help="output folder (e.g. runs/data)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (>= 0)")
    ap.add_argument("--n-train", type=int, default=320,
                    help="training samples (train.json, train_cot.json)")
    ap.add_argument("--n-test", type=int, default=200, help="held-out samples (test.json)")
    ap.add_argument("--n-perception", type=int, default=None,
                    help="perception-split samples (train_perception.json; default 9 x --n-train)")
    ap.add_argument("--image-fraction", type=float, default=0.15,
                    help="share of still-image samples")
    ap.add_argument("--frames", type=int, default=8, help="frames per clip")
    ap.add_argument("--fps", type=float, default=2.0, help="clip frame rate (frames per second)")
    ap.add_argument("--size", type=int, default=112, help="frame side in pixels (multiple of 28)")
    a = ap.parse_args(argv)
    start = time.perf_counter()
    paths = make_dataset(a.out, seed=a.seed, n_train=a.n_train, n_test=a.n_test,
                         n_perception=a.n_perception, image_fraction=a.image_fraction,
                         frames=a.frames, fps=a.fps, size=a.size)
    print(f"synthetic data in {paths['root']} ({time.perf_counter() - start:.1f} s)")
    for key in ("train", "train_cot", "test", "train_perception"):
        print(f"  {key}: {paths[key]}")


if __name__ == "__main__":
    main()
