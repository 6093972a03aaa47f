"""model.rope_positions: Qwen2.5-VL's mRoPE rule (transformers 4.49 `get_rope_index`), checked
against positions worked out BY HAND from the rule, never by calling transformers.

The rule (merge m = 2, tokens_per_second = 2 here): text tokens get one value on all 3 axes,
previous + 1; a vision block of grid (t, h, w) patches is a (t, h/2, w/2) merged grid in (frame,
row, column) order; with s = the position its first token would have as text, token (i, r, c) sits
at (s + trunc(i * second_per_grid * 2), s + r, s + c), the product in float32; images use
second_per_grid 0; the text after a block starts at the block's max + 1; padding gets 1; deltas =
max position + 1 - T per row.
"""
from types import SimpleNamespace

import pytest
import torch

import data
import decode as D
import model as M
import rollout as R
import pixels

IMG, VID, PAD = 90, 91, 0
HF = SimpleNamespace(config=SimpleNamespace(model_type="qwen2_5_vl", image_token_id=IMG,
                                            video_token_id=VID, vision_config=SimpleNamespace(
    spatial_merge_size=2, tokens_per_second=2)))


def video(t, h, w, spg):
    return pixels.Visual("video", torch.zeros(0), torch.tensor([t, h, w]), spg)


def image(h, w):
    return pixels.Visual("image", torch.zeros(0), torch.tensor([1, h, w]), 0.0)


def positions(rows, visuals, owner, prompt_len=None):
    """rows: lists of ids, left-padded with PAD to one length
    (mask 0 on the PADs). -> (pos (3, B, T), deltas)."""
    ids = torch.tensor(rows)
    pos, deltas = M.rope_positions(HF, ids, (ids != PAD).long(), visuals, owner, prompt_len)
    assert pos.dtype == torch.long and deltas.dtype == torch.long and deltas.shape == (len(rows), 1)
    return pos.tolist(), deltas[:, 0].tolist()


def test_video_2x4x4_second_per_grid_half():
    # text 0 1 | block s=2: 2x2x2 merged, t = trunc(i * 0.5 * 2) = i | text from max 3 + 1
    pos, d = positions([[1, 2] + [VID] * 8 + [3, 4]], [video(2, 4, 4, 0.5)], [0])
    assert pos == [[[0, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 5]],
                   [[0, 1, 2, 2, 3, 3, 2, 2, 3, 3, 4, 5]],
                   [[0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 4, 5]]]
    assert d == [5 + 1 - 12]


def test_video_second_per_grid_one_text_after_block_max():
    # t = trunc(i * 1 * 2) = 0, 2 -> block max 4 on the t axis, so the text restarts at 5
    # (transformers 5.x would restart at s + max(h, w)/2 = 4)
    pos, d = positions([[1, 2] + [VID] * 8 + [3, 4]], [video(2, 4, 4, 1.0)], [0])
    assert pos == [[[0, 1, 2, 2, 2, 2, 4, 4, 4, 4, 5, 6]],
                   [[0, 1, 2, 2, 3, 3, 2, 2, 3, 3, 5, 6]],
                   [[0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 5, 6]]]
    assert d == [6 + 1 - 12]


def test_video_4x8x4_second_per_grid_075_truncates():
    # merged 4x4x2 (32 tokens), s = 1; t = trunc(i * 0.75 * 2) = trunc(1.5 i) = 0, 1, 3, 4;
    # max = 1 + 4 = 5
    pos, d = positions([[7] + [VID] * 32 + [8]], [video(4, 8, 4, 0.75)], [0])
    t = [1] * 8 + [2] * 8 + [4] * 8 + [5] * 8
    h = [1, 1, 2, 2, 3, 3, 4, 4] * 4
    w = [1, 2] * 16
    assert pos == [[[0] + t + [6]], [[0] + h + [6]], [[0] + w + [6]]]
    assert d == [6 + 1 - 34]


def test_video_second_per_grid_above_one():
    # 2.5 s per grid: t = trunc(i * 5) = 0, 5; s = 2, max 7 -> text at 8
    pos, _ = positions([[1, 2] + [VID] * 8 + [3]], [video(2, 4, 4, 2.5)], [0])
    assert pos[0][0] == [0, 1, 2, 2, 2, 2, 7, 7, 7, 7, 8]
    assert pos[1][0] == [0, 1, 2, 2, 3, 3, 2, 2, 3, 3, 8]
    # 7.5 s per grid (16 frames of a 60 s clip): t = 15 i; grid 3x2x4 -> merged 3x1x2, s = 1, max 31
    pos, d = positions([[1] + [VID] * 6 + [3]], [video(3, 2, 4, 7.5)], [0])
    assert pos == [[[0, 1, 1, 16, 16, 31, 31, 32]], [[0, 1, 1, 1, 1, 1, 1, 32]],
                   [[0, 1, 2, 1, 2, 1, 2, 32]]]
    assert d == [32 + 1 - 8]


