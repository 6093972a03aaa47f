"""Every distributed path computes what one process computes (picotron style), on CPU with gloo.

tests/dist_check.py runs one step on a fixed global batch (a video and an image prompt, 2
completions each) as 1 process, and as 2 ranks under DDP and under FSDP2 (with activation
checkpointing). Gradients must match in magnitude, not just direction (catches FSDP2-on-gloo summing
instead of averaging, pytorch/pytorch#162338), and the parameters after one AdamW step, gathered as
the HF export state dict, must match too.
"""
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, run_cmd, run_train

CHECK = ROOT / "tests" / "dist_check.py"


def _run(builtin, out, mode, nproc):
    paths, tiny = builtin
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone",
              f"--nproc_per_node={nproc}"] if nproc > 1 else [sys.executable]
    proc = subprocess.run(launch + [str(CHECK), str(tiny), str(paths["train"]), str(out), mode],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return torch.load(out / f"{mode}.pt")


@pytest.fixture(scope="module")
def single(builtin, tmp_path_factory):
    return _run(builtin, tmp_path_factory.mktemp("one"), "none", 1)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_equal_one_process(builtin, single, tmp_path, mode):
    got = _run(builtin, tmp_path, mode, 2)
    assert got["loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert got["norm"] == pytest.approx(single["norm"], rel=1e-5)  # magnitude: averaged, not summed
    assert single["norm"] > 1e-3
    assert got["grads"].keys() == single["grads"].keys()
    for k, g in single["grads"].items():
        torch.testing.assert_close(got["grads"][k], g, rtol=1e-4, atol=1e-6, msg=k)
    # parameters after one AdamW step, as the full (HF export) state dict of rank 0
    assert got["params"].keys() == single["params"].keys()
    for k, p in single["params"].items():
        torch.testing.assert_close(got["params"][k], p, rtol=1e-5, atol=1e-6, msg=k)
    # rollout under full_weights: rank 0 decodes 3 tokens of a video prompt, rank 1 7 tokens of an
    # image prompt (different numbers of forwards, no deadlock), each equal to an unsharded copy's
    # sampling
    assert got["rollout_equal"] == 2 and got["rollout_lengths"] == 10
    assert got["finite_after_rollout"]


def test_two_fsdp_ranks_equal_one_process_on_qwen3(builtin, qwen3, tmp_path):
    """The same on the tiny Qwen3-VL (DeepStack, q/k norms; its block classes read from the model):
    rank 0 holds the video prompt and rank 1 the image prompt, and 2 FSDP ranks give the 1-process
    gradients and parameters."""
    (tmp_path / "one").mkdir(), (tmp_path / "two").mkdir()
    want = _run((builtin[0], qwen3), tmp_path / "one", "none", 1)
    got = _run((builtin[0], qwen3), tmp_path / "two", "fsdp", 2)
    _same_step(got, want)
    assert want["norm"] > 1e-3 and any("deepstack_merger_list" in k for k in want["grads"])
    assert got["rollout_equal"] == 2


@pytest.fixture(scope="module")
def single_lora(builtin, tmp_path_factory):
    return _run(builtin, tmp_path_factory.mktemp("one_lora"), "none-lora", 1)


def _same_step(got, want):
    """The same loss, gradient norm, gradients and parameters after the AdamW step (tolerances of
    the test above)."""
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    assert got["norm"] == pytest.approx(want["norm"], rel=1e-5)
    assert (got["grads"].keys() == want["grads"].keys()
            and got["params"].keys() == want["params"].keys())
    for k, g in want["grads"].items():
        torch.testing.assert_close(got["grads"][k], g, rtol=1e-4, atol=1e-6, msg=k)
    for k, p in want["params"].items():
        torch.testing.assert_close(got["params"][k], p, rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("mode", ["ddp-lora", "fsdp-lora"])
def test_two_ranks_equal_one_process_with_lora(builtin, single_lora, tmp_path, mode):
    """LoRA (lora.py) on 2 ranks is the 1-process step, as without LoRA; the ranks seed their RNGs
    differently, so this also checks that the adapters are initialised alike on every rank (FSDP2
    would mix the two otherwise)."""
    got = _run(builtin, tmp_path, mode, 2)
    _same_step(got, single_lora)
    assert all("lora_" in k for k in single_lora["grads"])            # only adapters have gradients
    # A and B of 7 projections in each of the 4 decoder layers
    assert len(single_lora["grads"]) == 2 * 7 * 4
    assert single_lora["norm"] > 1e-3


@pytest.mark.parametrize("nproc", [1, 2])
def test_cpu_offload_gives_the_same_step(builtin, single, tmp_path, nproc):
    """FSDP2 CPU offload (--cpu-offload) takes the same step as no offload: with one process (a
    one-rank group, the one-GPU case) and on 2 ranks."""
    _same_step(_run(builtin, tmp_path, "fsdp-offload", nproc), single)


def test_fsdp_bf16_mixed_precision_path(builtin, single, tmp_path):
    """What CUDA runs get by default (--precision auto = bf16-mixed), chosen by the flag and run
    here on 2 CPU ranks: bf16 compute through FSDP2's MixedPrecisionPolicy, fp32 gradient reduction
    and fp32 master weights. It stays within bf16 rounding of the fp32 single process (not equal:
    every matmul rounds to bf16)."""
    got = _run(builtin, tmp_path, "fsdp-bf16-mixed", 2)
    assert got["loss"] == pytest.approx(single["loss"], rel=2e-2)
    assert got["norm"] == pytest.approx(single["norm"], rel=5e-2)
    cos = torch.nn.functional.cosine_similarity
    flat = lambda grads: torch.cat([grads[k].flatten() for k in sorted(single["grads"])])
    assert cos(flat(got["grads"]), flat(single["grads"]), dim=0) > 0.98         # measured 0.986
    for k, g in single["grads"].items():
        assert got["grads"][k].dtype == torch.float32, k                         # reduced in fp32
        if g.norm() > 1e-3 * single["norm"]:                          # measured >= 0.977 per tensor
            assert cos(got["grads"][k].flatten(), g.flatten(), dim=0) > 0.95, k
    # the master copy stays fp32
    assert all(p.dtype == torch.float32 for p in got["params"].values())
    assert got["rollout_lengths"] == 10 and got["finite_after_rollout"]


def test_train_with_cpu_offload_on_one_process_equals_plain(tmp_path, answering):
    """`train.py --dist fsdp --cpu-offload` with one process (the one-GPU case: FSDP2 over a
    one-rank group) runs the whole loop, checkpoint and export included, and ends with the weights
    of the plain one-process run."""
    args = ["--steps", "2", "--G", "4", "--max-completion-length", "24", "--prompts-per-rank", "2",
            "--save-every", "2"]
    (tmp_path / "off").mkdir()
    (tmp_path / "plain").mkdir()
    run_train(args + ["--dist", "fsdp", "--cpu-offload"], tmp_path / "off", builtin=answering)
    run_train(args + ["--dist", "none"], tmp_path / "plain", builtin=answering)
    off = load_file(tmp_path / "off" / "out" / "final" / "model.safetensors")
    plain = load_file(tmp_path / "plain" / "out" / "final" / "model.safetensors")
    before = load_file(answering[1] / "model.safetensors")
    assert off.keys() == plain.keys() and any(not torch.equal(before[k], plain[k]) for k in before)
    for k in plain:
        torch.testing.assert_close(off[k], plain[k], rtol=1e-5, atol=1e-6, msg=k)
    assert (tmp_path / "off" / "out" / "checkpoints" / "step_000002" / ".metadata").exists()


def test_cpu_offload_without_fsdp_is_refused(tmp_path, builtin):
    proc = run_cmd([sys.executable, str(ROOT / "train.py"), "--model", str(builtin[1]), "--data",
                    str(builtin[0]["train"]), "--preset", "tiny", "--cpu-offload", "--dist", "ddp",
                    "--out-dir", str(tmp_path / "out")], tmp_path, ok=False)
    assert (proc.returncode != 0
            and "--cpu-offload is FSDP2's: it needs --dist fsdp (got --dist ddp" in proc.stderr)


def test_gradient_divide_factor_is_set_on_every_fsdp_unit(builtin):
    """distributed.wrap's explicit averaging reaches every FSDP2 unit, not only the root (the setter
    does not recurse): one process with CPU offload (a one-rank group, as on one GPU) sets factor
    1.0 on each unit."""
    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule
    import distributed
    import model as M
    hf, _ = M.load_policy(builtin[1])
    try:
        wrapped = distributed.wrap(M.PolicyLogprobs(hf), distributed.Dist(), "fsdp", offload=True)
        units = [m for m in wrapped.modules() if isinstance(m, FSDPModule)]
        factors = [g.gradient_divide_factor for u in units
                   for g in u._get_fsdp_state()._fsdp_param_groups]
        # root, decoder, vision
        assert len(units) == 1 + 4 + 4 and factors and all(f == 1.0 for f in factors), factors
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_process_group_timeout_covers_a_cold_compile(monkeypatch):
    """--dist-timeout-min (30 by default, in train.py, sft.py and eval.py alike) reaches
    init_process_group as its timeout, so a rank compiling its decode step while the others wait
    is not killed at torch's 10 minutes; a timeout <= 0 is refused by name."""
    import datetime

    import config
    import distributed
    import eval as eval_entry
    import sft
    import train
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda *a, **k: calls.append(k))
    for entry in (train, sft, eval_entry):
        cfg, _ = config.parse(entry.Config, [])
        assert cfg.dist_timeout_min == 30.0
    cfg, _ = config.parse(train.Config, ["--dist-timeout-min", "45"])
    distributed.init_distributed("cpu", "gloo", cfg.dist_timeout_min)
    distributed.init_distributed("cpu", "gloo")
    minutes = datetime.timedelta(minutes=1)
    assert [k["timeout"] for k in calls] == [45 * minutes, 30 * minutes]
    with pytest.raises(ValueError, match="dist-timeout-min"):
        distributed.init_distributed("cpu", "gloo", 0)
