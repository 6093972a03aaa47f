"""Rollout records and the page to read them: what the policy wrote, next to what each
reward term made of it.

Every `--log-rollouts N` steps train.py writes, under OUT_DIR/rollouts/:
  step_000010.jsonl   one JSON line per prompt group, every rank's groups (rank 0 writes; `gather`)
  step_000010.html    the same groups as one self-contained static page (`page`): per group the
                      frames as a strip in sampled and in shuffled order (JPEG thumbnails inlined
                      as data: URIs), the question and the answer, then the ordered and the
                      shuffled completions side by side, each with its reward terms, <think> and
                      <answer> set apart, correct and wrong told apart by colour and mark.
                      No script, no server, no network.
The held-out evaluations (heldout.py: eval_step_000020.*) and eval.py (eval.*) write the same
records for what they score; their groups have ordered completions only.

A group's line: {"step", "rank", "kind", "sample": the Sample's fields (its JSON entry's content,
entry index and file, media path, problem type, solution), "frame_indices": the sampled frames'
indices in the source file, "frame_times": their source times in seconds (index / source fps;
both [] for an image), "permutation": shuffled
frame j is sampled frame permutation[j] (null without a shuffled copy), "ordered"/"shuffled":
[completion], "p", "p_shuffled", "bonus_fired" (null without a temporal signal)}.
A completion: {"text", "tokens" (incl. the stop token), "accuracy", "format", "length_bonus",
"temporal_bonus", "reward", "advantage"}; a shuffled completion has only text, tokens, accuracy
and format (it enters no loss: its reward terms and advantage are null).
Also `add_gap`/`reduce_gap`: |log p_rollout - log p_train| over completion tokens (train.py's
policy/logprob_gap_mean and _max).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import re
from pathlib import Path
from typing import NamedTuple

import torch

import distributed
import rewards

THUMB_HEIGHT = 72  # pixels; a 16-frame strip stays about 1.5k pixels wide


def thumbnails(frames: torch.Tensor | None, height: int = THUMB_HEIGHT) -> list[str]:
    """Frames uint8 (T, 3, H, W) -> T `data:image/jpeg;base64,...` URIs of `height`-pixel-high
    thumbnails (Pillow). None -> []."""
    from PIL import Image

    if frames is None:
        return []
    out = []
    for f in frames:
        img = Image.fromarray(f.permute(1, 2, 0).contiguous().numpy())
        img = img.resize((max(1, round(img.width * height / img.height)), height), Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=80)
        out.append("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"))
    return out


def _num(x):
    return None if x is None else round(float(x), 6)


def completion(
    text: str,
    tokens: int,
    accuracy: float,
    fmt: float,
    length=None,
    temporal=None,
    reward=None,
    advantage=None,
) -> dict:
    """One completion's record (the reward terms as numbers, null where they do not apply)."""
    return {
        "text": text,
        "tokens": int(tokens),
        "accuracy": _num(accuracy),
        "format": _num(fmt),
        "length_bonus": _num(length),
        "temporal_bonus": _num(temporal),
        "reward": _num(reward),
        "advantage": _num(advantage),
    }


def group_record(
    sample,
    frame_times,
    frame_indices,
    perm,
    ordered: list[dict],
    shuffled: list[dict] | None,
    step: int,
    rank: int,
    kind: str,
    p=None,
    p_shuffled=None,
    fired=None,
) -> dict:
    """One group's line (module docstring): sample a data.Sample, frame_times its frames' source
    seconds, perm (T,) the shuffled copy's permutation or None, `ordered`/`shuffled` completion
    dicts."""
    return {
        "step": step,
        "rank": rank,
        "kind": kind,
        "sample": dataclasses.asdict(sample),
        "frame_indices": [int(i) for i in frame_indices],
        "frame_times": [round(float(t), 4) for t in frame_times],
        "permutation": None if perm is None else [int(i) for i in perm],
        "ordered": ordered,
        "shuffled": shuffled,
        "p": _num(p),
        "p_shuffled": _num(p_shuffled),
        "bonus_fired": None if fired is None else bool(fired),
    }


