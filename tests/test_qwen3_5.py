"""Qwen3.5 (qwen3_5.py, the hybrid Gated DeltaNet + attention family): positions by hand and against
transformers' Qwen3_5Model.get_rope_index, the log-prob pass against HF's forward, LoRA on both
layer kinds, FSDP units, the tiny preset, and the folders it must refuse (naming the file and the
field)."""

import json
from types import SimpleNamespace

import pytest
import torch
from test_qwen3 import IMG, MEDIA, VID, T, blocks_of, by_hand, image, video
from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

import checkpoint
import common
from builtin import cache
import data
import distributed
import model as M
import pixels
import qwen3_5
import rollout as R


@pytest.fixture(scope="module")
def qwen35(builtin, tmp_path_factory):
    """The tiny random Qwen3.5 (what --model preset:tiny-qwen3.5 builds) in a module temp dir."""
    from builtin.tiny import build_builtin_tiny_qwen3_5

    return build_builtin_tiny_qwen3_5(
        tmp_path_factory.mktemp("qwen35") / "tiny-qwen3.5", builtin[0]["train_cot"]
    )


@pytest.fixture(scope="module")
def prepared(qwen35, builtin):
    hf, tok = M.load_policy(qwen35)
    media = common.media_config(MEDIA, hf.config)
    samples = data.load_samples(builtin[0]["train"])
    v = pixels.prepare(
        next(s for s in samples if s.data_type == "video"),
        tok,
        media,
        shuffled=True,
        generator=torch.Generator().manual_seed(0),
    )
    i = pixels.prepare(next(s for s in samples if s.data_type == "image"), tok, media)
    return hf.eval(), tok, v, i


def test_family_structure_and_media(prepared):
    hf, _, v, _ = prepared
    assert M.family(hf.config) is qwen3_5 and isinstance(hf, Qwen3_5ForConditionalGeneration)
    kinds = hf.config.text_config.layer_types
    assert kinds == ["linear_attention"] * 3 + ["full_attention"]
    assert [hasattr(layer, "linear_attn") for layer in hf.model.language_model.layers] == [
        True
    ] * 3 + [False]
    assert v.visual.pixel_values.shape[1] == 3 * 2 * 16 * 16 and len(v.visual.timestamps) == int(
        v.visual.grid_thw[0]
    )
    assert (
        qwen3_5.vision(hf, v.visual.pixel_values, v.visual.grid_thw[None])[1] == []
    )  # no DeepStack
    assert distributed.block_classes(hf) == (
        "Qwen3_5DecoderLayer",
        "Qwen3_5VisionBlock",
    )  # FSDP units


def test_positions_by_hand_and_equal_to_transformers(qwen35):
    """Text after a video's timestamped blocks restarts at each block's s + max(h, w) (by_hand),
    padding gets 1; 5.23's Qwen3_5Model.get_rope_index gives the same positions on the real
    tokens."""
    hf = Qwen3_5ForConditionalGeneration.from_pretrained(qwen35)
    cfg = SimpleNamespace(
        model_type="qwen3_5",
        image_token_id=hf.config.image_token_id,
        video_token_id=hf.config.video_token_id,
        vision_config=SimpleNamespace(spatial_merge_size=2),
    )
    _, small = by_hand([("text", 2, 0), ("video", 1, 2), ("text", 2, 0)])
    assert small.tolist() == [[0, 1, 2, 2, 4, 5], [0, 1, 2, 2, 4, 5], [0, 1, 2, 3, 4, 5]]
    ids, two = by_hand(
        [("text", 1, 0), *blocks_of(2, 2, 4), ("text", 1, 0)]
    )  # 2 blocks of 1x2, timestamps
    assert (
        two[0].tolist() == two[1].tolist() == [0, 1, 2, 3, 4, 5, 5, 7, 8, 9, 10, 11, 12, 12, 14, 15]
    )  # after: s + 2
    assert two[2].tolist() == list(range(16))
    cases = [
        ([("text", 3, 0), *blocks_of(t, 4, 6), ("text", 5, 0)], [video(t, 4, 6)]) for t in (1, 3)
    ]
    cases.append(
        (
            [("text", 2, 0), ("image", 3, 2), ("text", 4, 0), *blocks_of(2, 2, 4), ("text", 3, 0)],
            [image(6, 4), video(2, 2, 4)],
        )
    )
    for pieces, visuals in cases:
        ids, want = by_hand(pieces)
        ids = torch.where(
            ids == VID,
            hf.config.video_token_id,
            torch.where(ids == IMG, hf.config.image_token_id, ids),
        )
        for pad in (0, 3):
            row = torch.cat([torch.full((pad,), T), ids])[None]
            mask = torch.cat(
                [torch.zeros(pad, dtype=torch.long), torch.ones(ids.numel(), dtype=torch.long)]
            )[None]
            pos, delta = M.rope_positions(
                SimpleNamespace(config=cfg), row, mask, visuals, [list(range(len(visuals)))]
            )
            assert torch.equal(pos[:, 0, pad:], want) and (pos[:, 0, :pad] == 1).all()
            assert int(delta) == int(want.max()) + 1 - row.shape[1]
            grids = {
                k: torch.stack([v.grid_thw for v in visuals if v.data_type == k])
                for k in ("image", "video")
                if any(v.data_type == k for v in visuals)
            }
            ref, _ = hf.model.get_rope_index(
                row,
                M.mm_token_types(row, hf.config),
                image_grid_thw=grids.get("image"),
                video_grid_thw=grids.get("video"),
                attention_mask=mask,
            )
            assert torch.equal(ref[:, 0, pad:], pos[:, 0, pad:])


