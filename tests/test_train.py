"""train.py end to end as a subprocess: one process and torchrun with 2 CPU ranks (gloo), tiny
budgets."""
import json
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, run_train

FIELDS = ["accuracy", "format", "temporal_bonus", "temporal_rate", "bonus_adv_shift", "p",
          "p_shuffled", "completion_length", "kl", "loss", "length_bonus", "clip_frac",
          "zero_std_groups", "reward", "skipped_media", "step"]
QUICK = ["--steps", "2", "--G", "4", "--max-completion-length", "16", "--prompts-per-rank", "2"]


@pytest.mark.parametrize("nproc", [1, 2])
def test_train_runs_logs_and_saves(tmp_path, nproc, answering):
    proc = run_train(QUICK, tmp_path, nproc, answering)
    out = tmp_path / "out"
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert set(FIELDS) <= set(r), set(FIELDS) - set(r)
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["format"] <= 1 and r["completion_length"] <= 16
    # some group's rewards differ: a real gradient
    assert any(r["zero_std_groups"] < 1 for r in rows)
    assert "checkpoint" in proc.stdout and str(out / "final") in proc.stdout
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["world_size"] == nproc and cfg["G_shuffled"] == 2
    assert cfg["variant"] == "T-GRPO[p>=0.8p~, reward, std]"    # the official combination, by name
    assert "reward -> advantage: T-GRPO[p>=0.8p~, reward, std]" in proc.stdout
    # the saved folder loads with plain transformers, and training changed the parameters
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
    Qwen2_5_VLForConditionalGeneration.from_pretrained(out / "final")
    AutoTokenizer.from_pretrained(out / "final")
    before, after = (load_file(answering[1] / "model.safetensors"),
                     load_file(out / "final" / "model.safetensors"))
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before if "visual" not in k)
    # the tiny preset freezes the vision tower (--freeze-vision): its weights are exactly the
    # initial ones
    assert any(k.startswith("visual.") for k in before)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("visual."))


def test_heldout_evaluation_before_and_after(tmp_path, answering):
    """--eval-samples: an evaluation row before the first step and one after the last, over every
    rank's share of the held-out prompts (5 on 2 ranks: 3 + 2, uneven). At learning rate 0 the
    policy does not change, and the two evaluations draw the same random numbers (heldout.evaluate
    reseeds), so they are identical: a before/after difference is the policy's, not the
    sampler's."""
    proc = run_train(QUICK + ["--lr", "0", "--eval-samples", "5", "--eval-data",
                              str(answering[0]["test"])], tmp_path, 2, answering)
    rows = [json.loads(l) for l in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    ev = [r for r in rows if "eval_accuracy" in r]
    assert [r["step"] for r in rows] == [0, 1, 2, 2] and [r["step"] for r in ev] == [0, 2]
    assert all(r["eval_n"] == 5 and 0 <= r["eval_accuracy"] <= 1 and r["eval_length"] > 0
               for r in ev)
    assert ev[1] == ev[0] | {"step": 2}
    assert "eval @ step 0: accuracy" in proc.stdout + proc.stderr
    assert (json.loads((tmp_path / "out" / "config.json").read_text())["eval_data"]
            == str(answering[0]["test"]))


def test_help_lists_every_field():
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0
    for flag in ["--alpha", "--mu", "--correct-threshold", "--G", "--G-shuffled", "--beta",
                 "--clip-eps", "--loss-agg", "--num-iterations", "--bonus-placement", "--temporal",
                 "--media-root", "--max-frames"]:
        assert flag in proc.stdout, flag


def test_plain_grpo_has_no_shuffled_rollout(tmp_path, builtin):
    proc = run_train(["--steps", "1", "--G", "2", "--max-completion-length", "4", "--temporal",
                      "false"], tmp_path, builtin=builtin)
    row = json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[0])
    assert "p_shuffled" not in row and "bonus_adv_shift" not in row and row["temporal_bonus"] == 0.0
    assert "reward -> advantage: GRPO[std]" in proc.stdout


