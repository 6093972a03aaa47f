"""T-GRPO math on tensors: the page to hold next to the Video-R1 paper (arXiv 2503.21776).

Pure: tensors in, tensors out; no model, no I/O, no torch.distributed. A batch is B prompt groups of
G ordered completions (and G̃ shuffled-frame completions for a video prompt); the loss sees the
N = B·G ordered completions, flattened, each L completion-token positions wide.

  temporal reward r_t (T-GRPO; notes §1 step 10), per video group:
      p = mean_i acc_i (G ordered),  p̃ = mean_j acc~_j (G̃ shuffled)
      r_t = α if p ≥ μ·p̃ else 0, only to completions with acc_i > threshold
      (trigger "contrast", T11: r_t = α if p > p̃ + margin)
  length reward (notes §1 step 12): +ω to completions with acc_i > threshold and
      l_min ≤ len_i ≤ l_max, in groups with ≥ 2 such completions
  advantage (GRPO; notes §3): A_i = (R_i − mean R) / (std R + eps), std unbiased, eps = 1e-4
  objective per token t of completion i (paper Eq. 4; notes §3):
      ρ = exp(logπ − logπ_old),  s = min(ρ·A_i, clip(ρ, 1 − ε, 1 + ε_high)·A_i)
      KL = exp(x) − x − 1,  x = clamp(logπ_ref − logπ, −10, 10)   (k3)
      loss_t = −(s − β·KL), then aggregated over tokens and sequences (`policy_loss`)

Departures T1–T11 are rows of docs/departures.md; each ID stands at its line.
Cut: the official code's per-device-batch p, p̃ (T3) and its identically-1 ratio (T4).
"""

from dataclasses import dataclass

import torch

LOSS_AGGS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")
TRIGGERS = ("official", "contrast")


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(f"tgrpo.py: {msg}")


def _shape(t) -> object:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__


@dataclass(frozen=True)
class Settings:
    """The knobs of the reward-to-advantage equation; defaults are the official code's."""
    temporal: bool = True        # False: plain GRPO, no r_t
    alpha: float = 0.3           # α, the temporal bonus
    mu: float = 0.8              # μ in p ≥ μ·p̃ (T1: code 0.8, paper v4 1.0)
    threshold: float = 0.1       # "correct" means acc > this (T2)
    trigger: str = "official"    # "official": p ≥ μ·p̃; "contrast": p > p̃ + margin (T11)
    margin: float = 0.0          # the contrast trigger's margin, >= 0
    len_control: bool = True     # the length bonus on or off
    len_weight: float = 0.2      # ω (T5)
    min_len: int = 320           # l_min, tokens incl. the stop token, inclusive
    max_len: int = 512           # l_max, inclusive
    placement: str = "reward"    # r_t in the reward (official) or on the advantages (T8)
    scale: str = "group"         # "group": divide by the group std (GRPO); "none": Dr. GRPO
    eps: float = 1e-4            # added to the group std

    def __post_init__(self):
        _check(self.trigger in TRIGGERS, f"trigger must be one of {TRIGGERS}, got {self.trigger!r}")
        _check(self.margin >= 0, f"the contrast trigger's margin must be >= 0, got {self.margin}")
        _check(self.placement in ("reward", "advantage"),
               f"placement must be 'reward' or 'advantage', got {self.placement!r}")
        _check(self.scale in ("group", "none"),
               f"scale must be 'group' or 'none', got {self.scale!r}")

    def name(self) -> str:
        """The combination's name for logs and reports, e.g. "T-GRPO[p>=0.8p~, reward, std]"."""
        scale = "std" if self.scale == "group" else self.scale
        if not self.temporal:
            return f"GRPO[{scale}]"
        rule = f"p>={self.mu:g}p~" if self.trigger == "official" else f"p>p~+{self.margin:g}"
        return f"T-GRPO[{rule}, {self.placement}, {scale}]"


DEFAULT = Settings()


# ------------------------------------------------------------------------------------ rewards


