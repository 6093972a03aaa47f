"""Seeing what the policy does (records.py, tracking.StepClock): the rollout records' schema and
numbers, the page parsed back, the rollout/train log-prob gap of both model families eager and
compiled, and a 2-rank train.py run under NCCL's contract whose ranks hold different media (records
of every rank, written by rank 0; perf rows)."""

import json
from html.parser import HTMLParser

import pytest
import torch

import common
import data
import decode as D
import model as M
import pixels
import records
import rollout as R
import tgrpo
from builtin import tiny
from conftest import GPU_CONTRACT, GPU_GROUP, ROOT, run_cmd
from test_gpu_contract import arranged

MEDIA = pixels.MediaConfig(**tiny.TINY_MEDIA)


class Blocks(HTMLParser):
    """The page's structure: per div.group, its columns, completions (with their class) and frame
    images."""

    def __init__(self):
        super().__init__()
        self.groups, self.stack = [], []

    def handle_starttag(self, tag, attrs):
        cls = (dict(attrs).get("class") or "").split()
        if tag == "div":
            self.stack.append(cls)
            if "group" in cls:
                self.groups.append(
                    {"cols": [], "comps": [], "imgs": {"ordered": 0, "shuffled": 0}, "text": ""}
                )
            elif "col" in cls:
                self.groups[-1]["cols"].append(cls[1])
            elif "comp" in cls:
                self.groups[-1]["comps"].append((self.groups[-1]["cols"][-1], cls[1]))
        elif tag == "img":
            strip = next(c for c in reversed(self.stack) if "strip" in c)
            self.groups[-1]["imgs"]["ordered" if "ordered-frames" in strip else "shuffled"] += 1
            assert dict(attrs)["src"].startswith("data:image/jpeg;base64,")  # inlined: no network

    def handle_endtag(self, tag):
        if tag == "div":
            self.stack.pop()

    def handle_data(self, text):
        if self.groups:
            self.groups[-1]["text"] += text


@pytest.fixture(scope="module")
def tiny_policy(builtin):
    hf, tok = M.load_policy(builtin[1])
    samples = data.load_samples(builtin[0]["train"])
    v = pixels.prepare(
        next(s for s in samples if s.data_type == "video"),
        tok,
        MEDIA,
        shuffled=True,
        generator=torch.Generator().manual_seed(0),
    )
    i = pixels.prepare(next(s for s in samples if s.data_type == "image"), tok, MEDIA)
    return hf.eval(), tok, v, i


def completions(tok, texts):
    """Completions of the given texts (each ending in <|im_end|>), as generate gives them."""
    end = tok.convert_tokens_to_ids("<|im_end|>")
    seqs = [torch.tensor(tok(t, add_special_tokens=False)["input_ids"] + [end]) for t in texts]
    L = max(s.numel() for s in seqs)
    ids = torch.full((len(seqs), L), tok.pad_token_id)
    mask = torch.zeros(len(seqs), L)
    for k, s in enumerate(seqs):
        ids[k, : s.numel()], mask[k, : s.numel()] = s, 1
    return R.Completions(ids, mask, mask.sum(1).long(), torch.zeros(len(seqs), L))


