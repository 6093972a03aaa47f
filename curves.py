"""Training curves of one run: its metrics.jsonl drawn as a PNG beside it (matplotlib, Agg, no
display).

    python curves.py runs/tgrpo/metrics.jsonl                # -> runs/tgrpo/curves.png
    python curves.py runs/sft/metrics.jsonl --out sft.png    # any path; prints where it wrote

The panels follow the keys the file holds, so one function draws both kinds of run: a T-GRPO run
(train.py, keys of notes §3 "Logged metrics") gets the reward terms, accuracy on ordered vs shuffled
frames, the temporal-bonus trigger rate, KL, completion length, loss and gradient norm; an SFT run
(sft.py) gets loss, gradient norm and the held-out format / accuracy rates. A panel whose keys are
all absent is left out. Per-step series are drawn raw (thin) with a trailing moving average over
max(1, n // 10) points (thick), so a 30-step run is readable; evaluation series ("eval_*" keys, a
few rows) are drawn with markers. Video-only keys (p, p_shuffled, temporal_rate) are absent on steps
without a video group: each series is drawn over the steps that have it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

# (title, metric keys, y-axis label); one subplot each, in this order, when any of its keys is in
# the file. A key ending in "/" stands for every key it begins (the named held-out sets:
# "eval_accuracy/reversed", ...).
PANELS = (
    ("reward terms", ("reward", "accuracy", "format", "temporal_bonus", "length_bonus"),
     "mean per completion"),
    ("accuracy: ordered vs shuffled frames", ("p", "p_shuffled"), "mean accuracy (video groups)"),
    ("temporal-bonus trigger rate", ("temporal_rate",), "fraction of video groups"),
    ("KL to reference", ("kl",), "nats per token"),
    ("completion length", ("completion_length",), "tokens"),
    ("loss", ("loss",), ""),  # T-GRPO: surrogate; SFT: nats per token
    ("grad norm", ("grad_norm",), "L2, before clipping"),
    ("eval: format / accuracy", ("eval_format", "eval_accuracy"), "rate on held-out prompts"),
    ("eval: accuracy per held-out set", ("eval_accuracy/",), "rate on held-out prompts"),
    ("eval: format per held-out set", ("eval_format/",), "rate on held-out prompts"),
)


def expand(ks, keys) -> list[str]:
    """The metric keys a panel draws, in order: each of `ks` that is in `keys`, a prefix ending in
    "/" replaced by the keys of `keys` it begins (sorted)."""
    out = []
    for k in ks:
        out += sorted(x for x in keys if x.startswith(k)) if k.endswith("/") else [k] * (k in keys)
    return out


def read_rows(metrics_path: str | Path) -> list[dict]:
    """Read a metrics JSON-lines file (one object per line, each with a "step"; blank lines
    skipped).

    Args: metrics_path: the metrics.jsonl file.
    Returns: the rows, in file order (step rows and evaluation rows mixed, as written).
    Raises: FileNotFoundError naming the path if it does not exist; ValueError naming the file and
        the 1-based line number for a line that is not JSON, not an object, or has no "step" key.
    """
    path = Path(metrics_path)
    if not path.is_file():
        raise FileNotFoundError(f"curves.py: no metrics file at {path}")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {n}: not JSON: {e}") from e
        if not isinstance(row, dict) or "step" not in row:
            raise ValueError(f"{path}: line {n}: no \"step\" key in {line[:80]!r}")
        rows.append(row)
    return rows


def panels(keys) -> list[str]:
    """Titles of the panels a file with these metric keys gets, in drawing order (see PANELS).

    Args: keys: any iterable of metric names (e.g. the union of a file's row keys).
    Returns: the titles of the panels with at least one of their keys present; [] when none is.
    """
    keys = set(keys)
    return [title for title, ks, _ in PANELS if expand(ks, keys)]


def series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one metric over the rows that hold it as a finite number, in file order.
    Args: rows: as read_rows returns; key: the metric name. Returns: two float arrays of equal
    length (maybe 0)."""
    pts = [(float(r["step"]), float(r[key])) for r in rows
           if isinstance(r.get(key), (int, float)) and not isinstance(r[key], bool)
           and math.isfinite(r[key])]
    return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])


