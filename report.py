"""Benchmark scoring and the report: per-item records -> benchmark numbers -> the paper's Table 1
(notes §7).

Pure: strings and dicts in, dicts and markdown out (no model, no I/O), so every number eval.py
prints can be checked by hand. Scores use rewards.eval_score: exact match for multiple choice, the
numerical rule, MRA for regression, with the official fallback to the raw output when there is no
<answer> block. VSI-Bench's score is (mean accuracy over non-regression items + mean MRA over
regression items) / 2 (author, Video-R1#121); every other benchmark's is mean accuracy. The
temporal-sensitivity table compares ordered with shuffled frames, per benchmark and per data_source
category.
"""
from __future__ import annotations

from pathlib import Path

import data
import rewards

# paper Table 1 column order
BENCHMARKS = {"vsibench": "VSI-Bench", "videommmu": "VideoMMMU", "mmvu": "MMVU",
              "mvbench": "MVBench", "tempcompass": "TempCompass", "videomme": "VideoMME"}
# data_source components that name the built-in data's two kinds
CATEGORIES = ("temporal", "static")


# ---- scoring (pure; notes §7 "Scoring", "Reporting") ------------------------------------------
def think_block(output: str) -> str | None:
    """The stripped text of the first <think>...</think> block of an output, None when there is
    none."""
    start = output.find("<think>")
    end = output.find("</think>", start + len("<think>")) if start >= 0 else -1
    return output[start + len("<think>"):end].strip() if end >= 0 else None


def score_item(sample: data.Sample, index: int, output: str) -> dict:
    """One per-item record: rewards.eval_score on the raw output (fallback to the whole output when
    there is no <answer> block); correct = reward == 1.0 (official). Raises ValueError for an
    unknown problem_type."""
    prediction, reward = rewards.eval_score(output, sample.solution, sample.problem_type)
    return {"index": index, "problem_id": sample.problem_id, "data_type": sample.data_type,
            "problem_type": sample.problem_type, "data_source": sample.data_source,
            "solution": sample.solution, "output": output, "prediction": prediction,
            "reward": reward, "correct": reward == 1.0, "reasoning": think_block(output)}


def category(data_source: str) -> str | None:
    """'synthetic/temporal/direction' -> 'temporal'; None when no path component is in
    CATEGORIES."""
    return next((p for p in data_source.split("/") if p in CATEGORIES), None)


def summarize(name: str, records: list[dict]) -> dict:
    """Benchmark numbers from per-item records (dicts with problem_type, reward, data_source).

    mean_acc: mean reward over non-regression items; mean_mra: mean reward (MRA) over regression
    items, 0 when there are none (official final_acc). score (percent): VSI-Bench (mean_acc +
    mean_mra) / 2 * 100 (author, Video-R1#121); other benchmarks mean_acc * 100 (mean_mra * 100 if a
    benchmark has only regression items). Also counts per problem type, and accuracy (percent) per
    data_source and per category.
    """
    acc = [r["reward"] for r in records if r["problem_type"] != "regression"]
    mra = [r["reward"] for r in records if r["problem_type"] == "regression"]
    mean_acc = sum(acc) / len(acc) if acc else 0.0
    mean_mra = sum(mra) / len(mra) if mra else 0.0
    if name == "vsibench":
        score = 100 * (mean_acc + mean_mra) / 2
    else:
        score = 100 * (mean_acc if acc or not mra else mean_mra)
    groups: dict[str, dict[str, list[float]]] = {"by_source": {}, "by_category": {}}
    for r in records:
        groups["by_source"].setdefault(r["data_source"], []).append(r["reward"])
        if category(r["data_source"]):
            groups["by_category"].setdefault(category(r["data_source"]), []).append(r["reward"])
    counts: dict[str, int] = {}
    for r in records:
        counts[r["problem_type"]] = counts.get(r["problem_type"], 0) + 1
    out = {"score": score, "mean_acc": mean_acc, "mean_mra": mean_mra, "n_scored": len(records),
           "n_correct": sum(bool(r["correct"]) for r in records), "counts": counts}
    for key, g in groups.items():
        out[key] = {k: {"n": len(v), "accuracy": 100 * sum(v) / len(v)}
                    for k, v in sorted(g.items())}
    return out


def frames_desc(media: dict) -> str:
    """'32' for a fixed frame count, '≤16' for the fps rule."""
    return str(media["nframes"]) if media["nframes"] else f"≤{media['max_frames']}"


def settings_line(s: dict) -> str:
    """The frames/pixels/sampling settings of a result, on one line."""
    m, p = s["media"], s["sampling"]
    return (f"frames {frames_desc(m)} (fps {m['fps']}, min {m['min_frames']}), "
            f"video px {m['video_min_pixels']}..{m['video_max_pixels']}, "
            f"image px {m['image_min_pixels']}..{m['image_max_pixels']}, rope_time "
            f"{m['rope_time']} | T {p['temperature']} top_p {p['top_p']} top_k {p['top_k']} "
            f"rep {p['repetition_penalty']} max_new {p['max_new_tokens']}")


