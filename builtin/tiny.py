r"""Random Qwen2.5-VL and Qwen3-VL models that the project builds itself: the tiny default, a tiny
Qwen3-VL, and the 7B's (or Qwen3-VL-8B's) structure narrowed.

    python builtin/tiny.py                                   # the tiny default in runs/cache/tiny
                                                             # (+ built-in data)
    python builtin/tiny.py --like-7b narrow --out runs/narrow \
        --tokenizer ../shared/qwen2_5_vl_7b_instruct
    python builtin/tiny.py --like-7b full --out runs/full8   # the 7B's widths, 8 of its 28
                                                             # decoder layers
    python builtin/tiny.py --qwen3 --out runs/tiny-qwen3-vl  # the tiny Qwen3-VL (what --model
                                                             # preset:tiny-qwen3-vl builds)
    python builtin/tiny.py --like-7b narrow --qwen3 --out runs/narrow3 \
        --tokenizer ../shared/qwen2_5_vl_7b_instruct

The tiny default (`build_builtin_tiny`): a few million parameters with every architectural feature
of the 7B (windowed-attention vision tower with the 2x2 patch merger, mRoPE decoder), a byte-level
BPE tokenizer trained on the built-in data's text that carries Qwen2.5-VL's exact special-token
strings, and a chat template that renders Qwen2.5-VL's layout. Its random vision output is centred
on built-in clips (`center_visual_features`). It reads TINY_MEDIA: 8 frames at 84x84 (the frames and
pixels of every tiny preset, declared here once).

`build_like_7b` starts from Qwen2.5-VL-7B-Instruct's config (a folder's config.json, or plan.py's
copy of it) and changes only sizes: every architectural feature stays (vocabulary 152,064, head_dim
128 with mrope_section [16, 24, 24], windowed vision blocks with full attention at the configured
indexes, the 2x2 patch merger, untied lm_head). Two widths:
- "narrow": hidden 512 (4 heads of 128, 2 KV heads), 2 decoder layers, vision depth 4 (full
  attention at blocks 1 and 3) -- small enough for 2 CPU cores, so CPU tests run the real structure
  end to end;
- "full": the 7B's widths with 8 of its 28 decoder layers and the whole vision tower -- what one GPU
  holds with its optimizer state, for bench/gpu_check.sh.
With a real tokenizer folder (tokenizer + chat template) the special-token ids are the real ones;
without one, the tiny BPE tokenizer is used and the config's special-token ids are set to its ids
(the embedding keeps 152,064 rows).

Qwen3-VL (`build_tiny_qwen3`, `build_like_7b(..., source=QWEN3_SOURCE)`): the same tokenizer plus
Qwen3-VL's four added tokens (QWEN3_ADDED, ordinary added tokens as in the real tokenizer, shared
SOURCE.md), the same chat layout; the tiny one has q/k norms, interleaved mRoPE, a 16-pixel-patch
vision tower with a learned position grid and DeepStack features from two vision blocks; the narrow
one starts from Qwen3-VL-8B-Instruct's config.json (../shared/qwen3_vl_8b_instruct, or plan.py's
copy) and changes only sizes (WIDTHS_QWEN3). Neither is centred or trained: they are for checking
that every code path serves the family, not for learning curves.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import (AddedToken, PreTrainedTokenizerFast, Qwen2_5_VLConfig,
                          Qwen2_5_VLForConditionalGeneration, Qwen3VLConfig,
                          Qwen3VLForConditionalGeneration)

if __package__ in (None, ""):  # run as a script (python builtin/tiny.py): the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data import DEFAULT_SYSTEM  # noqa: E402
from checkpoint import save_hf  # noqa: E402
from model import Visual  # noqa: E402

# Qwen2.5-VL's 22 added tokens, in id order (151643..151664 in the real tokenizer; notes §5, shared
# config).
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
]
# Our own Jinja template producing Qwen2.5-VL's chat layout: a default system turn when the first
# message is not a system message; string or list content; one
# <|vision_start|><|X_pad|><|vision_end|> per image/video item.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    + DEFAULT_SYSTEM + "<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' or 'video' in part %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# The tiny default: a few million parameters, every architectural feature of the 7B (notes §3
# "Policy class").
TINY_TEXT = dict(hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=6,
                 num_key_value_heads=2, max_position_embeddings=8192, rms_norm_eps=1e-6,
                 tie_word_embeddings=False,
                 rope_parameters={"rope_type": "default", "mrope_section": [4, 6, 6],
                                  "rope_theta": 1e6})
TINY_VISION = dict(depth=4, hidden_size=96, intermediate_size=192, num_heads=4, out_hidden_size=192,
                   patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                   fullatt_block_indexes=[1, 3], tokens_per_second=2, in_channels=3)
TINY_VOCAB = 1024  # BPE merges trained on the corpus; the special tokens come on top
# The frames and pixels of every tiny preset (train, sft, eval, bench): 8 frames at 84x84 per clip,
# images at 84x84.
TINY_MEDIA = dict(max_frames=8, video_min_pixels=84 * 84, video_max_pixels=84 * 84,
                  image_max_pixels=84 * 84)


def build_tokenizer(corpus: list[str], vocab_size: int = TINY_VOCAB) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE fast tokenizer with Qwen2.5-VL's special tokens and chat template.

    Args: corpus: training texts (prompts and reasoning of the built-in data); vocab_size: BPE size
    before the 22 special tokens. Returns a `PreTrainedTokenizerFast`: eos `<|im_end|>`, pad
    `<|endoftext|>`, no bos, like the real Qwen2.5-VL tokenizer (shared config SOURCE.md).
    Deterministic for a given corpus. Raises ValueError on an empty corpus.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if not corpus:
        raise ValueError("build_tokenizer: empty corpus")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[])
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", model_max_length=32768,
                                   padding_side="left", clean_up_tokenization_spaces=False)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(tokenizer) -> Qwen2_5_VLConfig:
    """The tiny Qwen2.5-VL config with special-token ids taken from `tokenizer` (ids differ from the
    7B's)."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(TINY_TEXT, vocab_size=len(tokenizer), bos_token_id=None,
                eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    return Qwen2_5_VLConfig(text_config=text, vision_config=dict(TINY_VISION),
                            image_token_id=ids["<|image_pad|>"],
                            video_token_id=ids["<|video_pad|>"],
                            vision_start_token_id=ids["<|vision_start|>"],
                            vision_end_token_id=ids["<|vision_end|>"],
                            eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                            bos_token_id=None, tie_word_embeddings=False)


def build_tiny(folder: str | Path, corpus: list[str], seed: int = 0,
               center_on: list[Visual] = ()) -> Path:
    """Write a tiny randomly initialised Qwen2.5-VL HF folder (config, safetensors, tokenizer, chat
    template, image-processor settings) to `folder` and return it. Idempotent: an existing complete
    folder is kept.

    The weights are float32, drawn from HF's initialisers under `torch.manual_seed(seed)`; with
    `center_on` (a few prompts' visuals) the vision tower's output is then centred on them
    (`center_visual_features`). Raises ValueError on an empty corpus.
    """
    folder = Path(folder)
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        return folder
    tokenizer = build_tokenizer(corpus)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(tiny_config(tokenizer)).float()
    if center_on:
        center_visual_features(model, list(center_on))
    return save_hf(model, tokenizer, folder)  # atomic: never a partial folder


@torch.no_grad()
def center_visual_features(hf, visuals: list[Visual]) -> float:
    """(D7) Subtract the mean visual feature over `visuals` from the patch merger's output bias;
    returns its norm.

    A data-dependent initialisation (in the spirit of LSUV), used only for the tiny random model:
    its vision tower maps the mostly-uniform background of every clip to one common vector (norm
    ~1.0, against ~0.15 of content variation per token), the decoder's RMSNorm then scales the
    content down to a few percent, and training from scratch learns to ignore it: measured on the
    built-in colour questions, swapping a clip for another left the SFT loss unchanged after 750
    steps. Centred features are mostly content, and the decoder learns to read them within ~150
    steps (with the vision tower frozen, common.SFT_TINY). visuals: Visual objects (pixel_values
    float (n_patches, 1176), grid_thw long (3,)); the features are computed in the model's dtype and
    device. Returns the removed mean's L2 norm (float, feature units). Modifies `hf` in place. Not
    in the paper or the reference: the real 7B's vision tower is pretrained.
    """
    merger = hf.model.visual.merger.mlp[-1]                                  # Linear(4*C_vis, D)
    feats = torch.cat([hf.model.visual(v.pixel_values.to(merger.weight),
                                       grid_thw=v.grid_thw[None].to(merger.weight.device))
                       .pooler_output for v in visuals])                     # (sum tokens, D)
    mean = feats.float().mean(0)                                            # (D,)
    merger.bias -= mean.to(merger.bias.dtype)
    return float(mean.norm())


def build_builtin_tiny(folder: str | Path, train_cot_json: str | Path, n_center: int = 64) -> Path:
    """The project's default policy: `build_tiny` on the built-in COT split's text, its vision
    output centred on the first `n_center` built-in samples decoded at the tiny frames and pixels
    (TINY_MEDIA). Idempotent. Raises pixels.MediaError if a built-in clip cannot be decoded."""
    import data
    import pixels
    samples = data.load_samples(train_cot_json, require_process=True)
    media = pixels.MediaConfig(**TINY_MEDIA)
    visuals = [pixels.to_visual(*pixels.load_visual(s, media)[:3], s.data_type, media)
               for s in samples[:n_center]]
    return build_tiny(folder, tokenizer_corpus(samples), center_on=visuals)


def tokenizer_corpus(samples) -> list[str]:
    """Texts the tiny tokenizer's BPE is trained on: templated prompts and `process + solution`
    answers."""
    from data import build_prompt_text
    texts = []
    for s in samples:
        texts += [build_prompt_text(s, "train"), build_prompt_text(s, "eval"),
                  f"{s.process}\n{s.solution}"]
    return texts


WIDTHS = {
    "narrow": {"text": dict(hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2),
               "vision": dict(depth=4, hidden_size=320, intermediate_size=640, num_heads=4,
                              fullatt_block_indexes=[1, 3])},
    "full": {"text": dict(num_hidden_layers=8), "vision": {}},
    "full28": {"text": {}, "vision": {}},               # all 28 layers: the 7B itself, random
}
WIDTHS["narrow8"] = {"text": dict(WIDTHS["narrow"]["text"], num_hidden_layers=8),   # bench/rollout
                     "vision": WIDTHS["narrow"]["vision"]}


def config_like_7b(width: str, source: str = "preset:qwen2.5-vl-7b", tokenizer=None):
    """Qwen2.5-VL-7B's config, or Qwen3-VL-8B's (`source`: an HF folder or one of plan.py's presets,
    e.g. QWEN3_SOURCE or ../shared/qwen3_vl_8b_instruct) with the sizes of WIDTHS[width]
    (WIDTHS_QWEN3[width] for Qwen3-VL).

    `tokenizer`: when it is not the real Qwen tokenizer, the special-token ids are taken from it.
    Returns the family's config (Qwen2_5_VLConfig or Qwen3VLConfig). Raises ValueError for an
    unknown width, or when head_dim would not be 128 or the vision out size would not equal the text
    hidden size (the structure would not be the 7B's / 8B's)."""
    import plan
    from model import family
    d = plan.load_config(source).to_dict()
    qwen3 = d["model_type"] == "qwen3_vl"
    widths = WIDTHS_QWEN3 if qwen3 else WIDTHS
    if width not in widths:
        raise ValueError(f"unknown width {width!r}; expected one of {sorted(widths)}")
    d["text_config"].pop("layer_types", None)            # derived from num_hidden_layers again
    d["text_config"].update(widths[width]["text"])
    d["vision_config"].update(widths[width]["vision"],
                              out_hidden_size=d["text_config"]["hidden_size"])
    cfg = family(d).CONFIG_CLASS(**d)
    head_dim = getattr(cfg.text_config, "head_dim", None) if qwen3 else None
    head_dim = head_dim or cfg.text_config.hidden_size // cfg.text_config.num_attention_heads
    if head_dim != 128:
        raise ValueError(f"width {width}: head_dim {head_dim}, the 7B's is 128 "
                         "(mrope_section [16, 24, 24])")
    if (tokenizer is not None
            and tokenizer.convert_tokens_to_ids("<|video_pad|>") != cfg.video_token_id):
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in
               ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>",
                "<|im_end|>", "<|endoftext|>")}
        cfg.image_token_id, cfg.video_token_id = ids["<|image_pad|>"], ids["<|video_pad|>"]
        cfg.vision_start_token_id, cfg.vision_end_token_id = (ids["<|vision_start|>"],
                                                              ids["<|vision_end|>"])
        for c in (cfg, cfg.text_config):
            c.eos_token_id, c.pad_token_id, c.bos_token_id = (ids["<|im_end|>"],
                                                              ids["<|endoftext|>"], None)
    return cfg


