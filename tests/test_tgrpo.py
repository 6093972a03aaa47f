"""Tests for tgrpo.py against hand-computed numbers (notes §1, §3, §9 of the Video-R1 notes)."""

import math

import pytest
import torch

from tgrpo import (Settings, advantages, group_advantages, length_bonus, policy_loss,
                   temporal_bonus, temporal_stats)

LN2 = math.log(2.0)
AGGS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")


# ------------------------------------------------------------------------------- group_advantages


def test_advantages_binary_group_of_four():
    # mean 0.5, unbiased std sqrt(1/3) = 0.5773503, A = ±0.5 / (0.5773503 + 1e-4) = ±0.8658754
    a = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]))
    torch.testing.assert_close(a, torch.tensor([[0.8658754, -0.8658754, -0.8658754, 0.8658754]]))


def test_advantages_more_vectors_by_hand():
    # [1,0,0,0]: mean 0.25, std sqrt(0.75/3) = 0.5
    #            -> 0.75/0.5001 = 1.4997001, -0.25/0.5001 = -0.4999000
    # [3,1,2]:   mean 2,    std sqrt(2/2)    = 1   -> ±1/1.0001 = ±0.9999000, 0
    a = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(a, torch.tensor([[1.4997001, -0.4999000, -0.4999000, -0.4999000]],
                                               dtype=torch.float64), atol=1e-7, rtol=0)
    b = group_advantages(torch.tensor([[3.0, 1.0, 2.0], [0.0, 0.0, 2.0]], dtype=torch.float64))
    # [0,0,2]: mean 2/3, std sqrt((4/9+4/9+16/9)/2) = sqrt(4/3) = 1.1547005
    #          -> [-0.6667/1.1548005, same, 1.3333/1.1548005] = [-0.5773003, -0.5773003, 1.1546006]
    expect = torch.tensor([[0.9999000, -0.9999000, 0.0], [-0.5773003, -0.5773003, 1.1546006]],
                          dtype=torch.float64)
    torch.testing.assert_close(b, expect, atol=1e-7, rtol=0)


def test_advantages_dr_grpo_unscaled():
    a = group_advantages(torch.tensor([[3.0, 1.0, 2.0], [1.0, 1.0, 0.0]]), scale="none")
    torch.testing.assert_close(a, torch.tensor([[1.0, -1.0, 0.0], [1 / 3, 1 / 3, -2 / 3]]))


def test_advantages_equal_rewards_and_single_completion_are_zero():
    eq = torch.full((3, 8), 0.1)  # float32 mean of eight 0.1's is not exactly 0.1
    assert torch.equal(group_advantages(eq), torch.zeros(3, 8))
    assert torch.equal(group_advantages(eq, scale="none"), torch.zeros(3, 8))
    assert torch.equal(group_advantages(torch.tensor([[0.7], [2.0]])), torch.zeros(2, 1))
    # a flat group next to a live group: only the flat one is zeroed
    a = group_advantages(torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
    assert torch.equal(a[0], torch.zeros(2)) and not torch.isnan(a).any()
    torch.testing.assert_close(a[1], torch.tensor([0.5, -0.5]) / (math.sqrt(0.5) + 1e-4))


def test_advantages_invariant_to_shift_and_positive_scale():
    g = torch.Generator().manual_seed(0)
    r = torch.rand(4, 8, generator=g, dtype=torch.float64)
    base = group_advantages(r)
    shift = torch.tensor([[3.0], [-1.0], [0.25], [10.0]], dtype=torch.float64)
    torch.testing.assert_close(group_advantages(r + shift), base)
    torch.testing.assert_close(group_advantages(2.5 * r + shift, eps=0.0),
                               group_advantages(r, eps=0.0))
    torch.testing.assert_close(group_advantages(r + shift, scale="none"),
                               group_advantages(r, scale="none"))


def test_advantages_errors():
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.zeros(2, 4), scale="batch")
    with pytest.raises(ValueError, match="rewards"):
        group_advantages(torch.zeros(8))


# --------------------------------------------------------------------------------- temporal_bonus


