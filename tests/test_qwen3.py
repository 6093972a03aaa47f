"""Qwen3-VL (qwen3_vl.py): positions, timestamps, pixels, DeepStack, the rollout and the decode
step, against values computed by hand from the family's published rule and against transformers' own
Qwen3-VL code; the entry points end to end on the tiny Qwen3-VL (1 rank, 2 FSDP ranks with LoRA,
eval, export); the errors it must raise."""
import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

import common
from builtin import cache
import data
import decode as D
import model as M
import pixels
import rollout as R
from conftest import REAL, REAL_QWEN3, ROOT, run_cmd

# text, video pad, image pad, vision start, vision end (test ids)
T, VID, IMG, S, E = 7, 90, 91, 92, 93
CFG = SimpleNamespace(model_type="qwen3_vl", image_token_id=IMG, video_token_id=VID,
                      vision_config=SimpleNamespace(spatial_merge_size=2))
MEDIA = pixels.MediaConfig(max_frames=8, video_min_pixels=84 * 84, video_max_pixels=84 * 84,
                           image_max_pixels=84 * 84)


def video(t, h, w):
    """A video Visual of grid (t, h, w) patches with t timestamps
    (no pixels needed for positions)."""
    return pixels.Visual("video", torch.zeros(0), torch.tensor([t, h, w]), 1.0,
                         tuple(float(i) for i in range(t)))


def image(h, w):
    return pixels.Visual("image", torch.zeros(0), torch.tensor([1, h, w]))


def by_hand(pieces):
    """Token ids and positions (3, n) written out from the rule: text tokens count up on all axes; a
    block of (h, w) merged patches starting where text would be at s gets (s, s + r, s + c); text
    after it starts at s + max(h, w) (the block's largest position + 1)."""
    ids, pos, nxt = [], [], 0
    for kind, a, b in pieces:
        if kind == "text":
            ids += [T] * a
            pos += [(nxt + i,) * 3 for i in range(a)]
            nxt += a
        else:
            ids += [VID if kind == "video" else IMG] * (a * b)
            pos += [(nxt, nxt + r, nxt + c) for r in range(a) for c in range(b)]
            nxt += max(a, b)
    return torch.tensor(ids), torch.tensor(pos).T