def test_time_product_is_float32():
    # 16 frames over 31.2 s: second_per_grid = 2 / (16 / 31.2) = 3.8999999999999995 in float64. In
    # float32 it is 3.9000001; i * that * 2 = 0, 7.8, 15.6, 23.4, 31.2, 39.000004 -> 0, 7, 15, 23,
    # 31, 39 (float64 gives 38 at i=5)
    spg = 2.0 / (16 / 31.2)
    pos, _ = positions([[1] + [VID] * 6 + [2]], [video(6, 2, 2, spg)], [0])
    assert pos[0][0] == [0, 1, 8, 16, 24, 32, 40, 41]
    assert pos[1][0] == pos[2][0] == [0, 1, 1, 1, 1, 1, 1, 41]


def test_image_1x4x6_ignores_second_per_grid():
    # merged 1x2x3 at s = 3; an image's time factor is 0 whatever second_per_grid says;
    # max 3 + 2 = 5
    vis = pixels.Visual("image", torch.zeros(0), torch.tensor([1, 4, 6]), 7.5)
    pos, d = positions([[1, 2, 3] + [IMG] * 6 + [4, 5]], [vis], [0])
    assert pos == [[[0, 1, 2, 3, 3, 3, 3, 3, 3, 6, 7]],
                   [[0, 1, 2, 3, 3, 3, 4, 4, 4, 6, 7]],
                   [[0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7]]]
    assert d == [7 + 1 - 11]


def test_left_padded_batch_of_video_and_image_rows():
    # row 0: video as in test_video_2x4x4_second_per_grid_half; row 1: 4 pads (-> 1), text 0, image
    # 1x4x6 at s = 1 (t 1, h 1..2, w 1..3, max 3), text 4
    rows = [[1, 2] + [VID] * 8 + [3, 4], [PAD] * 4 + [5] + [IMG] * 6 + [6]]
    pos, d = positions(rows, [video(2, 4, 4, 0.5), image(4, 6)], [0, 1])
    assert pos[0] == [[0, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 5], [1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 4]]
    assert pos[1] == [[0, 1, 2, 2, 3, 3, 2, 2, 3, 3, 4, 5], [1, 1, 1, 1, 0, 1, 1, 1, 2, 2, 2, 4]]
    assert pos[2] == [[0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 4, 5], [1, 1, 1, 1, 0, 1, 2, 3, 1, 2, 3, 4]]
    assert d == [5 + 1 - 12, 4 + 1 - 12]


def test_owner_shares_visuals_and_rows_may_hold_several_blocks():
    # rows 0 and 2 share visual 0; row 1 holds an image then a video: text 0 | image s=1 (max 3) |
    # text 4 | video 2x4x4 at 1 s per grid, s=5: t 5, 5, 5, 5, 7, 7, 7, 7 (max 7) | text 8
    v = video(2, 4, 4, 0.5)
    short = [PAD] * 7 + [1, 2] + [VID] * 8 + [3, 4]
    rows = [short, [1] + [IMG] * 6 + [2] + [VID] * 8 + [3, 9, 9], short]
    pos, d = positions(rows, [v, image(4, 6), video(2, 4, 4, 1.0)], [0, [1, 2], 0])
    assert pos[0][1] == [0, 1, 1, 1, 1, 1, 1, 4, 5, 5, 5, 5, 7, 7, 7, 7, 8, 9, 10]
    assert pos[1][1] == [0, 1, 1, 1, 2, 2, 2, 4, 5, 5, 6, 6, 5, 5, 6, 6, 8, 9, 10]
    assert pos[2][1] == [0, 1, 2, 3, 1, 2, 3, 4, 5, 6, 5, 6, 5, 6, 5, 6, 8, 9, 10]
    assert pos[0][0] == pos[0][2] == [1] * 7 + [0, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 5]
    assert d == [5 + 1 - 19, 10 + 1 - 19, 5 + 1 - 19]


def test_pad_id_in_completion_is_text():
    # prompt (P = 10): text 0 | video 2x4x4 at 1 s per grid, s=1 (t 1, 3; max 3) | text 4;
    # completion: a sampled <|video_pad|> and a word are text 5, 6
    ids = [1] + [VID] * 8 + [2] + [VID, 3]
    pos, d = positions([ids], [video(2, 4, 4, 1.0)], [0], prompt_len=10)
    assert pos == [[[0, 1, 1, 1, 1, 3, 3, 3, 3, 4, 5, 6]],
                   [[0, 1, 1, 2, 2, 1, 1, 2, 2, 4, 5, 6]],
                   [[0, 1, 2, 1, 2, 1, 2, 1, 2, 4, 5, 6]]]
    assert d == [6 + 1 - 12]
    with pytest.raises(ValueError, match="row 0"):  # without prompt_len: 9 pads != 8
        positions([ids], [video(2, 4, 4, 1.0)], [0])