def build_like_7b(folder: str | Path, width: str = "narrow",
                  tokenizer_from: str | Path | None = None,
                  source: str = "preset:qwen2.5-vl-7b", seed: int = 0) -> Path:
    """Write a randomly initialised HF folder (float32 safetensors, tokenizer, chat template,
    processor settings) with `config_like_7b(width)`; returns `folder`. Idempotent (a complete
    folder is kept).

    tokenizer_from: a folder with the real Qwen2.5-VL tokenizer and chat template (e.g.
    ../shared/qwen2_5_vl_7b_instruct; for a Qwen3-VL `source`, QWEN3_ADDED are added to it); None:
    the tiny BPE tokenizer. Weights: HF's initialisers under torch.manual_seed(seed). Raises
    ValueError as config_like_7b; FileNotFoundError for a missing folder."""
    from transformers import AutoTokenizer
    folder = Path(folder)
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        return folder
    if tokenizer_from is not None:
        if not (Path(tokenizer_from) / "tokenizer_config.json").exists():
            raise FileNotFoundError(f"{tokenizer_from}: no tokenizer_config.json")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    else:
        tokenizer = build_tokenizer(
            ["What happens in the video? <think>first</think> <answer>A</answer>"] * 4)
    from model import family
    config = config_like_7b(width, source, tokenizer)
    if config.model_type == "qwen3_vl":
        tokenizer = qwen3_tokenizer(tokenizer)  # appended: the ids above do not move
    torch.manual_seed(seed)
    model = family(config).MODEL_CLASS(config).float()
    return save_hf(model, tokenizer, folder)  # atomic: never a partial folder


