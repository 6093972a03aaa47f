"""rollout.py: completion masks, explicit sampling filters, group generation mechanics and
prepare()."""
import math

import pytest
import torch

import data
import model as M
import decode as D
import rollout as R
import pixels


def test_completion_mask_includes_first_stop_token():
    ids = torch.tensor([[5, 6, 9, 1, 1], [5, 9, 6, 9, 1], [5, 6, 7, 8, 4]])
    # stop ids 9 (<|im_end|>) and 1 (<|endoftext|>): the mask runs through the FIRST stop token;
    # none -> whole row
    assert R.completion_mask(ids, [9, 1]).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0],
                                                       [1, 1, 1, 1, 1]]


def test_left_pad():
    ids, mask = R.left_pad([torch.tensor([3, 4, 5]), torch.tensor([7])], pad_id=0)
    assert ids.tolist() == [[3, 4, 5], [0, 0, 7]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_top_p_keeps_smallest_set_with_mass_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    keep = lambda p: torch.isfinite(
        D.filter_logits(logits, R.SamplingParams(top_p=p), None))[0].tolist()
    assert keep(0.5) == [True, False, False, False]        # 0.5 alone reaches 0.5
    assert keep(0.6) == [True, True, False, False]
    assert keep(0.95) == [True, True, True, False]         # 0.95 reached with three tokens
    assert keep(1.0) == [True, True, True, True]
    top1 = D.filter_logits(logits, R.SamplingParams(top_p=1.0, top_k=1), None)
    assert torch.isfinite(top1).sum() == 1 and torch.isfinite(top1[0, 0])
    scaled = D.filter_logits(logits, R.SamplingParams(top_p=1.0, temperature=0.5), None)
    assert torch.allclose(scaled, logits / 0.5)
    with pytest.raises(ValueError):
        D.filter_logits(logits, R.SamplingParams(temperature=0.0), None)


def test_repetition_penalty_follows_hf_rule():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    seen = torch.tensor([[True, True, False]])
    out = D.filter_logits(logits, R.SamplingParams(top_p=1.0, repetition_penalty=2.0), seen)
    assert out.tolist() == [[1.0, -2.0, 0.5]]


@pytest.fixture(scope="module")
def policy(builtin):
    paths, tiny = builtin
    hf, tok = M.load_policy(tiny)
    return hf.eval(), tok, data.load_samples(paths["train"])


def _setup(tok):
    return tok.pad_token_id, [tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id]


def test_generate_group_shapes_stops_and_determinism(policy):
    hf, tok, samples = policy
    media = pixels.MediaConfig(max_frames=8, video_min_pixels=56 * 56, video_max_pixels=56 * 56,
                               image_max_pixels=56 * 56)
    video = next(s for s in samples if s.data_type == "video")
    image = next(s for s in samples if s.data_type == "image")
    pv = pixels.prepare(video, tok, media, shuffled=True,
                        generator=torch.Generator().manual_seed(0))
    pi = pixels.prepare(image, tok, media, shuffled=True)
    assert pi.shuffled_visual is None and pv.shuffled_visual is not None
    assert torch.equal(pv.shuffled_ids, pv.prompt_ids)
    assert not torch.equal(pv.shuffled_visual.pixel_values, pv.visual.pixel_values)
    pad, stops = _setup(tok)
    sp = R.SamplingParams(max_new_tokens=12)
    run = lambda seed: R.generate(hf, [pv.prompt_ids, pv.shuffled_ids, pi.prompt_ids],
                                  [pv.visual, pv.shuffled_visual, pi.visual], [4, 2, 3], sp, pad,
                                  stops, torch.Generator().manual_seed(seed))
    a, b, c = run(0), run(0), run(1)
    assert [o.ids.shape[0] for o in a] == [4, 2, 3]
    assert all(torch.equal(x.ids, y.ids) for x, y in zip(a, b))
    assert any(not torch.equal(x.ids, y.ids) for x, y in zip(a, c))
    for o in a:
        assert torch.equal(o.lengths, o.mask.sum(1).long())
        assert (o.ids[o.mask == 0] == pad).all()                       # padded after the stop token
        assert (o.logprobs[o.mask == 0] == 0).all() and (o.logprobs[o.mask == 1] <= 0).all()
        assert o.lengths.max() <= 12


def test_generation_config_of_checkpoint_is_ignored(policy, tmp_path):
    """A 7B-style generation_config (near-greedy, repetition penalty) must not change our
    sampling (reference
    §9 item 17): generate never reads it, so outputs under a fixed seed are identical with and
    without it."""
    hf, tok, samples = policy
    pad, stops = _setup(tok)
    media = pixels.MediaConfig(max_frames=8, video_min_pixels=56 * 56, video_max_pixels=56 * 56)
    p = pixels.prepare(next(s for s in samples if s.data_type == "video"), tok, media)
    sp = R.SamplingParams(max_new_tokens=10)
    before = R.generate(hf, [p.prompt_ids], [p.visual], [4], sp, pad, stops,
                        torch.Generator().manual_seed(3))[0]
    (hf.generation_config.top_k, hf.generation_config.temperature,
     hf.generation_config.repetition_penalty) = 1, 1e-6, 1.05
    after = R.generate(hf, [p.prompt_ids], [p.visual], [4], sp, pad, stops,
                       torch.Generator().manual_seed(3))[0]
    assert torch.equal(before.ids, after.ids)
    # real sampling: 4 different completions
    assert len({tuple(r) for r in before.ids.tolist()}) > 1


def test_rope_time_uses_sample_fps(policy):
    hf, tok, samples = policy
    video = next(s for s in samples if s.data_type == "video")
    real = pixels.prepare(video, tok, pixels.MediaConfig(max_frames=8, video_min_pixels=3136,
                                                         video_max_pixels=3136))
    official = pixels.prepare(video, tok, pixels.MediaConfig(max_frames=8, video_min_pixels=3136,
                                                             video_max_pixels=3136,
                                                             rope_time="official"))
    # built-in clips are 2 fps: 1 s per grid
    assert math.isclose(real.visual.second_per_grid, 2 / 2.0)
    assert official.visual.second_per_grid == 1.0


def test_prepare_raises_media_error_for_missing_file(policy):
    hf, tok, samples = policy
    s = samples[0]
    s = data.Sample(**{**s.__dict__, "media_path": "/nonexistent/x.mp4", "data_type": "video"})
    with pytest.raises(pixels.MediaError):
        pixels.prepare(s, tok, pixels.MediaConfig())
