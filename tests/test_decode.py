"""decode.py: the decode step against the HF model's own forward, against the HF-cache loop it
replaced (fed the same noise), compiled against eager, the sampler against a known distribution,
dummy rows, the done check, LoRA."""
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import DynamicCache

import data
import decode as D
import model as M
import pixels
import rollout as R

MEDIA = pixels.MediaConfig(max_frames=8, video_min_pixels=56 * 56, video_max_pixels=56 * 56,
                           image_max_pixels=56 * 56)


@pytest.fixture(scope="module")
def policy(builtin):
    paths, tiny = builtin
    hf, tok = M.load_policy(tiny)
    samples = data.load_samples(paths["train"])
    video = next(s for s in samples if s.data_type == "video")
    image = next(s for s in samples if s.data_type == "image")
    pv = pixels.prepare(video, tok, MEDIA, shuffled=True,
                        generator=torch.Generator().manual_seed(0))
    pi = pixels.prepare(image, tok, MEDIA)
    return hf.eval(), tok, pv, pi


def _stops(tok):
    return [tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id]


def _batch(pv, pi):
    """Three prompts of unequal length (an image prompt is shorter: left padding),
    a video among them."""
    return ([pv.prompt_ids, pv.shuffled_ids, pi.prompt_ids],
            [pv.visual, pv.shuffled_visual, pi.visual])


def _prefill(hf, prompts, visuals, n, pad):
    ids, attn = R.left_pad(prompts, pad)
    owner = list(range(len(prompts)))
    pos, _ = M.rope_positions(hf, ids, attn, visuals, owner)
    cache = DynamicCache(config=hf.config.text_config)
    out = hf.model.language_model(inputs_embeds=M.embed_with_visuals(hf, ids, visuals, owner)[0],
                                  attention_mask=attn, position_ids=pos, past_key_values=cache,
                                  use_cache=True)
    rows = torch.tensor([i for i, k in enumerate(n) for _ in range(k)])
    return ids, attn, pos, cache, rows, hf.lm_head(out.last_hidden_state[:, -1][rows]).float()


def test_decode_step_teacher_forced_equals_hf_full_forward(policy):
    """Rows expanded to G = 3 and G̃ = 2 over left-padded prompts (a video, its shuffled copy, an
    image): feeding given completion tokens through forward_token gives the logits of HF's
    language_model over prompt + completion with model.rope_positions (within 1e-5, fp32)."""
    hf, tok, pv, pi = policy
    prompts, visuals = _batch(pv, pi)
    n, pad, steps = [3, 2, 2], tok.pad_token_id, 6
    ids, attn, pos, cache, rows, first = _prefill(hf, prompts, visuals, n, pad)
    R_, P = len(rows), ids.shape[1]
    comp = torch.randint(0, first.shape[-1], (R_, steps),
                         generator=torch.Generator().manual_seed(1))  # given tokens
    w = D.allocate_weights(hf, torch.float32, "cpu")
    D.refresh(w, hf)
    s = D.allocate_state(w, R_, P + steps, steps, 1)
    s.key_ok[:, :P] = attn[rows].bool()
    for i, layer in enumerate(cache.layers):
        s.k[i, :, :, :P], s.v[i, :, :, :P] = layer.keys[rows], layer.values[rows]
    s.pos[:] = pos[0, :, -1][rows] + 1
    s.col.fill_(P)
    ours = []
    for t in range(steps):
        s.tok[:] = comp[:, t]
        ours.append(D.forward_token(w, s))
        s.pos.add_(1)
        s.col.add_(1)
    ours = torch.stack(ours, 1)                                                # (R, steps, V)
    full_ids = torch.cat([ids[rows], comp], 1)
    full_attn = torch.cat([attn[rows], torch.ones_like(comp)], 1)
    owner = rows.tolist()
    # (3, R, P + steps)
    fpos, _ = M.rope_positions(hf, full_ids, full_attn, visuals, owner, prompt_len=P)
    assert (torch.equal(fpos[0, :, P:], fpos[1, :, P:])
            and torch.equal(fpos[0, :, P:], fpos[2, :, P:]))  # text: 1-D
    h = hf.model.language_model(
        inputs_embeds=M.embed_with_visuals(hf, full_ids, visuals, owner, P)[0],
        attention_mask=full_attn, position_ids=fpos).last_hidden_state
    want = hf.lm_head(h[:, P:]).float()                                        # (R, steps, V)
    assert (ours - want).abs().max() < 1e-5
    assert (first - hf.lm_head(h[:, P - 1]).float()).abs().max() < 1e-5