# ---- Qwen3-VL ------------------------------------------------------------------------------------
# ids 151665-151668 in the real one
QWEN3_ADDED = ["<tool_response>", "</tool_response>", "<think>", "</think>"]
TINY_QWEN3_TEXT = dict(TINY_TEXT, head_dim=32,
                       rope_parameters={"rope_type": "default", "mrope_section": [6, 5, 5],
                                        "mrope_interleaved": True, "rope_theta": 5e6})
TINY_QWEN3_VISION = dict(depth=4, hidden_size=96, intermediate_size=192, num_heads=4,
                         out_hidden_size=192, patch_size=16, spatial_merge_size=2,
                         temporal_patch_size=2, num_position_embeddings=64,
                         deepstack_visual_indexes=[1, 2], hidden_act="gelu_pytorch_tanh",
                         in_channels=3)
QWEN3_SOURCE = "preset:qwen3-vl-8b"
WIDTHS_QWEN3 = {
    "narrow": {"text": dict(hidden_size=512, intermediate_size=1024, num_hidden_layers=3,
                            num_attention_heads=4, num_key_value_heads=2),
               "vision": dict(depth=4, hidden_size=320, intermediate_size=640, num_heads=4,
                              deepstack_visual_indexes=[1, 2, 3])},
    "full": {"text": dict(num_hidden_layers=8), "vision": {}},
    "full36": {"text": {}, "vision": {}},               # all 36 layers: the 8B itself, random
}


