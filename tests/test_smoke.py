"""The fast tier's end-to-end check: two T-GRPO steps of train.py on the built-in tiny model."""
import json
import math

from conftest import run_train


def test_two_step_train_smoke(tmp_path, builtin):
    """Two steps with the official reward-to-advantage rule: one metrics row per step with finite
    loss and rewards in [0, 1], the combination named in the log, and an HF folder at the end."""
    args = ["--steps", "2", "--G", "2", "--max-completion-length", "4", "--eval-samples", "0"]
    proc = run_train(args, tmp_path, builtin=builtin)
    lines = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert math.isfinite(r["loss"]) and 0 <= r["accuracy"] <= 1 and 0 <= r["format"] <= 1
        assert r["completion_length"] <= 4
    assert "reward -> advantage: T-GRPO[p>=0.8p~, reward, std]" in proc.stdout
    assert (tmp_path / "out" / "final" / "config.json").exists()