def test_partial_rotary_leaves_three_quarters_of_each_head_unrotated(qwen35):
    """Rotary on the first quarter of each head (partial_rotary_factor 0.25): 64-dim heads get 8
    frequencies, and moving every position changes q in dims [0, 16) only."""
    hf = Qwen3_5ForConditionalGeneration.from_pretrained(qwen35)
    from transformers.models.qwen3_5.modeling_qwen3_5 import apply_rotary_pos_emb

    rot = hf.model.language_model.rotary_emb
    assert rot.inv_freq.shape == (8,) and hf.config.text_config.head_dim == 64
    q = torch.randn(1, 4, 3, 64)
    outs = []
    for shift in (0, 5):
        pos = (torch.arange(3) + shift).expand(3, 1, 3)
        cos, sin = rot(q, pos)
        outs.append(apply_rotary_pos_emb(q, q, cos, sin)[0])
    assert (outs[0][..., :16] - outs[1][..., :16]).abs().max() > 1e-3
    assert torch.equal(outs[0][..., 16:], outs[1][..., 16:]) and torch.equal(
        outs[0][..., 16:], q[..., 16:]
    )


def _rows(v, i, tok):
    comp = torch.randint(3, 250, (6,), generator=torch.Generator().manual_seed(1))
    ids, attn = R.left_pad([v.prompt_ids, i.prompt_ids], tok.pad_token_id)
    P = ids.shape[1]
    return (
        torch.cat([ids, comp.expand(2, -1)], 1),
        torch.cat([attn, torch.ones(2, 6, dtype=torch.long)], 1),
        P,
        comp,
    )


def test_logprobs_equal_the_hf_forward(prepared):
    """PolicyLogprobs on left-padded prompts of unequal length (a video, an image) equals HF's own
    forward of each unpadded row (its get_rope_index positions, its vision path) within 1e-5 in
    float32."""
    hf, tok, v, i = prepared
    ids, attn, P, comp = _rows(v, i, tok)
    assert (attn[:, :P] == 0).any()  # one row is left-padded
    with torch.no_grad():
        ours = M.PolicyLogprobs(hf)(ids, attn, P, [v.visual, i.visual], [0, 1])
        for b, vis in enumerate([v.visual, i.visual]):
            row = ids[b : b + 1, attn[b] == 1]
            kw = (
                {"pixel_values_videos": vis.pixel_values, "video_grid_thw": vis.grid_thw[None]}
                if b == 0
                else {"pixel_values": vis.pixel_values, "image_grid_thw": vis.grid_thw[None]}
            )
            logits = hf(
                input_ids=row, mm_token_type_ids=M.mm_token_types(row, hf.config), **kw
            ).logits[0, -7:-1]
            ref = torch.log_softmax(logits.float(), -1).gather(-1, comp[:, None])[:, 0]
            torch.testing.assert_close(ours[b], ref, rtol=0, atol=1e-5)