def test_temporal_bonus_mixed_batch():
    acc = torch.tensor([[1.0, 1.0, 0.0, 0.0],    # video: p 0.5 >= 0.8 * 0.5 -> bonus on 2 correct
                        [1.0, 0.0, 1.0, 0.0],    # image: never a bonus, whatever its filler says
                        [1.0, 0.0, 0.0, 0.0]])   # video: p 0.25 < 0.8 * 1.0 -> no bonus
    shuf = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    is_video = torch.tensor([True, False, True])
    bonus = temporal_bonus(acc, shuf, is_video)
    torch.testing.assert_close(bonus,
                               torch.tensor([[0.3, 0.3, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0.0]]))
    st = temporal_stats(acc, shuf, is_video)
    torch.testing.assert_close(st["p"], torch.tensor([0.5, 0.5, 0.25]))
    assert st["p_shuffled"][0] == 0.5 and st["p_shuffled"][2] == 1.0
    assert torch.isnan(st["p_shuffled"][1])
    assert st["triggered"].tolist() == [True, False, False]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_temporal_mu_boundary_is_inclusive(dtype):
    # p = 4/8 = 0.5, p̃ = 5/8 = 0.625, μ·p̃ = 0.5 exactly: `>=` (code) triggers, paper v1's `>` not
    acc = torch.tensor([[1, 1, 1, 1, 0, 0, 0, 0]], dtype=dtype)
    shuf = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]], dtype=dtype)
    vid = torch.tensor([True])
    assert temporal_stats(acc, shuf, vid)["triggered"].item()
    torch.testing.assert_close(temporal_bonus(acc, shuf, vid), 0.3 * acc)
    # just below: p = (1 + 1 + 1 + 0.99609375) / 8 = 0.49951171875 < 0.5 (exact in binary)
    below = acc.clone()
    below[0, 3] = 0.99609375
    assert not temporal_stats(below, shuf, vid)["triggered"].item()
    assert torch.equal(temporal_bonus(below, shuf, vid), torch.zeros(1, 8, dtype=dtype))
    # paper v4: μ = 1 -> 0.5 >= 0.625 fails; but p = p̃ passes
    assert not temporal_stats(acc, shuf, vid, Settings(mu=1.0))["triggered"].item()
    assert temporal_stats(acc, acc.flip(1), vid, Settings(mu=1.0))["triggered"].item()


def test_contrast_trigger_by_hand():
    """T11: p > p̃ + margin. Three video groups of G = 4, G̃ = 2:
    group 0: p = 0.75, p̃ = 0.5  -> 0.75 > 0.5 + 0.2 fires; official 0.75 >= 0.4 fires too;
    group 1: p = 0.5,  p̃ = 0.5  -> a static shortcut (p ≈ p̃): contrast does not fire, official
                                  does (0.5 >= 0.4);
    group 2: p = 0.5,  p̃ = 0.0  -> fires under both; with margin 0.5, 0.5 > 0.5 is false."""
    acc = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0]])
    shuf = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    vid = torch.tensor([True, True, True])
    assert temporal_stats(acc, shuf, vid)["triggered"].tolist() == [True, True, True]
    def fired(s, *args):
        return temporal_stats(*(args or (acc, shuf, vid)), s)["triggered"].tolist()

    assert fired(Settings(trigger="contrast", margin=0.2)) == [True, False, True]
    assert fired(Settings(trigger="contrast", margin=0.5)) == [False, False, False]
    assert fired(Settings(trigger="contrast")) == [True, False, True]                  # margin 0
    bonus = temporal_bonus(acc, shuf, vid, Settings(trigger="contrast", margin=0.2))
    torch.testing.assert_close(bonus,
                               torch.tensor([[0.3, 0.3, 0.3, 0], [0, 0, 0, 0], [0.3, 0, 0.3, 0]]))
    zeros = torch.zeros(2, 4), torch.zeros(2, 2)   # all wrong: official fires (0 >= 0), contrast no
    assert fired(Settings(trigger="contrast"), *zeros, torch.tensor([True, True])) == [False, False]
    with pytest.raises(ValueError, match="trigger must be one of"):
        temporal_stats(acc, shuf, vid, Settings(trigger="strict"))
    with pytest.raises(ValueError, match="margin must be >= 0"):
        temporal_stats(acc, shuf, vid, Settings(trigger="contrast", margin=-0.1))


