"""model.py: tokenizer and chat layout against the real Qwen2.5-VL files, prompt token counts, tiny
model build."""
import json

import pytest
import torch
from transformers import (AutoConfig, AutoTokenizer, Qwen2_5_VLForConditionalGeneration,
                          Qwen2VLImageProcessorPil)

import data
import model as M
import pixels
from builtin import tiny as tiny_mod
from conftest import SHARED

REAL = SHARED / "qwen2_5_vl_7b_instruct"
TEXT = "What happens first?Options:\nA. red\nB. blue\n Please answer."


def test_special_tokens_are_qwen_strings(builtin):
    _, tiny = builtin
    tok = AutoTokenizer.from_pretrained(tiny)
    for s in ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|vision_start|>", "<|vision_end|>",
              "<|video_pad|>", "<|image_pad|>"]:
        ids = tok(s, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids[0]) == s
    assert (tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
            and tok.bos_token is None)


def test_rendered_prompt_layout(builtin):
    _, tiny = builtin
    tok = AutoTokenizer.from_pretrained(tiny)
    assert data.render_prompt(tok, TEXT, "video") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"<|vision_start|><|video_pad|><|vision_end|>{TEXT}<|im_end|>\n<|im_start|>assistant\n")
    assert "<|image_pad|>" in data.render_prompt(tok, TEXT, "image")
    assert data.render_prompt(tok, TEXT, "video", system="S").startswith(
        "<|im_start|>system\nS<|im_end|>\n")
    with pytest.raises(ValueError):
        data.render_prompt(tok, TEXT, "audio")


@pytest.mark.skipif(not REAL.exists(),
                    reason="../shared/qwen2_5_vl_7b_instruct absent (fresh clone)")
@pytest.mark.parametrize("data_type", ["video", "image"])
def test_same_text_as_real_qwen_tokenizer(builtin, data_type):
    _, tiny = builtin
    ours, real = AutoTokenizer.from_pretrained(tiny), AutoTokenizer.from_pretrained(REAL)
    for system in (None, "You are a helpful assistant"):
        assert (data.render_prompt(ours, TEXT, data_type, system)
                == data.render_prompt(real, TEXT, data_type, system))
    # the real tokenizer's ids: exactly t*h*w/4 pads between vision_start/end, the real pad id
    # 151656 / 151655
    ids = data.encode_prompt(real, TEXT, data_type, torch.tensor([8, 16, 30]))
    pad = {"video": 151656, "image": 151655}[data_type]
    assert int((ids == pad).sum()) == 8 * 16 * 30 // 4 == 960
    pos = (ids == pad).nonzero()[:, 0]
    assert (ids[pos[0] - 1] == 151652 and ids[pos[-1] + 1] == 151653
            and (pos[-1] - pos[0] + 1) == 960)


@pytest.mark.skipif(not REAL.exists(),
                    reason="../shared/qwen2_5_vl_7b_instruct absent (fresh clone)")
def test_tiny_config_has_the_7b_architecture(builtin):
    _, tiny = builtin
    ours, real = AutoConfig.from_pretrained(tiny), AutoConfig.from_pretrained(REAL)
    assert ours.model_type == real.model_type == "qwen2_5_vl"
    for k in ["patch_size", "spatial_merge_size", "temporal_patch_size", "tokens_per_second"]:
        assert getattr(ours.vision_config, k) == getattr(real.vision_config, k)
    assert (ours.text_config.rope_parameters["mrope_section"]
            and real.text_config.rope_parameters["mrope_section"] == [16, 24, 24])
    # windowed blocks exist
    assert len(ours.vision_config.fullatt_block_indexes) < ours.vision_config.depth
    pre = json.loads((tiny / "preprocessor_config.json").read_text())
    ref = json.loads((REAL / "preprocessor_config.json").read_text())
    assert pre == ref


def test_encode_prompt_pad_count(builtin):
    _, tiny = builtin
    tok = AutoTokenizer.from_pretrained(tiny)
    cfg = AutoConfig.from_pretrained(tiny)
    for grid, kind, tid in [((4, 6, 6), "video", cfg.video_token_id),
                            ((1, 8, 12), "image", cfg.image_token_id)]:
        ids = data.encode_prompt(tok, TEXT, kind, torch.tensor(grid))
        t, h, w = grid
        assert int((ids == tid).sum()) == t * h * w // 4
        assert tok.decode(ids).count("<|vision_start|>") == 1
    with pytest.raises(ValueError):
        data.expand_media_tokens("no pad here", "video", (2, 4, 4))