def test_records_hold_every_term_and_the_page_shows_them(tiny_policy, tmp_path):
    hf, tok, v, i = tiny_policy
    right, wrong = "<think>it moves</think><answer>{}</answer>", "no tags {}"
    sol_v, sol_i = v.sample.solution[8:-9], i.sample.solution[8:-9]  # "<answer>X</answer>" -> X
    groups = [
        R.Group(
            v,
            completions(tok, [right.format(sol_v), wrong.format("Z"), right.format(sol_v)]),
            completions(tok, [right.format("Z")]),
        ),
        R.Group(i, completions(tok, [right.format(sol_i), right.format("Z"), wrong.format("Z")])),
    ]
    acc = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    fmt = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    sacc = torch.tensor([[0.0], [0.0]])
    lengths = torch.stack([g.ordered.lengths for g in groups])
    adv = tgrpo.advantages(acc, fmt, lengths, sacc, torch.tensor([True, False]),
                           tgrpo.Settings(min_len=1, max_len=10_000))
    recs = records.train_records(groups, tok, acc, fmt, sacc, adv, 7, 0)
    a, b = recs
    assert (
        a["step"] == 7 and a["kind"] == "train" and a["sample"]["media_path"] == v.sample.media_path
    )
    assert (
        a["sample"]["problem_type"] == v.sample.problem_type
        and a["sample"]["entry"] == v.sample.entry
    )
    assert a["permutation"] == v.perm.tolist() and sorted(a["permutation"]) == list(
        range(v.frames.shape[0])
    )
    assert len(a["frame_times"]) == v.frames.shape[0] and a["frame_times"] == sorted(
        a["frame_times"]
    )
    import decord  # the source frames by the official arithmetic (notes §8), and their seconds

    clip = decord.VideoReader(v.sample.media_path)
    assert a["frame_indices"] == pixels.sample_frame_indices(len(clip), v.frames.shape[0])
    assert a["frame_times"] == [round(i / clip.get_avg_fps(), 4) for i in a["frame_indices"]]
    # p = 2/3 ordered correct, p~ = 0: the bonus fires (official trigger p >= 0.8 p~) and pays alpha
    # to the right ones; two correct in the group: the length bonus too (bounds 1..10000 here)
    assert (a["p"], a["p_shuffled"], a["bonus_fired"]) == (pytest.approx(2 / 3), 0.0, True)
    c0, c1, _ = a["ordered"]
    assert c0["text"] == right.format(sol_v) and c0["tokens"] == int(groups[0].ordered.lengths[0])
    assert (c0["accuracy"], c0["format"], c0["temporal_bonus"], c0["length_bonus"]) == (
        1.0,
        1.0,
        0.3,
        0.2,
    )
    assert c0["reward"] == pytest.approx(2.5) and c1["reward"] == 0.0  # 1 + 1 + 0.2 + 0.3; 0
    assert (
        c0["advantage"] == pytest.approx(float(adv.advantages[0, 0]), abs=1e-6)
        and c0["advantage"] > 0
    )
    assert (
        c1["advantage"] == pytest.approx(float(adv.advantages[0, 1]), abs=1e-6)
        and c1["advantage"] < 0
    )
    assert a["shuffled"] == [
        {
            "text": right.format("Z"),
            "tokens": int(groups[0].shuffled.lengths[0]),
            "accuracy": 0.0,
            "format": 1.0,
            "length_bonus": None,
            "temporal_bonus": None,
            "reward": None,
            "advantage": None,
        }
    ]
    assert (
        b["shuffled"] is None
        and b["permutation"] is None
        and b["p"] is None
        and b["frame_times"] == []
        and b["frame_indices"] == []
    )
    assert (
        b["ordered"][1]["reward"] == pytest.approx(1.0) and b["ordered"][0]["temporal_bonus"] == 0.0
    )
    assert b["ordered"][0]["reward"] == pytest.approx(2.0)  # one correct: no length bonus
    jsonl, html = records.write(tmp_path, "step_000007", recs, "step 7")
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(lines) == 2 and "thumbs" not in lines[0] and lines[0]["ordered"] == a["ordered"]
    page = Blocks()
    page.feed(html.read_text())
    assert len(page.groups) == 2 and all(g["cols"] == ["ordered", "shuffled"] for g in page.groups)
    T = v.frames.shape[0]
    assert (
        page.groups[0]["imgs"] == {"ordered": T, "shuffled": T}
        and page.groups[1]["imgs"]["shuffled"] == 0
    )
    assert page.groups[0]["comps"] == [
        ("ordered", "correct"),
        ("ordered", "wrong"),
        ("ordered", "correct"),
        ("shuffled", "wrong"),
    ]
    text = page.groups[0]["text"]
    for term in records.TERMS + ("tokens",):
        assert text.count(term) >= 3, term
    assert "<think>" in text and "<answer>" in text and v.sample.problem in text
    assert "<script" not in html.read_text()


