"""T-GRPO math on tensors: temporal bonus, length bonus, group-relative advantages, clipped policy loss.

This file is what a reader holds next to the Video-R1 paper (arXiv 2503.21776). It is pure: tensors in,
tensors out; no model, no I/O, no torch.distributed. Batches are laid out as B prompt groups of G
ordered completions (and G̃ shuffled-frame completions for video prompts); sequences of the loss are the
N = B·G ordered completions, flattened, each with L completion-token positions.

Equations (notes = docs/video-r1.md, the project's notes on the paper and the official code):

  temporal reward r_t (paper, T-GRPO; notes §1 step 10), per prompt group of a video:
      p = mean_i acc_i  (G ordered completions),   p̃ = mean_j acc~_j  (G̃ shuffled completions)
      r_t = α  if p ≥ μ·p̃  else 0,   given only to completions with acc_i > threshold
      (trigger "contrast", T11: r_t = α if p > p̃ + margin: succeed on ordered frames AND fail on shuffled ones)
  length reward (paper, length control; notes §1 step 12):
      +ω to completions with acc_i > threshold and l_min ≤ len_i ≤ l_max, in groups with ≥ 2 such
  group-relative advantage (GRPO, as in the paper; notes §3):
      A_i = (R_i − mean(R)) / (std(R) + eps),  std unbiased (N − 1), eps = 1e-4
  policy objective per token t of completion i (paper Eq. 4, notes §3):
      ρ = exp(logπ − logπ_old),  s = min(ρ·A_i, clip(ρ, 1 − ε, 1 + ε_high)·A_i)
      KL = exp(x) − x − 1 with x = clamp(logπ_ref − logπ, −10, 10)   (k3 estimator)
      loss_t = −(s − β·KL),  then aggregated over tokens and sequences (see `policy_loss`)

Departures (docs/departures.md: paper, official code, ours, why and flag of each; the ID stands at the line):
  T1  the trigger is p >= μ·p̃ with μ = 0.8, as the code (paper v4: p >= p̃, i.e. --mu 1.0)
  T2  "correct" means accuracy > 0.1, as the code, for the temporal and the length bonus
  T3  p and p̃ per prompt group, for any number of groups (the code averages over the device batch)
  T4  a real clipped surrogate with old log-probs, ε and ε_high (the code's ratio is identically 1)
  T5  the length bonus needs >= 2 correct completions, ω = 0.2, as the code
  T6  the k3 KL's log-ratio is clamped to ±10, as the code (the paper has no clamp)
  T7  aggregation seq-mean-token-mean (official) by default; token-mean (DAPO) and Dr. GRPO as options
  T8  the bonus in the reward before normalisation (official) or on the advantages (paper v4's remark)
  T9  a group whose rewards are all equal, and G = 1, get exactly 0 advantages
  T10 image groups are not triggered and log p̃ = NaN (the code logs a dummy 0.5)
  T11 a strict contrast trigger as an option (ours): p > p̃ + margin (`--temporal-trigger contrast`)
"""

from dataclasses import dataclass

import torch

LOSS_AGGS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")


def _check_2d(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 2:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"tgrpo.py: {name} must be a 2-D tensor, got {shape}")


def _check_same(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor) or t.shape != ref.shape:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"tgrpo.py: {name} has shape {shape}, expected {tuple(ref.shape)} like {ref_name}")


# ------------------------------------------------------------------------------------------- rewards


TRIGGERS = ("official", "contrast")


