"""Shared fixtures and helpers: the built-in dataset and the tiny model (built once per test session
in a temp folder), the narrow 7B-structured model, and launchers for entry points as
subprocesses."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def builtin(tmp_path_factory):
    """(paths of the built-in dataset, tiny model folder) in a session temp dir."""
    from builtin import synthetic
    from builtin.tiny import build_builtin_tiny

    root = tmp_path_factory.mktemp("cache")
    paths = synthetic.make_dataset(root / "data", n_train=48, n_test=16)
    tiny = build_builtin_tiny(root / "tiny", paths["train_cot"])
    return paths, tiny


@pytest.fixture(scope="session")
def answering(builtin, tmp_path_factory):
    """(paths, a tiny model that answers): the `builtin` tiny model after 120 SFT steps on the
    perception split (short answers, "<think>red</think><answer>B</answer>"), so its completions
    earn varied rewards and T-GRPO has non-zero advantages (a random model's all score 0: nothing
    would move)."""
    paths, tiny = builtin
    out = tmp_path_factory.mktemp("answering")
    run_cmd([sys.executable, str(ROOT / "sft.py"), "--model", str(tiny), "--data",
             str(paths["train_perception"]), "--preset", "tiny", "--steps", "120", "--lr", "2e-3",
             "--eval-samples", "0", "--out-dir", str(out)], out)
    return paths, out / "final"


@pytest.fixture(scope="session")
def qwen3(builtin, tmp_path_factory):
    """A tiny random Qwen3-VL (tiny.build_tiny_qwen3, what --model preset:tiny-qwen3-vl builds) with
    the tokenizer trained on the built-in data's text, in a session temp dir."""
    from builtin.tiny import build_builtin_tiny_qwen3
    return build_builtin_tiny_qwen3(tmp_path_factory.mktemp("qwen3") / "tiny-qwen3-vl",
                                    builtin[0]["train_cot"])


REAL = SHARED / "qwen2_5_vl_7b_instruct"
REAL_QWEN3 = SHARED / "qwen3_vl_8b_instruct"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: outside the fast tier (CI runs every test; "
                                       "-m 'not slow' skips them)")


# The fast tier, `python -m pytest -q -m "not slow"` (under 2 minutes on 2 cores): the math, the
# rewards, the pixels, decode against HF, the reading order and one two-step train.py run. Every
# test not named here (a file, or a file::test prefix) is marked slow, so a new test joins the full
# suite by default.
FAST = (
    "tests/test_tgrpo.py::",
    "tests/test_rewards.py::",
    "tests/test_mrope.py::",
    "tests/test_docs.py::",
    "tests/test_smoke.py::",
    "tests/test_data.py::test_constants",
    "tests/test_data.py::test_smart_",
    "tests/test_data.py::test_sample_frame_indices",
    "tests/test_data.py::test_effective_video_max_pixels",
    "tests/test_data.py::test_build_",
    "tests/test_data.py::test_resize_frames_close_to_pillow_bicubic",
    "tests/test_data.py::test_patchify_",
    "tests/test_data.py::test_shuffle_frames_is_a_seeded_permutation",
    "tests/test_decode.py::test_decode_step_teacher_forced_equals_hf_full_forward",
    "tests/test_decode.py::test_sampler_matches_a_known_distribution_and_filter_masks",
    "tests/test_model.py::test_logprobs_equal_hf_forward",
    "tests/test_qwen3_5.py::test_delta_rule_step_equals_the_recurrent_and_chunked_forms",
    "tests/test_qwen3_5.py::test_conv_step_equals_causal_conv1d_update",
)
SLOW_IN_FAST_FILES = ("tests/test_rewards.py::test_one_megabyte_completions",)


def pytest_collection_modifyitems(config, items):
    for item in items:
        node = item.nodeid.replace("\\", "/")
        if not node.startswith(FAST) or node.startswith(SLOW_IN_FAST_FILES):
            item.add_marker(pytest.mark.slow)
# 2-rank launch under NCCL's contract emulated on CPU (tests/cuda_only_backend.py), with the flags
# that give the process group a GPU node gets: gloo for CPU tensors, a CUDA-only backend in NCCL's
# place.
GPU_CONTRACT = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                str(ROOT / "tests" / "cuda_only_backend.py")]
GPU_GROUP = ["--dist-backend", "cpu:gloo,cuda:cudaonly", "--dist", "fsdp"]


@pytest.fixture(scope="session")
def narrow(tmp_path_factory):
    """A random Qwen2.5-VL with the 7B's structure and the real tokenizer, narrowed for CPU (tiny.py
    "narrow")."""
    if not (REAL / "tokenizer.json").exists():
        pytest.skip("../shared/qwen2_5_vl_7b_instruct absent (fresh clone)")
    from builtin import tiny
    return tiny.build_like_7b(tmp_path_factory.mktemp("narrow") / "model", "narrow", REAL)


def run_train(args, tmp_path, nproc=1, builtin=None):
    """train.py as a subprocess (1 process, or torchrun with `nproc` CPU ranks) with cache and
    output under tmp_path; `builtin` (the fixture's (paths, tiny)): --model is the tiny random model
    and --data the built-in training split (without it train.py builds its default, the built-in
    cold start: minutes). Asserts exit code 0 and returns the CompletedProcess."""
    if builtin is not None:
        args = ["--model", str(builtin[1]), "--data", str(builtin[0]["train"]), "--preset", "tiny",
                *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={nproc}"] if nproc > 1 else [sys.executable]
    cmd = launcher + [str(ROOT / "train.py"), "--cache-dir", str(tmp_path / "cache"), "--out-dir",
                      str(tmp_path / "out")] + args
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def run_cmd(cmd, cwd, ok=True, timeout=600):
    """A command as a subprocess with one torch thread and unbuffered output, in `cwd`; with `ok`,
    asserts exit code 0 (showing the output's tail). Returns the CompletedProcess."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if ok:
        assert proc.returncode == 0, (" ".join(map(str, cmd[-20:])) + "\n" + proc.stdout[-3000:]
                                      + proc.stderr[-6000:])
    return proc