def test_completion_text_cannot_inject_markup(tiny_policy, tmp_path):
    hf, tok, v, i = tiny_policy
    comp = records.completion("<b>x</b><script>alert(1)</script>", 3, 0, 0)
    rec = records.group_record(i.sample, (), (), None, [comp], None, 1, 0, "train")
    html = records.page([rec], "t")
    assert "<script>alert" not in html and "&lt;script&gt;" in html


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_rollout_and_logprob_pass_agree_eager_and_compiled(family, tiny_policy, qwen3, builtin):
    """policy/logprob_gap: the decode step's log-probs against the log-prob pass's at the same
    weights, float32 on CPU, for the eager and the compiled step: <= 1e-5 on every completion
    token."""
    if family == "qwen2.5-vl":
        hf, tok, v, i = tiny_policy
    else:
        hf, tok = M.load_policy(qwen3)
        hf.eval()
        media = common.media_config(MEDIA, hf.config)
        samples = data.load_samples(builtin[0]["train"])
        v = pixels.prepare(
            next(s for s in samples if s.data_type == "video"),
            tok,
            media,
            shuffled=True,
            generator=torch.Generator().manual_seed(0),
        )
        i = pixels.prepare(next(s for s in samples if s.data_type == "image"), tok, media)
    sp = R.SamplingParams(max_new_tokens=12, top_k=50)
    for mode in ("off", "on"):
        torch._dynamo.reset()
        groups = R.rollout(
            hf,
            [v, i],
            3,
            2,
            sp,
            tok.pad_token_id,
            common.stop_ids(tok),
            torch.Generator().manual_seed(5),
            D.Decoder(mode),
        )
        batch = R.policy_batch(groups, tok.pad_token_id)
        with torch.no_grad():
            lp = M.PolicyLogprobs(hf)(
                batch.input_ids, batch.attention_mask, batch.prompt_len, batch.visuals, batch.owner
            )  # (N, L)
        gap = torch.zeros(3, dtype=torch.float64)
        records.add_gap(gap, lp, batch.old_logprobs, batch.completion_mask)
        assert gap[1] == batch.completion_mask.sum() > 6 and gap[2] <= 1e-5, (mode, gap)