def temporal_stats(accuracy: torch.Tensor, shuffled_accuracy: torch.Tensor, is_video: torch.Tensor,
                   mu: float = 0.8, trigger: str = "official", margin: float = 0.0) -> dict:
    """Per-group ordered and shuffled mean accuracy, and whether the temporal condition holds.

    Paper: the T-GRPO condition p vs μ·p̃; notes §1 step 10 and §9 item 2 (`>=` with μ = 0.8, as in the
    official code). trigger "official": p ≥ μ·p̃. trigger "contrast" (T11, ours): p > p̃ + margin, the
    paper's own summary of the idea (reward success on ordered frames that fails on shuffled ones); unlike
    the official rule it does not fire when p ≈ p̃, as for a model answering from one frame's content.

    Args:
        accuracy: (B, G) float, accuracy reward of each ordered-frame completion.
        shuffled_accuracy: (B, G̃) float, accuracy of each shuffled-frame completion. Rows of image groups
            are ignored (fill them with anything). G̃ may be 0 only when no group is a video.
        is_video: (B,) bool, True for groups whose prompt is a video.
        mu: μ, the factor on p̃ in the condition p ≥ μ·p̃ (0.8 code / v1, 1.0 paper v4); trigger "official" only.
        trigger: "official" or "contrast". margin: the contrast rule's p − p̃ must exceed this (>= 0).
    Returns:
        dict with
          "p": (B,) float, mean ordered accuracy per group (defined for images too),
          "p_shuffled": (B,) float, p̃ per group, NaN for image groups,
          "triggered": (B,) bool, is_video & the trigger rule. Log `triggered[is_video].float().mean()`.
    Raises:
        ValueError: wrong dimensions, mismatched B, non-bool is_video, G̃ = 0 with a video group, an unknown
        trigger or a negative margin.
    """
    if trigger not in TRIGGERS:
        raise ValueError(f"tgrpo.py: trigger must be one of {TRIGGERS}, got {trigger!r}")
    if margin < 0:
        raise ValueError(f"tgrpo.py: the contrast trigger's margin must be >= 0, got {margin}")
    _check_2d("accuracy", accuracy)
    _check_2d("shuffled_accuracy", shuffled_accuracy)
    B = accuracy.shape[0]
    if shuffled_accuracy.shape[0] != B:
        raise ValueError(f"tgrpo.py: shuffled_accuracy has shape {tuple(shuffled_accuracy.shape)}, "
                         f"expected {B} groups like accuracy {tuple(accuracy.shape)}")
    if not isinstance(is_video, torch.Tensor) or is_video.shape != (B,) or is_video.dtype != torch.bool:
        got = (tuple(is_video.shape), is_video.dtype) if isinstance(is_video, torch.Tensor) else is_video
        raise ValueError(f"tgrpo.py: is_video must be a ({B},) bool tensor, got {got}")
    if accuracy.shape[1] == 0:
        raise ValueError(f"tgrpo.py: accuracy has G = 0 completions per group, shape {tuple(accuracy.shape)}")
    if shuffled_accuracy.shape[1] == 0 and bool(is_video.any()):
        raise ValueError("tgrpo.py: shuffled_accuracy has G̃ = 0 but is_video marks "
                         f"{int(is_video.sum())} video group(s); p̃ needs at least one shuffled completion")
    p = accuracy.mean(dim=1)  # (B,)
    if shuffled_accuracy.shape[1] == 0:
        p_shuffled = torch.full_like(p, float("nan"))  # (B,)
        triggered = torch.zeros_like(is_video)  # (B,)
    else:
        p_shuffled = shuffled_accuracy.to(p.dtype).mean(dim=1)  # (B,)
        fires = p >= mu * p_shuffled if trigger == "official" else p > p_shuffled + margin  # (B,) T1 / T11
        triggered = is_video & fires  # (B,)
        p_shuffled = torch.where(is_video, p_shuffled, torch.full_like(p_shuffled, float("nan")))  # (B,)
    return {"p": p, "p_shuffled": p_shuffled, "triggered": triggered}


