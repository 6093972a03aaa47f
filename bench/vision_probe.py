"""Can the tiny model's frozen vision features answer the built-in questions? Linear probes, per
family.

    python bench/vision_probe.py                          # reuses runs/vision_probe (data, tiny
                                                          # model) or builds them
    python bench/vision_probe.py --out runs/vision_probe --steps 500

A diagnostic of the tiny model's vision (bench/seeing.py prints it beside what the model answers):
it separates "the features do not carry the answer" from "the decoder did not learn to read them".
For every built-in clip it runs the tiny model's vision tower (frozen, centred:
tiny.build_builtin_tiny) on the frames the tiny preset feeds it (8 frames at 84x84 -> grid
(4, 6, 6), 36 merged tokens), pools the merged tokens of each temporal patch (mean and max over its
9 tokens, in time order: (4, 2 * 192) -> 1536 features), and fits one multinomial logistic
regression per question family on the training split (standardised features, L2, full-batch Adam).
It prints held-out accuracy on ordered frames and on shuffled frames (the probe trained on ordered
ones; the same seeded shuffle as T-GRPO's G̃ group, pixels.shuffle_frames), and chance. A probe that
reads a temporal family on ordered frames but not on shuffled ones shows that the order is in the
features. Classes (answer_class): the option text for multiple choice (the letter depends on the
option order), the colour of the shape that appears first for appear_first, the number for the
numerical families.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
import rewards  # noqa: E402
import pixels  # noqa: E402
from builtin import scenes  # noqa: E402
from builtin import synthetic  # noqa: E402
from model import load_policy  # noqa: E402
from builtin.tiny import TINY_MEDIA, build_builtin_tiny  # noqa: E402


@torch.no_grad()
def features(hf, samples, media, shuffled: bool,
             seed: int) -> tuple[torch.Tensor, list[str], list[str]]:
    """(n, t * 2 * D) float32 pooled features of the n video samples (t temporal patches, D = the
    merger's output width; mean then max over each temporal patch's merged tokens, in time order),
    their family names and answer classes (answer_class). shuffled: frames permuted by
    pixels.shuffle_frames, seeded by (seed, index). Raises pixels.MediaError for an unreadable
    clip."""
    X, fams, ys = [], [], []
    for i, s in enumerate(samples):
        frames, fps, times, _ = pixels.load_visual(s, media)  # (T, 3, H, W) uint8
        if shuffled:
            frames, _ = pixels.shuffle_frames(frames,
                                              torch.Generator().manual_seed(seed * 1_000_003 + i))
        v = pixels.to_visual(frames, fps, times, "video", media)
        f = hf.model.visual(v.pixel_values, grid_thw=v.grid_thw[None]).pooler_output  # (t*h*w/4, D)
        f = f.reshape(int(v.grid_thw[0]), -1, f.shape[-1])  # (t, tokens per temporal patch, D)
        X.append(torch.cat([f.mean(1), f.amax(1)], -1).reshape(-1))         # (t * 2D,)
        fams.append(s.data_source.split("/")[-1])
        ys.append(answer_class(s))
    return torch.stack(X).float(), fams, ys


def answer_class(s: data.Sample) -> str:
    """The answer as a class the frames alone can determine: the option text for multiple choice
    (the letter depends on the option order), the colour of the first shape for appear_first, the
    number otherwise."""
    gt = rewards.extract_answer(s.solution)
    if not s.options:
        return gt
    text = next(o.split(". ", 1)[1] for o in s.options if o.startswith(gt + "."))
    # "the red circle" -> "red"
    return text.split()[1] if s.data_source.endswith("appear_first") else text


def probe(Xtr, ytr, Xte_sets, steps: int, wd: float) -> list[float]:
    """Fit a multinomial logistic regression on (Xtr (n, F) float32, ytr: n class names), features
    standardised with the training mean and std, L2 penalty `wd`, `steps` full-batch Adam steps at
    lr 1e-2. Returns the accuracy (fraction in [0, 1]) on each (X (m, F), y: m names) of Xte_sets; a
    class unseen in training counts as wrong."""
    classes = sorted(set(ytr))
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-6
    Y = torch.tensor([classes.index(c) for c in ytr])
    W = torch.zeros(Xtr.shape[1], len(classes), requires_grad=True)
    b = torch.zeros(len(classes), requires_grad=True)
    opt = torch.optim.Adam([W, b], lr=1e-2)
    Z = (Xtr - mu) / sd
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(Z @ W + b, Y) + wd * W.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = []
    with torch.no_grad():
        for X, y in Xte_sets:
            pred = (((X - mu) / sd) @ W + b).argmax(1)
            out.append(sum(classes[int(p)] == t for p, t in zip(pred, y)) / len(y))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/vision_probe",
                    help="folder of the built-in data (data/) and tiny model (tiny/); "
                         "built if missing")
    ap.add_argument("--n-train", type=int, default=2000,
                    help="built-in training samples, if the data is built here")
    ap.add_argument("--n-test", type=int, default=480,
                    help="held-out samples, if the data is built here")
    ap.add_argument("--steps", type=int, default=500, help="Adam steps of each probe")
    ap.add_argument("--wd", type=float, default=1e-3, help="L2 penalty of each probe")
    ap.add_argument("--seed", type=int, default=0, help="seed of the frame shuffles")
    a = ap.parse_args()
    torch.manual_seed(0)
    out = Path(a.out)
    paths = synthetic.make_dataset(out / "data", n_train=a.n_train, n_test=a.n_test)   # idempotent
    hf, _ = load_policy(build_builtin_tiny(out / "tiny", paths["train_cot"]))
    hf.eval()
    media = pixels.MediaConfig(**TINY_MEDIA)
    tr = [s for s in data.load_samples(paths["train"]) if s.data_type == "video"]
    te = [s for s in data.load_samples(paths["test"]) if s.data_type == "video"]
    Xtr, ftr, ytr = features(hf, tr, media, False, a.seed)
    Xte, fte, yte = features(hf, te, media, False, a.seed)
    Xsh, _, _ = features(hf, te, media, True, a.seed)
    print(f"command: python bench/vision_probe.py --out {a.out} --steps {a.steps} --wd {a.wd} "
          f"--seed {a.seed}")
    print(f"{len(tr)} training and {len(te)} held-out video clips; "
          f"features {Xtr.shape[1]} per clip "
          f"(frames {media.max_frames} at {media.video_max_pixels} px)")
    print(f"{'family':14s} {'kind':9s} {'n train':>7s} {'n test':>6s} {'ordered':>8s} "
          f"{'shuffled':>8s} {'chance':>7s}")
    for fam in scenes.TEMPORAL_FAMILIES + scenes.STATIC_FAMILIES:
        itr = [i for i, f in enumerate(ftr) if f == fam]
        ite = [i for i, f in enumerate(fte) if f == fam]
        ys = [ytr[i] for i in itr]
        if not ite or len(set(ys)) < 2:
            print(f"{fam:14s} (too few clips: {len(itr)} training, {len(ite)} held-out)")
            continue
        acc_o, acc_s = probe(Xtr[itr], ys, [(Xte[ite], [yte[i] for i in ite]),
                                            (Xsh[ite], [yte[i] for i in ite])],
                             a.steps, a.wd)
        # chance: always answering the held-out split's most common answer
        chance = max([yte[i] for i in ite].count(c) for c in set(yte[i] for i in ite)) / len(ite)
        kind = "temporal" if fam in scenes.TEMPORAL_FAMILIES else "static"
        print(f"{fam:14s} {kind:9s} {len(itr):7d} {len(ite):6d} {acc_o:8.2f} {acc_s:8.2f} "
              f"{chance:7.2f}")


if __name__ == "__main__":
    main()