def test_two_ranks_with_different_media_logged_by_rank_0_with_perf_rows(builtin, tmp_path):
    """train.py --log-rollouts 1 on 2 ranks under NCCL's contract (FSDP, cpu:gloo + a CUDA-only
    backend): in step 2 rank 0 holds only images and rank 1 only videos. Every rank's groups reach
    rank 0's files; the perf rows sum to the step time; the rollout and the log-prob pass agree; the
    held-out evaluations write records too."""
    paths, model = builtin
    uneven = [["image", "video", "image", "image"], ["video", "image", "video", "video"]]
    train = arranged(paths["train"], tmp_path / "uneven.json", uneven, seed=3)
    run_cmd(
        GPU_CONTRACT
        + [
            str(ROOT / "train.py"),
            "--model",
            str(model),
            "--data",
            str(train),
            "--media-root",
            str(paths["train"].parent),
            "--preset",
            "tiny",
            "--seed",
            "3",
            "--steps",
            "2",
            "--G",
            "2",
            "--max-completion-length",
            "6",
            "--prompts-per-rank",
            "2",
            "--log-rollouts",
            "1",
            "--eval-samples",
            "3",
            "--eval-data",
            str(paths["test"]),
            "--out-dir",
            str(tmp_path / "out"),
        ]
        + GPU_GROUP,
        tmp_path,
    )
    out = tmp_path / "out"
    for step in (1, 2):
        recs = [
            json.loads(line)
            for line in (out / "rollouts" / f"step_{step:06d}.jsonl").read_text().splitlines()
        ]
        assert [r["rank"] for r in recs] == [0, 0, 1, 1] and all(r["step"] == step for r in recs)
        assert all(len(r["ordered"]) == 2 for r in recs)
        assert all((r["shuffled"] is None) == (r["sample"]["data_type"] == "image") for r in recs)
        page = Blocks()
        page.feed((out / "rollouts" / f"step_{step:06d}.html").read_text())
        assert len(page.groups) == 4
    kinds = [r["sample"]["data_type"] for r in recs]  # step 2
    assert kinds == ["image", "image", "video", "video"]
    assert len({r["sample"]["media_path"] for r in recs}) == 4
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "eval_accuracy" not in r]
    assert len(rows) == 2
    parts = ("time_data", "time_prefill", "time_decode", "time_reference", "time_update")
    for r in rows:
        assert all(r[k] >= 0 for k in parts) and r["time_prefill"] > 0 and r["time_decode"] > 0
        assert sum(r[k] for k in parts) == pytest.approx(r["step_time"], rel=0.05)
        assert 0 <= r["logprob_gap_mean"] <= r["logprob_gap_max"] <= 1e-5
    assert not list(out.glob("rollouts/*rank*"))  # one set of files, rank 0's
    # the held-out evaluations before the first step and after the last: 3 prompts (2 on rank 0)
    for step in (0, 2):
        held = [
            json.loads(line)
            for line in (out / "rollouts" / f"eval_step_{step:06d}.jsonl").read_text().splitlines()
        ]
        assert [(r["rank"], r["kind"], r["step"], len(r["ordered"])) for r in held] == [
            (0, "heldout", step, 4),
            (0, "heldout", step, 4),
            (1, "heldout", step, 4),
        ]  # tiny preset: K = 4
        assert (
            held[0]["ordered"][0]["accuracy"] is not None
            and held[0]["ordered"][0]["advantage"] is None
        )


def test_rollout_rows_reach_tensorboard_as_text(tmp_path):
    """tracking.Tracker.log_rollouts: one markdown table per logged step under rollouts/<kind>, a
    row per completion with its reward terms (wandb gets the same rows as a Table)."""
    from types import SimpleNamespace
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    import tracking

    sample = data.Sample(
        7,
        "Which way?",
        "video",
        "multiple choice",
        ["A. left", "B. right"],
        "<answer>A</answer>",
        "./v.mp4",
        "/v.mp4",
    )
    rec = records.group_record(
        sample,
        (0.0, 0.5),
        (0, 15),
        torch.tensor([1, 0]),
        [records.completion("<think>x</think><answer>A</answer>", 9, 1, 1, 0.2, 0.3, 2.5, 1.1)],
        [records.completion("<answer>B</answer>", 4, 0, 0)],
        5,
        0,
        "train",
        1.0,
        0.0,
        True,
    )
    t = tracking.Tracker(
        SimpleNamespace(report_to="tensorboard"),
        tmp_path,
        {},
    )
    t.log_rollouts(5, [rec])
    t.close()
    acc = EventAccumulator(
        str(next((tmp_path / "tensorboard").glob("events.*"))), size_guidance={"tensors": 0}
    )
    acc.Reload()
    (event,) = acc.Tensors("rollouts/train/text_summary")
    table = event.tensor_proto.string_val[0].decode()
    assert event.step == 5 and "| rank | problem_id |" in table
    assert (
        "| 0 | 7 | multiple choice | ordered | 0 | <answer>A</answer> | "
        "<think>x</think><answer>A</answer> | "
        "1.0 | 1.0 | 0.2 | 0.3 | 2.5 | 1.1 | 9 | 1.0 | 0.0 | True |" in table
    )
    assert "| shuffled | 0 |" in table and "| None | None | None | None | 4 |" in table
