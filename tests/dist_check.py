"""One data-parallel step on a fixed global batch, for tests/test_distributed.py (not a test
itself).

    python tests/dist_check.py MODEL TRAIN_JSON OUT none                  # the 1-process reference
    torchrun --nproc_per_node 2 tests/dist_check.py MODEL TRAIN_JSON OUT fsdp     # (or ddp)
    torchrun --nproc_per_node 2 tests/dist_check.py MODEL TRAIN_JSON OUT fsdp-bf16-mixed
                                                # a GPU's precision path
    ... OUT none-lora | ddp-lora | fsdp-lora    # LoRA adapters (rank 4) on the decoder, everything
                                                  else frozen
    ... OUT fsdp-offload                        # FSDP2 CPU offload (also with one process: a
                                                  one-rank group)

The global batch: one video prompt and one image prompt, each with 2 fixed random completions (4
rows) and fixed advantages. With W ranks, rank r takes prompt r; the 1-process run loops over both
prompts and divides each loss by 2, which is what averaging the gradients over 2 ranks must
reproduce. Writes OUT/<mode>.pt (rank 0): full gradients, full parameters after one AdamW step
(gathered with distributed.full_state_dict, i.e. the HF export), the loss, and (sharded modes) a
rollout check: under `full_weights`, rank 0 generates 3 tokens for its video prompt and rank 1
generates 7 for its image prompt, which must equal what an unsharded copy of the model generates
with the same seed.
"""
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402
import data  # noqa: E402
import distributed  # noqa: E402
import lora  # noqa: E402
import rollout  # noqa: E402
import pixels  # noqa: E402
from model import PolicyLogprobs, load_policy  # noqa: E402

SHARDS = 2   # prompts in the global batch (one per rank with 2 ranks)


def batch(tokenizer, train_json, model_config):
    """[(prompt_ids, visual, completions (2, 6), advantages (2,))] for a video and an image prompt,
    with the model family's pixels (Qwen2.5-VL or Qwen3-VL: common.media_config)."""
    samples = data.load_samples(train_json)
    media = common.media_config(pixels.MediaConfig(max_frames=8, video_min_pixels=84 * 84,
                                                   video_max_pixels=84 * 84,
                                                   image_max_pixels=84 * 84), model_config)
    picked = [next(s for s in samples if s.data_type == kind) for kind in ("video", "image")]
    g = torch.Generator().manual_seed(0)
    out = []
    for s in picked:
        p = pixels.prepare(s, tokenizer, media)
        comp = torch.randint(0, len(tokenizer) - 30, (2, 6), generator=g)   # (2, 6) ordinary tokens
        out.append((p.prompt_ids, p.visual, comp, torch.randn(2, generator=g)))
    return out


def loss_of(policy, prompt_ids, visual, comp):
    ids = torch.cat([prompt_ids.expand(comp.shape[0], -1), comp], 1)         # (2, P + 6)
    lp = policy(ids, torch.ones_like(ids), prompt_ids.shape[0], [visual], [0, 0])   # (2, 6)
    return lp


def main():
    model_dir, train_json, out, run_name = sys.argv[1:5]
    parts = run_name.split("-")   # "fsdp-bf16-mixed" -> fsdp, bf16-mixed; "-lora", "-offload" flags
    use_lora, offload = "lora" in parts, "offload" in parts
    parts = [p for p in parts if p not in ("lora", "offload")]
    mode, precision = parts[0], "-".join(parts[1:])
    proc = distributed.init_distributed("cpu")
    torch.manual_seed(proc.rank)      # ranks differ, as seed + rank in train.py: LoRA must not care
    hf, tok = load_policy(model_dir)
    if use_lora:
        settings = SimpleNamespace(lora_rank=4, lora_alpha=8.0, lora_dropout=0.0,
                                   lora_targets="auto", lora_vision="frozen")
        lora.attach(hf, settings, seed=0)
        # B = 0 at the start would give A no gradient: set B too
        for name, p in hf.named_parameters():
            if "lora_B" in name:
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape,
                                        generator=torch.Generator().manual_seed(len(name))) * 0.1)
    _, _, compute = distributed.resolve_precision(precision or "fp32", proc)
    policy = distributed.wrap(PolicyLogprobs(hf, chunk=4), proc, mode,
                              activation_checkpointing=mode == "fsdp", param_dtype=compute,
                              offload=offload)
    opt = torch.optim.AdamW(lora.trainable(hf), lr=1e-3, weight_decay=0.01)
    items = batch(tok, train_json, hf.config)
    mine = items if proc.world == 1 else [items[proc.rank]]
    total = 0.0
    for i, (prompt_ids, visual, comp, adv) in enumerate(mine):
        with distributed.no_sync(policy, skip=i < len(mine) - 1):
            lp = loss_of(policy, prompt_ids, visual, comp)                     # (2, 6)
            loss = -(lp.mean(1) * adv).mean() * proc.world / SHARDS
            loss.backward()
        total += float(loss.detach()) / proc.world
    total = float(distributed.all_reduce_sum(torch.tensor(total), proc))
    grads = {}
    for name, p in distributed.unwrap(policy).hf.named_parameters():
        if p.grad is None:
            continue
        g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
        grads[name] = g.detach().clone()
    norm = distributed.clip_grad_norm(policy, 1e9)
    opt.step()
    params = distributed.full_state_dict(policy)
    result = {"loss": total, "grads": grads, "params": params, "norm": norm}
    if proc.world > 1 and not use_lora:
        prompt_ids, visual = items[proc.rank][0], items[proc.rank][1]
        sp = rollout.SamplingParams(1.0, 1.0, 0, 1.0, [3, 7][proc.rank])
        with distributed.full_weights(policy) as gen_model:
            got = rollout.generate(gen_model, [prompt_ids], [visual], [2], sp, tok.pad_token_id, [],
                                   torch.Generator().manual_seed(5))[0].ids
        # bf16-mixed: the same sampling from weights rounded to bf16
        plain, _ = load_policy(model_dir)
        plain.load_state_dict({k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in
                               distributed.unwrap(policy).hf.state_dict().items()})
        for p in plain.parameters():
            p.data = p.data.to(compute)
        want = rollout.generate(plain, [prompt_ids], [visual], [2], sp, tok.pad_token_id, [],
                                torch.Generator().manual_seed(5))[0].ids
        result["rollout_equal"] = distributed.all_reduce_sum(
            torch.tensor(int(torch.equal(got, want))), proc).item()
        result["rollout_lengths"] = distributed.all_reduce_sum(torch.tensor(got.shape[1]),
                                                               proc).item()
        # forward still works
        lp_after = loss_of(policy, items[proc.rank][0], items[proc.rank][1], items[proc.rank][2])
        result["finite_after_rollout"] = bool(torch.isfinite(lp_after).all())
    if proc.main:
        torch.save(result, Path(out) / f"{run_name}.pt")
    distributed.barrier(proc)
    distributed.cleanup(proc)


if __name__ == "__main__":
    main()