def temporal_bonus(accuracy: torch.Tensor, shuffled_accuracy: torch.Tensor, is_video: torch.Tensor,
                   alpha: float = 0.3, mu: float = 0.8, threshold: float = 0.1, trigger: str = "official",
                   margin: float = 0.0) -> torch.Tensor:
    """The T-GRPO temporal reward r_t for every ordered completion.

    Paper: temporal reward r_t; notes §1 step 10: in a video group where p ≥ μ·p̃, every ordered
    completion with accuracy > threshold gets +α; image groups get nothing. Departures T1–T3 and T8 of the
    header apply.

    Args:
        accuracy: (B, G) float, ordered-frame accuracy per completion (before any bonus).
        shuffled_accuracy: (B, G̃) float, shuffled-frame accuracy; (B, 0) allowed when no group is a video.
        is_video: (B,) bool.
        alpha: α, the bonus (0.3). mu: μ (0.8 code, 1.0 paper v4). threshold: "correct" means acc > this.
        trigger, margin: the trigger rule, as `temporal_stats`.
    Returns:
        (B, G) tensor of accuracy's dtype: α or 0 per completion. Add it to the reward (official) or to the
        advantages (paper v4 remark); see T8.
    Raises:
        ValueError: as `temporal_stats`.
    """
    triggered = temporal_stats(accuracy, shuffled_accuracy, is_video, mu, trigger, margin)["triggered"]  # (B,)
    gets = triggered[:, None] & (accuracy > threshold)  # (B, G)
    return gets.to(accuracy.dtype) * alpha  # (B, G)


def length_bonus(accuracy: torch.Tensor, lengths: torch.Tensor, weight: float = 0.2, min_len: int = 320,
                 max_len: int = 512, threshold: float = 0.1) -> torch.Tensor:
    """Length-control reward: +ω for correct completions of moderate length.

    Paper: length control (ω = 0.2, l_min = 320, l_max = 512 in v4); notes §1 step 12 and §9 item 5: only
    in groups with at least two completions whose accuracy > threshold (the code's condition, not the
    paper's), and only to those completions whose length lies in [min_len, max_len], bounds inclusive.

    Args:
        accuracy: (B, G) float, the ORIGINAL accuracy, before the temporal bonus.
        lengths: (B, G) int (or float), completion-token count including the stop token `<|im_end|>`.
        weight: ω. min_len, max_len: inclusive bounds in tokens. threshold: "correct" means acc > this.
    Returns:
        (B, G) tensor of accuracy's dtype: ω or 0 per completion.
    Raises:
        ValueError: if accuracy is not 2-D or lengths does not have its shape.
    """
    _check_2d("accuracy", accuracy)
    _check_same("lengths", lengths, "accuracy", accuracy)
    correct = accuracy > threshold  # (B, G)
    enough = correct.sum(dim=1, keepdim=True) >= 2  # (B, 1)
    in_range = (lengths >= min_len) & (lengths <= max_len)  # (B, G)
    return (correct & in_range & enough).to(accuracy.dtype) * weight  # (B, G)


# ---------------------------------------------------------------------------------------- advantages


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4, scale: str = "group") -> torch.Tensor:
    """Group-relative advantages over the G completions of each prompt.

    Paper: GRPO advantage; notes §3: A_i = (R_i − mean) / (std + eps) with the unbiased (N − 1)
    std and eps = 1e-4. scale="none" gives Dr. GRPO's A_i = R_i − mean. Groups whose rewards are all
    equal get exactly 0, and G = 1 gives 0 (T9).

    Args:
        rewards: (B, G) float, total reward per completion.
        eps: added to the std in the denominator (scale="group" only).
        scale: "group" (GRPO, official) or "none" (Dr. GRPO).
    Returns:
        (B, G) float advantages, same dtype as rewards.
    Raises:
        ValueError: rewards not 2-D, or unknown scale.
    """
    _check_2d("rewards", rewards)
    if scale not in ("group", "none"):
        raise ValueError(f"tgrpo.py: group_advantages scale must be 'group' or 'none', got {scale!r}")
    G = rewards.shape[1]
    if G <= 1:
        return torch.zeros_like(rewards)  # (B, G)
    mean = rewards.mean(dim=1, keepdim=True)  # (B, 1)
    centred = rewards - mean  # (B, G)
    if scale == "group":
        std = rewards.std(dim=1, keepdim=True)  # (B, 1), unbiased
        centred = centred / (std + eps)  # (B, G)
    flat = rewards.amax(dim=1, keepdim=True) == rewards.amin(dim=1, keepdim=True)  # (B, 1)
    return torch.where(flat, torch.zeros_like(centred), centred)  # (B, G)


