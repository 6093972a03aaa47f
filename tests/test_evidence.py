"""Benchmarks as smoke runs: bench/evidence.py end to end as a subprocess at a smoke budget (every stage
runs through the real entry points; the report, the JSON and the curves figure are written) and bench/step.py."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_evidence_smoke_run(tmp_path):
    out = tmp_path / "ev"
    cmd = [sys.executable, str(ROOT / "bench" / "evidence.py"), "--seeds", "0", "--sft-epochs", "0.05", "--rl-steps", "2",
           "--n-train", "48", "--n-test", "16", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ, PYTHONUNBUFFERED="1"), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for slug in ("grpo", "tgrpo", "tgrpo_adv"):
        rows = [json.loads(x) for x in (out / "s0" / slug / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2]
        cfg = json.loads((out / "s0" / slug / "config.json").read_text())
        assert cfg["model"] == str(out / "sft" / "final") and cfg["seed"] == 0 and cfg["steps"] == 2
        assert cfg["lr"] == 1e-4                          # --rl-lr's default reaches every variant
        assert (cfg["temporal"], cfg["bonus_placement"]) == {"grpo": (False, "reward"), "tgrpo": (True, "reward"),
                                                            "tgrpo_adv": (True, "advantage")}[slug]
    table = json.loads((out / "results.json").read_text())["table"]
    assert set(table) == {"SFT", "GRPO", "T-GRPO", "T-GRPO (bonus on advantages)", "training"}
    for model in ("SFT", "GRPO", "T-GRPO"):
        t = table[model]
        assert {"temporal/ordered", "temporal/shuffled", "temporal/gap", "static/ordered", "static/gap"} <= set(t)
        assert t["temporal/gap"][0] == t["temporal/ordered"][0] - t["temporal/shuffled"][0]
    md = (out / "results.md").read_text()
    assert "| model | temporal, ordered | temporal, shuffled | temporal gap |" in md and "| T-GRPO |" in md
    assert "Seeing vs answering" in md
    for seeds_values in table["SFT"]["reasoning"].values():           # per seed: (stated right, answer follows)
        assert all(0.0 <= x <= 1.0 for pair in seeds_values for x in pair)
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "command: python bench/evidence.py --seeds 0" in proc.stdout
    # re-aggregating the same folder gives the same numbers
    again = subprocess.run(cmd + ["--report-only"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and json.loads((out / "results.json").read_text())["table"] == table


@pytest.mark.slow
def test_step_benchmark_smoke_run(tmp_path, builtin):
    """bench/step.py runs one timed step on the tiny preset and prints every piece of the breakdown."""
    cmd = [sys.executable, str(ROOT / "bench" / "step.py"), "--steps", "1", "--G", "2", "--cache-dir", str(tmp_path / "cache"),
           "--model", str(builtin[1]), "--data", str(builtin[0]["train"])]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for piece in ("decode", "rollout", "rewards", "advantages", "train_step", "step (sum of medians)"):
        assert any(line.startswith(piece) and " ms" in line for line in proc.stdout.splitlines()), (piece, proc.stdout)


@pytest.mark.slow
def test_vision_probe_smoke_run(tmp_path):
    """bench/vision_probe.py builds its data and model when missing and prints one row per family."""
    cmd = [sys.executable, str(ROOT / "bench" / "vision_probe.py"), "--out", str(tmp_path / "ev"), "--n-train", "60",
           "--n-test", "40", "--steps", "20"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.split()}
    for fam in ("direction", "appear_first", "size_change", "count_before", "color", "shape", "count"):
        assert fam in rows, proc.stdout
        if rows[fam][1] in ("temporal", "static"):                      # a fitted row: 3 accuracies in [0, 1]
            assert all(0.0 <= float(x) <= 1.0 for x in rows[fam][-3:])