def _hf_loop(hf, prompts, visuals, n, sp, pad, stops, gen):
    """The rollout loop this project had before decode.py: HF's language_model over a DynamicCache,
    one token per step, a host check of "all done" every step; its draw replaced by the exponential
    race on per-step noise."""
    ids, attn, pos, cache, rows, logits = _prefill(hf, prompts, visuals, n, pad)
    cache.batch_select_indices(rows)
    attn, R_ = attn[rows], len(rows)
    next_pos = pos[0, :, -1:][rows] + 1
    done = torch.zeros(R_, dtype=torch.bool)
    toks, lps = [], []
    for step in range(sp.max_new_tokens):
        logp = F.log_softmax(logits, -1)
        noise = torch.empty(R_, logits.shape[-1]).exponential_(generator=gen)
        t = (D.filter_logits(logits, sp, None).softmax(-1) / noise).argmax(-1)
        t = torch.where(done, torch.full_like(t, pad), t)
        toks.append(t)
        lps.append(torch.where(done, torch.zeros_like(logp[:, 0]),
                               logp.gather(1, t[:, None])[:, 0]))
        done = done | torch.isin(t, torch.tensor(stops))
        if bool(done.all()) or step == sp.max_new_tokens - 1:
            break
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], 1)
        p = (next_pos + step).view(1, R_, 1).expand(3, R_, 1)
        h = hf.model.language_model(inputs_embeds=hf.model.get_input_embeddings()(t[:, None]),
                                    attention_mask=attn, position_ids=p, past_key_values=cache,
                                    use_cache=True).last_hidden_state
        logits = hf.lm_head(h[:, -1]).float()
    comp, lp = torch.stack(toks, 1), torch.stack(lps, 1)
    mask = R.completion_mask(comp, stops)
    return torch.where(mask.bool(), comp, torch.full_like(comp, pad)), mask, lp * mask


def _cat(outs):
    return (torch.cat([o.ids for o in outs]), torch.cat([o.mask for o in outs]),
            torch.cat([o.lengths for o in outs]), torch.cat([o.logprobs for o in outs]))


def test_eager_step_equals_the_hf_cache_loop_fed_the_same_noise(policy):
    hf, tok, pv, pi = policy
    prompts, visuals = _batch(pv, pi)
    sp, n = R.SamplingParams(max_new_tokens=40), [4, 2, 3]
    old_ids, old_mask, old_lp = _hf_loop(hf, prompts, visuals, n, sp, tok.pad_token_id, _stops(tok),
                                         torch.Generator().manual_seed(5))
    ids, mask, lengths, lp = _cat(R.generate(hf, prompts, visuals, n, sp, tok.pad_token_id,
                                             _stops(tok), torch.Generator().manual_seed(5),
                                             D.Decoder("off")))
    assert (torch.equal(ids, old_ids) and torch.equal(mask, old_mask)
            and torch.equal(lengths, old_mask.sum(1).long()))
    assert (lp - old_lp).abs().max() < 1e-5
    assert len(set(lengths.tolist())) > 1  # rows stopped at different steps


def test_done_every_k_and_dummy_rows_change_nothing(policy):
    """"All done" read every step or every 32 steps: the same Completions to the bit. Rows padded
    with dummy rows and the cache rounded up (bucketing, eager): the same ids, masks and lengths;
    log-probs within 1e-5 (the longer masked attention rows sum in another order: 1e-6 measured)."""
    hf, tok, pv, pi = policy
    prompts, visuals = _batch(pv, pi)
    sp, n = R.SamplingParams(max_new_tokens=40, top_k=50, repetition_penalty=1.1), [3, 2, 2]
    run = lambda dec: _cat(R.generate(hf, prompts, visuals, n, sp, tok.pad_token_id, _stops(tok),
                                      torch.Generator().manual_seed(9), dec))
    base = run(D.Decoder("off", done_every=1))
    assert all(torch.equal(a, b) for a, b in zip(base, run(D.Decoder("off", done_every=32))))
    got = run(D.Decoder("off", bucket=True, done_every=32))
    assert (all(torch.equal(a, b) for a, b in zip(base[:3], got[:3]))
            and (base[3] - got[3]).abs().max() < 1e-5)
    bucketed = D.Decoder("off", bucket=True)
    run(bucketed)
    assert (bucketed.state.tok.shape[0] == 8
            and bucketed.state.key_ok.shape[1] % D.CACHE_MULTIPLE == 0)