def variant(temporal: bool, trigger: str, mu: float, margin: float, placement: str, scale: str) -> str:
    """The name of a reward-to-advantage combination for logs and reports, e.g. "T-GRPO[p>=0.8p~, reward,
    std]" (the official code's), "T-GRPO[p>p~+0.1, advantage, none]" or "GRPO[std]". Raises nothing."""
    scale_name = "std" if scale == "group" else scale
    if not temporal:
        return f"GRPO[{scale_name}]"
    rule = f"p>={mu:g}p~" if trigger == "official" else f"p>p~+{margin:g}"
    return f"T-GRPO[{rule}, {placement}, {scale_name}]"


# ---------------------------------------------------------------------------------------------- loss


@dataclass
class Advantages:
    """The reward-to-advantage equation of one step, for B prompt groups of G ordered completions.

    total (B, G): R_i = accuracy + format + length bonus, + the temporal bonus when it is placed in the reward;
    advantages (B, G): A_i, what the loss multiplies; temporal (B, G): r_t paid to each completion (0 when not
    triggered); length (B, G): ω paid to each completion; stats: `temporal_stats` plus "bonus_adv_shift"
    (B, G) = |A_i − A_i without the bonus| (0 where group normalisation cancels a bonus in the reward), or
    None without a temporal signal. All float, the dtype of the accuracy.
    """
    total: torch.Tensor
    advantages: torch.Tensor
    temporal: torch.Tensor
    length: torch.Tensor
    stats: dict | None


