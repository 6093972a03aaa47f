"""The fast paths equal the straightforward ones: shared-visual, chunked log-probs against a plain
HF forward with tiled pixels; shared-prefix generation against HF generate; mixed batches against
single prompts. (Speed itself is measured by bench/, never in tests.)"""

import pytest
import torch
import torch.nn.functional as F

import data
import model as M
import rollout
import pixels

from builtin import tiny

MEDIA = pixels.MediaConfig(**tiny.TINY_MEDIA)


@pytest.fixture(scope="module")
def setup(builtin):
    """(hf, tokenizer, video Prepared, image Prepared, stop ids). The tiny model's weights are
    redrawn with std 0.1 so that greedy decoding does not repeat one token and the visual input
    changes the output."""
    paths, tiny = builtin
    hf, tok = M.load_policy(tiny)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.1)
    hf.eval()
    samples = data.load_samples(paths["train"])
    video = pixels.prepare(next(s for s in samples if s.data_type == "video"), tok, MEDIA)
    image = pixels.prepare(next(s for s in samples if s.data_type == "image"), tok, MEDIA)
    assert video.prompt_ids.numel() != image.prompt_ids.numel()           # a real left-padding case
    stop = [tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id]
    return hf, tok, video, image, stop


def hf_inputs(hf, ids, visuals, owner):
    """Inputs of a plain HF forward/generate: each row gets its own copy of its visual (the official
    trainer's tiling, notes §1 step 7) and the processor's mm_token_type_ids."""
    kw = {"input_ids": ids, "mm_token_type_ids": M.mm_token_types(ids, hf.config)}
    vids = [visuals[o] for o in owner if visuals[o].data_type == "video"]
    imgs = [visuals[o] for o in owner if visuals[o].data_type == "image"]
    if vids:
        kw |= {"pixel_values_videos": torch.cat([v.pixel_values for v in vids]),
               "video_grid_thw": torch.stack([v.grid_thw for v in vids]),
               "second_per_grid_ts": torch.tensor([v.second_per_grid for v in vids])}
    if imgs:
        kw |= {"pixel_values": torch.cat([v.pixel_values for v in imgs]),
               "image_grid_thw": torch.stack([v.grid_thw for v in imgs])}
    return kw


def naive_logprobs(hf, ids, attn, P, visuals, owner):
    """Full (N, T, V) logits -> log_softmax -> gather: the official computation. Returns (N, T - P).
    position_ids are ours (Qwen2.5-VL's 4.49 rule, checked by hand in test_mrope.py): the pinned
    transformers 5.x derives other text positions after a long clip, so its own would test the rule
    difference, not this path."""
    pos, _ = M.rope_positions(hf, ids, attn, visuals, owner, P)                # (3, N, T)
    logits = hf(**hf_inputs(hf, ids, visuals, owner), attention_mask=attn, position_ids=pos,
                use_cache=False).logits                                        # (N, T, V)
    logp = F.log_softmax(logits[:, P - 1:-1].float(), dim=-1)                  # (N, L, V)
    return logp.gather(-1, ids[:, P:, None])[..., 0]                           # (N, L)


def batch(tok, prompts, completions):
    """Left-padded prompts + right-padded completions: ids (N, T), attention mask (N, T), P,
    completion mask."""
    pids, pattn = rollout.left_pad(prompts, tok.pad_token_id)                  # (N, P)
    L = max(c.numel() for c in completions)
    cids = torch.full((len(completions), L), tok.pad_token_id)
    cmask = torch.zeros(len(completions), L, dtype=torch.long)
    for i, c in enumerate(completions):
        cids[i, :c.numel()], cmask[i, :c.numel()] = c, 1
    return torch.cat([pids, cids], 1), torch.cat([pattn, cmask], 1), pids.shape[1], cmask.float()