def qwen3_tokenizer(tokenizer):
    """`tokenizer` (Qwen2.5's layout) with Qwen3-VL's four added tokens appended in order, as
    ordinary (non-special) added tokens, so that `<think>` survives decoding with
    skip_special_tokens. Returns the same tokenizer."""
    missing = [t for t in QWEN3_ADDED if t not in tokenizer.get_vocab()]
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in missing])
    return tokenizer


def tiny_qwen3_config(tokenizer) -> Qwen3VLConfig:
    """The tiny Qwen3-VL config with special-token ids taken from `tokenizer`."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(TINY_QWEN3_TEXT, vocab_size=len(tokenizer), bos_token_id=None,
                eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                attention_bias=False)
    return Qwen3VLConfig(text_config=text, vision_config=dict(TINY_QWEN3_VISION),
                         image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                         vision_start_token_id=ids["<|vision_start|>"],
                         vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)


def build_tiny_qwen3(folder: str | Path, corpus: list[str], seed: int = 0) -> Path:
    """Write a tiny randomly initialised Qwen3-VL HF folder (float32 weights from HF's initialisers
    under torch.manual_seed(seed); the tiny BPE tokenizer with QWEN3_ADDED; Qwen3-VL's processor
    files) to `folder`. Idempotent: an existing complete folder is kept. Raises ValueError on an
    empty corpus."""
    folder = Path(folder)
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        return folder
    tokenizer = qwen3_tokenizer(build_tokenizer(corpus))
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(tiny_qwen3_config(tokenizer)).float()
    return save_hf(model, tokenizer, folder)


def build_builtin_tiny_qwen3(folder: str | Path, train_cot_json: str | Path) -> Path:
    """`build_tiny_qwen3` on the built-in COT split's text (what `--model preset:tiny-qwen3-vl`
    builds). Idempotent."""
    import data
    return build_tiny_qwen3(folder, tokenizer_corpus(
        data.load_samples(train_cot_json, require_process=True)))


# ---- Qwen3.5 (hybrid decoder) --------------------------------------------------------------------
# Three Gated DeltaNet layers then one gated full-attention layer (the 9B's 3 : 1 layout); head_dim
# 64 with rotary on its first quarter (16 dims, 8 frequencies: mRoPE sections [3, 3, 2] like the
# 9B's [11, 11, 10] of 32); 2 key and 4 value heads in the linear layers (each key head serves 2
# value heads, as 16 / 32 in the 9B).
TINY_QWEN3_5_TEXT = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                         max_position_embeddings=8192, rms_norm_eps=1e-6,
                         tie_word_embeddings=False, attention_bias=False, linear_conv_kernel_dim=4,
                         linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2,
                         linear_num_value_heads=4, mamba_ssm_dtype="float32",
                         mtp_num_hidden_layers=1,
                         layer_types=["linear_attention"] * 3 + ["full_attention"],
                         rope_parameters={"rope_type": "default", "mrope_section": [3, 3, 2],
                                          "mrope_interleaved": True,
                                          "rope_theta": 1e7, "partial_rotary_factor": 0.25})
TINY_QWEN3_5_VISION = dict(depth=2, hidden_size=96, intermediate_size=192, num_heads=4,
                           out_hidden_size=128, patch_size=16, spatial_merge_size=2,
                           temporal_patch_size=2, num_position_embeddings=64,
                           hidden_act="gelu_pytorch_tanh", in_channels=3)
# its config.json (SOURCE.md there)
QWEN3_5_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "qwen3_5_9b"
# The 9B narrowed: every structural feature kept (vocabulary 248,320, head_dim 256 with rotary on 64
# dims, the 3 : 1 layout, 16 key / 32 value linear heads of 128 narrowed to 2 / 4, kernel 4, the
# vision tower's kind).
WIDTHS_QWEN3_5 = {
    "narrow": {"text": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                            num_attention_heads=2, num_key_value_heads=1, linear_num_key_heads=2,
                            linear_num_value_heads=4),
               "vision": dict(depth=2, hidden_size=128, intermediate_size=256, num_heads=2)},
    # the 9B's widths, 8 of its 32 layers (6 : 2)
    "full": {"text": dict(num_hidden_layers=8), "vision": {}},
}


def tiny_qwen3_5_config(tokenizer):
    """The tiny Qwen3.5 config (TINY_QWEN3_5_TEXT / _VISION) with special-token ids taken from
    `tokenizer`."""
    from transformers import Qwen3_5Config
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(TINY_QWEN3_5_TEXT, vocab_size=len(tokenizer), bos_token_id=None,
                eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    return Qwen3_5Config(text_config=text, vision_config=dict(TINY_QWEN3_5_VISION),
                         image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                         vision_start_token_id=ids["<|vision_start|>"],
                         vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)


def config_like_9b(width: str, source: str | Path = QWEN3_5_SOURCE, tokenizer=None):
    """Qwen3.5-9B's config (`source`: a folder with its config.json, by default
    ../shared/qwen3_5_9b) with the sizes of WIDTHS_QWEN3_5[width]; the layer kinds are re-derived
    with the 3 : 1 interval for the new layer count. `tokenizer`: its special-token ids replace the
    real ones (the embedding keeps 248,320 rows). Returns a Qwen3_5Config. Raises ValueError for an
    unknown width or a structure that is not the 9B's (head_dim 256, vocabulary 248,320);
    FileNotFoundError when `source` has no config.json."""
    import json
    from transformers import Qwen3_5Config
    if width not in WIDTHS_QWEN3_5:
        raise ValueError(f"unknown width {width!r}; expected one of {sorted(WIDTHS_QWEN3_5)}")
    path = Path(source) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{source}: no config.json (the Qwen3.5-9B config)")
    d = json.loads(path.read_text())
    # derived again from num_hidden_layers: 3 linear, 1 full
    d["text_config"].pop("layer_types", None)
    d["text_config"].update(WIDTHS_QWEN3_5[width]["text"])
    d["vision_config"].update(WIDTHS_QWEN3_5[width]["vision"],
                              out_hidden_size=d["text_config"]["hidden_size"])
    if tokenizer is not None:
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
        d.update(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                 vision_start_token_id=ids["<|vision_start|>"],
                 vision_end_token_id=ids["<|vision_end|>"])
        d["text_config"].update(eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    cfg = Qwen3_5Config(**d)
    if cfg.text_config.head_dim != 256 or cfg.text_config.vocab_size != 248320:
        raise ValueError(f"width {width}: head_dim {cfg.text_config.head_dim}, vocabulary "
                         f"{cfg.text_config.vocab_size}; the 9B's are 256 and 248,320")
    return cfg


def build_qwen3_5(folder: str | Path, corpus: list[str], width: str = "tiny", seed: int = 0,
                  source: str | Path = QWEN3_5_SOURCE) -> Path:
    """Write a randomly initialised Qwen3.5 HF folder (float32 weights from HF's initialisers under
    torch.manual_seed(seed); the tiny BPE tokenizer trained on `corpus` with QWEN3_ADDED; Qwen3.5's
    processor files): width "tiny" (tiny_qwen3_5_config) or a WIDTHS_QWEN3_5 width of the 9B
    (config_like_9b from `source`). Idempotent: an existing complete folder is kept. Raises
    ValueError on an empty corpus or an unknown width."""
    from transformers import Qwen3_5ForConditionalGeneration
    folder = Path(folder)
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        return folder
    tokenizer = qwen3_tokenizer(build_tokenizer(corpus))
    config = (tiny_qwen3_5_config(tokenizer) if width == "tiny"
              else config_like_9b(width, source, tokenizer))
    torch.manual_seed(seed)
    model = Qwen3_5ForConditionalGeneration(config).float()
    return save_hf(model, tokenizer, folder)


def build_builtin_tiny_qwen3_5(folder: str | Path, train_cot_json: str | Path) -> Path:
    """`build_qwen3_5` on the built-in COT split's text (what `--model preset:tiny-qwen3.5` builds).
    Idempotent."""
    import data
    return build_qwen3_5(folder, tokenizer_corpus(
        data.load_samples(train_cot_json, require_process=True)))


def main():
    p = argparse.ArgumentParser(
        description="Build a random Qwen2.5-VL: the tiny default, or the 7B's structure.")
    p.add_argument("--out", default="runs/cache/tiny", help="output HF folder")
    p.add_argument("--data", default="runs/cache/data",
                   help="built-in dataset folder for the tiny default (made if missing)")
    p.add_argument("--like-7b", default="", choices=["", *sorted(WIDTHS | WIDTHS_QWEN3)],
                   help="narrow | full | full28 (full36 with --qwen3): the 7B's (8B's) structure")
    p.add_argument("--tokenizer", default="",
                   help="with --like-7b: folder with the real Qwen2.5-VL tokenizer")
    p.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    p.add_argument("--qwen3", action="store_true",
                   help="a Qwen3-VL: the tiny one, or with --like-7b Qwen3-VL-8B's "
                        "structure (widths narrow | full | full36)")
    a = p.parse_args()
    if a.like_7b:
        source = QWEN3_SOURCE if a.qwen3 else "preset:qwen2.5-vl-7b"
        print(build_like_7b(a.out, a.like_7b, a.tokenizer or None, source=source, seed=a.seed))
        return
    from builtin import synthetic
    train_cot = synthetic.make_dataset(a.data)["train_cot"]
    if a.qwen3:
        print(build_builtin_tiny_qwen3(a.out, train_cot))
        return
    print(build_builtin_tiny(a.out, train_cot))


if __name__ == "__main__":
    main()
