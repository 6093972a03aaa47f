"""eval.py: scoring on hand-written outputs (notes §7), the report, resume, media validation, and an
end-to-end run of the tiny model on the built-in test split as a subprocess (ordered and
--shuffled)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import data  # noqa: E402
import eval as ev  # noqa: E402
import report as rp  # noqa: E402


def sample(problem_type, solution, data_source="", options=("A. x", "B. y")):
    return data.Sample(0, "q?", "video", problem_type,
                       list(options) if problem_type == "multiple choice" else [],

                       solution, "./v.mp4", "/nowhere/v.mp4", data_source)


# ---- scoring on hand-written outputs -------------------------------------------------------------
def test_vsibench_score_combines_accuracy_and_mra():
    items = [(sample("multiple choice", "<answer>A</answer>"),
              "<think>left of it</think><answer>A</answer>"),  # 1
             (sample("multiple choice", "<answer>A</answer>"), "<answer>B</answer>"),  # 0
             (sample("multiple choice", "<answer>B</answer>"), "B"),  # 1: raw-output fallback
             (sample("regression", "<answer>5</answer>"), "<answer>4</answer>"),      # MRA 0.6
             (sample("regression", "<answer>10</answer>"), "<answer>10</answer>"),    # MRA 1.0
             (sample("regression", "<answer>5</answer>"), "about five")]  # unparsable: 0
    records = [rp.score_item(s, i, out) for i, (s, out) in enumerate(items)]
    assert [r["reward"] for r in records] == [1.0, 0.0, 1.0, 0.6, 1.0, 0.0]
    assert [r["correct"] for r in records] == [True, False, True, False, True, False]
    assert records[0]["reasoning"] == "left of it" and records[1]["reasoning"] is None
    assert records[2]["prediction"] == "B" and records[5]["prediction"] == "about five"
    s = rp.summarize("vsibench", records)
    assert s["mean_acc"] == pytest.approx(2 / 3) and s["mean_mra"] == pytest.approx(1.6 / 3)
    assert s["score"] == pytest.approx(100 * (2 / 3 + 1.6 / 3) / 2)       # 60.0
    assert s["counts"] == {"multiple choice": 3, "regression": 3} and s["n_correct"] == 3
    # the same records under another benchmark name: mean accuracy over non-regression items only
    assert rp.summarize("mvbench", records)["score"] == pytest.approx(100 * 2 / 3)


def test_vsibench_without_regression_items_halves_like_official():
    records = [rp.score_item(sample("multiple choice", "<answer>A</answer>"), 0,
                             "<answer>A</answer>")]
    s = rp.summarize("vsibench", records)
    assert (s["mean_acc"], s["mean_mra"], s["score"]) == (1.0, 0.0, 50.0)


def test_multiple_choice_and_numerical_rules():
    cases = [("multiple choice", "<answer>C</answer>", "<answer> C </answer>", 1.0),
             # no letter parsing
             ("multiple choice", "<answer>C</answer>", "<answer>(C)</answer>", 0.0),
             # fallback: whole output
             ("multiple choice", "<answer>C</answer>", "The answer is C", 0.0),
             ("multiple choice", "<answer>C</answer>", "  C \n", 1.0),  # fallback, stripped
             ("numerical", "<answer>3</answer>", "<answer>3</answer>", 1.0),
             ("numerical", "<answer>3</answer>", "<answer>3.0</answer>", 0.0),  # decimal-point rule
             ("numerical", "<answer>2.5</answer>", "<answer>2.50</answer>", 1.0),
             ("numerical", "<answer>7</answer>", "7", 1.0)]                              # fallback
    records = [rp.score_item(sample(t, sol), i, out) for i, (t, sol, out, _) in enumerate(cases)]
    assert [r["reward"] for r in records] == [c[3] for c in cases]
    s = rp.summarize("tempcompass", records)
    assert s["score"] == pytest.approx(100 * 5 / 8) and s["mean_mra"] == 0.0


def test_categories_and_sources():
    recs = [{"problem_type": "multiple choice", "reward": r, "correct": r == 1.0,
             "data_source": src}
            for r, src in [(1.0, "synthetic/temporal/direction"),
                           (0.0, "synthetic/temporal/appear_first"),
                           (1.0, "synthetic/static/color"), (1.0, "synthetic/static/color"),
                           (0.0, "NeXT-QA")]]
    s = rp.summarize("synthetic", recs)
    assert (s["by_category"]
            == {"static": {"n": 2, "accuracy": 100.0}, "temporal": {"n": 2, "accuracy": 50.0}})
    assert s["by_source"]["synthetic/static/color"] == {"n": 2, "accuracy": 100.0}
    assert s["by_source"]["NeXT-QA"] == {"n": 1, "accuracy": 0.0}
    assert rp.category("NeXT-QA") is None and rp.category("synthetic/static/count") == "static"


def test_names_and_flags():
    assert ev.benchmark_name("/x/Evaluation/eval_vsibench.json") == "vsibench"
    assert ev.benchmark_name("mine.jsonl") == "mine"
    assert ev.merge_data_flags(["--data", "a.json", "--nframes", "32", "--data=b.json"]) == \
        ["--nframes", "32", "--data", "a.json,b.json"]
    assert rp.think_block("x <think> a </think> <answer>B</answer>") == "a"
    assert rp.think_block("<think> unfinished") is None
    with pytest.raises(ValueError, match="--name"):
        ev.finish_config(ev.Config(model="m", data="a.json,b.json", name="x"), set())
    # tiny preset, but max_frames given explicitly
    cfg = ev.finish_config(ev.Config(), {"max_frames"})
    assert ((cfg.preset, cfg.max_frames, cfg.video_max_pixels, cfg.max_new_tokens)
            == ("tiny", 16, 84 * 84, 64))
    cfg = ev.finish_config(ev.Config(model="m"), set())  # paper eval defaults (notes §4, §7)
    assert ((cfg.max_frames, cfg.fps, cfg.video_min_pixels, cfg.video_max_pixels)
            == (16, 2.0, 100352, 200704))
    assert ((cfg.temperature, cfg.top_p, cfg.top_k, cfg.repetition_penalty, cfg.max_new_tokens)
            == (0.01, 0.001, 0, 1.0, 1024))


def test_report_layout_and_gap():
    def result(bench, variant, score, cats=None, nframes=32):
        media = {"nframes": nframes, "max_frames": 16, "fps": 2.0, "min_frames": 4,
                 "video_min_pixels": 1, "video_max_pixels": 2, "image_min_pixels": 3,
                 "image_max_pixels": 4, "rope_time": "sample"}
        sampling = {"temperature": 0.01, "top_p": 0.001, "top_k": 0, "repetition_penalty": 1.0,
                    "max_new_tokens": 1024}
        return {"benchmark": bench, "variant": variant, "model": "/m/Video-R1-7B",
                "settings": {"media": media, "sampling": sampling},
                "summary": {"score": score, "n_scored": 10, "n_excluded": 0,
                            "by_category": cats or {}}}
    table = rp.report([result("mvbench", "ordered", 63.9), result("vsibench", "ordered", 35.8),
                       result("mvbench", "shuffled", 60.0), result("synthetic", "ordered", 80.0,
                       {"temporal": {"n": 4, "accuracy": 75.0}})])
    lines = table.splitlines()
    assert lines[0] == ("| Model | Frames | Frame order | VSI-Bench | VideoMMMU | MMVU | MVBench "
                        "| TempCompass | VideoMME | synthetic |")
    assert "| Video-R1-7B | 32 | ordered | 35.8 | – | – | 63.9 | – | – | 80.0 |" in lines
    assert "| Video-R1-7B | 32 | shuffled | – | – | – | 60.0 | – | – | – |" in lines
    assert "| MVBench | 32 | 10 | 63.9 | 60.0 | +3.9 |" in lines
    assert "| synthetic [temporal] | 32 | 4 | 75.0 | – | – |" in lines  # no shuffled run: no gap
    assert "T 0.01 top_p 0.001" in table and "frames 32" in table


# ---- records file and media validation -----------------------------------------------------------
def test_records_file_resume_and_header_check(tmp_path):
    path, header = tmp_path / "eval_x.records.jsonl", {"model": "m", "media": {"nframes": 16}}
    assert ev.open_records(path, header) == {}
    with open(path, "a") as f:
        # killed mid-line
        f.write(json.dumps({"index": 3, "reward": 1.0}) + "\n" + '{"index": 4, "rew')
    assert ev.open_records(path, header) == {3: {"index": 3, "reward": 1.0}}
    assert path.read_text().endswith('"reward": 1.0}\n')  # cut line removed
    with pytest.raises(ValueError, match="media differ"):
        ev.open_records(path, {"model": "m", "media": {"nframes": 32}})


# ---- fixtures: built-in data and tiny model ------------------------------------------------------
@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """A 7-item benchmark file eval_mvbench.json from the built-in test split (static and temporal
    videos, one image), its media root and the tiny model."""
    from builtin import synthetic
    from builtin.tiny import build_builtin_tiny
    root = tmp_path_factory.mktemp("evalcache")
    paths = synthetic.make_dataset(root / "data", n_train=48, n_test=16)
    tiny = build_builtin_tiny(root / "tiny", paths["train_cot"])
    entries = json.loads(Path(paths["test"]).read_text())[:7]
    assert {rp.category(e["data_source"]) for e in entries} == {"static", "temporal"}
    assert {e["data_type"] for e in entries} == {"image", "video"}
    bench_json = root / "eval_mvbench.json"
    bench_json.write_text(json.dumps(entries))
    return bench_json, paths["root"], tiny, entries


def run_eval(args, cwd):
    proc = subprocess.run([sys.executable, str(ROOT / "eval.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def e2e(bench, tmp_path_factory):
    bench_json, media_root, tiny, entries = bench
    out = tmp_path_factory.mktemp("evalout") / "run"
    args = ["--model", str(tiny), "--preset", "tiny", "--data", str(bench_json), "--media-root",
            str(media_root), "--max-new-tokens", "8", "--batch-size", "2", "--shuffled", "true",
            "--out-dir", str(out)]
    return out, run_eval(args, cwd=out.parent), args


def test_end_to_end_ordered_and_shuffled(e2e, bench):
    out, stdout, _ = e2e
    entries = bench[3]
    assert "validation mvbench: 7 ok, 0 missing, 0 undecodable (of 7)" in stdout
    assert "eval_mvbench: 0 items already done, 7 to generate" in stdout
    for stem in ("eval_mvbench", "eval_mvbench_shuffled"):
        res = json.loads((out / f"{stem}.json").read_text())
        recs = res["records"]
        assert [r["index"] for r in recs] == list(range(7))
        assert [r["problem_id"] for r in recs] == [e["problem_id"] for e in entries]
        assert all(set(r) >= {"output", "prediction", "reward", "correct", "reasoning",
                              "data_source"} for r in recs)
        assert all(r["completion_tokens"] <= 8 and r["correct"] == (r["reward"] == 1.0)
                   for r in recs)
        assert res["summary"]["score"] == pytest.approx(100 * sum(r["reward"] for r in recs) / 7)
        assert set(res["summary"]["by_category"]) == {"static", "temporal"}
        assert (res["settings"]["media"]["max_frames"] == 8
                and res["settings"]["sampling"]["max_new_tokens"] == 8)
        assert res["settings"]["sampling"]["temperature"] == 0.01
        assert len((out / f"{stem}.records.jsonl").read_text().splitlines()) == 1 + 7
        assert f"{stem}: score {res['summary']['score']:.1f}" in stdout  # score printed ...
        assert "frames ≤8 (fps 2.0, min 4)" in stdout  # ... with its settings
    assert json.loads((out / "eval_mvbench_shuffled.json").read_text())["variant"] == "shuffled"
    md = (out / "results.md").read_text()
    assert "| tiny | ≤8 | ordered | – | – | – |" in md and "| tiny | ≤8 | shuffled |" in md
    assert "| MVBench [temporal] | ≤8 |" in md and "| MVBench [static] | ≤8 |" in md
    assert md.splitlines()[0] in stdout


def test_resume_generates_only_missing_items(e2e, capsys):
    out, _, args = e2e
    first = json.loads((out / "eval_mvbench.json").read_text())
    resumed = out.parent / "resumed"
    shutil.copytree(out, resumed)
    (resumed / "eval_mvbench.json").unlink()
    rec = resumed / "eval_mvbench.records.jsonl"
    lines = rec.read_text().splitlines(keepends=True)
    rec.write_text("".join(lines[:-1]) + lines[-1][:25])  # last record (its own batch) cut mid-line
    argv = [a if a != str(out) else str(resumed) for a in args]
    results = ev.main(argv)
    log = capsys.readouterr().out
    assert "eval_mvbench: 6 items already done, 1 to generate" in log
    assert "eval_mvbench_shuffled: 7 items already done, 0 to generate" in log
    again = json.loads((resumed / "eval_mvbench.json").read_text())
    assert [r["index"] for r in again["records"]] == list(range(7))
    assert ([(r["output"], r["reward"]) for r in again["records"]]
            == [(r["output"], r["reward"]) for r in first["records"]])
    assert again["summary"] == first["summary"] and results[0]["summary"] == first["summary"]
    before = rec.read_text()
    ev.main(argv)
    assert "eval_mvbench: 7 items already done, 0 to generate" in capsys.readouterr().out
    assert rec.read_text() == before and len(before.splitlines()) == 1 + 7


def test_missing_and_corrupt_media_are_excluded(bench, tmp_path, capsys):
    from builtin import synthetic
    bench_json, media_root, tiny, entries = bench
    good = [dict(e, path=str(Path(media_root) / e["path"][2:])) for e in entries[:2]]
    (tmp_path / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    # opens, too short
    synthetic.write_video(tmp_path / "one_frame.mp4", np.zeros((1, 56, 56, 3), np.uint8), 2.0)
    bad = [dict(entries[0], problem_id=100, path="./nowhere.mp4"),
           dict(entries[0], problem_id=101, path="./corrupt.mp4"),
           dict(entries[5], problem_id=102, path="./corrupt.png"),
           dict(entries[0], problem_id=103, path="./one_frame.mp4")]
    js = tmp_path / "eval_mmvu.json"
    js.write_text(json.dumps(good + bad))
    [res] = ev.main(["--model", str(tiny), "--preset", "tiny", "--data", str(js),
                     "--max-new-tokens", "4", "--out-dir", str(tmp_path / "out")])
    io = capsys.readouterr()
    assert "validation mmvu: 3 ok, 1 missing, 2 undecodable (of 6)" in io.out
    assert "problem_id 100): missing" in io.err and "problem_id 101): undecodable" in io.err
    assert "problem_id 103): undecodable" in io.err  # excluded when decoding, not by validation
    assert ([r["problem_id"] for r in res["records"]]
            == [entries[0]["problem_id"], entries[1]["problem_id"]])
    excluded = {e["problem_id"]: e["reason"].split(":")[0] for e in res["excluded"]}
    assert excluded == {100: "missing", 101: "undecodable", 102: "undecodable", 103: "undecodable"}
    assert (res["summary"]["n_excluded"] == 4 and res["summary"]["n_scored"] == 2
            and res["summary"]["n_items"] == 6)


def test_template_flag(bench, tmp_path, monkeypatch):
    """--template train prompts with the T-GRPO/SFT template (data.build_prompt_text variant
    "train") and records it in the settings header, so a resume cannot mix templates; another value
    is refused."""
    bench_json, media_root, tiny, _ = bench
    seen = []
    real = data.build_prompt_text
    monkeypatch.setattr(data, "build_prompt_text",
                        lambda s, variant="train": seen.append(variant) or real(s, variant))
    args = ["--model", str(tiny), "--preset", "tiny", "--data", str(bench_json), "--media-root",
            str(media_root), "--max-new-tokens", "2", "--limit", "2", "--out-dir",
            str(tmp_path / "out")]
    ev.main(args + ["--template", "train"])
    assert seen and set(seen) == {"train"}
    header = json.loads(
        (tmp_path / "out" / "eval_mvbench.records.jsonl").read_text().splitlines()[0])

    assert "train" in json.dumps(header)
    with pytest.raises(ValueError, match="records|settings|template"):
        ev.main(args + ["--template", "eval"])
    with pytest.raises(ValueError, match="template"):
        ev.main(args + ["--template", "chat"])