def test_policy_logprobs_and_grads_equal_naive_tiled_forward(setup):
    hf, tok, video, image, _ = setup
    g = torch.Generator().manual_seed(1)
    lengths = [9, 4, 7, 11, 3]                                          # 3 video rows, 2 image rows
    owner = [0, 0, 0, 1, 1]
    visuals = [video.visual, image.visual]
    # ordinary (non-special) tokens
    comps = [torch.randint(0, 700, (n,), generator=g) for n in lengths]
    ids, attn, P, cmask = batch(tok, [[video.prompt_ids, image.prompt_ids][o] for o in owner],
                                comps)
    weights = torch.randn(cmask.shape, generator=g)                 # (N, L) arbitrary upstream grad
    watched = {"vision": hf.model.visual.blocks[0].attn.qkv.weight,
               "merger": hf.model.visual.merger.mlp[0].weight, "lm_head": hf.lm_head.weight,
               "embed": hf.model.language_model.embed_tokens.weight}

    def run(fn):
        hf.zero_grad(set_to_none=True)
        lp = fn()                                                              # (N, L)
        (lp * cmask * weights).sum().backward()
        return lp.detach(), {k: p.grad.clone() for k, p in watched.items()}

    ours, ours_g = run(lambda: M.PolicyLogprobs(hf, chunk=4)(ids, attn, P, visuals, owner))
    ref, ref_g = run(lambda: naive_logprobs(hf, ids, attn, P, visuals, owner))
    hf.zero_grad(set_to_none=True)
    m = cmask.bool()
    torch.testing.assert_close(ours[m], ref[m], rtol=0, atol=2e-5)
    for k in watched:
        assert ref_g[k].abs().max() > 0, k
        torch.testing.assert_close(ours_g[k], ref_g[k], rtol=1e-4,
                                   atol=1e-5 * float(ref_g[k].abs().max()))


@pytest.mark.parametrize("kind", ["video", "image"])
@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_greedy_rollout_equals_hf_generate(setup, kind, penalty, monkeypatch):
    hf, tok, video, image, stop = setup
    p = video if kind == "video" else image
    # HF generate takes its prompt positions and deltas from get_rope_index; the pinned 5.x one
    # follows another rule after a long clip (model.py docstring), so give it ours (checked by hand
    # in test_mrope.py).
    monkeypatch.setattr(hf.model, "get_rope_index", lambda input_ids, attention_mask=None, **kw:
                        M.rope_positions(hf, input_ids, attention_mask, [p.visual], [0]))
    sp = rollout.SamplingParams(temperature=1.0, top_p=1.0, top_k=1, repetition_penalty=penalty,
                                max_new_tokens=16)
    ours = rollout.generate(hf, [p.prompt_ids], [p.visual], [2], sp, tok.pad_token_id, stop)[0]
    ids = p.prompt_ids[None]                                                   # (1, P)
    out = hf.generate(**hf_inputs(hf, ids, [p.visual], [0]), attention_mask=torch.ones_like(ids),
                      do_sample=False, max_new_tokens=16, repetition_penalty=penalty,
                      eos_token_id=stop, pad_token_id=tok.pad_token_id,
                      use_cache=True)[0, ids.shape[1]:]                        # (L,)
    assert len(set(out.tolist())) > 4                                      # not a degenerate repeat
    for row in ours.ids:
        assert row[:out.numel()].tolist() == out.tolist()


def test_rollout_logprobs_equal_policy_logprobs(setup):
    hf, tok, video, image, stop = setup
    sp = rollout.SamplingParams(temperature=0.8, top_p=0.9, max_new_tokens=12)
    outs = rollout.generate(hf, [video.prompt_ids, image.prompt_ids], [video.visual, image.visual],
                            [3, 2], sp, tok.pad_token_id, stop, torch.Generator().manual_seed(3))
    owner = [0, 0, 0, 1, 1]
    comps = [row[:int(n)] for c in outs for row, n in zip(c.ids, c.lengths)]
    ids, attn, P, cmask = batch(tok, [[video.prompt_ids, image.prompt_ids][o] for o in owner],
                                comps)
    with torch.no_grad():
        lp = M.PolicyLogprobs(hf, chunk=5)(ids, attn, P, [video.visual, image.visual],
                                           owner)  # (N, L)
    rollout_lp = torch.zeros_like(lp)
    for i, c in enumerate(comps):
        rollout_lp[i, :c.numel()] = torch.cat([o.logprobs for o in outs])[i, :c.numel()]
    m = cmask.bool()
    torch.testing.assert_close(rollout_lp[m], lp[m], rtol=0, atol=5e-5)


def test_mixed_left_padded_batch_equals_each_prompt_alone(setup):
    hf, tok, video, image, stop = setup
    sp = rollout.SamplingParams(top_p=1.0, top_k=1, max_new_tokens=10)
    both = rollout.generate(hf, [video.prompt_ids, image.prompt_ids], [video.visual, image.visual],
                            [2, 3], sp, tok.pad_token_id, stop)
    alone = [rollout.generate(hf, [p.prompt_ids], [p.visual], [k], sp, tok.pad_token_id, stop)[0]
             for p, k in ((video, 2), (image, 3))]
    for b, a in zip(both, alone):
        L = a.ids.shape[1]
        assert torch.equal(b.lengths, a.lengths)
        assert torch.equal(b.ids[:, :L], a.ids) and not b.mask[:, L:].any()
        torch.testing.assert_close(b.logprobs[:, :L], a.logprobs, rtol=0, atol=2e-5)


# ---- loader.py -----------------------------------------------------------------------------------