def moving_average(y: np.ndarray, k: int) -> np.ndarray:
    """Trailing mean over the last k points (fewer at the start, so the curve starts at the first
    point).
    Args: y: (n,) values; k: window >= 1. Returns: (n,) array."""
    c = np.cumsum(np.concatenate([[0.0], y]))   # c[i] = sum of y[:i]
    i = np.arange(1, len(y) + 1)
    lo = np.maximum(0, i - k)
    return (c[i] - c[lo]) / (i - lo)


SHRINK = 0.7   # completions this much shorter at the end than at the start are pointed out


def shrink(rows: list[dict]) -> tuple[float, float, int] | None:
    """(first, last, w) when the mean completion length of the run's last w steps (a tenth, at
    least 1) is below SHRINK times that of its first w, else None: a policy that drops its reasoning
    shows here first (the default T-GRPO run: ~32 -> ~16 tokens)."""
    _, y = series(rows, "completion_length")
    if len(y) < 2:
        return None
    w = max(1, len(y) // 10)
    first, last = float(np.mean(y[:w])), float(np.mean(y[-w:]))
    return (first, last, w) if last < SHRINK * first else None


def draw(metrics_path: str | Path, png_path: str | Path | None = None, title: str = "") -> Path:
    """Draw a run's training curves from its metrics.jsonl and write them as a PNG.

    Args:
        metrics_path: the run's metrics JSON-lines file (train.py or sft.py output).
        png_path: where to write the PNG; None: curves.png beside metrics_path. Its folder must
            exist.
        title: figure title; "" uses metrics_path as given.
    Returns: the PNG's path (written atomically: a temp file beside it, then os.replace). When
        completions shrank (`shrink`) the completion-length panel's title says so and a note goes
        to stderr (stdout keeps only the path the CLI prints).
    Raises: FileNotFoundError naming the path if metrics_path does not exist; ValueError naming the
        file and line for a bad line (see read_rows), or naming the file when no key of any panel is
        present.
    """
    # Agg, never pyplot: no global backend switch
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics_path = Path(metrics_path)
    rows = read_rows(metrics_path)
    keys = set().union(*rows) if rows else set()
    chosen = [p for p in PANELS if p[0] in panels(keys)]
    if not chosen:
        raise ValueError(f"{metrics_path}: no metric to draw (keys: {sorted(keys)})")
    png_path = Path(png_path) if png_path is not None else metrics_path.with_name("curves.png")

    shrank = shrink(rows)
    if shrank:
        print(f"note: completion length shrank {shrank[0]:.0f} -> {shrank[1]:.0f} tokens (mean of "
              f"the first vs the last {shrank[2]} step(s)): the completions carry less reasoning "
              f"now; read a few", file=sys.stderr, flush=True)
    ncols = min(4, len(chosen))
    nrows = math.ceil(len(chosen) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (name, ks, ylabel) in zip(axes, chosen):
        for j, key in enumerate(expand(ks, keys)):
            x, y = series(rows, key)
            if len(x) == 0:
                continue
            color = f"C{j}"
            if key.startswith("eval_"):                     # few points: markers, no smoothing
                ax.plot(x, y, "o-", color=color, lw=1.5, ms=4, label=key)
                continue
            w = max(1, len(y) // 10)
            if w == 1:
                ax.plot(x, y, color=color, lw=1.5, label=key)
            else:
                ax.plot(x, y, color=color, lw=0.7, alpha=0.35)
                ax.plot(x, moving_average(y, w), color=color, lw=2.0, label=f"{key} (avg {w})")
        flag = shrank and name == "completion length"
        extra = f": shrank {shrank[0]:.0f} -> {shrank[1]:.0f}" if flag else ""
        ax.set_title(name + extra, fontsize=10, color="C3" if flag else "black")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in axes[len(chosen):]:
        ax.set_visible(False)                                # empty cells of the last row
    fig.suptitle(title or str(metrics_path), fontsize=11)
    fig.tight_layout()

    tmp = png_path.with_name(png_path.name + ".tmp")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, png_path)
    finally:
        tmp.unlink(missing_ok=True)
        fig.clear()                                          # no pyplot registry: freed with `fig`
    return png_path


if __name__ == "__main__":
    ap = argparse.ArgumentParser(
        description="Draw a run's metrics.jsonl as a PNG of training curves.")
    ap.add_argument("metrics", help="the run's metrics.jsonl (train.py or sft.py)")
    ap.add_argument("--out", default=None,
                    help="PNG path (default: curves.png beside the metrics file)")
    ap.add_argument("--title", default="", help="figure title (default: the metrics path)")
    a = ap.parse_args()
    print(draw(a.metrics, a.out, a.title))