def train_records(groups, tokenizer, acc, fmt, sacc, adv, step: int, rank: int) -> list[dict]:
    """The records of one training step's groups (rollout.Group list; acc, fmt (B, G), sacc (B, G̃)
    as train.rule_rewards; adv a tgrpo.Advantages). Each record carries its frames' thumbnails under
    "thumbs" (dropped from the JSON line, kept for the page)."""
    out = []
    for b, g in enumerate(groups):
        texts = tokenizer.batch_decode(g.ordered.ids, skip_special_tokens=True)
        ordered = [
            completion(
                t,
                g.ordered.lengths[i],
                acc[b, i],
                fmt[b, i],
                adv.length[b, i],
                adv.temporal[b, i],
                adv.total[b, i],
                adv.advantages[b, i],
            )
            for i, t in enumerate(texts)
        ]
        shuffled = None
        if g.shuffled is not None:
            stexts = tokenizer.batch_decode(g.shuffled.ids, skip_special_tokens=True)
            shuffled = [
                completion(t, g.shuffled.lengths[i], sacc[b, i], rewards.format_reward(t))
                for i, t in enumerate(stexts)
            ]
        st = adv.stats if g.shuffled is not None else None
        pr = g.prepared
        rec = group_record(
            pr.sample,
            pr.frame_times,
            pr.frame_indices,
            pr.perm,
            ordered,
            shuffled,
            step,
            rank,
            "train",
            *((st["p"][b], st["p_shuffled"][b], st["triggered"][b]) if st is not None else ()),
        )
        out.append(rec | {"thumbs": thumbnails(g.prepared.frames)})
    return out


def gather(recs: list[dict], proc: distributed.Dist) -> list[dict]:
    """Every rank's records on rank 0, in rank order ([] elsewhere). A collective: every rank calls
    it, with any number of records (0 included); objects travel through gather-object, which holds
    on NCCL too."""
    parts = distributed.all_gather_object(recs, proc)
    return [r for part in parts for r in part] if proc.main else []


def write(folder: str | Path, name: str, recs: list[dict], title: str) -> tuple[Path, Path]:
    """Write folder/name.jsonl (one line per record, thumbnails left out) and folder/name.html
    (`page`). Returns both paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = "".join(
        json.dumps({k: v for k, v in r.items() if k != "thumbs"}, ensure_ascii=False) + "\n"
        for r in recs
    )
    (folder / f"{name}.jsonl").write_text(lines, encoding="utf-8")
    (folder / f"{name}.html").write_text(page(recs, title), encoding="utf-8")
    return folder / f"{name}.jsonl", folder / f"{name}.html"


class Media(NamedTuple):
    """What a record shows of a prompt's media, kept instead of its frames (held-out sets stay
    small): the frames' source seconds and their thumbnails (`thumbnails`)."""

    frame_times: tuple
    thumbs: list
    frame_indices: tuple = ()


def media_of(prepared) -> Media:
    """A pixels.Prepared's Media (thumbnails made now, once)."""
    return Media(tuple(prepared.frame_times), thumbnails(prepared.frames),
                 tuple(prepared.frame_indices))


def scored_record(
    sample,
    media: Media | None,
    texts: list[str],
    lengths,
    accuracy: list[float],
    step: int,
    rank: int,
    kind: str,
) -> dict:
    """The record of an evaluated prompt (held-out or eval.py): its completions on ordered frames
    with accuracy and format (no bonus, reward or advantage: nothing is trained on them)."""
    ordered = [
        completion(t, n, a, rewards.format_reward(t)) for t, n, a in zip(texts, lengths, accuracy)
    ]
    rec = group_record(
        sample, media.frame_times if media else (), media.frame_indices if media else (), None,
        ordered, None, step, rank, kind
    )
    return rec | {"thumbs": media.thumbs if media else []}


# ---- the page ------------------------------------------------------------------------------------
def segments(text: str) -> list[tuple[str, str]]:
    """A completion split for display: [(kind, text)], kind "think", "answer" or "other"."""
    out, pos = [], 0
    for m in re.finditer(r"<(think|answer)>(.*?)</\1>", text, re.DOTALL):
        if m.start() > pos:
            out.append(("other", text[pos : m.start()]))
        out.append((m.group(1), m.group(2).strip()))
        pos = m.end()
    if pos < len(text):
        out.append(("other", text[pos:]))
    return [(k, t) for k, t in out if t.strip()]