def temporal_stats(accuracy: torch.Tensor, shuffled_accuracy: torch.Tensor, is_video: torch.Tensor,
                   s: Settings = DEFAULT) -> dict:
    """p (B,), p̃ (B,; NaN for image groups, T10) and `triggered` (B,) bool per group.

    accuracy (B, G), shuffled_accuracy (B, G̃; image rows ignored; G̃ = 0 only without videos),
    is_video (B,) bool.
    """
    B = accuracy.shape[0]
    _check(accuracy.dim() == 2 and accuracy.shape[1] > 0,
           f"accuracy must be (B, G) with G > 0, got {_shape(accuracy)}")
    _check(shuffled_accuracy.dim() == 2 and shuffled_accuracy.shape[0] == B,
           f"shuffled_accuracy has shape {_shape(shuffled_accuracy)}, expected ({B}, G̃)")
    video_ok = isinstance(is_video, torch.Tensor) and is_video.dtype == torch.bool
    _check(video_ok and is_video.shape == (B,),
           f"is_video must be a ({B},) bool tensor, got {_shape(is_video)} "
           f"{getattr(is_video, 'dtype', '')}")
    _check(shuffled_accuracy.shape[1] > 0 or not bool(is_video.any()),
           f"shuffled_accuracy has G̃ = 0 but {int(is_video.sum())} group(s) are videos")
    p = accuracy.mean(dim=1)                                                    # (B,)
    nan = torch.full_like(p, float("nan"))                                      # (B,)
    if shuffled_accuracy.shape[1] == 0:
        return {"p": p, "p_shuffled": nan, "triggered": torch.zeros_like(is_video)}
    p_shuffled = shuffled_accuracy.to(p.dtype).mean(dim=1)                      # (B,) T3: per group
    if s.trigger == "official":
        fires = p >= s.mu * p_shuffled                                          # (B,) T1
    else:
        fires = p > p_shuffled + s.margin                                       # (B,) T11
    return {"p": p, "p_shuffled": torch.where(is_video, p_shuffled, nan),       # T10
            "triggered": is_video & fires}


def temporal_bonus(accuracy: torch.Tensor, shuffled_accuracy: torch.Tensor, is_video: torch.Tensor,
                   s: Settings = DEFAULT) -> torch.Tensor:
    """r_t (B, G) of every ordered completion: α where the group triggered and acc > threshold."""
    triggered = temporal_stats(accuracy, shuffled_accuracy, is_video, s)["triggered"]   # (B,)
    gets = triggered[:, None] & (accuracy > s.threshold)                        # (B, G) T2
    return gets.to(accuracy.dtype) * s.alpha                                    # (B, G)


def length_bonus(accuracy: torch.Tensor, lengths: torch.Tensor,
                 s: Settings = DEFAULT) -> torch.Tensor:
    """ω (B, G) for correct completions of length in [l_min, l_max], in groups with ≥ 2 correct.

    accuracy (B, G) before any bonus; lengths (B, G) tokens including the stop token.
    """
    _check(accuracy.dim() == 2, f"accuracy must be (B, G), got {_shape(accuracy)}")
    _check(isinstance(lengths, torch.Tensor) and lengths.shape == accuracy.shape,
           f"lengths has shape {_shape(lengths)}, expected {tuple(accuracy.shape)} like accuracy")
    correct = accuracy > s.threshold                                            # (B, G)
    enough = correct.sum(dim=1, keepdim=True) >= 2                              # (B, 1) T5
    in_range = (lengths >= s.min_len) & (lengths <= s.max_len)                  # (B, G)
    return (correct & in_range & enough).to(accuracy.dtype) * s.len_weight      # (B, G)


# --------------------------------------------------------------------------------- advantages


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4,
                     scale: str = "group") -> torch.Tensor:
    """A (B, G) = (R − mean) / (std + eps) per group of rewards (B, G); scale "none": R − mean."""
    _check(rewards.dim() == 2, f"rewards must be (B, G), got {_shape(rewards)}")
    _check(scale in ("group", "none"),
           f"group_advantages scale must be 'group' or 'none', got {scale!r}")
    if rewards.shape[1] <= 1:
        return torch.zeros_like(rewards)                                        # (B, G) T9: G = 1
    centred = rewards - rewards.mean(dim=1, keepdim=True)                       # (B, G)
    if scale == "group":
        centred = centred / (rewards.std(dim=1, keepdim=True) + eps)            # (B, G) unbiased
    flat = rewards.amax(dim=1, keepdim=True) == rewards.amin(dim=1, keepdim=True)   # (B, 1)
    return torch.where(flat, torch.zeros_like(centred), centred)                # (B, G) T9: exact 0


@dataclass
class Advantages:
    """One step's reward-to-advantage result, all (B, G) in the accuracy's dtype.

    stats: `temporal_stats` plus "bonus_adv_shift" = |A − A without r_t|; None without r_t.
    """
    total: torch.Tensor        # R_i: acc + format + length (+ r_t with placement "reward")
    advantages: torch.Tensor   # A_i, what the loss multiplies
    temporal: torch.Tensor     # r_t paid to each completion
    length: torch.Tensor       # ω paid to each completion
    stats: dict | None


def advantages(accuracy: torch.Tensor, format_reward: torch.Tensor, lengths: torch.Tensor,
               shuffled_accuracy: torch.Tensor, is_video: torch.Tensor,
               s: Settings = DEFAULT) -> Advantages:
    """The header's reward-to-advantage equation: (B, G) rewards and lengths, (B, G̃) shuffled."""
    zeros = torch.zeros_like(accuracy)                                          # (B, G)
    bonus = temporal_bonus(accuracy, shuffled_accuracy, is_video, s) if s.temporal else zeros
    length = length_bonus(accuracy, lengths, s) if s.len_control else zeros     # (B, G)
    base = group_advantages(accuracy + format_reward + length, s.eps, s.scale)  # (B, G) without r_t
    if s.placement == "reward":                                                 # T8: official
        total = accuracy + bonus + format_reward + length                       # (B, G)
        adv = group_advantages(total, s.eps, s.scale) if s.temporal else base   # (B, G)
    else:                                                                       # T8: paper v4
        total = accuracy + format_reward + length                               # (B, G)
        adv = base + bonus                                                      # (B, G)
    stats = None
    if s.temporal and shuffled_accuracy.shape[1] > 0:
        stats = temporal_stats(accuracy, shuffled_accuracy, is_video, s)
        stats["bonus_adv_shift"] = (adv - base).abs()                           # (B, G)
    return Advantages(total, adv, bonus, length, stats)