def blocks_of(t, h, w):
    """A Qwen3-VL video's prompt pieces: per temporal patch, a timestamp (3 text tokens here), the
    start token, the block of merged patches, the end token."""
    out = []
    for _ in range(t):
        out += [("text", 4, 0), ("video", h // 2, w // 2), ("text", 1, 0)]
    return out


def test_positions_by_hand_and_equal_to_transformers(qwen3):
    hf = Qwen3VLForConditionalGeneration.from_pretrained(qwen3)
    cfg = SimpleNamespace(**{**CFG.__dict__, "image_token_id": hf.config.image_token_id,
                             "video_token_id": hf.config.video_token_id})
    # one block of 1x2 merged patches
    _, small = by_hand([("text", 2, 0), ("video", 1, 2), ("text", 2, 0)])
    assert small.tolist() == [[0, 1, 2, 2, 4, 5], [0, 1, 2, 2, 4, 5], [0, 1, 2, 3, 4, 5]]
    cases = [([("text", 3, 0), *blocks_of(t, 4, 6), ("text", 5, 0)], [video(t, 4, 6)])
             for t in (1, 2, 3)]
    cases.append(([("text", 2, 0), ("image", 3, 2), ("text", 4, 0), *blocks_of(2, 2, 4),
                   ("text", 3, 0)],
                  [image(6, 4), video(2, 2, 4)]))  # an image and a video in one prompt
    for pieces, visuals in cases:
        ids, want = by_hand(pieces)
        ids = torch.where(ids == VID, hf.config.video_token_id,
                          torch.where(ids == IMG, hf.config.image_token_id, ids))
        for pad in (0, 3):  # and left-padded by 3
            row = torch.cat([torch.full((pad,), T), ids])[None]
            mask = torch.cat([torch.zeros(pad, dtype=torch.long),
                              torch.ones(ids.numel(), dtype=torch.long)])[None]
            pos, delta = M.rope_positions(SimpleNamespace(config=cfg), row, mask, visuals,
                                          [list(range(len(visuals)))])
            assert torch.equal(pos[:, 0, pad:], want) and (pos[:, 0, :pad] == 1).all()
            assert int(delta) == int(want.max()) + 1 - row.shape[1]
            types = M.mm_token_types(row, hf.config)
            grids = {k: torch.stack([v.grid_thw for v in visuals if v.data_type == k])
                     for k in ("image", "video")
                     if any(v.data_type == k for v in visuals)}
            ref, _ = hf.model.get_rope_index(row, types, image_grid_thw=grids.get("image"),
                                             video_grid_thw=grids.get("video"), attention_mask=mask)
            assert torch.equal(ref[:, 0, pad:], pos[:, 0, pad:])


def test_block_count_and_size_mismatches_are_errors():
    ids, _ = by_hand([("text", 2, 0), *blocks_of(2, 4, 4), ("text", 1, 0)])
    hf = SimpleNamespace(config=CFG)
    # grid t=3, 2 blocks
    with pytest.raises(ValueError, match="row 0 has 2 vision block.*needing 3"):
        M.rope_positions(hf, ids[None], None, [video(3, 4, 4)], [0])
    with pytest.raises(ValueError, match="needs 2 timestamps"):  # no timestamps at all
        M.rope_positions(hf, ids[None], None,
                         [pixels.Visual("video", torch.zeros(0), torch.tensor([2, 4, 4]))], [0])
    # h differs from the grid's
    with pytest.raises(ValueError, match="row 0: a block of 4 video pads.*needs 6"):
        M.rope_positions(hf, ids[None], None, [video(2, 4, 6)], [0])
    rendered = "<|vision_start|><|video_pad|><|vision_end|>Q"
    with pytest.raises(ValueError, match="3 timestamps for 2 temporal patches"):
        data.expand_media_tokens(rendered, "video", (2, 4, 4), 2, timestamps=[0.5, 1.5, 2.5])


def test_timestamps_by_hand_and_in_the_prompt(qwen3):
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    idx = np.linspace(0, 232, 8).round().astype(int).tolist()
    assert idx == [0, 33, 66, 99, 133, 166, 199, 232]
    times = pixels.patch_times([i / 30 for i in idx])
    # (0+33)/2/30 = 0.55, ... 215.5/30
    assert [f"{x:.1f}" for x in times] == ["0.6", "2.8", "5.0", "7.2"]
    assert times == Qwen3VLProcessor._calculate_timestamps(None, idx, 30.0, 2)
    assert pixels.patch_times([0.0, 1.0, 2.0]) == [0.5, 2.0]  # odd count: the last time repeated
    _, tok = M.load_policy(qwen3)
    text = tok.decode(data.encode_prompt(tok, "Q?", "video", (4, 4, 6), 2, timestamps=times))
    blocks = "".join(f"<{x} seconds><|vision_start|>" + "<|video_pad|>" * 6 + "<|vision_end|>"
                     for x in ("0.6", "2.8", "5.0", "7.2"))
    assert f"<|im_start|>user\n{blocks}Q?<|im_end|>" in text  # the triple replaced as a whole (Q2)


@pytest.mark.parametrize("frames", [4, 3])
def test_patchify_equals_the_qwen3_video_processor(frames):
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
    x = torch.randint(0, 256, (frames, 3, 64, 96), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(frames))
    ours, grid = pixels.patchify(x, patch_size=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    norm = (x.float() / 255 - 0.5) / 0.5  # the processor's rescale + normalize
    ref, t, h, w = Qwen3VLVideoProcessor.patchify(None, norm[None], patch_size=16, merge_size=2,
                                                  temporal_patch_size=2)
    assert grid.tolist() == [t, h, w] == [2, 4, 6] and ours.shape == (48, 1536)
    torch.testing.assert_close(ours, ref[0], rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def prepared(qwen3, builtin):
    hf, tok = M.load_policy(qwen3)
    media = common.media_config(MEDIA, hf.config)
    samples = data.load_samples(builtin[0]["train"])
    v = pixels.prepare(next(s for s in samples if s.data_type == "video"), tok, media,
                       shuffled=True, generator=torch.Generator().manual_seed(0))
    i = pixels.prepare(next(s for s in samples if s.data_type == "image"), tok, media)
    return hf.eval(), tok, v, i


def test_media_config_and_shuffled_copy_keep_the_ordered_timestamps(prepared):
    hf, tok, v, _ = prepared
    assert v.visual.pixel_values.shape[1] == 3 * 2 * 16 * 16 and v.visual.timestamps is not None
    assert len(v.visual.timestamps) == int(v.visual.grid_thw[0])
    assert (v.shuffled_visual.timestamps == v.visual.timestamps
            and torch.equal(v.shuffled_ids, v.prompt_ids))  # Q3
    assert not torch.equal(v.shuffled_visual.pixel_values, v.visual.pixel_values)


def _rows(v, i, tok):
    comp = torch.randint(3, 250, (6,), generator=torch.Generator().manual_seed(1))
    ids, attn = R.left_pad([v.prompt_ids, i.prompt_ids], tok.pad_token_id)
    P = ids.shape[1]
    return (torch.cat([ids, comp.expand(2, -1)], 1),
            torch.cat([attn, torch.ones(2, 6, dtype=torch.long)], 1), P, comp)


def test_logprobs_equal_the_hf_forward_and_need_deepstack(prepared, monkeypatch):
    hf, tok, v, i = prepared
    ids, attn, P, comp = _rows(v, i, tok)
    with torch.no_grad():
        ours = M.PolicyLogprobs(hf)(ids, attn, P, [v.visual, i.visual], [0, 1])        # (2, 6)
        for b, vis in enumerate([v.visual, i.visual]):
            row = ids[b:b + 1, attn[b] == 1]
            kw = ({"pixel_values_videos": vis.pixel_values, "video_grid_thw": vis.grid_thw[None]}
                  if b == 0 else
                  {"pixel_values": vis.pixel_values, "image_grid_thw": vis.grid_thw[None]})
            logits = hf(input_ids=row, mm_token_type_ids=M.mm_token_types(row, hf.config),
                        **kw).logits[0, -7:-1]
            ref = torch.log_softmax(logits.float(), -1).gather(-1, comp[:, None])[:, 0]
            torch.testing.assert_close(ours[b], ref, rtol=0, atol=1e-5)
        import qwen3_vl
        full = qwen3_vl.vision
        monkeypatch.setattr(qwen3_vl, "vision", lambda *a: (full(*a)[0], []))  # DeepStack left out
        without = M.PolicyLogprobs(hf)(ids, attn, P, [v.visual, i.visual], [0, 1])
    assert (without - ours).abs().max() > 1e-3


def test_sampler_logprobs_and_compiled_step_equal_eager(prepared):
    hf, tok, v, i = prepared
    prompts, visuals = ([v.prompt_ids, v.shuffled_ids, i.prompt_ids],
                        [v.visual, v.shuffled_visual, i.visual])
    sp, stops = R.SamplingParams(max_new_tokens=10, top_k=50), common.stop_ids(tok)
    outs = R.generate(hf, prompts, visuals, [2, 1, 2], sp, tok.pad_token_id, stops,
                      torch.Generator().manual_seed(3), D.Decoder("off"))
    for k, (c, p) in enumerate(zip(outs, prompts)):
        ids, attn = R.left_pad([p] * c.ids.shape[0], tok.pad_token_id)
        with torch.no_grad():
            lp = M.PolicyLogprobs(hf)(torch.cat([ids, c.ids], 1),
                                      torch.cat([attn, c.mask.long()], 1), p.numel(), visuals,
                                      [k] * c.ids.shape[0])
        assert ((lp - c.logprobs) * c.mask).abs().max() < 1e-5
    torch._dynamo.reset()
    got = R.generate(hf, prompts, visuals, [2, 1, 2], sp, tok.pad_token_id, stops,
                     torch.Generator().manual_seed(3), D.Decoder("on"))
    for a, b in zip(outs, got):
        assert torch.equal(a.ids, b.ids) and (a.logprobs - b.logprobs).abs().max() < 1e-4


def test_thinking_template_does_not_open_think(qwen3):
    """Q4: a template whose generation prompt opens "<think>\\n"
    (a Thinking checkpoint's) is rendered without it."""
    _, tok = M.load_policy(qwen3)
    plain = data.render_prompt(tok, "Q?", "video")
    tok.chat_template = tok.chat_template.replace("assistant\n{% endif %}",
                                                  "assistant\n<think>\n{% endif %}")
    assert tok.apply_chat_template([{"role": "user", "content": "Q?"}], tokenize=False,
                                   add_generation_prompt=True).endswith("<think>\n")
    assert data.render_prompt(tok, "Q?", "video") == plain


def _one_frame_clip(path):
    import av
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), dtype=np.uint8), format="rgb24")
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def test_media_errors_name_the_file(qwen3, tmp_path):
    _, tok = M.load_policy(qwen3)
    media = common.media_config(MEDIA, Qwen3VLConfig.from_pretrained(qwen3))
    clip = tmp_path / "one.mp4"
    _one_frame_clip(clip)
    sample = data.Sample(problem_id=1, problem="Q?", data_type="video",
                         problem_type="multiple choice", options=["A. a", "B. b"],
                         solution="<answer>A</answer>", path="./one.mp4", media_path=str(clip))
    with pytest.raises(pixels.MediaError, match=f"{clip}.*too few frames"):
        pixels.prepare(sample, tok, media)
    frames = torch.zeros(4, 3, 64, 64, dtype=torch.uint8)
    with pytest.raises(pixels.MediaError,
                       match="clip.mp4: a Qwen3-VL prompt needs each frame's source time"):
        # no source fps / frame indices
        pixels.to_visual(frames, 2.0, (), "video", media, "clip.mp4")


def test_entry_points_end_to_end(qwen3, builtin, tmp_path):
    """sft.py (1 rank) -> train.py (2 FSDP ranks, LoRA, each rank its own prompts) -> eval.py on the
    tiny Qwen3-VL, and train.py on 1 rank; the exported folder is a plain
    Qwen3VLForConditionalGeneration whose own forward gives our log-probs."""
    paths = builtin[0]
    py, tr = sys.executable, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                              "--nproc_per_node=2"]
    base = ["--cache-dir", str(tmp_path / "cache"), "--preset", "tiny"]
    run_cmd([py, str(ROOT / "sft.py"), "--model", str(qwen3), "--data", str(paths["train_cot"]),
             "--steps", "2", "--eval-samples", "0", "--out-dir", str(tmp_path / "sft"), *base],
            tmp_path)
    run_cmd(tr + [str(ROOT / "train.py"), "--model", str(tmp_path / "sft" / "final"), "--data",
                  str(paths["train"]), "--steps", "1", "--G", "2", "--max-completion-length", "8",
                  "--prompts-per-rank", "2", "--dist", "fsdp", "--lora-rank", "4", "--eval-samples",
                  "0", "--out-dir", str(tmp_path / "rl"), *base], tmp_path)
    proc = run_cmd([py, str(ROOT / "train.py"), "--model", str(qwen3), "--data",
                    str(paths["train"]), "--steps", "1", "--G", "2", "--max-completion-length", "8",
                    "--eval-samples", "0", "--out-dir", str(tmp_path / "rl1"), *base], tmp_path)
    assert (json.loads((tmp_path / "rl1" / "metrics.jsonl").read_text().splitlines()[-1])["step"]
            == 1), proc.stdout
    run_cmd([py, str(ROOT / "eval.py"), "--model", str(tmp_path / "rl" / "final"), "--data",
             str(paths["test"]), "--limit", "2", "--max-new-tokens", "8", "--out-dir",
             str(tmp_path / "eval"), *base],
            tmp_path)
    assert (tmp_path / "eval" / "results.md").exists()
    out = tmp_path / "rl" / "final"
    assert ({"preprocessor_config.json", "video_preprocessor_config.json"}
            <= {p.name for p in out.iterdir()})
    plain = Qwen3VLForConditionalGeneration.from_pretrained(out).eval()       # plain transformers
    ours, tok = M.load_policy(out)
    media = common.media_config(MEDIA, ours.config)
    v = pixels.prepare(next(s for s in data.load_samples(paths["train"]) if s.data_type == "video"),
                       tok, media)
    comp = torch.tensor([5, 6, 7, 8])
    ids = torch.cat([v.prompt_ids, comp])[None]
    with torch.no_grad():
        got = M.PolicyLogprobs(ours.eval())(ids, torch.ones_like(ids), v.prompt_ids.numel(),
                                            [v.visual], [0])
        logits = plain(input_ids=ids, mm_token_type_ids=M.mm_token_types(ids, plain.config),
                       pixel_values_videos=v.visual.pixel_values,
                       video_grid_thw=v.visual.grid_thw[None]).logits
    ref = torch.log_softmax(logits[0, -5:-1].float(), -1).gather(-1, comp[:, None])[:, 0]
    torch.testing.assert_close(got[0], ref, rtol=0, atol=1e-5)


