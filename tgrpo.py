"""T-GRPO math on tensors: temporal bonus, length bonus, group-relative advantages, clipped policy loss.

This file is what a reader holds next to the Video-R1 paper (arXiv 2503.21776). It is pure: tensors in,
tensors out; no model, no I/O, no torch.distributed. Batches are laid out as B prompt groups of G
ordered completions (and G̃ shuffled-frame completions for video prompts); sequences of the loss are the
N = B·G ordered completions, flattened, each with L completion-token positions.

Equations (reference = /work/shared/reference/video-r1.md):

  temporal reward r_t (paper, T-GRPO; reference §1 step 10), per prompt group of a video:
      p = mean_i acc_i  (G ordered completions),   p̃ = mean_j acc~_j  (G̃ shuffled completions)
      r_t = α  if p ≥ μ·p̃  else 0,   given only to completions with acc_i > threshold
  length reward (paper, length control; reference §1 step 12):
      +ω to completions with acc_i > threshold and l_min ≤ len_i ≤ l_max, in groups with ≥ 2 such
  group-relative advantage (GRPO, as in the paper; reference §3):
      A_i = (R_i − mean(R)) / (std(R) + eps),  std unbiased (N − 1), eps = 1e-4
  policy objective per token t of completion i (paper Eq. 4, reference §3):
      ρ = exp(logπ − logπ_old),  s = min(ρ·A_i, clip(ρ, 1 − ε, 1 + ε_high)·A_i)
      KL = exp(x) − x − 1 with x = clamp(logπ_ref − logπ, −10, 10)   (k3 estimator)
      loss_t = −(s − β·KL),  then aggregated over tokens and sequences (see `policy_loss`)

Departures from the paper and from the official code (tulerfeng/Video-R1, HF trainer), and why:

 1. Temporal threshold: default μ = 0.8 compared with `>=`, as the official code does. Paper v1 writes
    p > μ·p̃ (μ = 0.8); paper v4 writes p ≥ p̃ (i.e. μ = 1). The author says 1.0 was intended and
    that both perform about the same (reference §9.2, issues #43, #74); pass mu=1.0 for paper v4.
 2. "Correct" means accuracy > threshold = 0.1 (code), for both the temporal and the length bonus. The
    paper speaks of correct answers (and suggests 0.5 for continuous rewards); accuracy is continuous for
    OCR, free-form and regression, so p and p̃ are mean accuracies, not proportions (reference §9.3).
 3. p and p̃ are computed per prompt group for any number of groups per batch. The official code averages
    over the whole per-device batch, which is only right for one prompt per device (reference §9.1).
 4. The clipped surrogate of paper Eq. 4 is real here, with old log-probs and ε (and DAPO's ε_high).
    The official code has ratio ≡ exp(logπ − stopgrad(logπ)) = 1 and no clip (reference §9.6). With one
    policy update per rollout (num_iterations = 1, `old_logprobs=None`) the two coincide in value and
    gradient, because the clip is inactive at ρ = 1.
 5. The length bonus's "at least 2 completions with accuracy > threshold" condition comes from the code,
    not the paper. ω = 0.2 as in the code and paper v4 (paper v1 says 0.1) (reference §9.5).
 6. The k3 KL's log-ratio is clamped to ±10 as in the code; the paper's KL has no clamp (reference §3).
 7. Aggregation: the default "seq-mean-token-mean" is the official one (the GRPO form
    1/G Σ_i 1/|o_i| Σ_t). "token-mean" (DAPO) and "seq-mean-token-sum-norm" (Dr. GRPO, normalised by a
    constant N·max_len) are options; `group_advantages(scale="none")` is Dr. GRPO's unscaled advantage.
    Normaliser arguments let micro-batch losses sum to exactly the whole-batch loss; the official trainer
    has no micro-batching (batch 1 prompt per device, gradient accumulation 1).
 8. Placement of the temporal bonus: `temporal_bonus` returns the bonus instead of applying it, so the
    caller picks the place. The code adds it to the reward before normalisation:
    `group_advantages(acc + bonus + fmt + len)`. Paper v4 notes r_t "could also be added to the
    advantages directly": `group_advantages(acc + fmt + len) + bonus`. The second form exists because
    group normalisation cancels the reward form whenever a group has only two reward levels (binary
    accuracy, constant format): an affine map of a two-valued set standardises to the same advantages
    (reference §1 "The bonus rarely changes advantages", §9.4, issue #51).
 9. Degenerate groups: a group whose rewards are all equal gets exactly zero advantages (the official
    code leaves rounding residue / eps, e.g. -1.2e-3 for eight float32 rewards of 1.3), and G = 1 gives
    zeros (torch.std of one element is NaN, which the official code would propagate).
10. Image groups get triggered = False and p̃ = NaN in `temporal_stats`; the official code logs a dummy
    0.5 for them in its `temporal_rewards` metric (reference §1 step 10).
"""

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


def temporal_stats(accuracy: torch.Tensor, shuffled_accuracy: torch.Tensor, is_video: torch.Tensor,
                   mu: float = 0.8) -> dict:
    """Per-group ordered and shuffled mean accuracy, and whether the temporal condition holds.

    Paper: the T-GRPO condition p vs μ·p̃; reference §1 step 10 and §9.2 (`>=` with μ = 0.8, as in the
    official code).

    Args:
        accuracy: (B, G) float, accuracy reward of each ordered-frame completion.
        shuffled_accuracy: (B, G̃) float, accuracy of each shuffled-frame completion. Rows of image groups
            are ignored (fill them with anything). G̃ may be 0 only when no group is a video.
        is_video: (B,) bool, True for groups whose prompt is a video.
        mu: μ, the factor on p̃ in the condition p ≥ μ·p̃ (0.8 code / v1, 1.0 paper v4).
    Returns:
        dict with
          "p": (B,) float, mean ordered accuracy per group (defined for images too),
          "p_shuffled": (B,) float, p̃ per group, NaN for image groups,
          "triggered": (B,) bool, is_video & (p ≥ μ·p̃). Log `triggered[is_video].float().mean()`.
    Raises:
        ValueError: wrong dimensions, mismatched B, non-bool is_video, or G̃ = 0 with a video group.
    """
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
        triggered = is_video & (p >= mu * p_shuffled)  # (B,)
        p_shuffled = torch.where(is_video, p_shuffled, torch.full_like(p_shuffled, float("nan")))  # (B,)
    return {"p": p, "p_shuffled": p_shuffled, "triggered": triggered}


