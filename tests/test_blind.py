"""What a question needs of its media (blind.py, eval.py --media, blind_filter.py): the blind prompt
is the same template with no media token, one-frame prompts have one temporal patch, eval.py reports
the baselines, and the filter removes the questions answered from the text, keeps the
order-dependent ones, lists unreadable media and continues after a kill (1 process, then 2 ranks
under torchrun)."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

import blind
import blind_filter
import common
import data
import model as M
import pixels
import rollout as R
from builtin import tiny
from conftest import ROOT, run_cmd
from test_records import Blocks

MEDIA = pixels.MediaConfig(**tiny.TINY_MEDIA)


@pytest.fixture(scope="module")
def policy(builtin):
    hf, tok = M.load_policy(builtin[1])
    return hf.eval(), tok, data.load_samples(builtin[0]["train"])


def test_none_prompt_is_the_same_template_without_media_tokens(policy):
    hf, tok, samples = policy
    video = next(s for s in samples if s.data_type == "video")
    image = next(s for s in samples if s.data_type == "image")
    media_ids = {
        tok.convert_tokens_to_ids(t)
        for t in ("<|video_pad|>", "<|image_pad|>", "<|vision_start|>", "<|vision_end|>")
    }
    for s in (video, image):
        p = blind.prepare(s, tok, MEDIA, "none")
        assert p.visual is None and p.frames is None and not media_ids & set(p.prompt_ids.tolist())
        with_media = data.render_prompt(tok, data.build_prompt_text(s, "train"), s.data_type)
        block = "<|vision_start|>" + data.PAD_TOKEN[s.data_type] + "<|vision_end|>"
        assert tok.decode(p.prompt_ids) == with_media.replace(
            block, ""
        )  # only the media item is gone
    one = blind.prepare(video, tok, MEDIA, "first-frame")
    full = blind.prepare(video, tok, MEDIA, "ordered")
    assert (
        int(one.visual.grid_thw[0]) == 1 < int(full.visual.grid_thw[0]) and one.frames.shape[0] == 1
    )
    assert torch.equal(one.frames[0], full.frames[0])
    assert blind.parse("none, ordered,none") == ["none", "ordered"]
    with pytest.raises(ValueError, match="--media 'blind'"):
        blind.parse("blind")


def test_text_only_prompt_decodes_alongside_media_prompts(policy):
    """A None visual in a mixed batch: the same greedy tokens as the prompt alone (no vision
    features leak in)."""
    hf, tok, samples = policy
    video = blind.prepare(next(s for s in samples if s.data_type == "video"), tok, MEDIA, "ordered")
    none = blind.prepare(video.sample, tok, MEDIA, "none")
    sp, stops = R.SamplingParams(top_p=1.0, top_k=1, max_new_tokens=8), common.stop_ids(tok)
    both = R.generate(
        hf,
        [video.prompt_ids, none.prompt_ids],
        [video.visual, None],
        [1, 2],
        sp,
        tok.pad_token_id,
        stops,
    )
    alone = R.generate(hf, [none.prompt_ids], [None], [2], sp, tok.pad_token_id, stops)[0]
    L = alone.ids.shape[1]
    assert torch.equal(both[1].ids[:, :L], alone.ids)


def test_eval_media_baselines_end_to_end(builtin, tmp_path):
    paths, model = builtin
    out = tmp_path / "ev"
    run_cmd(
        [
            sys.executable,
            str(ROOT / "eval.py"),
            "--model",
            str(model),
            "--preset",
            "tiny",
            "--data",
            str(paths["test"]),
            "--limit",
            "4",
            "--max-new-tokens",
            "6",
            "--media",
            "ordered,none,first-frame",
            "--shuffled",
            "true",
            "--out-dir",
            str(out),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        tmp_path,
    )
    none = json.loads((out / "eval_test_none.json").read_text())
    assert none["variant"] == "none" and all(r["grid_thw"] is None for r in none["records"])
    first = json.loads((out / "eval_test_first-frame.json").read_text())
    assert all(r["grid_thw"][0] == 1 for r in first["records"] if r["data_type"] == "video")
    md = (out / "results.md").read_text().splitlines()
    i = md.index("| Benchmark | Frames | Items | Ordered | Shuffled | First frame | No media |")
    row = md[i + 2].split(" | ")
    assert row[0] == "| test" and row[2] == "4" and "–" not in row  # all four variants ran
    assert float(row[6].rstrip(" |")) == pytest.approx(none["summary"]["score"])
    page = Blocks()
    page.feed((out / "rollouts" / "eval.html").read_text())
    assert len(page.groups) == 4 * 4  # 4 items x 4 variants
    kinds = [
        json.loads(line)["kind"]
        for line in (out / "rollouts" / "eval.jsonl").read_text().splitlines()
    ]
    assert sorted(set(kinds)) == ["eval/first-frame", "eval/none", "eval/ordered", "eval/shuffled"]


# ---- the filter ----------------------------------------------------------------------------------
def fixture(paths, tmp_path):
    """The built-in order-dependent questions (temporal families, 6) plus a family whose answer
    stands in the text ("... The answer is B."; 3, one per letter) and one sample whose clip is
    missing. Returns the JSON."""
    src = json.loads(paths["train"].read_text())
    temporal = [
        e
        for e in src
        if "/temporal/" in e["data_source"] and e["problem_type"] == "multiple choice"
    ][:6]
    clip = temporal[0]["path"]
    stated = [
        {
            "problem_id": f"stated-{L}",
            "problem": f"Which option is marked? The answer is {L}.",
            "data_type": "video",
            "problem_type": "multiple choice",
            "options": ["A. one", "B. two", "C. three"],
            "solution": f"<answer>{L}</answer>",
            "path": clip,
            "data_source": "fixture/stated",
        }
        for L in "ABC"
    ]
    missing = dict(temporal[1], problem_id="gone", path="./videos/no_such_clip.mp4")
    out = tmp_path / "fixture.json"
    out.write_text(json.dumps(temporal[:3] + stated + temporal[3:] + [missing]))
    return out


def test_filter_removes_what_the_text_answers_and_keeps_order_dependent_questions(
    builtin, tmp_path, monkeypatch
):
    """The policy here reads: a stand-in for rollout.generate answers what the prompt states and,
    where the text states nothing, an answer that is always wrong (a policy that needs the video).
    (The tiny cold start, trained on clips only, reads no text: its blind accuracy per family is
    near chance, README "Blind filter".)"""
    paths, model = builtin
    seen = []

    def reader(hf, prompts, visuals, n, sp, pad_id, stops, gen=None, decoder=None):
        assert all(v is None for v in visuals)  # blind: no media at all
        tok = reader.tok
        outs = []
        for p, k in zip(prompts, n):
            text = tok.decode(p)
            seen.append(text)
            letter = text.split("The answer is ")[1][0] if "The answer is " in text else "Z"
            ids = torch.tensor(
                tok(f"<think>read</think>\n<answer>{letter}</answer>", add_special_tokens=False)[
                    "input_ids"
                ]
                + stops[:1]
            )
            outs.append(
                R.Completions(
                    ids.expand(k, -1).clone(),
                    torch.ones(k, ids.numel()),
                    torch.full((k,), ids.numel()),
                    torch.zeros(k, ids.numel()),
                )
            )
        return outs

    reader.tok = M.load_policy(model)[1]
    monkeypatch.setattr(blind_filter.rollout, "generate", reader)
    js = fixture(paths, tmp_path)
    summary = blind_filter.main(
        [
            "--model",
            str(model),
            "--preset",
            "tiny",
            "--data",
            str(js),
            "--media-root",
            str(paths["train"].parent),
            "--K",
            "3",
            "--batch-size",
            "4",
            "--out-dir",
            str(tmp_path / "f"),
        ]
    )
    out = tmp_path / "f"
    kept, removed = (json.loads((out / f"{n}.json").read_text()) for n in ("kept", "removed"))
    assert [e["problem_id"] for e in removed] == ["stated-A", "stated-B", "stated-C"]
    assert len(kept) == 6 and all("/temporal/" in e["data_source"] for e in kept)
    unreadable = json.loads((out / "unreadable.json").read_text())
    assert [(u["problem_id"], u["entry"]) for u in unreadable] == [("gone", 9)]
    assert unreadable[0]["reason"].startswith("missing:")
    assert summary["kept"] == 6 and summary["removed"] == 3 and summary["unreadable"] == 1
    assert summary["by_source"]["fixture/stated"]["blind_accuracy"] == 1.0
    assert len(seen) == 10 and not any(
        "<|video_pad|>" in t or "<|vision_start|>" in t for t in seen
    )
    ready = data.load_samples(out / "kept.json")  # train.py --data kept.json, as is
    assert all(
        s.media_path.startswith("/") and (paths["train"].parent / s.path).exists() for s in ready
    )


def test_filter_resumes_after_a_kill_under_torchrun(builtin, tmp_path):
    paths, model = builtin
    out = tmp_path / "f"
    n = 40                  # enough that the kill lands part-way on a quiet machine too
    assert len(json.loads(paths["train"].read_text())) >= n
    args = [
        str(ROOT / "blind_filter.py"),
        "--model",
        str(model),
        "--preset",
        "tiny",
        "--data",
        str(paths["train"]),
        "--limit",
        str(n),
        "--K",
        "2",
        "--max-new-tokens",
        "6",
        "--batch-size",
        "1",
        "--out-dir",
        str(out),
    ]
    records = out / "blind.records.jsonl"
    first = subprocess.Popen(
        [sys.executable] + args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    while time.time() < deadline and (
        not records.exists() or len(records.read_text().splitlines()) < 3
    ):
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    done = records.read_text().splitlines()
    assert 3 <= len(done) < n + 1 and not (out / "summary.json").exists()  # killed part-way
    records.write_text("\n".join(done) + "\n" + done[-1][:20])  # and a line cut short
    log = run_cmd(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        + args,
        tmp_path,
    ).stdout
    assert f"{len(done) - 1} done, {n + 1 - len(done)} to ask" in log
    lines = [json.loads(line) for line in records.read_text().splitlines()[1:]]
    assert sorted(r["index"] for r in lines) == list(range(n))
    assert [json.dumps(r) for r in lines[: len(done) - 1]] == [
        json.dumps(json.loads(d)) for d in done[1:]
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kept"] + summary["removed"] == n and summary["unreadable"] == 0