def advantages(accuracy: torch.Tensor, format_reward: torch.Tensor, lengths: torch.Tensor,
               shuffled_accuracy: torch.Tensor, is_video: torch.Tensor, *, temporal: bool = True, alpha: float = 0.3,
               mu: float = 0.8, threshold: float = 0.1, len_control: bool = True, len_weight: float = 0.2,
               min_len: int = 320, max_len: int = 512, placement: str = "reward", eps: float = 1e-4,
               scale: str = "group", trigger: str = "official", margin: float = 0.0) -> Advantages:
    """The whole T-GRPO reward-to-advantage equation (module header; notes §1 steps 10–12, §3).

    R_i = acc_i + fmt_i + length bonus_i (+ r_t,i with placement "reward", the official code's), then
    A = group_advantages(R); with placement "advantage" (paper v4's alternative, T8) the bonus is
    added after normalisation: A = group_advantages(acc + fmt + len) + r_t.
    Args: accuracy, format_reward (B, G) float; lengths (B, G) completion tokens incl. the stop token;
    shuffled_accuracy (B, G̃) float (G̃ may be 0); is_video (B,) bool (groups that have a shuffled set);
    temporal: False gives plain GRPO (no bonus, no stats); the rest as temporal_bonus (trigger, margin: T1 /
    T11), length_bonus and group_advantages. `variant` names a combination for logs and reports. Returns Advantages. Raises ValueError for an unknown placement or mismatched shapes.
    """
    if placement not in ("reward", "advantage"):
        raise ValueError(f"tgrpo.py: placement must be 'reward' or 'advantage', got {placement!r}")
    bonus = temporal_bonus(accuracy, shuffled_accuracy, is_video, alpha, mu, threshold, trigger, margin) if temporal \
        else torch.zeros_like(accuracy)                                                      # (B, G)
    length = length_bonus(accuracy, lengths, len_weight, min_len, max_len, threshold) if len_control \
        else torch.zeros_like(accuracy)                                                      # (B, G)
    base = group_advantages(accuracy + format_reward + length, eps, scale)                    # (B, G) without r_t
    if placement == "reward":
        total = accuracy + bonus + format_reward + length                                    # (B, G)
        adv = group_advantages(total, eps, scale) if temporal else base                      # (B, G) no bonus: R = base's
    else:
        total = accuracy + format_reward + length                                            # (B, G)
        adv = base + bonus                                                                   # (B, G)
    stats = temporal_stats(accuracy, shuffled_accuracy, is_video, mu, trigger, margin) \
        if temporal and shuffled_accuracy.shape[1] > 0 \
        else None
    if stats is not None:
        stats["bonus_adv_shift"] = (adv - base).abs()                                        # (B, G)
    return Advantages(total, adv, bonus, length, stats)


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor | None, ref_logprobs: torch.Tensor | None,
                advantages: torch.Tensor, mask: torch.Tensor, clip_eps: float = 0.2,
                clip_eps_high: float | None = None, beta: float = 0.04, loss_agg: str = "seq-mean-token-mean",
                *, num_sequences: int | None = None, num_tokens: float | None = None,
                norm_len: int | None = None) -> tuple[torch.Tensor, dict]:
    """Clipped surrogate with k3 KL penalty, aggregated over completion tokens (paper Eq. 4, notes §3).

    Per token: ρ = exp(logπ − logπ_old); s = min(ρ·A, clip(ρ, 1 − ε, 1 + ε_high)·A);
    KL = exp(x) − x − 1 with x = clamp(logπ_ref − logπ, −10, 10); loss_t = −(s − β·KL).

    Aggregation (m = mask, n_i = Σ_t m_it, the completion length of sequence i):
      "seq-mean-token-mean" (official, default): Σ_i (Σ_t m·loss / n_i) / num_sequences
      "token-mean" (DAPO):                        Σ_i Σ_t m·loss / num_tokens
      "seq-mean-token-sum-norm" (Dr. GRPO):       Σ_i Σ_t m·loss / (num_sequences · norm_len)
    The normalisers default to this call's values (N, Σ m, L). To split a batch into micro-batches whose
    summed losses (and gradients) equal the whole-batch loss, pass the whole batch's values to every call:
    num_sequences = total sequences, num_tokens = total masked tokens, norm_len = one fixed width (e.g. the
    max completion length, which is what Dr. GRPO prescribes anyway).

    Args:
        logprobs: (N, L) float, policy log-probs of the sampled completion tokens (requires grad).
        old_logprobs: (N, L) float, log-probs of the rollout policy; None means on-policy, old =
            logprobs.detach() (ρ ≡ 1 in value, gradient ∇logπ·A: the official update, T4).
        ref_logprobs: (N, L) float, reference-model log-probs; may be None only when beta == 0.
        advantages: (N,) float, one advantage per completion (flattened (B, G)).
        mask: (N, L) bool or float, 1 on completion tokens up to and including the stop token (any
            nonzero value counts as a completion token; it is a selector, not a weight).
        clip_eps: ε, lower clip. clip_eps_high: ε_high (DAPO clip-higher); None means ε.
        beta: β, KL weight (0.04). beta == 0 ignores the reference entirely.
        loss_agg: one of LOSS_AGGS.
        num_sequences, num_tokens, norm_len: keyword-only normalisers for micro-batching (see above).
    Returns:
        (loss, metrics): loss is a 0-d tensor; metrics holds detached 0-d tensors over this call's
        sequences only (call .item() to log; average over micro-batches yourself):
        "kl" (mean over sequences of the masked per-sequence mean KL; 0 when ref_logprobs is None),
        "clip_frac" (fraction of masked tokens where the clipped branch is the strict minimum),
        "ratio_min", "ratio_mean", "ratio_max" (ρ over masked tokens).
    Raises:
        ValueError: shape mismatches (naming the argument and shapes), unknown loss_agg, beta > 0 with
            ref_logprobs None, a mask with no completion tokens, or non-positive normalisers.
    """
    _check_2d("logprobs", logprobs)
    N, L = logprobs.shape
    _check_same("mask", mask, "logprobs", logprobs)
    if old_logprobs is not None:
        _check_same("old_logprobs", old_logprobs, "logprobs", logprobs)
    if ref_logprobs is not None:
        _check_same("ref_logprobs", ref_logprobs, "logprobs", logprobs)
    elif beta != 0:
        raise ValueError(f"tgrpo.py: ref_logprobs is None but beta = {beta}; "
                         "pass reference log-probs or beta=0")
    if not isinstance(advantages, torch.Tensor) or advantages.shape != (N,):
        shape = tuple(advantages.shape) if isinstance(advantages, torch.Tensor) else type(advantages).__name__
        raise ValueError(f"tgrpo.py: advantages has shape {shape}, expected ({N},) for logprobs {(N, L)}")
    if loss_agg not in LOSS_AGGS:
        raise ValueError(f"tgrpo.py: unknown loss_agg {loss_agg!r}; expected one of {LOSS_AGGS}")

    on = mask != 0  # (N, L) bool, completion tokens
    n_tok = on.sum(dim=1).to(logprobs.dtype)  # (N,)
    if float(n_tok.sum()) <= 0:
        raise ValueError(f"tgrpo.py: mask of shape {(N, L)} marks no completion tokens")
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    old = logprobs.detach() if old_logprobs is None else old_logprobs  # (N, L)
    A = advantages.to(logprobs.dtype)[:, None]  # (N, 1)

    # Padding positions are zeroed before exp so that garbage there (inf, huge values) can never reach the
    # loss or its gradient as NaN: 0 * inf in a masked sum, or a NaN gradient through an unselected branch.
    ratio = torch.exp(torch.where(on, logprobs - old, 0.0))  # (N, L)
    unclipped = ratio * A  # (N, L)
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + eps_high) * A  # (N, L)
    surrogate = torch.minimum(unclipped, clipped)  # (N, L)

    if ref_logprobs is not None:
        x = torch.clamp(torch.where(on, ref_logprobs - logprobs, 0.0), -10.0, 10.0)  # (N, L)
        kl = torch.exp(x) - x - 1.0  # (N, L), k3 >= 0
    else:
        kl = torch.zeros_like(logprobs)  # (N, L)
    per_token = -(surrogate - beta * kl) if beta != 0 else -surrogate  # (N, L)

    masked_sum = torch.where(on, per_token, 0.0).sum(dim=1)  # (N,)
    S = N if num_sequences is None else num_sequences
    if S <= 0:
        raise ValueError(f"tgrpo.py: num_sequences must be positive, got {num_sequences}")
    if loss_agg == "seq-mean-token-mean":
        loss = (masked_sum / n_tok.clamp(min=1.0)).sum() / S  # ()
    elif loss_agg == "token-mean":
        T = n_tok.sum() if num_tokens is None else num_tokens
        if float(T) <= 0:
            raise ValueError(f"tgrpo.py: num_tokens must be positive, got {num_tokens}")
        loss = masked_sum.sum() / T  # ()
    else:
        width = L if norm_len is None else norm_len
        if width <= 0:
            raise ValueError(f"tgrpo.py: norm_len must be positive, got {norm_len}")
        loss = masked_sum.sum() / (S * width)  # ()

    with torch.no_grad():
        r = ratio.detach()[on]  # (n,) ratios on completion tokens
        kl_seq = torch.where(on, kl.detach(), 0.0).sum(dim=1) / n_tok.clamp(min=1.0)  # (N,)
        metrics = {
            "kl": kl_seq.mean(),
            "clip_frac": (clipped.detach() < unclipped.detach())[on].to(logprobs.dtype).mean(),
            "ratio_min": r.min(),
            "ratio_mean": r.mean(),
            "ratio_max": r.max(),
        }
    return loss, metrics