def test_lora_adapts_every_layer_of_both_kinds(qwen35):
    """--lora-targets auto puts adapters on every decoder layer, Gated DeltaNet and attention alike;
    the usual q/k/v/o list reaches only the full-attention quarter."""
    import lora

    hf, _ = M.load_policy(qwen35)
    cfg = SimpleNamespace(
        lora_rank=2, lora_alpha=4.0, lora_dropout=0.0, lora_targets="auto", lora_vision="frozen"
    )

    def adapted(h):  # layers whose token mixer (either kind) carries adapters
        return sorted(
            {
                int(n.split("layers.")[1].split(".")[0])
                for n, _ in h.named_modules()
                if "language_model.layers." in n
                and n.endswith("lora_A")
                and (".linear_attn." in n or ".self_attn." in n)
            }
        )

    lora.attach(hf, cfg, seed=0)
    assert adapted(hf) == [0, 1, 2, 3]  # (the first layer's names alone gave [0, 1, 2])
    layer0, layer3 = hf.model.language_model.layers[0], hf.model.language_model.layers[3]
    assert all(
        hasattr(getattr(layer0.linear_attn, p), "lora_A")
        for p in ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj")
    )
    assert all(
        hasattr(getattr(layer3.self_attn, p), "lora_A")
        for p in ("q_proj", "k_proj", "v_proj", "o_proj")
    )
    assert all(
        hasattr(getattr(layer0.mlp, p), "lora_A") for p in ("gate_proj", "up_proj", "down_proj")
    )
    qkvo, _ = M.load_policy(qwen35)
    lora.attach(
        qkvo,
        SimpleNamespace(
            **{
                **cfg.__dict__,
                "lora_targets": r".*language_model\.layers\.\d+\.self_attn"
                r"\.(q_proj|k_proj|v_proj|o_proj)",
            }
        ),
        seed=0,
    )
    assert adapted(qkvo) == [3]


def _folder_with(tmp_path, name, edit):
    d = (
        json.loads((common.ROOT.parent / "shared" / "qwen3_5_9b" / "config.json").read_text())
        if (common.ROOT.parent / "shared" / "qwen3_5_9b").exists()
        else Qwen3_5Config().to_dict()
    )
    edit(d)
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(d))
    return folder


def test_refused_folders_name_the_file_and_field(tmp_path, qwen35):
    moe = _folder_with(tmp_path, "moe", lambda d: d.update(model_type="qwen3_5_moe"))
    with pytest.raises(
        ValueError, match=r"moe/config.json: model_type 'qwen3_5_moe' is not supported.*qwen3_5"
    ):
        M.load_policy(moe)
    bad = _folder_with(
        tmp_path,
        "bad",
        lambda d: d["text_config"].update(
            layer_types=["linear_attention", "mamba", "linear_attention", "full_attention"],
            num_hidden_layers=4,
        ),
    )
    with pytest.raises(
        ValueError, match=r"bad/config.json: text_config.layer_types\[1\] = 'mamba'"
    ):
        M.load_policy(bad)
    with pytest.raises(
        ValueError, match=r"model_type 'llama' is not supported; expected one of .*'qwen3_5'"
    ):
        M.family({"model_type": "llama"})
    media = common.media_config(MEDIA, Qwen3_5Config.from_pretrained(qwen35))
    frames = torch.zeros(4, 3, 64, 64, dtype=torch.uint8)
    with pytest.raises(pixels.MediaError, match="clip.mp4: .*needs each frame's source time"):
        pixels.to_visual(frames, 2.0, (), "video", media, "clip.mp4")  # a video without frame times


def test_preset_builds_the_tiny_qwen3_5_once(builtin, tmp_path, monkeypatch):
    import train

    monkeypatch.setattr(cache, "paths", lambda cache, proc, model=True: builtin[0])
    folder = cache.resolve_model("preset:tiny-qwen3.5", tmp_path, distributed.Dist())
    assert folder == str(tmp_path / "tiny-qwen3.5")
    assert M.family(Qwen3_5Config.from_pretrained(folder)) is qwen3_5
    stamp = (tmp_path / "tiny-qwen3.5" / "model.safetensors").stat().st_mtime_ns
    assert cache.resolve_model("preset:tiny-qwen3.5", tmp_path, distributed.Dist()) == folder
    assert (tmp_path / "tiny-qwen3.5" / "model.safetensors").stat().st_mtime_ns == stamp
    cfg = train.finish_config(train.Config(model="preset:tiny-qwen3.5"), {"model"})
    assert cfg.preset == "tiny" and cfg.max_frames == 8


