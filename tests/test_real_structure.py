"""The real 7B structure through the whole recipe: sft.py -> train.py -> eval.py, on 1 rank and on 2
FSDP ranks.

The model is random, built from Qwen2.5-VL-7B-Instruct's config with its real vocabulary (152,064),
tokenizer, chat template and processor files, head_dim 128 with mrope_section [16, 24, 24], windowed
vision blocks with full attention at the configured indexes, narrowed to hidden 512, 2 decoder
layers, vision depth 4 (tiny.py). The 2-rank chain runs what a GPU node runs by default -- FSDP2,
bf16 compute with fp32 master weights and gradient reduction, the composite gloo + CUDA-only process
group (tests/cuda_only_backend.py) -- on CPU. Skipped only where ../shared (the real tokenizer
files) is absent.
"""
import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import GPU_CONTRACT, GPU_GROUP, ROOT, run_cmd as run

SMALL = ["--preset", "tiny", "--max-frames", "4"]      # 84x84 frames, 4 per clip: CPU-sized prompts



def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("ranks", [1, 2])
def test_sft_then_tgrpo_then_eval_on_the_real_structure(builtin, narrow, tmp_path, ranks):
    paths, _ = builtin
    launch = GPU_CONTRACT if ranks == 2 else [sys.executable]
    extra = GPU_GROUP + ["--precision", "bf16-mixed"] if ranks == 2 else []
    sft, rl, ev = tmp_path / "sft", tmp_path / "tgrpo", tmp_path / "eval"

    run(launch + [str(ROOT / "sft.py"), "--model", str(narrow), "--data", str(paths["train_cot"]),
                  "--eval-data", str(paths["test"]), "--eval-samples", "2", "--eval-max-new-tokens",
                  "4", "--steps", "2", "--batch-size", "2", "--lr", "1e-4", "--out-dir", str(sft)]
        + SMALL + extra, tmp_path)
    steps = [r for r in rows(sft / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert 11 < steps[0]["loss"] < 13      # ln(152,064) = 11.93: a random model over the real vocab

    run(launch + [str(ROOT / "train.py"), "--model", str(sft / "final"), "--data",
                  str(paths["train"]), "--steps", "2", "--G", "2", "--max-completion-length", "6",
                  "--lr", "1e-4", "--out-dir", str(rl)] + SMALL + extra, tmp_path)
    assert [r["step"] for r in rows(rl / "metrics.jsonl")] == [1, 2]
    before, after = (load_file(sft / "final" / "model.safetensors"),
                     load_file(rl / "final" / "model.safetensors"))
    assert (after["lm_head.weight"].shape == (152064, 512)
            and after["lm_head.weight"].dtype == torch.float32)
    assert any(not torch.equal(before[k], after[k]) for k in before
               if k.startswith("model.layers."))

    run(launch + [str(ROOT / "eval.py"), "--model", str(rl / "final"), "--data", str(paths["test"]),
                  "--limit", "2", "--template", "train", "--max-new-tokens", "4", "--out-dir",
                  str(ev)]
        + (GPU_GROUP[:2] if ranks == 2 else []) + ["--preset", "tiny", "--max-frames", "4"],
        tmp_path)
    result = json.loads((ev / "eval_test.json").read_text())
    assert result["summary"]["n_scored"] == 2 and result["settings"]["world_size"] == ranks


QWEN3_5_9B = ROOT.parent / "shared" / "qwen3_5_9b"


@pytest.mark.skipif(not (QWEN3_5_9B / "config.json").exists(),
                    reason="../shared absent (fresh clone)")
def test_sft_then_tgrpo_then_eval_on_the_narrow_qwen3_5_9b(builtin, tmp_path):
    """Qwen3.5-9B's structure narrowed (tiny.WIDTHS_QWEN3_5: vocabulary 248,320, head_dim 256, the
    3 : 1 hybrid layout) through sft.py -> train.py -> eval.py on 1 rank."""
    from builtin import tiny
    import data
    paths, _ = builtin
    corpus = tiny.tokenizer_corpus(data.load_samples(paths["train_cot"], require_process=True))
    model = tiny.build_qwen3_5(tmp_path / "narrow9b", corpus, width="narrow", source=QWEN3_5_9B)
    sft, rl, ev = tmp_path / "sft", tmp_path / "tgrpo", tmp_path / "eval"
    run([sys.executable, str(ROOT / "sft.py"), "--model", str(model), "--data",
         str(paths["train_cot"]), "--eval-samples", "0", "--steps", "2", "--batch-size", "2",
         "--lr", "1e-4", "--out-dir", str(sft)] + SMALL, tmp_path)
    steps = [r for r in rows(sft / "metrics.jsonl") if "loss" in r]
    # ln(248,320) = 12.4
    assert [r["step"] for r in steps] == [1, 2] and 11.5 < steps[0]["loss"] < 13.5
    run([sys.executable, str(ROOT / "train.py"), "--model", str(sft / "final"), "--data",
         str(paths["train"]), "--steps", "2", "--G", "2", "--max-completion-length", "6", "--lr",
         "1e-4", "--eval-samples", "0", "--out-dir", str(rl)] + SMALL, tmp_path)
    assert [r["step"] for r in rows(rl / "metrics.jsonl")] == [1, 2]
    after = load_file(rl / "final" / "model.safetensors")
    assert after["lm_head.weight"].shape == (248320, 256)
    assert json.loads((rl / "final" / "config.json").read_text())["model_type"] == "qwen3_5"
    run([sys.executable, str(ROOT / "eval.py"), "--model", str(rl / "final"), "--data",
         str(paths["test"]), "--limit", "2", "--template", "train", "--max-new-tokens", "4",
         "--out-dir", str(ev)] + SMALL, tmp_path)
    assert json.loads((ev / "eval_test.json").read_text())["summary"]["n_scored"] == 2