def test_variants_placement_and_scale_by_hand():
    """One video group, G = 4: acc [1, 1, 0, 0], format 1, no length bonus, p̃ = 0 (contrast fires).
    Reward placement, group std: R = [2.3, 2.3, 1, 1] has two levels, so
    A = ±0.65 / (0.75056 + 1e-4) equals the no-bonus A = ±0.5 / (0.57735 + 1e-4) up to eps: the
    bonus cancels. Dr. GRPO (no std): A = R − mean = [0.65, 0.65, −0.65, −0.65] against
    [0.5, 0.5, −0.5, −0.5] without the bonus: it moves by 0.15. Advantage placement:
    A = base + r_t."""
    acc = torch.tensor([[1.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    fmt, lengths = torch.ones_like(acc), torch.full((1, 4), 10)
    shuf, vid = torch.zeros(1, 2, dtype=torch.float64), torch.tensor([True])
    kw = dict(len_control=False, trigger="contrast", margin=0.1)
    settings = {(p, sc): Settings(placement=p, scale=sc, **kw)
                for p in ("reward", "advantage") for sc in ("group", "none")}
    std = 0.5 / (math.sqrt(1 / 3) + 1e-4)                  # unbiased std of [1, 1, 0, 0]: sqrt(1/3)
    a = advantages(acc, fmt, lengths, shuf, vid, settings["reward", "group"])
    torch.testing.assert_close(a.total, torch.tensor([[2.3, 2.3, 1.0, 1.0]], dtype=torch.float64))
    std_b = 0.65 / (math.sqrt(1.3 ** 2 / 3) + 1e-4)
    torch.testing.assert_close(a.advantages,
                               torch.tensor([[std_b, std_b, -std_b, -std_b]], dtype=torch.float64))
    assert abs(std_b - std) < 1e-3                                           # cancels up to eps
    d = advantages(acc, fmt, lengths, shuf, vid, settings["reward", "none"])
    torch.testing.assert_close(d.advantages,
                               torch.tensor([[0.65, 0.65, -0.65, -0.65]], dtype=torch.float64))
    e = advantages(acc, fmt, lengths, shuf, vid, settings["advantage", "group"])
    expect = torch.tensor([[std + 0.3, std + 0.3, -std, -std]], dtype=torch.float64)
    torch.testing.assert_close(e.advantages, expect)
    assert Settings().name() == "T-GRPO[p>=0.8p~, reward, std]"
    assert settings["advantage", "none"].name() == "T-GRPO[p>p~+0.1, advantage, none]"
    assert Settings(temporal=False, scale="none").name() == "GRPO[none]"


def test_temporal_all_zero_group_triggers_but_gets_nothing():
    acc, shuf = torch.zeros(2, 8), torch.zeros(2, 4)
    vid = torch.tensor([True, True])
    assert temporal_stats(acc, shuf, vid)["triggered"].tolist() == [True, True]  # 0 >= 0.8 * 0
    assert torch.equal(temporal_bonus(acc, shuf, vid), torch.zeros(2, 8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_temporal_threshold_is_strict(dtype):
    acc = torch.tensor([[0.1, 0.11, 0.05, 1.0]], dtype=dtype)   # continuous accuracies (OCR, ...)
    shuf = torch.tensor([[0.0, 0.0]], dtype=dtype)
    bonus = temporal_bonus(acc, shuf, torch.tensor([True]), Settings(alpha=0.5))
    assert bonus.dtype == dtype
    torch.testing.assert_close(bonus, torch.tensor([[0.0, 0.5, 0.0, 0.5]], dtype=dtype))


def test_temporal_no_shuffled_completions():
    acc = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    no_vid = torch.tensor([False, False])
    assert torch.equal(temporal_bonus(acc, torch.zeros(2, 0), no_vid), torch.zeros(2, 2))
    st = temporal_stats(acc, torch.zeros(2, 0), no_vid)
    assert st["triggered"].tolist() == [False, False] and torch.isnan(st["p_shuffled"]).all()
    with pytest.raises(ValueError, match="G̃ = 0"):
        temporal_bonus(acc, torch.zeros(2, 0), torch.tensor([False, True]))


def test_temporal_bad_inputs():
    acc = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="is_video"):
        temporal_bonus(acc, torch.zeros(2, 2), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="shuffled_accuracy"):
        temporal_bonus(acc, torch.zeros(3, 2), torch.tensor([True, False]))


# ----------------------------------------------------------------------------------- length_bonus


def test_length_bonus_bounds_inclusive():
    acc = torch.ones(1, 6)
    lengths = torch.tensor([[319, 320, 400, 512, 513, 10]])
    torch.testing.assert_close(length_bonus(acc, lengths), torch.tensor([[0, 0.2, 0.2, 0.2, 0, 0]]))


def test_length_bonus_needs_two_correct_and_strict_threshold():
    lengths = torch.full((3, 4), 400)
    acc = torch.tensor([[1.0, 0.0, 0.0, 0.0],     # one correct: nothing (code's extra condition)
                        [0.1, 0.1, 0.1, 1.0],     # 0.1 is not correct: still only one correct
                        [0.1, 0.5, 0.2, 0.0]])    # two correct (0.5, 0.2): both get it
    torch.testing.assert_close(length_bonus(acc, lengths),
                               torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0.2, 0.2, 0.0]]))
    with pytest.raises(ValueError, match="lengths"):
        length_bonus(acc, torch.full((3, 5), 400))


# ------------------------------------------------------------------------------------ policy_loss


def _hand_example():
    """2 sequences x 3 tokens; the padded slot of row 0 holds garbage that must not matter."""
    logp = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0]], dtype=torch.float64)
    ratios = torch.tensor([[1.5, 1.0, 1.0], [0.5, 1.0, 1.25]], dtype=torch.float64)
    old = logp - ratios.log()
    old[0, 2] = -1e4                                   # padding: exp(logp - old) would overflow
    ref = logp + torch.tensor([[LN2, 0.0, 0.0], [0.0, -LN2, 0.0]], dtype=torch.float64)
    ref[0, 2] = 1e4
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    adv = torch.tensor([1.0, -0.5], dtype=torch.float64)
    return logp, old, ref, adv, mask