# ---- the hybrid decode step (decode_hybrid.py)
# ----------------------------------------------------------------


def test_delta_rule_step_equals_the_recurrent_and_chunked_forms():
    """decode_hybrid.delta_rule_step token by token (state updated in place) equals transformers'
    torch_recurrent_gated_delta_rule and torch_chunk_gated_delta_rule over the same 9 tokens,
    outputs and final state, from a non-zero initial state; 2 key heads serving 4 value heads."""
    from transformers.models.qwen3_5.modeling_qwen3_5 import (
        torch_chunk_gated_delta_rule,
        torch_recurrent_gated_delta_rule,
    )

    import decode_hybrid as H

    gen = torch.Generator().manual_seed(0)
    B, L, HK, HV, dk, dv = 3, 9, 2, 4, 8, 6
    q, k = torch.randn(B, L, HK, dk, generator=gen), torch.randn(B, L, HK, dk, generator=gen)
    v = torch.randn(B, L, HV, dv, generator=gen)
    g = -torch.rand(B, L, HV, generator=gen)  # log-decay < 0
    beta = torch.rand(B, L, HV, generator=gen)
    init = torch.randn(B, HV, dk, dv, generator=gen)
    state, outs = init.clone(), []
    address = state.data_ptr()
    for t in range(L):
        outs.append(H.delta_rule_step(q[:, t], k[:, t], v[:, t], g[:, t], beta[:, t], state))
    ours = torch.stack(outs, 1)  # (B, L, HV, dv)
    assert state.data_ptr() == address and not torch.equal(state, init)  # in place
    for fn in (torch_recurrent_gated_delta_rule, torch_chunk_gated_delta_rule):
        ref, final = fn(
            q,
            k,
            v,
            g,
            beta,
            initial_state=init.clone(),
            output_final_state=True,
            use_qk_l2norm_in_kernel=True,
        )
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(state, final, rtol=0, atol=1e-5)


def test_conv_step_equals_causal_conv1d_update():
    """decode_hybrid.conv_step (state of K - 1 inputs, in place) equals transformers'
    causal_conv1d_update (state of K inputs) token by token, SiLU included."""
    from transformers.models.qwen3_5.modeling_qwen3_5 import causal_conv1d_update

    import decode_hybrid as H

    gen = torch.Generator().manual_seed(1)
    R, C, K = 3, 10, 4
    weight, ref_state = torch.randn(C, K, generator=gen), torch.randn(R, C, K, generator=gen)
    state = ref_state[..., 1:].clone()
    for _ in range(5):
        x = torch.randn(R, C, generator=gen)
        ref = causal_conv1d_update(x[:, :, None], ref_state, weight, None, "silu")[:, :, 0]
        torch.testing.assert_close(H.conv_step(x, state, weight), ref, rtol=0, atol=1e-6)
        torch.testing.assert_close(state, ref_state[..., 1:], rtol=0, atol=0)


def test_decode_step_teacher_forced_equals_hf_and_compiled_equals_eager(prepared):
    """generate on left-padded prompts of unequal length (a video, its shuffled copy, an image) with
    rows expanded to G = 2 and G̃ = 1: the sampler's log-probs of its own tokens equal the log-prob
    pass (HF's forward, tested above) within 1e-5 in float32, and the compiled step samples the same
    tokens as the eager one from the same noise."""
    import decode as D

    hf, tok, v, i = prepared
    prompts, visuals = (
        [v.prompt_ids, v.shuffled_ids, i.prompt_ids],
        [v.visual, v.shuffled_visual, i.visual],
    )
    assert len({p.numel() for p in prompts}) > 1
    sp, stops = R.SamplingParams(max_new_tokens=10, top_k=50), common.stop_ids(tok)
    dec = D.Decoder("off")
    outs = R.generate(
        hf,
        prompts,
        visuals,
        [2, 1, 2],
        sp,
        tok.pad_token_id,
        stops,
        torch.Generator().manual_seed(3),
        dec,
    )
    assert type(dec.weights).__name__ == "HybridWeights"  # the hybrid decoder ran
    for k, (c, p) in enumerate(zip(outs, prompts)):
        ids, attn = R.left_pad([p] * c.ids.shape[0], tok.pad_token_id)
        with torch.no_grad():
            lp = M.PolicyLogprobs(hf)(
                torch.cat([ids, c.ids], 1),
                torch.cat([attn, c.mask.long()], 1),
                p.numel(),
                visuals,
                [k] * c.ids.shape[0],
            )
        assert c.mask.sum() > 3 and ((lp - c.logprobs) * c.mask).abs().max() < 1e-5
    torch._dynamo.reset()
    got = R.generate(
        hf,
        prompts,
        visuals,
        [2, 1, 2],
        sp,
        tok.pad_token_id,
        stops,
        torch.Generator().manual_seed(3),
        D.Decoder("on"),
    )
    for a, b in zip(outs, got):
        assert torch.equal(a.ids, b.ids) and (a.logprobs - b.logprobs).abs().max() < 1e-4


