"""LoRA through PEFT (lora.py): what a step changes, the reference with adapters disabled, the
merged export, and exact resume under FSDP2. 2-rank DDP/FSDP against one process with LoRA:
tests/test_distributed.py."""
import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import Qwen2_5_VLForConditionalGeneration

import common
import data
import distributed
import lora
import pixels
from conftest import run_train
from model import PolicyLogprobs, load_policy

SETTINGS = SimpleNamespace(lora_rank=4, lora_alpha=8.0, lora_dropout=0.0, lora_targets="auto",
                           lora_vision="frozen")


def _batch(tokenizer, train_json):
    """(input_ids (2, P + 6), prompt_len, visual) of the first video prompt with 2 fixed random
    completions."""
    s = next(x for x in data.load_samples(train_json) if x.data_type == "video")
    p = pixels.prepare(s, tokenizer, pixels.MediaConfig(max_frames=8, video_min_pixels=84 * 84,
                                                        video_max_pixels=84 * 84))
    comp = torch.randint(0, len(tokenizer) - 30, (2, 6), generator=torch.Generator().manual_seed(0))
    return torch.cat([p.prompt_ids.expand(2, -1), comp], 1), p.prompt_ids.shape[0], p.visual


def _logprobs(module, batch):
    ids, P, visual = batch
    return module(ids, torch.ones_like(ids), P, [visual], [0, 0])               # (2, 6) float32


@pytest.fixture(scope="module")
def stepped(builtin):
    """The tiny model with adapters after one AdamW step on a fixed batch: (hf, tokenizer, adapters,
    policy, state before, state after, batch)."""
    paths, tiny = builtin
    hf, tok = load_policy(tiny)
    adapters = lora.attach(hf, SETTINGS, seed=0)
    policy = PolicyLogprobs(hf, chunk=4)
    batch = _batch(tok, paths["train"])
    before = {k: v.clone() for k, v in hf.state_dict().items()}
    opt = torch.optim.AdamW(lora.trainable(hf), lr=1e-2, weight_decay=0.01)
    loss = -(_logprobs(policy, batch).mean(1) * torch.tensor([1.0, -1.0])).mean()
    loss.backward()
    opt.step()
    return hf, tok, adapters, policy, before, hf.state_dict(), batch


def test_a_step_changes_only_adapters(stepped):
    hf, _, _, _, before, after, _ = stepped
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".lora_A." in k or ".lora_B." in k for k in changed), sorted(changed)[:5]
    assert any(".lora_B." in k for k in changed)        # B starts at 0 and moved
    assert not any("visual" in k for k in changed)      # tower frozen (--lora-vision frozen)
    n_train = sum(p.numel() for p in lora.trainable(hf))
    assert 0 < n_train < 0.1 * sum(p.numel() for p in hf.parameters())


def test_reference_with_adapters_disabled_is_the_base_model(builtin, stepped):
    _, _, adapters, policy, _, _, batch = stepped
    with torch.no_grad():
        ref = lora.Reference(policy, adapters)(*_args(batch))
        adapted = _logprobs(policy, batch)
        base_hf, _ = load_policy(builtin[1])
        base = _logprobs(PolicyLogprobs(base_hf, chunk=4), batch)
    torch.testing.assert_close(ref, base, rtol=1e-6, atol=1e-6)  # float rounding only (seen: 1e-7)
    assert (adapted - base).abs().max() > 1e-4                   # the adapters do change the policy
    assert all(m.merged is False for m in adapters.modules() if hasattr(m, "merged"))


def _args(batch):
    ids, P, visual = batch
    return ids, torch.ones_like(ids), P, [visual], [0, 0]


def test_merged_export_gives_the_adapted_logprobs(builtin, stepped, tmp_path):
    hf, tok, adapters, policy, _, _, batch = stepped
    folder = common.export(policy, tok, tmp_path / "final", distributed.Dist(), adapters,
                           str(builtin[1]))
    assert (json.loads((tmp_path / "final_lora" / "adapter_config.json").read_text())["r"]
            == SETTINGS.lora_rank)
    assert (tmp_path / "final_lora" / "adapter_model.safetensors").exists()
    merged_sd = load_file(folder / "model.safetensors")
    assert not any("lora" in k or "base_layer" in k for k in merged_sd)  # plain Qwen2.5-VL keys
    # the LoRA rule by hand, independent of PEFT's forward and merge: W' = W + (alpha / r) B A
    adapter, base = (load_file(tmp_path / "final_lora" / "adapter_model.safetensors"),
                     load_file(builtin[1] / "model.safetensors"))
    module, saved = ("model.language_model.layers.0.self_attn.q_proj",       # module
                     "model.layers.0.self_attn.q_proj.weight")               # file key
    A, B = (adapter[f"base_model.model.{module}.lora_A.weight"],             # (r, in)
            adapter[f"base_model.model.{module}.lora_B.weight"])             # (out, r)
    assert B.abs().max() > 0
    torch.testing.assert_close(merged_sd[saved],
                               base[saved] + SETTINGS.lora_alpha / SETTINGS.lora_rank * B @ A,
                               rtol=1e-5, atol=1e-6)
    # transformers alone, no peft
    plain = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder)
    assert type(plain.model.language_model.layers[0].self_attn.q_proj) is torch.nn.Linear
    with torch.no_grad():
        torch.testing.assert_close(_logprobs(PolicyLogprobs(plain, chunk=4), batch),
                                   _logprobs(policy, batch), rtol=1e-4, atol=1e-5)