def test_sampler_matches_a_known_distribution_and_filter_masks():
    """The exponential race draws from softmax(filtered logits): χ² tests on 40,000 draws from a
    5-token distribution (df 4; 18.47 is the 0.1 % critical value), over the whole vocabulary and
    over top-k's k candidates (top-k 4 and top-p 0.8 leave 0.4, 0.25, 0.2 renormalised: df 2,
    13.82), and the tokens that filter_logits' top-k/top-p masks exclude are never drawn, those they
    keep all are."""
    p = torch.tensor([0.4, 0.25, 0.2, 0.1, 0.05])
    N = 40_000
    logits = p.log().expand(N, 5).contiguous()
    gen = torch.Generator().manual_seed(0)
    noise = torch.empty(N, 5).exponential_(generator=gen)
    sp = R.SamplingParams(top_p=1.0)
    tok, lp, done = D.sample(logits, noise, None, torch.zeros(N, dtype=torch.bool), sp, 99, (4,))
    counts = torch.bincount(tok, minlength=5).double()
    chi2 = float(((counts - N * p.double()) ** 2 / (N * p.double())).sum())
    assert chi2 < 18.47, (counts.tolist(), chi2)
    assert torch.allclose(lp, p.log()[tok]) and torch.equal(done, tok == 4)
    sp = R.SamplingParams(top_p=0.8, top_k=4)
    assert D.candidates(sp, 5) == 4 and D.candidates(R.SamplingParams(top_k=0), 5) == 5
    tok, _, _ = D.sample(logits, noise[:, :4], None, torch.zeros(N, dtype=torch.bool), sp, 99, ())
    q = torch.tensor([0.4, 0.25, 0.2]).double() / 0.85  # 0.65 < 0.8 <= 0.85: three kept
    counts = torch.bincount(tok, minlength=5).double()
    assert counts[3:].sum() == 0
    assert float(((counts[:3] - N * q) ** 2 / (N * q)).sum()) < 13.82, counts.tolist()
    for sp in (R.SamplingParams(top_p=0.6), R.SamplingParams(top_p=1.0, top_k=2),
               R.SamplingParams(top_p=0.9, top_k=3), R.SamplingParams(top_p=0.5, top_k=5)):
        allowed = torch.isfinite(D.filter_logits(logits[:1], sp, None))[0]
        tok, _, _ = D.sample(logits, noise[:, :D.candidates(sp, 5)], None,
                             torch.zeros(N, dtype=torch.bool), sp, 99, ())
        assert set(tok.unique().tolist()) == set(allowed.nonzero()[:, 0].tolist()), sp
    stopped = D.sample(logits[:2], noise[:2], None, torch.tensor([True, False]), sp, 99, ())
    assert stopped[0][0] == 99 and stopped[1][0] == 0


def test_compiled_equals_eager_and_compiles_once_per_bucket(policy):
    """Inductor on CPU: the same ids as eager for 24+ steps; one graph per bucket; a prompt of
    another length in the same bucket reuses it; a larger bucket (more rows) compiles exactly
    once."""
    from torch._dynamo.testing import CompileCounterWithBackend
    hf, tok, pv, pi = policy
    prompts, visuals = _batch(pv, pi)
    sp, stops = R.SamplingParams(max_new_tokens=28), [-1]  # no stop: every row runs 28 tokens
    eager = _cat(R.generate(hf, prompts, visuals, [2, 2, 2], sp, tok.pad_token_id, stops,
                            torch.Generator().manual_seed(2), D.Decoder("off")))
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    dec = D.Decoder("on")
    dec.compiled = torch.compile(D.decode_step, backend=counter, fullgraph=True, dynamic=False)
    got = _cat(R.generate(hf, prompts, visuals, [2, 2, 2], sp, tok.pad_token_id, stops,
                          torch.Generator().manual_seed(2), dec))
    assert got[0].shape[1] == 28 and torch.equal(got[0], eager[0])
    assert (got[3] - eager[3]).abs().max() < 1e-4
    assert counter.frame_count == 1 and len(dec.graphs) == 1
    R.generate(hf, prompts[2:], visuals[2:], [6], sp, tok.pad_token_id, stops,
               torch.Generator(), dec)  # shorter P

    assert counter.frame_count == 1 and len(dec.graphs) == 1
    # 12 -> 16 rows
    R.generate(hf, prompts, visuals, [4, 4, 4], sp, tok.pad_token_id, stops, torch.Generator(), dec)
    R.generate(hf, prompts, visuals, [4, 4, 4], sp, tok.pad_token_id, stops, torch.Generator(), dec)
    assert counter.frame_count == 2 and len(dec.graphs) == 2
    assert "compiled 2 graph(s)" in dec.summary()