def test_preset_builds_the_tiny_qwen3_once_and_selects_the_tiny_preset(builtin, tmp_path,
                                                                       monkeypatch):
    """--model preset:tiny-qwen3-vl: cache.resolve_model builds the tiny Qwen3-VL under the cache
    (from the built-in data's text) once, and the tiny frames and pixels apply
    (common.apply_preset)."""
    import distributed
    import train
    monkeypatch.setattr(cache, "paths", lambda cache, proc, model=True: builtin[0])
    folder = cache.resolve_model("preset:tiny-qwen3-vl", tmp_path, distributed.Dist())
    assert (folder == str(tmp_path / "tiny-qwen3-vl")
            and M.family(Qwen3VLConfig.from_pretrained(folder)).MODEL_CLASS
                is Qwen3VLForConditionalGeneration)

    stamp = (tmp_path / "tiny-qwen3-vl" / "model.safetensors").stat().st_mtime_ns
    assert cache.resolve_model("preset:tiny-qwen3-vl", tmp_path, distributed.Dist()) == folder
    # built once
    assert (tmp_path / "tiny-qwen3-vl" / "model.safetensors").stat().st_mtime_ns == stamp
    assert cache.resolve_model("some/folder", tmp_path, distributed.Dist()) == "some/folder"
    cfg = train.finish_config(train.Config(model="preset:tiny-qwen3-vl"), {"model"})
    assert cfg.preset == "tiny" and cfg.max_frames == 8