def test_policy_loss_hand_computed_each_aggregation():
    # surrogates (ε = 0.2): row 0 (A=1):   ρ 1.5 -> clipped 1.2;  ρ 1 -> 1
    #                       row 1 (A=-.5): ρ .5 -> min(-.25, -.4) = -.4;  ρ 1 -> -.5;
    #                                      ρ 1.25 -> min(-.625, -.6) = -.625 (unclipped is the min)
    # KL: x = ln2 -> 1 - ln2 = 0.3068528;  x = -ln2 -> ln2 - 1/2 = 0.1931472;  x = 0 -> 0
    # loss_t = -(s - 0.04 KL): row 0 [-1.2 + 0.04(1 - ln2), -1],
    #                          row 1 [0.4, 0.5 + 0.04(ln2 - 0.5), 0.625]
    row0 = -2.2 + 0.04 * (1 - LN2)        # -2.1877259
    row1 = 1.525 + 0.04 * (LN2 - 0.5)     # 1.5327259
    expect = {"seq-mean-token-mean": (row0 / 2 + row1 / 3) / 2,   # -0.2914772
              "token-mean": (row0 + row1) / 5,                    # -0.655 / 5 = -0.131 (KL: 0.02)
              "seq-mean-token-sum-norm": (row0 + row1) / 6}       # -0.1091667
    assert abs(expect["token-mean"] - (-0.131)) < 1e-12
    logp, old, ref, adv, mask = _hand_example()
    for agg, value in expect.items():
        loss, m = policy_loss(logp, old, ref, adv, mask, beta=0.04, loss_agg=agg)
        assert math.isfinite(loss.item())
        assert loss.item() == pytest.approx(value, abs=1e-12), agg
    kl = ((1 - LN2) / 2 + (LN2 - 0.5) / 3) / 2                                     # 0.1089044
    assert m["kl"].item() == pytest.approx(kl, abs=1e-12)
    assert m["clip_frac"].item() == pytest.approx(2 / 5)
    assert (m["ratio_min"].item(), m["ratio_max"].item()) == pytest.approx((0.5, 1.5))
    assert m["ratio_mean"].item() == pytest.approx(5.25 / 5)
    # the garbage padding slot gets no gradient and no NaN; a float mask selects the same tokens
    lp = logp.clone().requires_grad_()
    policy_loss(lp, old, ref, adv, mask.double(), loss_agg="token-mean")[0].backward()
    assert torch.isfinite(lp.grad).all() and lp.grad[0, 2] == 0.0


