"""Exact resume and HF export under FSDP2 (2 CPU ranks, gloo), tiny budgets.

N = 2 steps straight must equal 1 step + checkpoint + resume + 1 step (same parameters), and the
FSDP export after N steps must equal the DDP export (same rollouts, same averaged gradients)."""
import json

import torch
from safetensors.torch import load_file

import checkpoint
from conftest import run_train

# 24 tokens: the answering model's whole "<think>..</think><answer>..</answer>" (at 12 every answer
# was cut short, every reward 0, and the weights moved by weight decay alone)
TINY = ["--steps", "2", "--G", "4", "--max-completion-length", "24", "--prompts-per-rank", "1"]


def _weights(folder):
    return load_file(folder / "final" / "model.safetensors")


def test_fsdp_resume_is_exact_and_export_equals_ddp(tmp_path, answering):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    run_train(TINY + ["--dist", "fsdp"], tmp_path / "a", nproc=2, builtin=answering)
    run_train(TINY + ["--dist", "fsdp", "--steps", "1", "--save-every", "1"], tmp_path / "b",
              nproc=2, builtin=answering)
    ck = tmp_path / "b" / "out" / "checkpoints"
    assert [p.name for p in ck.iterdir()] == ["step_000001"]
    assert ({"rank00000.pt", "rank00001.pt", ".metadata"}
            <= {p.name for p in (ck / "step_000001").iterdir()})
    proc = run_train(TINY + ["--dist", "fsdp", "--resume", "auto"], tmp_path / "b", nproc=2,
                     builtin=answering)
    assert "resumed from" in proc.stdout and "at step 1" in proc.stdout
    run_train(TINY + ["--dist", "ddp"], tmp_path / "c", nproc=2, builtin=answering)
    straight, resumed, ddp = (_weights(tmp_path / "a" / "out"), _weights(tmp_path / "b" / "out"),
                              _weights(tmp_path / "c" / "out"))
    before = load_file(answering[1] / "model.safetensors")
    assert straight.keys() == resumed.keys() == ddp.keys() == before.keys()
    # training moved the weights
    assert any(not torch.equal(before[k], straight[k]) for k in before)
    rows = [json.loads(l)
            for l in (tmp_path / "a" / "out" / "metrics.jsonl").read_text().splitlines()]
    assert min(r["zero_std_groups"] for r in rows) < 1                  # ... by non-zero advantages
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], rtol=0, atol=1e-6, msg=k)
        torch.testing.assert_close(ddp[k], straight[k], rtol=1e-5, atol=1e-6, msg=k)


def test_latest_ignores_unfinished_and_resolve_checks(tmp_path):
    root = tmp_path / "checkpoints"
    for name in ["step_000002", "step_000010", "step_000011.tmp"]:
        (root / name).mkdir(parents=True)
    # a crash mid-save leaves .tmp behind
    assert checkpoint.latest(tmp_path) == root / "step_000010"
    assert checkpoint.resolve("", tmp_path) is None
    assert checkpoint.resolve("auto", tmp_path / "nothing") is None
    try:
        checkpoint.resolve(str(root / "step_000002"), tmp_path)
        raise AssertionError("expected FileNotFoundError")
    except FileNotFoundError as e:
        assert "no .metadata" in str(e)