def test_live_columns_one_graph_per_length(policy, monkeypatch):
    """Attention reads the cache up to the next multiple of LIVE_MULTIPLE past the column written:
    with a multiple of 16 the same ids and log-probs (within 1e-5) as with one view of the whole
    cache; compiled (dynamo with the eager backend: graphs counted, not built), one graph per live
    length, each traced once."""
    from torch._dynamo.testing import CompileCounter
    hf, tok, pv, pi = policy
    prompts, visuals = _batch(pv, pi)
    sp, stops = R.SamplingParams(max_new_tokens=28, top_k=20), [-1]
    run = lambda dec: _cat(R.generate(hf, prompts, visuals, [2, 2, 2], sp, tok.pad_token_id, stops,
                                      torch.Generator().manual_seed(3), dec))
    monkeypatch.setattr(D, "LIVE_MULTIPLE", 1 << 20)                          # the whole cache
    whole = run(D.Decoder("off", bucket=True))
    monkeypatch.setattr(D, "LIVE_MULTIPLE", 16)
    torch._dynamo.reset()
    counter, dec = CompileCounter(), D.Decoder("on")
    dec.compiled = torch.compile(D.decode_step, backend=counter, fullgraph=True, dynamic=False)
    got = run(dec)
    assert torch.equal(got[0], whole[0]) and (got[3] - whole[3]).abs().max() < 1e-5
    P = max(len(p) for p in prompts)
    lives = sorted({-(-(P + n) // 16) * 16 for n in range(1, 28)})
    assert [g[1] for g in dec.graphs] == lives and len(lives) >= 2
    assert counter.frame_count == len(lives)
    assert f"torch {torch.__version__}" in dec.summary()
    torch._dynamo.reset()


def test_lora_merged_copy_equals_the_peft_model(policy, builtin):
    """With adapters (B made non-zero), the decode copy's logits equal the PEFT model's forward."""
    import lora
    from types import SimpleNamespace
    hf, tok = M.load_policy(builtin[1])
    hf.eval()
    cfg = SimpleNamespace(lora_rank=4, lora_alpha=8.0, lora_dropout=0.0, lora_targets="auto",
                          lora_vision="frozen")
    lora.attach(hf, cfg, seed=0)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(hash(name) % 1000))
    _, _, pv, pi = policy
    prompts, visuals = _batch(pv, pi)
    ids, attn, pos, cache, rows, first = _prefill(hf, prompts, visuals, [1, 1, 1], tok.pad_token_id)
    w = D.allocate_weights(hf, torch.float32, "cpu")
    D.refresh(w, hf)
    s = D.allocate_state(w, 3, ids.shape[1] + 1, 1, 1)
    s.key_ok[:, :ids.shape[1]] = attn.bool()
    for i, layer in enumerate(cache.layers):
        s.k[i, :, :, :ids.shape[1]], s.v[i, :, :, :ids.shape[1]] = layer.keys, layer.values
    s.tok[:] = first.argmax(-1)
    s.pos[:] = pos[0, :, -1] + 1
    s.col.fill_(ids.shape[1])
    ours = D.forward_token(w, s)
    h = hf.model.language_model(
        inputs_embeds=hf.model.get_input_embeddings()(s.tok[:, None]),
        attention_mask=torch.cat([attn, torch.ones(3, 1, dtype=torch.long)], 1),
        position_ids=s.pos.view(1, 3, 1).expand(3, 3, 1),
        past_key_values=cache, use_cache=True).last_hidden_state
    want = hf.lm_head(h[:, -1]).float()
    assert (ours - want).abs().max() < 1e-4
    q = hf.model.language_model.layers[0].self_attn.q_proj
    # the delta is really merged
    assert not torch.allclose(D.effective_weight(q), q.base_layer.weight)


def test_decoder_refuses_unknown_mode():
    with pytest.raises(ValueError, match="compile-decode"):
        D.Decoder("yes")
    assert (not D.Decoder("auto").is_compiled(torch.device("cpu"))
            and D.Decoder("auto").is_compiled(torch.device("cuda")))