def test_policy_loss_clip_higher():
    # ε = 0.2, ε_high = 0.28: ρ = 1.25 with A > 0 is no longer clipped
    logp = torch.zeros(1, 1)
    old = -torch.log(torch.tensor([[1.25]]))
    loss, m = policy_loss(logp, old, None, torch.ones(1), torch.ones(1, 1), beta=0.0)
    assert loss.item() == pytest.approx(-1.2) and m["clip_frac"].item() == 1.0
    loss, m = policy_loss(logp, old, None, torch.ones(1), torch.ones(1, 1), beta=0.0,
                          clip_eps_high=0.28)
    assert loss.item() == pytest.approx(-1.25) and m["clip_frac"].item() == 0.0


def _random_batch(N=6, L=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(N, L, generator=g, dtype=torch.float64) * 3
    old = logp + (torch.rand(N, L, generator=g, dtype=torch.float64) - 0.5) * 0.8
    ref = logp + (torch.rand(N, L, generator=g, dtype=torch.float64) - 0.5) * 2
    adv = torch.randn(N, generator=g, dtype=torch.float64)
    lens = torch.tensor([5, 1, 3, 4, 2, 5][:N])
    mask = torch.arange(L)[None, :] < lens[:, None]
    return logp, old, ref, adv, mask


def test_on_policy_equals_unclipped_and_official_reinforce_form():
    logp, _, ref, adv, mask = _random_batch()
    grads, losses = [], []
    for old, eps in ((None, 0.2), (logp.clone(), 0.2), (None, 1e9)):
        lp = logp.clone().requires_grad_()
        loss, m = policy_loss(lp, old, ref, adv, mask, clip_eps=eps)
        loss.backward()
        losses.append(loss.detach())
        grads.append(lp.grad)
        assert m["ratio_min"].item() == m["ratio_max"].item() == 1.0
        assert m["clip_frac"].item() == 0.0
    for l, g in zip(losses[1:], grads[1:]):
        torch.testing.assert_close(l, losses[0])
        torch.testing.assert_close(g, grads[0])
    # official (notes §3): gradient of -mean_i mean_t (A_i logp - β KL) with the ratio dropped
    lp = logp.clone().requires_grad_()
    x = (ref - lp).clamp(-10, 10)
    per = -(adv[:, None] * lp - 0.04 * (x.exp() - x - 1)) * mask
    (per.sum(1) / mask.sum(1)).mean().backward()
    torch.testing.assert_close(grads[0], lp.grad)


@pytest.mark.parametrize("agg", AGGS)
def test_micro_batches_sum_to_whole_batch(agg):
    logp, old, ref, adv, mask = _random_batch()
    lp = logp.clone().requires_grad_()
    whole, _ = policy_loss(lp, old, ref, adv, mask, loss_agg=agg)
    whole.backward()
    total = dict(num_sequences=6, num_tokens=int(mask.sum()), norm_len=5)
    lp2 = logp.clone().requires_grad_()
    summed = 0.0
    for a, b in ((0, 2), (2, 3), (3, 6)):
        part, _ = policy_loss(lp2[a:b], old[a:b], ref[a:b], adv[a:b], mask[a:b], loss_agg=agg,
                              **total)
        summed = summed + part
    summed.backward()
    torch.testing.assert_close(summed.detach(), whole.detach())
    torch.testing.assert_close(lp2.grad, lp.grad)


@pytest.mark.parametrize("agg", AGGS)
def test_policy_loss_gradcheck(agg):
    logp, _, ref, adv, mask = _random_batch(N=4, L=4, seed=1)
    # ratios well inside or well outside [0.8, 1.2], never at the boundary
    ratios = torch.tensor([[0.5, 0.9, 1.1, 1.6], [1.05, 0.7, 1.3, 0.95],
                           [2.0, 1.0, 0.6, 1.15], [0.85, 1.4, 0.3, 1.1]], dtype=torch.float64)
    old = logp - ratios.log()
    mask[:, 0] = True

    def f(lp):
        return policy_loss(lp, old, ref, adv, mask, loss_agg=agg)[0]

    lp = logp.clone().requires_grad_()
    assert policy_loss(lp, old, ref, adv, mask)[1]["clip_frac"].item() > 0
    assert torch.autograd.gradcheck(f, (lp,), eps=1e-6, atol=1e-7)


def test_beta_zero_ignores_reference():
    logp, old, ref, adv, mask = _random_batch()
    with_ref, m1 = policy_loss(logp, old, ref, adv, mask, beta=0.0)
    without, m2 = policy_loss(logp, old, None, adv, mask, beta=0.0)
    torch.testing.assert_close(with_ref, without)
    assert m1["kl"].item() > 0 and m2["kl"].item() == 0.0
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(logp, old, None, adv, mask, beta=0.04)


def test_kl_clamped_at_ten():
    logp = torch.zeros(1, 2, requires_grad=True)
    ref = torch.tensor([[50.0, -50.0]])
    loss, m = policy_loss(logp, None, ref, torch.zeros(1), torch.ones(1, 2), beta=1.0)
    kl10 = math.exp(10) - 11.0                       # x = +10
    klm10 = math.exp(-10) + 9.0                      # x = -10
    assert loss.item() == pytest.approx((kl10 + klm10) / 2, rel=1e-6)
    loss.backward()
    assert torch.equal(logp.grad, torch.zeros(1, 2))  # clamp blocks the gradient, as in the code


def test_policy_loss_errors():
    logp, old, ref, adv, mask = _random_batch()
    with pytest.raises(ValueError, match=r"old_logprobs.*\(6, 4\)"):
        policy_loss(logp, old[:, :4], ref, adv, mask)
    with pytest.raises(ValueError, match="mask"):
        policy_loss(logp, old, ref, adv, mask[:5])
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(logp, old, ref, adv[:, None], mask)
    with pytest.raises(ValueError, match="loss_agg"):
        policy_loss(logp, old, ref, adv, mask, loss_agg="sum")
    with pytest.raises(ValueError, match="no completion tokens"):
        policy_loss(logp, old, ref, adv, torch.zeros_like(mask))


# ------------------------------------------------------------ Video-R1#51: bonus vs normalisation


def test_temporal_bonus_cancels_under_group_normalisation_issue_51():
    """Reference §1 "The bonus rarely changes advantages": binary accuracy + constant format gives
    two reward levels, so +α on the correct ones is an affine map and the standardised advantages do
    not move. Hence the bonus on the advantages (paper v4's remark) as an alternative placement."""
    acc = torch.tensor([[1, 0, 1, 1, 0, 0, 0, 1], [1, 1, 1, 0, 0, 0, 0, 0]], dtype=torch.float64)
    fmt = torch.ones_like(acc)
    shuf = torch.tensor([[0, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.float64)
    bonus = temporal_bonus(acc, shuf, torch.tensor([True, True]))
    assert bonus.sum() > 0
    plain, with_bonus = group_advantages(acc + fmt), group_advantages(acc + bonus + fmt)
    torch.testing.assert_close(with_bonus, plain, atol=1e-4, rtol=0)      # equal up to eps effects
    torch.testing.assert_close(group_advantages(acc + bonus + fmt, eps=0.0),
                               group_advantages(acc + fmt, eps=0.0))      # exactly, with eps = 0
    # a third reward level (length bonus on some correct ones) makes the bonus matter again
    lengths = torch.tensor([[400, 10, 10, 10, 10, 10, 10, 400], [400, 10, 10, 10, 10, 10, 10, 10]])
    lb = length_bonus(acc, lengths)
    diff = group_advantages(acc + bonus + fmt + lb) - group_advantages(acc + fmt + lb)
    assert diff.abs().max() > 0.04  # 0.049 on the first completion of group 2
    # the alternative placement: bonus added to the advantages directly does change them
    assert (group_advantages(acc + fmt) + bonus - plain).abs().max() == pytest.approx(0.3)