def temporal_bonus(accuracy: torch.Tensor, shuffled_accuracy: torch.Tensor, is_video: torch.Tensor,
                   alpha: float = 0.3, mu: float = 0.8, threshold: float = 0.1) -> torch.Tensor:
    """The T-GRPO temporal reward r_t for every ordered completion.

    Paper: temporal reward r_t; reference §1 step 10: in a video group where p ≥ μ·p̃, every ordered
    completion with accuracy > threshold gets +α; image groups get nothing. Departures 1-3 and 8 of the
    header apply.

    Args:
        accuracy: (B, G) float, ordered-frame accuracy per completion (before any bonus).
        shuffled_accuracy: (B, G̃) float, shuffled-frame accuracy; (B, 0) allowed when no group is a video.
        is_video: (B,) bool.
        alpha: α, the bonus (0.3). mu: μ (0.8 code, 1.0 paper v4). threshold: "correct" means acc > this.
    Returns:
        (B, G) tensor of accuracy's dtype: α or 0 per completion. Add it to the reward (official) or to the
        advantages (paper v4 remark); see departure 8.
    Raises:
        ValueError: as `temporal_stats`.
    """
    triggered = temporal_stats(accuracy, shuffled_accuracy, is_video, mu=mu)["triggered"]  # (B,)
    gets = triggered[:, None] & (accuracy > threshold)  # (B, G)
    return gets.to(accuracy.dtype) * alpha  # (B, G)


def length_bonus(accuracy: torch.Tensor, lengths: torch.Tensor, weight: float = 0.2, min_len: int = 320,
                 max_len: int = 512, threshold: float = 0.1) -> torch.Tensor:
    """Length-control reward: +ω for correct completions of moderate length.

    Paper: length control (ω = 0.2, l_min = 320, l_max = 512 in v4); reference §1 step 12 and §9.5: only
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

    Paper: GRPO advantage; reference §3: A_i = (R_i − mean) / (std + eps) with the unbiased (N − 1)
    std and eps = 1e-4. scale="none" gives Dr. GRPO's A_i = R_i − mean. Groups whose rewards are all
    equal get exactly 0, and G = 1 gives 0 (header departure 9).

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


# ---------------------------------------------------------------------------------------------- loss


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor | None, ref_logprobs: torch.Tensor | None,
                advantages: torch.Tensor, mask: torch.Tensor, clip_eps: float = 0.2,
                clip_eps_high: float | None = None, beta: float = 0.04, loss_agg: str = "seq-mean-token-mean",
                *, num_sequences: int | None = None, num_tokens: float | None = None,
                max_len: int | None = None) -> tuple[torch.Tensor, dict]:
    """Clipped surrogate with k3 KL penalty, aggregated over completion tokens (paper Eq. 4, reference §3).

    Per token: ρ = exp(logπ − logπ_old); s = min(ρ·A, clip(ρ, 1 − ε, 1 + ε_high)·A);
    KL = exp(x) − x − 1 with x = clamp(logπ_ref − logπ, −10, 10); loss_t = −(s − β·KL).

    Aggregation (m = mask, n_i = Σ_t m_it, the completion length of sequence i):
      "seq-mean-token-mean" (official, default): Σ_i (Σ_t m·loss / n_i) / num_sequences
      "token-mean" (DAPO):                        Σ_i Σ_t m·loss / num_tokens
      "seq-mean-token-sum-norm" (Dr. GRPO):       Σ_i Σ_t m·loss / (num_sequences · max_len)
    The normalisers default to this call's values (N, Σ m, L). To split a batch into micro-batches whose
    summed losses (and gradients) equal the whole-batch loss, pass the whole batch's values to every call:
    num_sequences = total sequences, num_tokens = total masked tokens, max_len = one fixed width (e.g. the
    max completion length, which is what Dr. GRPO prescribes anyway).

    Args:
        logprobs: (N, L) float, policy log-probs of the sampled completion tokens (requires grad).
        old_logprobs: (N, L) float, log-probs of the rollout policy; None means on-policy, old =
            logprobs.detach() (ρ ≡ 1 in value, gradient ∇logπ·A: the official update, departure 4).
        ref_logprobs: (N, L) float, reference-model log-probs; may be None only when beta == 0.
        advantages: (N,) float, one advantage per completion (flattened (B, G)).
        mask: (N, L) bool or float, 1 on completion tokens up to and including the stop token (any
            nonzero value counts as a completion token; it is a selector, not a weight).
        clip_eps: ε, lower clip. clip_eps_high: ε_high (DAPO clip-higher); None means ε.
        beta: β, KL weight (0.04). beta == 0 ignores the reference entirely.
        loss_agg: one of LOSS_AGGS.
        num_sequences, num_tokens, max_len: keyword-only normalisers for micro-batching (see above).
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
        width = L if max_len is None else max_len
        if width <= 0:
            raise ValueError(f"tgrpo.py: max_len must be positive, got {max_len}")
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