def test_entry_points_end_to_end(qwen35, builtin, tmp_path):
    """sft.py (1 rank) -> train.py (2 FSDP ranks, LoRA on both layer kinds, each rank its own
    prompts) -> eval.py on the tiny Qwen3.5; the export is a plain Qwen3_5ForConditionalGeneration
    whose own forward gives our log-probs."""
    import sys

    from conftest import ROOT, run_cmd

    paths = builtin[0]
    py, tr = (
        sys.executable,
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"],
    )
    base = ["--cache-dir", str(tmp_path / "cache"), "--preset", "tiny"]
    run_cmd(
        [
            py,
            str(ROOT / "sft.py"),
            "--model",
            str(qwen35),
            "--data",
            str(paths["train_cot"]),
            "--steps",
            "2",
            "--eval-samples",
            "0",
            "--out-dir",
            str(tmp_path / "sft"),
            *base,
        ],
        tmp_path,
    )
    run_cmd(
        tr
        + [
            str(ROOT / "train.py"),
            "--model",
            str(tmp_path / "sft" / "final"),
            "--data",
            str(paths["train"]),
            "--steps",
            "1",
            "--G",
            "2",
            "--max-completion-length",
            "8",
            "--prompts-per-rank",
            "2",
            "--dist",
            "fsdp",
            "--lora-rank",
            "4",
            "--activation-checkpointing",
            "--eval-samples",
            "0",
            "--out-dir",
            str(tmp_path / "rl"),
            *base,
        ],
        tmp_path,
    )
    last = json.loads((tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 1
    run_cmd(
        [
            py,
            str(ROOT / "eval.py"),
            "--model",
            str(tmp_path / "rl" / "final"),
            "--data",
            str(paths["test"]),
            "--limit",
            "2",
            "--max-new-tokens",
            "8",
            "--out-dir",
            str(tmp_path / "eval"),
            *base,
        ],
        tmp_path,
    )
    assert (tmp_path / "eval" / "results.md").exists()
    out = tmp_path / "rl" / "final"
    assert {"preprocessor_config.json", "video_preprocessor_config.json"} <= {
        p.name for p in out.iterdir()
    }
    plain = Qwen3_5ForConditionalGeneration.from_pretrained(out).eval()  # plain transformers
    ours, tok = M.load_policy(out)
    media = common.media_config(MEDIA, ours.config)
    v = pixels.prepare(
        next(s for s in data.load_samples(paths["train"]) if s.data_type == "video"), tok, media
    )
    comp = torch.tensor([5, 6, 7, 8])
    ids = torch.cat([v.prompt_ids, comp])[None]
    with torch.no_grad():
        got = M.PolicyLogprobs(ours.eval())(
            ids, torch.ones_like(ids), v.prompt_ids.numel(), [v.visual], [0]
        )
        logits = plain(
            input_ids=ids,
            mm_token_type_ids=M.mm_token_types(ids, plain.config),
            pixel_values_videos=v.visual.pixel_values,
            video_grid_thw=v.visual.grid_thw[None],
        ).logits
    ref = torch.log_softmax(logits[0, -5:-1].float(), -1).gather(-1, comp[:, None])[:, 0]
    torch.testing.assert_close(got[0], ref, rtol=0, atol=1e-5)


QWEN3_5_9B = common.ROOT.parent / "shared" / "qwen3_5_9b"


@pytest.mark.skipif(
    not (QWEN3_5_9B / "config.json").exists(), reason="../shared absent (fresh clone)"
)
def test_narrow_real_structure():
    """Qwen3.5-9B's config narrowed (tiny.WIDTHS_QWEN3_5): vocabulary 248,320, head_dim 256 with
    rotary on 64 dims (mRoPE sections [11, 11, 10]), the 3 : 1 layout, 2 key heads serving 4 value
    heads; the decode step's sampled log-probs equal the log-prob pass on a video prompt."""
    from builtin import tiny

    tok = tiny.qwen3_tokenizer(
        tiny.build_tokenizer(["What happens in the video? <think>a</think><answer>A</answer>"] * 4)
    )
    cfg = tiny.config_like_9b("narrow", QWEN3_5_9B, tok)
    torch.manual_seed(0)
    hf = Qwen3_5ForConditionalGeneration(cfg).float().eval()
    t = hf.config.text_config
    assert (t.vocab_size, t.head_dim, hf.model.language_model.rotary_emb.inv_freq.numel()) == (
        248320,
        256,
        32,
    )
    assert t.layer_types == ["linear_attention"] * 3 + ["full_attention"] and t.rope_parameters[
        "mrope_section"
    ] == [11, 11, 10]
    assert (t.linear_num_key_heads, t.linear_num_value_heads, t.linear_key_head_dim) == (2, 4, 128)
    frames = torch.randint(
        0, 256, (4, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    vis = pixels.to_visual(
        frames, 2.0, (0.0, 0.5, 1.0, 1.5), "video", common.media_config(MEDIA, hf.config)
    )
    prompt = data.encode_prompt(
        tok, "What happens?", "video", vis.grid_thw, 2, timestamps=vis.timestamps
    )
    sp = R.SamplingParams(max_new_tokens=4, top_k=50)
    c = R.generate(
        hf,
        [prompt],
        [vis],
        [2],
        sp,
        tok.pad_token_id,
        common.stop_ids(tok),
        torch.Generator().manual_seed(0),
    )[0]
    ids, attn = R.left_pad([prompt] * 2, tok.pad_token_id)
    with torch.no_grad():
        lp = M.PolicyLogprobs(hf)(
            torch.cat([ids, c.ids], 1),
            torch.cat([attn, c.mask.long()], 1),
            prompt.numel(),
            [vis],
            [0, 0],
        )
    assert ((lp - c.logprobs) * c.mask).abs().max() < 1e-4


def test_plan_rows_for_the_9b():
    """--plan --model preset:qwen3.5-9b: the KV cache counts the 8 full-attention layers only, and
    the recurrent state is per row and per linear layer (24 of them), not per token; both by hand.
    The other families have no recurrent term."""
    from test_plan import _cfg

    import plan

    cfg = _cfg(nproc=8, activation_checkpointing=True)
    cfg.model = "preset:qwen3.5-9b"
    config = plan.load_config(cfg.model)
    assert config.text_config.layer_types.count("full_attention") == 8
    e = plan.estimate(config, cfg)
    assert e["P"] == 8 * 98 + 250 + 8 * 8  # timestamped blocks: 8 tokens each
    # 12 rows padded to 16 x (1098 + 768 tokens rounded up to 2048) + the prefill's 2 prompts; 8
    # layers x K,V x 4 KV heads x 256 dims x 2 bytes
    assert e["kv_cache"] == (16 * 2048 + 2 * 1098) * 8 * 2 * 4 * 256 * 2
    # (16 rows + 2 prefill prompts) x 24 layers x (32 value heads x 128 x 128 float32 + 3 conv
    # inputs of 8192 bf16)
    assert e["recurrent"] == (16 + 2) * 24 * (32 * 128 * 128 * 4 + 3 * 8192 * 2)
    assert 9.3e9 < e["phi"] < 9.5e9
    assert plan.estimate(plan.load_config("preset:qwen3-vl-8b"), cfg)["recurrent"] == 0


@pytest.mark.slow
def test_gpu_check_dry_run_for_qwen3_5(tmp_path):
    """bash bench/gpu_check.sh --dry-run --family qwen3.5: the hybrid GPU check's code path on CPU
    (the tiny hybrid, small settings), so it runs when a GPU is lent."""
    import subprocess

    from conftest import ROOT

    proc = subprocess.run(
        [
            "bash",
            str(ROOT / "bench" / "gpu_check.sh"),
            "--dry-run",
            "--family",
            "qwen3.5",
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--family qwen3.5" in proc.stdout and "4 decoder layers" in proc.stdout
    for phase in ["rollout", "policy log-probs", "backward", "decode (eager)", "plan.py (1 GPU"]:
        assert phase in proc.stdout, phase


def test_two_fsdp_ranks_equal_one_process(builtin, qwen35, tmp_path):
    """tests/dist_check.py on the tiny Qwen3.5: rank 0 holds the video prompt and rank 1 the image
    prompt, and 2 FSDP ranks (units: Qwen3_5DecoderLayer of both kinds, Qwen3_5VisionBlock) give the
    1-process gradients and the parameters after one AdamW step; each rank's rollout under
    full_weights equals an unsharded copy's."""
    from test_distributed import _run, _same_step

    (tmp_path / "one").mkdir(), (tmp_path / "two").mkdir()
    want = _run((builtin[0], qwen35), tmp_path / "one", "none", 1)
    got = _run((builtin[0], qwen35), tmp_path / "two", "fsdp", 2)
    _same_step(got, want)
    assert want["norm"] > 1e-3 and any("linear_attn.A_log" in k for k in want["grads"])
    assert got["rollout_equal"] == 2


def test_compiled_step_updates_the_states_in_place(qwen35):
    """Cost test: the compiled hybrid decode step allocates no buffer the size of a layer's
    recurrent state or KV cache (inductor's generated code, read with run_and_get_code): the delta
    rule writes each recurrent state where it lies and the K/V column goes straight into the cache.
    The one conv-sized temporary is the (Rb, C, K) window of the causal conv (K / (K - 1) of a
    layer's conv state). The buffers keep their addresses and the compiled step equals the eager
    one."""
    import re

    from torch._inductor.utils import run_and_get_code

    import decode as D
    import decode_hybrid as H

    hf = Qwen3_5ForConditionalGeneration.from_pretrained(qwen35).eval()
    w = H.allocate_weights(hf, torch.float32, "cpu")
    H.refresh(w, hf, D.effective_weight)
    states = []
    for _ in range(2):  # eager and compiled, same start
        s = D.allocate_state(w, 8, 64, 4, 50)
        gen = torch.Generator().manual_seed(0)
        for t in (*s.rec, *s.conv):
            t.normal_(generator=gen)
        s.key_ok[:, :5] = True
        s.col.fill_(5), s.pos.fill_(5), s.tok.fill_(7)
        states.append(s)
    eager, comp = states
    sp = R.SamplingParams(max_new_tokens=4, top_k=50)
    D.decode_step(w, eager, sp, 0, (1,))
    for t in [
        *vars(w).values(),
        *(x for v in vars(comp).values() for x in (v if isinstance(v, tuple) else (v,))),
    ]:
        if isinstance(t, torch.Tensor):
            torch._dynamo.mark_static_address(t)
    addresses = [t.data_ptr() for t in (*comp.rec, *comp.conv, comp.k, comp.v)]
    torch._dynamo.reset()
    _, code = run_and_get_code(
        torch.compile(D.decode_step, fullgraph=True, dynamic=False), w, comp, sp, 0, (1,)
    )
    shapes = {
        tuple(int(x) for x in m.split(",") if x.strip())
        for m in re.findall(r"empty_strided_cpu\(\(([^)]*)\)", "\n".join(code))
    }
    rec, conv, k = tuple(comp.rec[0].shape), tuple(comp.conv[0].shape), tuple(comp.k.shape)
    assert rec == (8, 4, 16, 16) and k == (1, 8, 2, 64, 64)
    assert not shapes & {rec, (len(comp.rec), *rec), k, k[1:]}, shapes  # no state or cache copy
    assert [sh for sh in shapes if len(sh) == 3 and sh[:2] == conv[:2]] == [
        (*conv[:2], conv[2] + 1)
    ]  # window
    assert [t.data_ptr() for t in (*comp.rec, *comp.conv, comp.k, comp.v)] == addresses
    for a, b in zip(
        (*eager.rec, *eager.conv, eager.k, eager.v, eager.ids),
        (*comp.rec, *comp.conv, comp.k, comp.v, comp.ids),
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_export_carries_the_mtp_head_unchanged(qwen35, tmp_path):
    """H2: a folder whose safetensors hold an MTP head (`mtp.*`, dropped by transformers on load)
    exports with the same tensors, bit for bit; plain transformers still loads the export."""
    import shutil

    from safetensors.torch import load_file, save_file

    src = tmp_path / "with_mtp"
    shutil.copytree(qwen35, src)
    weights = load_file(src / "model.safetensors")
    mtp = {
        "mtp.fc.weight": torch.randn(8, 16),
        "mtp.layers.0.mlp.up_proj.weight": torch.randn(4, 8),
    }
    save_file(weights | mtp, src / "model.safetensors", metadata={"format": "pt"})
    hf, tok = M.load_policy(src)
    assert not any(k.startswith("mtp.") for k in hf.state_dict())  # dropped on load
    out = checkpoint.save_hf(hf, tok, tmp_path / "export")
    saved = load_file(out / "model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in mtp.items())
    Qwen3_5ForConditionalGeneration.from_pretrained(out)
    plain = checkpoint.save_hf(
        M.load_policy(qwen35)[0], tok, tmp_path / "plain"
    )  # no MTP head: nothing added
    assert not any(k.startswith("mtp.") for k in load_file(plain / "model.safetensors"))


def test_attention_over_the_live_columns_equals_the_whole_cache(qwen35):
    """forward_token(w, s, live) reads only the first `live` cache columns (what the decode loop
    passes once the rest is unused): the same logits and states as over the whole cache."""
    import decode as D
    import decode_hybrid as H

    hf = Qwen3_5ForConditionalGeneration.from_pretrained(qwen35).eval()
    w = H.allocate_weights(hf, torch.float32, "cpu")
    H.refresh(w, hf, D.effective_weight)
    outs = []
    for live in (None, 8):
        s = D.allocate_state(w, 3, 64, 4, 50)
        gen = torch.Generator().manual_seed(0)
        for t in (*s.rec, s.k, s.v):
            t.normal_(generator=gen)
        s.key_ok[:, :5] = True
        s.col.fill_(5), s.pos.fill_(5), s.tok.fill_(7)
        outs.append((H.forward_token(w, s, live), *s.rec))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_hybrid_step_costs_by_the_decode_cost_check(qwen35):
    """tests/test_decode_cost.py's check on the hybrid step (its graph after inductor's post-grad
    passes): no fresh tensor as large as one layer's KV cache, no State buffer rewritten through a
    whole copy -- except the hybrid states, which the check cannot tell from one: each recurrent
    state is rewritten whole every token by its nature (every entry decays), a copy_ from the
    pointwise update that inductor fuses into one kernel writing the buffer where it lies
    (test_compiled_step_updates_the_states_in_place reads the generated code: no state-sized
    buffer); and shifting the conv state's last K - 1 inputs copies each (Rb, C, K - 1) state from
    the (Rb, C, K) window, once per linear layer and token (a ring buffer would avoid it; not
    done)."""
    import decode as D
    import decode_hybrid as H
    from test_decode_cost import copies_into_inputs, fresh_writes, post_grad_graph

    hf = Qwen3_5ForConditionalGeneration.from_pretrained(qwen35).eval()
    w = H.allocate_weights(hf, torch.float32, "cpu")
    H.refresh(w, hf, D.effective_weight)
    sp = R.SamplingParams(top_k=50, repetition_penalty=1.05, max_new_tokens=8)
    s = D.allocate_state(w, 8, 512, 8, D.candidates(sp, w.embed.shape[0]))
    s.key_ok[:, :5] = True
    s.col.fill_(5), s.pos.fill_(5), s.j.fill_(1)
    graph = post_grad_graph(D.decode_step, w, s, sp, 0, (1,))
    assert fresh_writes(graph, s.k[0].numel() * 4) == []
    conv = (
        f"copy_ into input {tuple(s.conv[0].shape)} torch.float32 ({s.conv[0].numel() * 4} bytes)"
    )
    rec = f"copy_ into input {tuple(s.rec[0].shape)} torch.float32 ({s.rec[0].numel() * 4} bytes)"
    copies = copies_into_inputs(graph, 8 * s.tok.shape[0])
    assert sorted(copies) == sorted([conv] * len(s.conv) + [rec] * len(s.rec)), copies