TERMS = ("accuracy", "format", "length_bonus", "temporal_bonus", "reward", "advantage")

TEMPLATE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1em;background:#fafafa;color:#1f1f1f}
.group{background:#fff;border:1px solid #ccc;border-radius:6px;margin:1em 0;padding:.8em}
.strip{display:flex;gap:2px;overflow-x:auto;margin:.2em 0}.strip img{height:72px}
.label{font-size:12px;color:#5a5a5a;margin-top:.4em}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:.8em;margin-top:.6em}
.col h3{margin:.2em 0;font-size:14px}
.comp{border-left:6px solid #9a9a9a;padding:.3em .5em;margin:.4em 0;background:#f6f6f6}
.comp.correct{border-color:#1a8f3a;background:#eef8f0}
.comp.wrong{border-color:#c62828;background:#fbeeee}
.mark{font-weight:bold}.correct .mark{color:#1a8f3a}.wrong .mark{color:#c62828}
.terms{font:12px monospace;color:#3a3a3a}
.think{color:#5a5a5a;font-style:italic;white-space:pre-wrap;border-left:2px dotted #aaa;
padding-left:.4em}
.answer{font-weight:bold;white-space:pre-wrap;background:#fff3c4;display:inline-block;
padding:0 .3em}
.other{white-space:pre-wrap;color:#7a7a7a}
.q{white-space:pre-wrap}
</style></head><body>
<h1>{{ title }}</h1>
<p>{{ groups|length }} group(s). Green: accuracy above 0.5; red: not.
Each completion lists its reward terms.</p>
{% for g in groups %}
<div class="group" id="g{{ loop.index0 }}">
<h2>#{{ loop.index0 }} &middot; rank {{ g.rank }} &middot; {{ g.sample.problem_type }} &middot;
{{ g.sample.data_type }} &middot; {{ g.sample.path }}</h2>
{% if g.thumbs %}<div class="label">frames, sampled order
(source frames {{ g.frame_indices|join(", ") }}; seconds {{ g.frame_times|join(", ") }})</div>
<div class="strip ordered-frames">{% for u in g.thumbs %}
<img src="{{ u }}" alt="frame {{ loop.index0 }}">{% endfor %}</div>
{% if g.permutation %}<div class="label">frames, shuffled order
(permutation {{ g.permutation|join(", ") }})</div>
<div class="strip shuffled-frames">{% for j in g.permutation %}
<img src="{{ g.thumbs[j] }}" alt="frame {{ j }}">{% endfor %}</div>{% endif %}
{% endif %}
<div class="q"><b>Question:</b> {{ g.sample.problem }}{% if g.sample.options %}
{{ g.sample.options|join("\n") }}{% endif %}</div>
<div><b>Answer:</b> {{ g.sample.solution }}</div>
{% if g.p is not none %}<div class="terms">p = {{ "%.3f"|format(g.p) }},
p̃ = {{ "%.3f"|format(g.p_shuffled) }},
temporal bonus {{ "fired" if g.bonus_fired else "not fired" }}</div>{% endif %}
<div class="cols">
{% for side, comps in (("ordered", g.ordered), ("shuffled", g.shuffled)) %}
<div class="col {{ side }}"><h3>{{ side }} frames ({{ comps|length if comps else 0 }})</h3>
{% if not comps %}<div class="other">none{% if side == "shuffled" %} (no shuffled copy){% endif %}
</div>{% endif %}
{% for c in comps or [] %}{% set ok = c.accuracy is not none and c.accuracy > 0.5 %}
<div class="comp {{ 'correct' if ok else 'wrong' }}">
<span class="mark">{{ "✓ correct" if ok else "✗ wrong" }}</span>
<span class="terms">{% for t in terms %}{{ t }} {{ "-" if c[t] is none else "%.3f"|format(c[t]) }}
{{- " · " if not loop.last }}{% endfor %} · tokens {{ c.tokens }}</span>
{% for kind, text in segment(c.text) %}<div class="{{ kind }}">
{%- if kind != "other" %}&lt;{{ kind }}&gt; {% endif %}{{ text }}</div>{% endfor %}
</div>{% endfor %}</div>
{% endfor %}
</div></div>
{% endfor %}
</body></html>
"""


def page(recs: list[dict], title: str) -> str:
    """The records as one static HTML page (Jinja2, autoescaped: completion text cannot inject
    markup). One `div.group` per record with `div.col.ordered` and `div.col.shuffled`, one
    `div.comp` per completion (class correct/wrong), frame strips
    `div.ordered-frames`/`div.shuffled-frames` when it has thumbnails."""
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    groups = [r | {"thumbs": r.get("thumbs", [])} for r in recs]
    return env.from_string(TEMPLATE).render(
        title=title, groups=groups, terms=TERMS, segment=segments
    )


def table_rows(recs: list[dict]) -> list[list]:
    """Flat rows, one per completion, for a tracker table: [rank, problem_id, problem_type, side,
    index, solution, text, *TERMS, tokens, p, p_shuffled, bonus_fired]."""
    rows = []
    for r in recs:
        for side in ("ordered", "shuffled"):
            for i, c in enumerate(r[side] or []):
                rows.append(
                    [
                        r["rank"],
                        str(r["sample"]["problem_id"]),
                        r["sample"]["problem_type"],
                        side,
                        i,
                        r["sample"]["solution"],
                        c["text"],
                        *(c[t] for t in TERMS),
                        c["tokens"],
                        r["p"],
                        r["p_shuffled"],
                        r["bonus_fired"],
                    ]
                )
    return rows


TABLE_COLUMNS = [
    "rank",
    "problem_id",
    "problem_type",
    "side",
    "index",
    "solution",
    "text",
    *TERMS,
    "tokens",
    "p",
    "p_shuffled",
    "bonus_fired",
]


# ---- rollout/train agreement ---------------------------------------------------------------------
def add_gap(
    acc: torch.Tensor, train_lp: torch.Tensor, rollout_lp: torch.Tensor, mask: torch.Tensor
) -> None:
    """Add |log p_rollout - log p_train| over completion tokens into `acc`, float64 (3,) on the
    log-probs' device [sum of gaps, token count, max gap], in place. train_lp, rollout_lp (n, L)
    float (the log-prob pass's and the decode step's); mask (n, L) float, 1 on completion tokens.
    No host sync: it runs inside the log-prob pass."""
    gap = (train_lp.detach().double() - rollout_lp.double()).abs() * mask   # (n, L), 0 elsewhere
    acc[0] += gap.sum()
    acc[1] += mask.sum()
    acc[2] = torch.maximum(acc[2], gap.max())


def log(
    recs: list[dict],
    proc: distributed.Dist,
    out_dir: str | Path,
    name: str,
    step: int,
    tracker=None,
    title: str = "",
) -> Path | None:
    """Gather every rank's records (a collective: every rank calls it), then on rank 0 write
    out_dir/rollouts/name.{jsonl,html} and send the rows to `tracker`
    (tracking.Tracker.log_rollouts). Returns the page's path on rank 0, None elsewhere."""
    recs = gather(recs, proc)
    if not proc.main:
        return None
    _, html = write(Path(out_dir) / "rollouts", name, recs, title or name)
    if tracker is not None:
        tracker.log_rollouts(step, recs)
    return html


def reduce_gap(stats: torch.Tensor, proc: distributed.Dist) -> dict:
    """`logprob_gap` stats of this rank -> {"logprob_gap_mean", "logprob_gap_max"} over every rank's
    completion tokens. A collective (one all-reduce: sums, counts and each rank's max in its own
    slot)."""
    t = torch.zeros(2 + proc.world, dtype=torch.float64)
    t[:2], t[2 + proc.rank] = stats[:2].cpu(), stats[2].cpu()
    t = distributed.all_reduce_sum(t, proc)
    return {
        "logprob_gap_mean": float(t[0] / t[1].clamp(min=1)),
        "logprob_gap_max": float(t[2:].max()),
    }