# ---- report --------------------------------------------------------------------------------------
def _cell(x) -> str:
    return "–" if x is None else f"{x:.1f}"


def baselines(by: dict, label) -> list[str]:
    """The media-baselines table (blind.py; eval.py --media): per benchmark, frames and data_source
    category, accuracy on ordered frames, shuffled frames, the first frame only and no media ("–"
    for a variant not run); [] when no `none`/`first-frame` result is there. by: (benchmark, frames,
    variant) -> summary."""
    if not any(v in ("none", "first-frame") for _, _, v in by):
        return []
    variants = ("ordered", "shuffled", "first-frame", "none")
    out = ["", "Media baselines: accuracy with ordered frames, shuffled frames, the first frame "
           "only and no media (the question alone).", "",
           "| Benchmark | Frames | Items | Ordered | Shuffled | First frame | No media |",
           "|---|---|---|---|---|---|---|"]
    for b, f in dict.fromkeys((b, f) for b, f, _ in by):
        s = {v: by.get((b, f, v)) for v in variants}
        n = next(x["n_scored"] for x in s.values() if x)
        out.append(f"| {label(b)} | {f} | {n} | "
                   + " | ".join(_cell(x and x["score"]) for x in s.values()) + " |")
        cats = sorted({c for x in s.values() if x for c in x["by_category"]})
        for c in cats:
            got = [x and x["by_category"].get(c) for x in s.values()]
            n = next(g["n"] for g in got if g)
            out.append(f"| {label(b)} [{c}] | {f} | {n} | "
                       + " | ".join(_cell(g and g["accuracy"]) for g in got) + " |")
    return out
def model_label(model: str) -> str:
    """A model folder's name for tables: the folder's own name, or for a run's export ('final',
    'step_*', 'checkpoint-*') the run's folder and the export ('tgrpo-final': runs/tgrpo/final)."""
    p = Path(model)
    generic = p.name == "final" or p.name.startswith(("step", "checkpoint"))
    return f"{p.parent.name}-{p.name}" if generic else p.name


def report(results: list[dict]) -> str:
    """Markdown: the paper's Table 1 layout (rows: model, frames, frame order); then, per benchmark
    and per data_source category, accuracy on ordered vs shuffled frames and the gap ("–" without a
    shuffled run); then the settings of every result."""
    names = list(BENCHMARKS) + sorted({r["benchmark"] for r in results} - set(BENCHMARKS))
    label = lambda b: BENCHMARKS.get(b, b)
    rows: dict[tuple, dict] = {}
    for r in results:
        frames = frames_desc(r["settings"]["media"])
        key = (model_label(r["model"]), frames, r["variant"] != "ordered", r["variant"])
        rows.setdefault(key, {})[r["benchmark"]] = r["summary"]["score"]
    lines = ["| Model | Frames | Frame order | " + " | ".join(label(n) for n in names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for (model, frames, _, variant), scores in sorted(rows.items()):
        lines.append(f"| {model} | {frames} | {variant} | "
                     + " | ".join(_cell(scores.get(n)) for n in names) + " |")
    by = {(r["benchmark"], frames_desc(r["settings"]["media"]), r["variant"]): r["summary"]
          for r in results}
    gaps = []
    for (b, f, variant), o in by.items():
        s = by.get((b, f, "shuffled"))
        if variant != "ordered" or (s is None and not o["by_category"]):
            continue
        parts = [(label(b), o["n_scored"], o["score"], s and s["score"])]
        parts += [(f"{label(b)} [{c}]", v["n"], v["accuracy"],
                   s and s["by_category"].get(c, {}).get("accuracy"))
                  for c, v in sorted(o["by_category"].items())]
        gaps += [f"| {n} | {f} | {k} | {x:.1f} | {_cell(y)} | "
                 f"{'–' if y is None else f'{x - y:+.1f}'} |"
                 for n, k, x, y in parts]
    if gaps:
        lines += ["", "Temporal sensitivity: accuracy on ordered vs shuffled frames "
                  "(gap = ordered − shuffled).", "",
                  "| Benchmark | Frames | Items | Ordered | Shuffled | Gap |",
                  "|---|---|---|---|---|---|"] + gaps
    lines += baselines(by, label)
    lines += ["", "Settings and exclusions:", ""]
    for r in results:
        lines.append(f"- {r['benchmark']} ({r['variant']}): {r['summary']['n_scored']} scored, "
                     f"{r['summary']['n_excluded']} excluded; model {r['model']}; "
                     f"{settings_line(r['settings'])}")
    return "\n".join(lines) + "\n"