def test_contrast_trigger_runs_and_bad_values_are_refused(tmp_path, builtin):
    proc = run_train(["--steps", "1", "--G", "2", "--max-completion-length", "4",
                      "--temporal-trigger", "contrast", "--trigger-margin", "0.25",
                      "--bonus-placement", "advantage", "--adv-scale", "none"], tmp_path,
                     builtin=builtin)
    assert "reward -> advantage: T-GRPO[p>p~+0.25, advantage, none]" in proc.stdout
    import config
    import train
    for flag, value in (("--temporal-trigger", "strict"), ("--trigger-margin", "-0.1")):
        with pytest.raises(ValueError, match=f"{flag} must be "):
            train.finish_config(*config.parse(train.Config, [flag, value], ""))


@pytest.mark.parametrize("placement,shift", [("reward", 0.0), ("advantage", 0.15)])
def test_bonus_shift_of_advantages(placement, shift):
    """One video group, 2 of 4 ordered completions correct, all well formatted, shuffled 0/2
    correct: the bonus triggers (0.5 >= 0.8 * 0). Added to the rewards [2.3, 2.3, 1, 1] it is
    cancelled by the group normalisation (same advantages as [2, 2, 1, 1]); added to the advantages
    it moves the two correct ones by α = 0.3, so the logged mean |shift| is 0.15 (notes §1)."""
    import tgrpo
    acc, fmt = torch.tensor([[1.0, 1.0, 0.0, 0.0]]), torch.ones(1, 4)
    lengths, sacc, is_video = torch.full((1, 4), 10), torch.zeros(1, 2), torch.tensor([True])
    a = tgrpo.advantages(acc, fmt, lengths, sacc, is_video,
                         tgrpo.Settings(placement=placement, len_control=False))
    assert (torch.allclose(a.temporal, torch.tensor([[0.3, 0.3, 0.0, 0.0]]))
            and a.stats["triggered"].tolist() == [True])
    assert a.stats["bonus_adv_shift"].mean().item() == pytest.approx(shift, abs=1e-4)


def test_compiled_decode_logs_the_same_steps(tmp_path, answering):
    """--compile-decode on (inductor on CPU) and off, same seed: the same rewards and completion
    lengths at every step, and the run's log names the graphs it compiled."""
    rows = {}
    for mode in ("off", "on"):
        proc = run_train(QUICK + ["--compile-decode", mode, "--out-dir", str(tmp_path / mode)],
                         tmp_path, 1, answering)
        rows[mode] = [json.loads(l)
                      for l in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
        # one per live length
        graphs = re.search(r"decode step: compiled \d+ graph\(s\)", proc.stdout)
        assert graphs if mode == "on" else "decode step: eager" in proc.stdout
    for a, b in zip(rows["off"], rows["on"]):
        assert ({k: a[k] for k in ("accuracy", "format", "completion_length", "p", "p_shuffled")} ==
                {k: b[k] for k in ("accuracy", "format", "completion_length", "p", "p_shuffled")})


def test_weight_decay_spares_biases_as_the_official_trainer(builtin):
    """common.param_groups: the official HF Trainer (≈4.49) decays every parameter but biases and
    nn.LayerNorm's; Qwen's RMSNorm is no nn.LayerNorm, so its weights are decayed unless
    --decay-norms false."""
    import common
    from model import load_policy
    hf, _ = load_policy(builtin[1])
    names = {id(p): n for n, p in hf.named_parameters()}
    groups = common.param_groups(hf, 0.01)
    decayed, spared = ({names[id(p)] for p in g["params"]} for g in groups)
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]
    assert spared == {n for n in names.values() if "bias" in n}   # q/k/v biases, vision biases, ...
    assert ("model.language_model.layers.0.self_attn.q_proj.bias" in spared
            and "lm_head.weight" in decayed)
    assert "model.language_model.norm.weight" in decayed        # an RMSNorm: decayed, as officially
    _, no_norms = common.param_groups(hf, 0.01, decay_norms=False)
    spared = {names[id(p)] for p in no_norms["params"]}
    assert ("model.language_model.norm.weight" in spared
            and "model.visual.blocks.0.norm1.weight" in spared)
    hf.model.visual.requires_grad_(False)                          # only trainable parameters
    assert all(not names[id(p)].startswith("model.visual")
               for g in common.param_groups(hf, 0.01) for p in g["params"])