def test_mismatches_raise_naming_the_row():
    good = [1] + [VID] * 8 + [2]
    with pytest.raises(ValueError, match="row 1"):  # 7 pad tokens for 2*4*4/4 = 8
        positions([good, [PAD, 1] + [VID] * 7 + [2]], [video(2, 4, 4, 1.0)], [0, 0])
    with pytest.raises(ValueError, match="row 0"):  # image visual, video pads
        positions([good], [image(4, 8)], [0])
    with pytest.raises(ValueError, match="row 0"):  # two blocks, one visual
        positions([[1] + [VID] * 8 + [2] + [VID] * 8], [video(2, 4, 4, 1.0)], [0])
    with pytest.raises(ValueError, match="row 0"):  # no block for its visual
        positions([[1, 2, 3]], [video(2, 4, 4, 1.0)], [0])


def test_reads_a_real_qwen2_5_vl_config():
    from transformers import Qwen2_5_VLConfig
    cfg = Qwen2_5_VLConfig(vision_config=dict(spatial_merge_size=2, tokens_per_second=2),
                           image_token_id=IMG, video_token_id=VID)
    ids = torch.tensor([[1, 2] + [VID] * 8 + [3, 4]])
    pos, _ = M.rope_positions(SimpleNamespace(config=cfg), ids, None, [video(2, 4, 4, 1.0)], [0])
    assert pos[0, 0].tolist() == [0, 1, 2, 2, 2, 2, 4, 4, 4, 4, 5, 6]


def test_rollout_continuation_equals_rope_positions_over_prompt_and_completion(builtin,
                                                                               monkeypatch):
    """rollout.generate feeds completion token j at last prompt position + 1 + j on all 3 axes (the
    decode step's 1-D RoPE position, decode.py); that is what rope_positions gives over prompt +
    completion (media only in the prompt), so the log-prob pass matches."""
    hf, tok = M.load_policy(builtin[1])
    hf.eval()
    torch.manual_seed(0)
    # t to 15 > h, w
    vis = [pixels.Visual("video", torch.randn(4 * 4 * 4, 1176), torch.tensor([4, 4, 4]), 2.5),
           pixels.Visual("image", torch.randn(1 * 4 * 6, 1176), torch.tensor([1, 4, 6]), 0.0)]
    prompts = [data.encode_prompt(tok, "What happens?", "video", vis[0].grid_thw),
               data.encode_prompt(tok, "What is shown here, in detail?", "image", vis[1].grid_thw)]
    seen, fed = [], []
    lm, forward = hf.model.language_model, hf.model.language_model.forward
    monkeypatch.setattr(lm, "forward", lambda *a, **kw: (seen.append(kw["position_ids"].clone())
                                                         or forward(*a, **kw)))

    step = D.forward_token  # the decode step's decoder call
    monkeypatch.setattr(D, "forward_token",
                        lambda w, s, live=None: fed.append(s.pos.clone()) or step(w, s, live))
    sp = R.SamplingParams(max_new_tokens=6, top_p=1.0)
    outs = R.generate(hf, prompts, vis, [2, 1], sp, tok.pad_token_id, [tok.pad_token_id],
                      torch.Generator().manual_seed(0), D.Decoder("off"))
    S = len(fed)  # completion tokens fed back
    assert S >= 3 and len(seen) == 1  # one prefill, then the decode step
    fed = torch.stack(fed, -1)[None].expand(3, -1, -1)  # (3, R, S): a text token's 3 axes agree
    pids, pattn = R.left_pad(prompts, tok.pad_token_id)                        # (2, P)
    P, owner = pids.shape[1], [0, 0, 1]
    comp = torch.cat([o.ids for o in outs])[:, :S]                             # (R, S)
    ids = torch.cat([pids[owner], comp], 1)                                    # (R, P + S)
    attn = torch.cat([pattn[owner], torch.ones_like(comp)], 1)                 # (R, P + S)
    want, _ = M.rope_positions(hf, ids, attn, vis, owner, P)                   # (3, R, P + S)
    assert torch.equal(seen[0], want[:, [0, 2], :P])                           # the prompt pass
    assert torch.equal(fed, want[:, :, P:])
    # last prompt position + 1 + j
    assert torch.equal(fed, want[:, :, P - 1:P] + 1 + torch.arange(S))
    # the video prompt's text after the clip starts above block start + max(h, w)/2 (the 5.x rule):
    # t reaches 15
    blk = (ids[0] == hf.config.video_token_id).nonzero()[:, 0]  # (16,) its pad positions
    assert want[0, 0, blk[-1] + 1] == want[0, 0, blk[0]] + 16