# --------------------------------------------------------------------------------------- loss


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor | None,
                ref_logprobs: torch.Tensor | None, advantages: torch.Tensor, mask: torch.Tensor,
                clip_eps: float = 0.2, clip_eps_high: float | None = None, beta: float = 0.04,
                loss_agg: str = "seq-mean-token-mean", *, num_sequences: int | None = None,
                num_tokens: float | None = None, norm_len: int | None = None
                ) -> tuple[torch.Tensor, dict]:
    """Clipped surrogate with k3 KL (header), aggregated by `loss_agg`; returns (loss, metrics).

    (N, L) log-probs and mask, (N,) advantages; old None = on-policy (T4); ref None needs β = 0.
    Pass the whole batch's normalisers to every micro-batch so the losses sum to the batch's.
    """
    _check(logprobs.dim() == 2, f"logprobs must be (N, L), got {_shape(logprobs)}")
    N, L = logprobs.shape
    for name, t in (("mask", mask), ("old_logprobs", old_logprobs), ("ref_logprobs", ref_logprobs)):
        _check(t is None or (isinstance(t, torch.Tensor) and t.shape == logprobs.shape),
               f"{name} has shape {_shape(t)}, expected {(N, L)} like logprobs")
    _check(ref_logprobs is not None or beta == 0, f"ref_logprobs is None but beta = {beta}")
    _check(isinstance(advantages, torch.Tensor) and advantages.shape == (N,),
           f"advantages has shape {_shape(advantages)}, expected ({N},)")
    _check(loss_agg in LOSS_AGGS, f"unknown loss_agg {loss_agg!r}; expected one of {LOSS_AGGS}")
    on = mask != 0                                                              # (N, L) a selector
    n_tok = on.sum(dim=1).to(logprobs.dtype)                                    # (N,)
    _check(float(n_tok.sum()) > 0, f"mask of shape {(N, L)} marks no completion tokens")
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high             # DAPO clip-higher
    old = logprobs.detach() if old_logprobs is None else old_logprobs           # (N, L) T4
    A = advantages.to(logprobs.dtype)[:, None]                                  # (N, 1)

    # Padding is zeroed before exp: garbage there (inf) must never reach the loss or its gradient.
    ratio = torch.exp(torch.where(on, logprobs - old, 0.0))                     # (N, L) ρ
    unclipped = ratio * A                                                       # (N, L)
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + eps_high) * A            # (N, L)
    surrogate = torch.minimum(unclipped, clipped)                               # (N, L)
    kl = torch.zeros_like(logprobs)                                             # (N, L)
    if ref_logprobs is not None:
        x = torch.clamp(torch.where(on, ref_logprobs - logprobs, 0.0), -10.0, 10.0)  # (N, L) T6
        kl = torch.exp(x) - x - 1.0                                             # (N, L) k3 >= 0
    per_token = -(surrogate - beta * kl) if beta != 0 else -surrogate           # (N, L)

    masked_sum = torch.where(on, per_token, 0.0).sum(dim=1)                     # (N,)
    S = N if num_sequences is None else num_sequences
    _check(S > 0, f"num_sequences must be positive, got {num_sequences}")
    if loss_agg == "seq-mean-token-mean":                                       # T7: official
        loss = (masked_sum / n_tok.clamp(min=1.0)).sum() / S
    elif loss_agg == "token-mean":                                              # DAPO
        T = n_tok.sum() if num_tokens is None else num_tokens
        _check(float(T) > 0, f"num_tokens must be positive, got {num_tokens}")
        loss = masked_sum.sum() / T
    else:                                                                       # Dr. GRPO
        width = L if norm_len is None else norm_len
        _check(width > 0, f"norm_len must be positive, got {norm_len}")
        loss = masked_sum.sum() / (S * width)

    with torch.no_grad():                                                       # this call's rows
        r = ratio.detach()[on]                                                  # (n,)
        kl_seq = torch.where(on, kl.detach(), 0.0).sum(dim=1) / n_tok.clamp(min=1.0)  # (N,)
        clip_frac = (clipped.detach() < unclipped.detach())[on].to(logprobs.dtype).mean()
        metrics = {"kl": kl_seq.mean(), "clip_frac": clip_frac,
                   "ratio_min": r.min(), "ratio_mean": r.mean(), "ratio_max": r.max()}
    return loss, metrics