def test_tiny_loads_with_plain_transformers(builtin):
    _, tiny = builtin
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny)
    n = sum(p.numel() for p in hf.parameters())
    assert 1e6 < n < 1e7, n
    assert len(hf.model.visual.blocks) == 4 and len(hf.model.language_model.layers) == 4
    Qwen2VLImageProcessorPil.from_pretrained(tiny)       # processor settings saved and loadable
    hf2, tok = M.load_policy(tiny)
    assert all(torch.equal(a, b) for a, b in zip(hf.state_dict().values(),
                                                 hf2.state_dict().values()))
    assert tok.padding_side == "left"


def test_build_tiny_is_idempotent(builtin):
    _, tiny = builtin
    before = (tiny / "model.safetensors").stat().st_mtime_ns
    assert tiny_mod.build_tiny(tiny, ["unused"]) == tiny
    assert (tiny / "model.safetensors").stat().st_mtime_ns == before
    with pytest.raises(ValueError):
        tiny_mod.build_tokenizer([])


def test_logprobs_equal_hf_forward(builtin):
    """PolicyLogprobs (visual once per prompt, chunked, explicit mRoPE) == HF's own forward with
    tiled pixels."""
    _, tiny = builtin
    hf, tok = M.load_policy(tiny)
    hf.eval()
    torch.manual_seed(0)
    grid = torch.tensor([2, 4, 6])
    pix = torch.randn(48, 3 * 2 * 14 * 14)
    ids = data.encode_prompt(tok, TEXT, "video", grid)
    comp = torch.randint(0, 200, (3, 9))
    inp = torch.cat([ids.expand(3, -1), comp], 1)
    attn = torch.ones_like(inp)
    with torch.no_grad():
        ours = M.PolicyLogprobs(hf, chunk=4)(inp, attn, ids.numel(),
                                             [pixels.Visual("video", pix, grid, 0.5)], [0, 0, 0])
        out = hf(input_ids=inp, attention_mask=attn, pixel_values_videos=pix.repeat(3, 1),
                 video_grid_thw=grid.repeat(3, 1),
                 mm_token_type_ids=M.mm_token_types(inp, hf.config),
                 second_per_grid_ts=torch.full((3,), 0.5))
    ref = (torch.log_softmax(out.logits.float(), -1)[:, ids.numel() - 1:-1]
           .gather(-1, comp[..., None])[..., 0])
    assert torch.allclose(ours, ref, atol=1e-5)


def test_sampled_pad_token_in_completion_is_text(builtin):
    """A <|video_pad|> id sampled inside a completion is not media: no mismatch error, finite
    log-probs."""
    _, tiny = builtin
    hf, tok = M.load_policy(tiny)
    grid = torch.tensor([2, 4, 4])
    ids = data.encode_prompt(tok, TEXT, "video", grid)
    comp = torch.tensor([[hf.config.video_token_id, hf.config.image_token_id, 5]])
    inp = torch.cat([ids[None], comp], 1)
    with torch.no_grad():
        lp = M.PolicyLogprobs(hf)(inp, torch.ones_like(inp), ids.numel(),
                                  [pixels.Visual("video", torch.randn(32, 1176), grid)], [0])
    assert lp.shape == (1, 3) and torch.isfinite(lp).all()


def test_builtin_tiny_visual_features_are_centred(builtin):
    """build_builtin_tiny subtracts the mean merger output over the first built-in samples (decoded
    at the tiny preset's pixels): their mean feature is ~0 after saving and loading, while a fresh
    random tower's is ~1."""
    import data
    paths, tiny = builtin
    hf, _ = M.load_policy(tiny)
    media = pixels.MediaConfig(**tiny_mod.TINY_MEDIA)
    visuals = [pixels.to_visual(*pixels.load_visual(s, media)[:3], s.data_type, media)
               for s in data.load_samples(paths["train_cot"], require_process=True)[:64]]
    with torch.no_grad():
        feats = torch.cat([hf.model.visual(v.pixel_values, grid_thw=v.grid_thw[None]).pooler_output
                           for v in visuals])
    assert feats.mean(0).norm() < 1e-4 * feats.norm(dim=-1).mean()
    torch.manual_seed(0)
    fresh = Qwen2_5_VLForConditionalGeneration(hf.config)
    bias = fresh.model.visual.merger.mlp[-1].bias.clone()
    removed = tiny_mod.center_visual_features(fresh, visuals[:8])
    assert removed > 0.5                                             # the common vector it took out
    with torch.no_grad():
        again = torch.cat([
            fresh.model.visual(v.pixel_values, grid_thw=v.grid_thw[None]).pooler_output
            for v in visuals[:8]])
    assert again.mean(0).norm() < 1e-4
    assert ((bias - fresh.model.visual.merger.mlp[-1].bias).norm().item()
            == pytest.approx(removed, rel=1e-5))
