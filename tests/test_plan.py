"""The memory plan (`python plan.py`): Qwen2.5-VL-7B built on the meta device, every term against
numbers computed by hand, LoRA and CPU offload, and the table of settings that fit a GPU."""
import subprocess
import sys

import pytest

import plan
import train
from conftest import ROOT


def _cfg(**kw):
    cfg = plan.Config(model="preset:qwen2.5-vl-7b", **kw)
    cfg.G_shuffled = cfg.G // 2
    return cfg


def test_plan_defaults_are_train_py_paper_defaults():
    """plan.Config repeats the train.py flags it reads: the same defaults (the paper's,
    notes §4)."""
    from dataclasses import fields
    paper = train.Config()
    for f in fields(plan.Config):
        if hasattr(paper, f.name):
            assert getattr(plan.Config(), f.name) == getattr(paper, f.name), f.name


def test_plan_for_the_7b_preset():
    """`plan.py` builds Qwen2.5-VL-7B on the meta device: 8.29B parameters incl. the vision tower
    (675M), and sharding over more GPUs shrinks the sharded terms by exactly the GPU ratio."""
    proc = subprocess.run([sys.executable, str(ROOT / "plan.py"), "--model", "preset:qwen2.5-vl-7b",
                           "--nproc", "8", "--activation-checkpointing", "true"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "8.29B parameters" in proc.stdout and "0.68B vision" in proc.stdout
    for term in ["params", "grads", "optimizer", "reference", "gathered", "decode_copy", "kv_cache",
                 "activations", "total"]:
        assert term in proc.stdout, term
    cfg = _cfg(nproc=4, activation_checkpointing=True)
    e4 = plan.estimate(plan.load_config(cfg.model), cfg)
    assert 8.28e9 < e4["phi"] < 8.30e9
    assert e4["optimizer"] == 8 * e4["phi"] / 4 and e4["gathered"] == 2 * e4["phi"]
    cfg.nproc = 8
    e8 = plan.estimate(plan.load_config(cfg.model), cfg)
    assert e8["params"] * 2 == e4["params"] and e8["kv_cache"] == e4["kv_cache"]
    # KV cache by hand: 12 rows padded to 16 x (1274 + 768 = 2042 tokens, rounded up to 2048), plus
    # the prefill's cache of 2 prompts x 1274 tokens; x 28 layers x K,V x 4 heads x 128 dims
    # x 2 bytes
    assert e4["kv_cache"] == (16 * 2048 + 2 * 1274) * 28 * 2 * 4 * 128 * 2
    # the decode copy: 28 layers x (q,k,v with biases, o, gate, up, down, 2 norms) + embeddings,
    # lm_head, norm
    layer = 3584 * (3584 + 512 * 2) + (3584 + 512 * 2) + 3584 * 3584 + 3 * 3584 * 18944 + 2 * 3584
    assert e4["decode_copy"] == 2 * (28 * layer + 2 * 152064 * 3584 + 3584)


def test_plan_for_the_qwen3_8b_preset():
    """`plan.py --model preset:qwen3-vl-8b`: Qwen3-VL-8B-Instruct (36 layers, 8 KV heads of 128,
    DeepStack) on the meta device, 8.77B parameters; its prompt and KV cache by hand: a 16-frame
    clip at 128·28² pixels per frame is 100352 // 32² = 98 tokens per temporal patch, 8 patches,
    each with 8 tokens of timestamp and block markers."""
    proc = subprocess.run([sys.executable, str(ROOT / "plan.py"), "--model", "preset:qwen3-vl-8b",
                           "--nproc", "8"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "8.77B parameters" in proc.stdout and "0.58B vision" in proc.stdout
    cfg = plan.Config(model="preset:qwen3-vl-8b", nproc=8)
    cfg.G_shuffled = cfg.G // 2
    e = plan.estimate(plan.load_config(cfg.model), cfg)
    P = 8 * 98 + 250 + 8 * 8
    assert e["P"] == P == 1098
    assert e["kv_cache"] == (16 * 2048 + 2 * P) * 36 * 2 * 8 * 128 * 2   # 1098 + 768 tokens -> 2048
    assert (36 * 8) / (28 * 4) == pytest.approx(2.571, abs=1e-3)       # KV per token: 2.6x the 7B's
    # no qkv bias; q/k norms
    layer = 4096 * (4096 + 1024 * 2) + 4096 * 4096 + 3 * 4096 * 12288 + 2 * 4096 + 2 * 128
    assert e["decode_copy"] == 2 * (36 * layer + 2 * 151936 * 4096 + 4096)


def test_lora_plan_by_hand():
    """r = 64 on q, k, v, o, gate, up, down of the 28 layers: 64 * (in + out) summed = 64 * 90112
    per layer; one GPU holds the bf16 base (2Φ) and fp32 adapters, AdamW state for the adapters
    only, no reference copy."""
    cfg = _cfg(nproc=1, lora_rank=64, activation_checkpointing=True)
    e = plan.estimate(plan.load_config(cfg.model), cfg)
    per_layer = (3584 + 3584) + (3584 + 512) * 2 + (3584 + 3584) + (3584 + 18944) * 3
    assert per_layer == 90112 and e["phi_lora"] == 64 * 28 * per_layer
    assert e["params"] == 2 * e["phi"] + 4 * e["phi_lora"]
    assert (e["grads"] == 4 * e["phi_lora"] and e["optimizer"] == 8 * e["phi_lora"]
            and e["reference"] == 0)
    tower = plan.estimate(plan.load_config(cfg.model),
                          _cfg(nproc=1, lora_rank=64, lora_vision="tower"))
    # fp32 base, trained copy
    assert tower["params"] == 4 * e["phi"] + 4 * (e["phi_lora"] + e["phi_vision"])


def test_offload_moves_the_sharded_state_to_the_host():
    on = plan.estimate(plan.load_config("preset:qwen2.5-vl-7b"),
                       _cfg(nproc=2, cpu_offload=True, dist="fsdp"))
    off = plan.estimate(plan.load_config("preset:qwen2.5-vl-7b"), _cfg(nproc=2, dist="fsdp"))
    assert on["params"] == on["grads"] == on["optimizer"] == on["reference"] == 0
    assert (on["host"] == off["params"] + off["grads"] + off["optimizer"] + off["reference"]
            == 20 * on["phi"] / 2)
    assert on["kv_cache"] == off["kv_cache"] and on["gathered"] == off["gathered"] == 2 * on["phi"]


@pytest.mark.parametrize("nproc, fits", [
    # the paper's 7B T-GRPO on one 80 GB GPU
    (1, {"LoRA r=64 + act. ckpt"}),
    # full fine-tuning on two, with offload
    (2, {"full + offload + act. ckpt", "LoRA r=64 + act. ckpt"}),
])
def test_settings_that_fit_80_gib(nproc, fits):
    proc = subprocess.run([sys.executable, str(ROOT / "plan.py"), "--model", "preset:qwen2.5-vl-7b",
                           "--nproc", str(nproc), "--gpu-memory-gib", "80"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = proc.stdout.split(f"fits {nproc} x 80 GiB")[1].splitlines()[2:]
    got = {line[:32].strip(): line.split()[-1] for line in table}
    assert {k for k, v in got.items() if v == "yes"} >= fits
    assert got["full"] == "no" and got["full + act. ckpt"] == "no"


@pytest.mark.parametrize("top_k", [0, 50])
def test_decode_step_term_bounds_the_compiled_graph(builtin, top_k):
    """plan.decode_step_bytes against the tiny model's compiled step cut to one layer (16 rows, 256
    live columns of 512, repetition penalty on): the fresh tensors of inductor's post-grad graph,
    summed as if none were reused, stay under the term and above half of it (the term counts what
    the step holds, nothing phantom)."""
    import decode as D
    import rollout as R
    from test_decode_cost import _nbytes, _step_inputs, fresh_outputs, post_grad_graph
    sp = R.SamplingParams(top_k=top_k, repetition_penalty=1.05, max_new_tokens=8)
    w, s = _step_inputs(builtin[1], rows=16, length=512, sp=sp, layers=1)
    graph = post_grad_graph(D.decode_step, w, s, sp, 0, (1,), 256)
    fresh = sum(_nbytes(out) for _, out in fresh_outputs(graph))
    D_, I = w.ln1.shape[1], w.gate_up.shape[1] // 2
    term = plan.decode_step_bytes(16, 256, D_, I, w.heads, w.head_dim, w.embed.shape[0])
    assert term / 2 <= fresh <= term, (fresh, term)