@pytest.mark.skipif(not (REAL_QWEN3 / "config.json").exists()
                    or not (REAL / "tokenizer.json").exists(),
                    reason="../shared absent (fresh clone)")
def test_narrow_real_structure(tmp_path):
    """Qwen3-VL-8B-Instruct's config narrowed (tiny.WIDTHS_QWEN3) with the real Qwen2.5 tokenizer
    plus the four added tokens: the real ids, q/k norms and interleaved mRoPE in the decode step,
    DeepStack in the log-prob pass."""
    from builtin import tiny
    folder = tiny.build_like_7b(tmp_path / "narrow3", "narrow", REAL, source=str(REAL_QWEN3))
    hf, tok = M.load_policy(folder)
    assert (tok.convert_tokens_to_ids("<think>") == 151667
            and tok.convert_tokens_to_ids("</think>") == 151668)
    assert (hf.config.text_config.head_dim == 128
            and len(hf.config.vision_config.deepstack_visual_indexes) == 3)
    frames = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    media = common.media_config(MEDIA, hf.config)
    vis = pixels.to_visual(frames, 2.0, (0.0, 0.5, 1.0, 1.5), "video", media)
    prompt = data.encode_prompt(tok, "What happens?", "video", vis.grid_thw, 2,
                                timestamps=vis.timestamps)
    sp = R.SamplingParams(max_new_tokens=4, top_k=50)
    c = R.generate(hf.eval(), [prompt], [vis], [2], sp, tok.pad_token_id, common.stop_ids(tok),
                   torch.Generator().manual_seed(0))[0]
    ids, attn = R.left_pad([prompt] * 2, tok.pad_token_id)
    with torch.no_grad():
        lp = M.PolicyLogprobs(hf)(torch.cat([ids, c.ids], 1), torch.cat([attn, c.mask.long()], 1),
                                  prompt.numel(), [vis], [0, 0])
    assert ((lp - c.logprobs) * c.mask).abs().max() < 1e-4
