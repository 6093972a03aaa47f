"""The policy at run time (Qwen2.5-VL, Qwen3-VL or Qwen3.5): load it, mRoPE positions, embed
visuals, completion log-probs.

Everything here works the same for the project's random models (tiny.py) and for a real
Qwen2.5-VL-7B-Instruct or Qwen3-VL-8B-Instruct folder: all are loaded with
`from_pretrained(folder)`. What differs by model family (pixel constants, how a visual's vision
blocks sit in the prompt, the vision features, the processor files) lives in one small module per
family, `qwen2_5_vl.py` and `qwen3_vl.py`, picked from config.model_type by `family` (FAMILIES);
this module's functions are called the same way for both.

Pieces (notes §1 steps 1, 3, 7 and §5 "GRPO message"):
- `load_policy`: an HF folder in (checked to be of a family in FAMILIES, weights checked finite);
  the HF folder out is checkpoint.save_hf (written atomically, with the tokenizer, chat template and
  processor settings). (Prompts are rendered and tokenised by data.encode_prompt; frames and pixels
  come from pixels.py.)
- `rope_positions`: our own mRoPE positions under Qwen2.5-VL's rule (Qwen3-VL's is the same rule
  over its one-block-per-temporal-patch layout with no time term, qwen3_vl.blocks). The rule is
  transformers 4.49-4.51's `get_rope_index`: text after a vision block starts at the block's largest
  t/h/w position + 1. We do not call 5.x's Qwen2.5-VL `get_rope_index`: it
  restarts the text at block start + max(h, w)/merge, ignoring the clip's time extent, while the
  released checkpoints were trained with the 4.49 rule. With mRoPE time from the real sample fps,
  16-frame clips longer than 8.57 s differ: a 60 s 16:9 clip at 128*28*28 pixels per frame (grid
  8x16x30) whose block starts at position 3 puts the following text at 109 under our rule and at 18
  under 5.23's (measured).
- `PolicyLogprobs`: an nn.Module whose forward returns per-token log-probs of completions. It is the
  unit that DDP/FSDP wrap, so every parameter use (vision tower, embeddings, decoder, lm_head)
  happens inside one forward. Each prompt's visual features are computed once and shared by all its
  completions; log-probs are taken in checkpointed chunks, so no (N, L, V) float32 logits tensor
  ever exists.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from transformers import AutoTokenizer

from config import UserError
import qwen2_5_vl
import qwen3_5
import qwen3_vl
from pixels import Visual

# config.model_type -> module
FAMILIES = {"qwen2_5_vl": qwen2_5_vl, "qwen3_vl": qwen3_vl, "qwen3_5": qwen3_5}
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)


def family(config):
    """The module of `config`'s model family (qwen2_5_vl, qwen3_vl or qwen3_5), from
    config.model_type (a config object or a config.json dict). Raises ValueError naming the
    model_type when it is not in FAMILIES."""
    kind = (config.get("model_type") if isinstance(config, dict)
            else getattr(config, "model_type", None))
    if kind not in FAMILIES:
        raise ValueError(f"model_type {kind!r} is not supported; "
                         f"expected one of {SUPPORTED_MODEL_TYPES}")
    return FAMILIES[kind]


class MissingModel(UserError, FileNotFoundError):
    """A model folder without config.json: a config.UserError, also a FileNotFoundError."""


def check_model_folder(folder: str | Path) -> dict:
    """Read `folder`/config.json and refuse any model family not in FAMILIES before a model is built
    (transformers would build a default-size Qwen2.5-VL, 73B parameters of random weights, from
    another architecture's config).
    Returns the parsed config. Raises FileNotFoundError (no config.json) or ValueError naming the
    file and its model_type (unreadable JSON, or a model_type not in SUPPORTED_MODEL_TYPES, e.g.
    qwen3_5_moe) or, for Qwen3.5, the field text_config.layer_types when it names an unknown layer
    kind (qwen3_5.layer_kinds)."""
    path = Path(folder) / "config.json"
    if not path.exists():
        raise MissingModel(f"{folder}: no config.json; expected a Qwen2.5-VL or Qwen3-VL HF folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable JSON config: {e}") from e
    kind = config.get("model_type") if isinstance(config, dict) else None
    if kind not in SUPPORTED_MODEL_TYPES:
        raise UserError(f"{path}: model_type {kind!r} is not supported; expected one of "
                        f"{SUPPORTED_MODEL_TYPES} (a folder such as Qwen2.5-VL-7B-Instruct, "
                        f"Qwen3-VL-8B-Instruct or an output of this project)")
    if kind == "qwen3_5":  # the hybrid decoder's layer kinds
        qwen3_5.layer_kinds(config.get("text_config") or {}, str(path))
    return config


def load_policy(folder: str | Path, dtype: torch.dtype = torch.float32,
                device: str | torch.device = "cpu"):
    """Load (model, tokenizer) from an HF folder: the tiny default, a real Qwen2.5-VL-7B(-Instruct)
    or a Qwen3-VL folder (the family's MODEL_CLASS, e.g. Qwen3VLForConditionalGeneration).

    The model is put in train mode with `use_cache` off (caches are created explicitly by the
    rollout).
    Raises FileNotFoundError when `folder` has no config.json, ValueError when its family is not
    supported (`check_model_folder`, before anything is built) or when a weight holds NaN or inf
    (naming the tensor).
    """
    folder = Path(folder)
    kind = family(check_model_folder(folder))
    model = kind.MODEL_CLASS.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa")
    model.to(device)
    bad = [name for name, t in model.state_dict().items()
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise UserError(f"{folder}: weight(s) with NaN or inf: {', '.join(bad[:5])}"
                         + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""))
    model.config.use_cache = False
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    return model, tokenizer


def mm_token_types(input_ids: torch.Tensor, config, prompt_len: int | None = None) -> torch.Tensor:
    """(B, T) long ids -> (B, T) int: 0 text, 1 image pad, 2 video pad (what get_rope_index
    expects).

    Only the first `prompt_len` positions can hold media: a pad id that a policy happens to sample
    inside its completion is plain text (it has no visual features)."""
    types = ((input_ids == config.image_token_id).int()
             + 2 * (input_ids == config.video_token_id).int())  # (B, T)
    if prompt_len is not None:
        types[:, prompt_len:] = 0
    return types


def rope_positions(hf, input_ids, attention_mask, visuals: list[Visual], owner: list[int],
                   prompt_len: int | None = None):
    """mRoPE position ids of a batch under Qwen2.5-VL's rule (D6: ours, not transformers 5.x's;
    module docstring), which Qwen3-VL follows over its own block layout (qwen3_vl.blocks; Q6: equal
    to 5.23's get_rope_index there).

    Args: hf: the model (only `hf.config` is read: model_type, image_token_id, video_token_id,
    vision_config.spatial_merge_size and, for Qwen2.5-VL, vision_config.tokens_per_second = mRoPE
    time steps per second of video); input_ids (B, T) long; attention_mask (B, T) 0/1 or None (all
    ones); owner[b] indexes `visuals` for row b, or is a list of indices when a row holds several
    media (their blocks in order of appearance); prompt_len: media pad ids count only in the first
    `prompt_len` positions (see mm_token_types).
    Returns (position_ids (3, B, T) long, deltas (B, 1) long = largest position + 1 - T per row).

    The rule, as `Qwen2_5_VLForConditionalGeneration.get_rope_index` of transformers 4.49-4.51 (what
    Qwen2.5-VL and Video-R1 were trained with; 4.52-4.57 cast second_per_grid to int64 before the
    product): padding (mask 0) gets 1 on every axis; the other tokens are numbered in order, text
    tokens with the same value on all 3 axes, each at previous position + 1. A vision block (a
    contiguous run of image or video pad tokens) of merged grid (t, h, w) with time offsets o (t,)
    -- `family(config).blocks(config, visual)`: Qwen2.5-VL's o_i = trunc(i * second_per_grid *
    tokens_per_second), one block per visual; Qwen3-VL's one (1, h, w) block per temporal patch with
    o = 0 -- fills its grid in (t, row, column) order; with s = the position the block's first token
    would have as text, its token (i, r, c) sits at (s + o_i, s + r, s + c). The text after a block
    starts at the block's largest position over the 3 axes + 1.
    Raises ValueError (naming the row) when a row's number of vision blocks differs from what its
    visuals need, a block's kind differs from its visual's data_type, or a block's pad-token count
    differs from t*h*w.
    """
    fam = family(hf.config)
    B, T = input_ids.shape
    # (B, T), one copy
    mask = (torch.ones_like(input_ids) if attention_mask is None else attention_mask).cpu()
    # (B, T) 0 text, 1 image, 2 video
    kinds = mm_token_types(input_ids, hf.config, prompt_len).cpu()
    pos = torch.ones(3, B, T, dtype=torch.long)  # (3, B, T) padding keeps 1
    top = torch.zeros(B, dtype=torch.long)  # (B,) largest position per row
    for b in range(B):
        real = mask[b].nonzero()[:, 0]  # (n,) indices of real tokens
        k = kinds[b, real]                                                     # (n,)
        edges = torch.diff(k, prepend=k.new_zeros(1),
                           append=k.new_zeros(1)).nonzero()[:, 0].tolist()
        # [start, end) of each pad run
        found = [(s, e) for s, e in zip(edges[:-1], edges[1:]) if k[s] != 0]
        mine = [visuals[o]
                for o in (owner[b] if isinstance(owner[b], (list, tuple)) else [owner[b]])]
        mine = [v for v in mine if v is not None]  # None: a text-only prompt
        try:
            need = [(v.data_type, *blk) for v in mine for blk in fam.blocks(hf.config, v)]
        except ValueError as e:
            raise ValueError(f"rope_positions: row {b}: {e}") from e
        if len(found) != len(need):
            raise ValueError(f"rope_positions: row {b} has {len(found)} vision block(s) "
                             f"for {len(mine)} visual(s) needing {len(need)}")
        parts, nxt, done = [], 0, 0  # next text position, tokens placed
        for (s, e), (kind, ti, h, w) in zip(found, need):
            if e - s != len(ti) * h * w or int(k[s]) != (1 if kind == "image" else 2):
                raise ValueError(f"rope_positions: row {b}: a block of {e - s} "
                                 f"{('', 'image', 'video')[int(k[s])]} pads, its {kind} block of "
                                 f"{len(ti)}x{h}x{w} merged patches needs {len(ti) * h * w}")
            # (3, text before the block)
            parts.append(torch.arange(nxt, nxt + s - done).expand(3, -1))
            start = nxt + s - done                                             # the block's s
            # (3, t, h, w)
            grid = torch.stack(torch.meshgrid(ti, torch.arange(h), torch.arange(w), indexing="ij"))
            parts.append(start + grid.reshape(3, -1))                          # (3, t*h*w)
            nxt, done = int(parts[-1].max()) + 1, e
        # (3, text after the last block)
        parts.append(torch.arange(nxt, nxt + len(real) - done).expand(3, -1))
        row = torch.cat(parts, dim=1)                                          # (3, n)
        pos[:, b, real] = row
        top[b] = row.max() if row.numel() else -1
    # (3, B, T), (B, 1)
    return pos.to(input_ids.device), (top + 1 - T)[:, None].to(input_ids.device)


def embed_with_visuals(hf, input_ids, visuals: list[Visual], owner: list[int],
                       prompt_len: int | None = None):
    """Token embeddings (B, T, D) with each row's media pad tokens replaced by its visual features,
    and the decoder's extra inputs for them.

    input_ids (B, T) long; visuals: list of Visual; owner[b] indexes `visuals` for row b. The vision
    tower runs ONCE per call, on every distinct visual of the batch at once, images and videos
    together (the tower takes concatenated patches with one grid per item and attends within each
    item only). One call per forward keeps the collective sequence the same on every rank under
    FSDP, whatever mix of media a rank holds (a call per media kind made a rank with both kinds
    all-gather the vision blocks twice: an abort under gloo, a hang under NCCL). Rows sharing a
    visual (a group's G completions) reuse the same features, so their gradients flow into the
    vision tower once, summed. Only the first `prompt_len` positions hold media (see
    mm_token_types).
    Returns (embeds (B, T, D), extra: dict of keyword arguments for `hf.model.language_model`): {}
    for Qwen2.5-VL; for Qwen3-VL's DeepStack {"visual_pos_masks": (B, T) bool, the media pads,
    "deepstack_visual_embeds": one (n pads, D) tensor per DeepStack level, rows in the mask's
    row-major order}.
    Raises ValueError when the pad-token count does not match the features.
    """
    fam = family(hf.config)
    embeds = hf.model.get_input_embeddings()(input_ids)                        # (B, T, D)
    used = sorted(o for o in set(owner) if visuals[o] is not None)  # None: a text-only prompt
    if not used:  # (eval.py --media none)
        return embeds, {}
    # (sum patches, C*2*p*p)
    pix = torch.cat([visuals[u].pixel_values for u in used]).to(embeds.device)
    grid = torch.stack([visuals[u].grid_thw for u in used]).to(embeds.device)      # (U, 3)
    # (sum tokens, D), [(sum tokens, D)]
    feats, deep = fam.vision(hf, pix.to(hf.model.visual.dtype), grid)
    sizes = (grid.prod(-1) // hf.config.vision_config.spatial_merge_size ** 2).tolist()
    pad_ids = {"image": hf.config.image_token_id, "video": hf.config.video_token_id}
    want = torch.tensor([-1 if visuals[o] is None else pad_ids[visuals[o].data_type]
                         for o in owner],
                        device=input_ids.device)  # (B,) -1: matches no token
    mask = input_ids == want[:, None]  # (B, T) this row's media pads
    if prompt_len is not None:
        mask[:, prompt_len:] = False
    def rows(f):  # (sum tokens, D) -> (n pad tokens, D)
        per_visual = dict(zip(used, f.split(sizes)))  # split once, rows in owner order
        return torch.cat([per_visual[o] for o in owner if o in per_visual])
    row_feats = rows(feats)
    if int(mask.sum()) != row_feats.shape[0]:
        raise ValueError(f"media pad tokens ({int(mask.sum())}) "
                         f"!= visual features ({row_feats.shape[0]})")
    extra = ({"visual_pos_masks": mask, "deepstack_visual_embeds": [rows(f) for f in deep]}
             if deep else {})
    return embeds.masked_scatter(mask[..., None], row_feats.to(embeds.dtype)), extra   # (B, T, D)


def _chunk_logprobs(lm_head, hidden, targets):
    logits = lm_head(hidden).float()                                           # (N, c, V)
    return torch.gather(F.log_softmax(logits, dim=-1), -1, targets[..., None])[..., 0]  # (N, c)


class PolicyLogprobs(nn.Module):
    """Per-token log-probs of completions under the policy (`hf`: a Qwen2.5-VL or Qwen3-VL
    ForConditionalGeneration); the module DDP/FSDP wrap (notes §1 step 7).

    forward(input_ids (N, T) long, attention_mask (N, T) long, prompt_len int, visuals list[Visual],
    owner list[int] of length N, media_in_prompt=True) -> (N, T - prompt_len) float32: log p(token t
    | tokens < t) for t = prompt_len .. T-1. For RL, prompts are left-padded to `prompt_len` and
    completions right-padded after it, and media pad ids are looked for in the prompt only (a
    sampled pad id is text); SFT passes right-padded whole conversations with
    `media_in_prompt=False` (media anywhere) and prompt_len = the first position whose log-prob it
    needs. `chunk` bounds the tokens (rows × positions) per lm_head call, so the float32 logits
    alive at once are at most chunk × V × 4 bytes whatever N and L are (e.g. 256 × 151,936 × 4 B ≈
    156 MB); with grad enabled each chunk is checkpointed so only hidden states are kept for
    backward.
    """

    def __init__(self, hf, chunk: int = 256):
        super().__init__()
        self.hf = hf
        self.chunk = chunk

    def forward(self, input_ids, attention_mask, prompt_len: int, visuals: list[Visual],
                owner: list[int], media_in_prompt: bool = True):
        media_len = prompt_len if media_in_prompt else None
        position_ids, _ = rope_positions(self.hf, input_ids, attention_mask, visuals, owner,
                                         media_len)  # (3, N, T)
        # (N, T, D)
        embeds, extra = embed_with_visuals(self.hf, input_ids, visuals, owner, media_len)
        hidden = self.hf.model.language_model(inputs_embeds=embeds, attention_mask=attention_mask,
                                              position_ids=position_ids, use_cache=False,
                                              **extra).last_hidden_state
        hidden = hidden[:, prompt_len - 1:-1]  # (N, L, D) predicts tokens P..T-1
        targets = input_ids[:, prompt_len:]                                    # (N, L)
        out, step = [], max(1, self.chunk // targets.shape[0])               # positions per chunk
        for s in range(0, targets.shape[1], step):
            h, t = hidden[:, s:s + step], targets[:, s:s + step]
            if torch.is_grad_enabled():
                out.append(checkpoint(_chunk_logprobs, self.hf.lm_head, h, t, use_reentrant=False))
            else:
                out.append(_chunk_logprobs(self.hf.lm_head, h, t))
        return torch.cat(out, dim=1)                                           # (N, L) float32


