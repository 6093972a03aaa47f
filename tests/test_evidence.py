"""Benchmarks as smoke runs: bench/evidence.py (the static-shortcut comparison) end to end as a
subprocess at a smoke budget (every stage runs through the real entry points; the report, the JSON
and the curves figure are written), bench/step.py and bench/vision_probe.py."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_evidence_smoke_run(tmp_path, answering):
    """The static-shortcut comparison end to end at a smoke budget: every variant trains from the
    given cold start with its own flags (its logged variant is the row's name), every model is
    evaluated on the four test splits on ordered and shuffled frames, and the report's derived
    columns are what they say."""
    out = tmp_path / "ev"
    cmd = [sys.executable, str(ROOT / "bench" / "evidence.py"), "--seeds", "0", "--rl-steps", "2",
           "--n-train", "24", "--n-test", "8", "--max-new-tokens", "24", "--cold-start",
           str(answering[1]), "--out", str(out),
           # two of the four: CI's budget (the flags of all: below)
           "--variants", "grpo,contrast_adv"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    flags = {"grpo": (False, "official", "reward"), "contrast_adv": (True, "contrast", "advantage")}
    for slug, want in flags.items():
        rows = [json.loads(x)
                for x in (out / "s0" / slug / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2]
        cfg = json.loads((out / "s0" / slug / "config.json").read_text())
        assert (cfg["model"] == str(answering[1]) and cfg["seed"] == 0 and cfg["steps"] == 2
                and cfg["lr"] == 1e-4)
        assert cfg["data"] == str(out / "data" / "train.json")
        assert (cfg["temporal"], cfg["temporal_trigger"], cfg["bonus_placement"]) == want
    table = json.loads((out / "results.json").read_text())["table"]
    assert set(table) == {"cold start", "GRPO[std]", "T-GRPO[p>p~+0, advantage, std]", "training"}
    sys.path.insert(0, str(ROOT / "bench"))
    import evidence  # every variant's flags, by name
    assert (evidence.chosen("") == evidence.SLUG
            and evidence.VARIANTS["T-GRPO[p>=0.8p~, advantage, std]"] == [
                "--bonus-placement", "advantage"]
            and evidence.VARIANTS["T-GRPO[p>=0.8p~, reward, std]"] == [])
    for model, t in table.items():
        if model == "training":
            continue
        for split in ("test_reversed", "test_free", "test_static", "test_following"):
            for order in ("ordered", "shuffled"):
                assert 0.0 <= t[f"{split}/{order}"][0] <= 1.0
        assert t["gap"][0] == t["test_free/ordered"][0] - t["test_free/shuffled"][0]
        assert t["reliance"][0] == t["test_following/ordered"][0] - t["test_reversed/ordered"][0]
    # the records behind one cell, counted by hand
    recs = [json.loads(x) for x in (out / "s0" / "eval_contrast_adv"
                                    / "eval_test_reversed.records.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "data_source" in r]
    assert (len(recs) == 8
            and (table["T-GRPO[p>p~+0, advantage, std]"]["test_reversed/ordered"][0]
                 == sum(r["correct"] for r in recs) / 8))
    assert (table["training"]["GRPO[std]"]["temporal_rate"]
            != table["training"]["GRPO[std]"]["temporal_rate"])  # NaN: no trigger

    md = (out / "results.md").read_text()
    assert ("| model | cue reversed, ordered | cue reversed, shuffled |" in md
            and "| T-GRPO[p>p~+0, advantage, std] |" in md)
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "command: python bench/evidence.py --seeds 0" in proc.stdout
    # re-aggregating the same folder gives the same numbers
    again = subprocess.run(cmd + ["--report-only"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=300)
    assert (again.returncode == 0
            and json.loads((out / "results.json").read_text())["table"] == table)


@pytest.mark.slow
def test_shortcut_start_protocol_smoke_run(tmp_path, answering):
    """--protocol shortcut-start end to end at a smoke budget (two of its variants): the shortcut
    SFT stage, RL with the four named held-out sets inside the run, the final evaluations, and
    results.json with one record per RL run holding what the issue asks for (reliance at start and
    end, accuracies, trigger rate, p - p~, bonus shift)."""
    out = tmp_path / "sc"
    cmd = [sys.executable, str(ROOT / "bench" / "evidence.py"), "--protocol", "shortcut-start",
           "--seeds", "0", "--variants", "grpo,drgrpo", "--sft-n", "8", "--sft-steps", "2",
           "--rl-steps", "2", "--eval-every", "1", "--eval-n", "2", "--n-train", "8", "--n-test",
           "4", "--max-new-tokens", "16", "--cold-start", str(answering[1]), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sft = json.loads((out / "shortcut_start" / "config.json").read_text())
    assert sft["model"] == str(answering[1]) and sft["steps"] == 2
    assert all(e["cue"] in ("follow", "none")
               for e in json.loads((out / "sft_data" / "train_cot.json").read_text()))
    res = json.loads((out / "results.json").read_text())
    assert (res["protocol"] == "shortcut-start" and res["measured_on"] == "test"
            and len(res["start"]) == 1)
    runs = {r["variant"]: r for r in res["runs"]}
    assert set(runs) == {"GRPO[std]", "T-GRPO[p>=0.8p~, reward, none]"}
    for r in runs.values():
        assert r["protocol"] == "shortcut-start" and r["seed"] == 0
        for k in ("start_reliance", "end_reliance", "reversed_ordered", "reversed_shuffled",
                  "free_ordered", "free_shuffled", "static_ordered", "static_shuffled"):
            assert isinstance(r[k], float), k
        assert r["end_reliance"] == pytest.approx(r["following_ordered"] - r["reversed_ordered"])
        assert [p["step"] for p in r["curve"]] == [0, 1, 2]  # in-run held-out sets, every step
    assert (runs["GRPO[std]"]["trigger_rate"] is None
            and runs["T-GRPO[p>=0.8p~, reward, none]"]["bonus_adv_shift"] is not None)
    rows = [json.loads(x)
            for x in (out / "s0" / "drgrpo" / "metrics.jsonl").read_text().splitlines()]
    assert {"eval_accuracy/reversed", "eval_accuracy/following", "eval_accuracy/free",
            "eval_accuracy/static"} <= set(rows[0])
    assert ((out / "reliance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            and "| GRPO[std] |" in (out / "results.md").read_text())


@pytest.mark.slow
def test_step_benchmark_smoke_run(tmp_path, builtin):
    """bench/step.py runs one timed step on the tiny
    preset and prints every piece of the breakdown."""
    cmd = [sys.executable, str(ROOT / "bench" / "step.py"), "--steps", "1", "--G", "2",
           "--cache-dir", str(tmp_path / "cache"), "--model", str(builtin[1]), "--data",
           str(builtin[0]["train"])]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for piece in ("decode", "rollout", "rewards", "advantages", "train_step",
                  "step (sum of medians)"):
        assert any(line.startswith(piece) and " ms" in line
                   for line in proc.stdout.splitlines()), (piece, proc.stdout)


@pytest.mark.slow
def test_vision_probe_smoke_run(tmp_path):
    """bench/vision_probe.py builds its data and model
    when missing and prints one row per family."""
    cmd = [sys.executable, str(ROOT / "bench" / "vision_probe.py"), "--out", str(tmp_path / "ev"),
           "--n-train", "60", "--n-test", "40", "--steps", "20"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.split()}
    for fam in ("direction", "appear_first", "size_change", "count_before", "color", "shape",
                "count"):
        assert fam in rows, proc.stdout
        if rows[fam][1] in ("temporal", "static"):  # a fitted row: 3 accuracies in [0, 1]
            assert all(0.0 <= float(x) <= 1.0 for x in rows[fam][-3:])


def test_evidence_variant_names_are_what_train_logs_for_their_flags():
    """Each row of the comparison is named by tgrpo.Settings.name for the train.py flags it runs
    with; --variants picks rows by slug, in the table's order, and refuses an unknown one."""
    import importlib.util

    import config as cfglib
    import train
    spec = importlib.util.spec_from_file_location("evidence", ROOT / "bench" / "evidence.py")
    evidence = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evidence)
    for name, flags in evidence.VARIANTS.items():
        cfg = train.finish_config(*cfglib.parse(train.Config,
                                                flags + ["--model", "m", "--data", "d"]))
        assert train.tgrpo_settings(cfg).name() == name
    assert set(evidence.SLUG) == set(evidence.VARIANTS)
    assert list(evidence.chosen("contrast_adv, grpo").values()) == ["grpo", "contrast_adv"]
    with pytest.raises(ValueError, match="unknown"):
        evidence.chosen("grpo,nope")