def test_lora_settings_are_checked():
    with pytest.raises(ValueError, match="lora-vision"):
        lora.check(SimpleNamespace(**{**vars(SETTINGS), "lora_vision": "half"}))
    with pytest.raises(ValueError, match="lora_rank >= 0"):
        lora.check(SimpleNamespace(**{**vars(SETTINGS), "lora_rank": -1}))


TINY = ["--steps", "2", "--G", "4", "--max-completion-length", "24", "--prompts-per-rank", "2",
        "--lora-rank", "4", "--lora-alpha", "8", "--lr", "1e-3", "--dist", "fsdp"]


def test_fsdp_lora_resume_is_exact(tmp_path, answering):
    """2 steps straight equal 1 step + checkpoint + resume + 1 step, with LoRA under FSDP2 on 2
    ranks; the export holds the merged model (plain keys) and the adapter folder."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    run_train(TINY, tmp_path / "a", nproc=2, builtin=answering)
    run_train(TINY + ["--steps", "1", "--save-every", "1"], tmp_path / "b", nproc=2,
              builtin=answering)
    proc = run_train(TINY + ["--resume", "auto"], tmp_path / "b", nproc=2, builtin=answering)
    assert "resumed from" in proc.stdout and "at step 1" in proc.stdout
    straight = load_file(tmp_path / "a" / "out" / "final" / "model.safetensors")
    resumed = load_file(tmp_path / "b" / "out" / "final" / "model.safetensors")
    before = load_file(answering[1] / "model.safetensors")
    assert straight.keys() == resumed.keys() == before.keys()
    # the adapters moved the merged weights
    assert any(not torch.equal(before[k], straight[k]) for k in before)
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], rtol=0, atol=1e-6, msg=k)
    a_rows = [json.loads(l)
              for l in (tmp_path / "a" / "out" / "metrics.jsonl").read_text().splitlines()]
    assert min(r["zero_std_groups"] for r in a_rows) < 1             # some advantages were non-zero
    assert (tmp_path / "b" / "out" / "final_lora" / "adapter_config.json").exists()


def test_gpu_lora_path_bf16_base_fp32_adapters_under_fsdp(tmp_path, answering):
    """What a GPU run with LoRA gets (--precision bf16-mixed, the CUDA default): the frozen base
    loaded in bf16, the adapters in fp32, FSDP2 gathering both in bf16. Chosen by the flag and run
    here on 2 CPU ranks: the adapters train, stay fp32, and the export merges them into the fp32
    base from the starting folder."""
    run_train(TINY + ["--precision", "bf16-mixed"], tmp_path, nproc=2, builtin=answering)
    adapters = load_file(tmp_path / "out" / "final_lora" / "adapter_model.safetensors")
    assert adapters and all(v.dtype == torch.float32 for v in adapters.values())
    # B left 0: it trained
    assert any(v.abs().max() > 0 for k, v in adapters.items() if "lora_B" in k)
    merged = load_file(tmp_path / "out" / "final" / "model.safetensors")
    assert all(v.dtype == torch.float32 for v in merged.values())


def test_attach_restores_every_cuda_generator(builtin, monkeypatch):
    """attach seeds with torch.manual_seed, which seeds every CUDA device too: it must fork (and so
    restore) the RNG of every CUDA device, not the CPU's alone (else every rank's CUDA generator
    ends equal to the seed). With two CUDA devices reported, fork_rng is asked for both; the CPU
    generator's state is unchanged after attach."""
    import contextlib
    forked = []
    real = torch.random.fork_rng

    @contextlib.contextmanager
    def recording(devices=None, **kw):
        forked.append(list(devices))
        with real(devices=[], **kw):                              # no CUDA here: fork the CPU alone
            yield

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.random, "fork_rng", recording)
    hf, _ = load_policy(builtin[1])
    before = torch.get_rng_state()
    lora.attach(hf, SETTINGS, seed=0)
    assert forked == [[0, 1]] and torch.equal(torch.get_rng_state(), before)
