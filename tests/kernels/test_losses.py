"""PPO clipped policy loss (clip-higher, dual clip, aggregation modes) and KL estimators vs explicit formulas."""

import math

import pytest
import torch

from kernels.losses import kl_penalty, policy_loss


def _per_token_loss(lp, old, a, clip_low, clip_high, dual):
    ratio = math.exp(lp - old)
    loss = max(-a * ratio, -a * min(max(ratio, 1 - clip_low), 1 + clip_high))
    if dual is not None and a < 0:
        loss = min(loss, -a * dual)
    return loss


def _batch():
    g = torch.Generator().manual_seed(0)
    old = torch.randn(4, 6, generator=g, dtype=torch.float64) - 2
    logp = old + 0.6 * torch.randn(4, 6, generator=g, dtype=torch.float64)
    adv = torch.randn(4, 6, generator=g, dtype=torch.float64) * 2
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    return logp, old, adv, mask


@pytest.mark.parametrize("clip_low,clip_high,dual", [(0.2, 0.2, None), (0.2, 0.28, None), (0.1, 0.3, 3.0)])
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-sum-constant"])
def test_policy_loss_matches_explicit_formula(clip_low, clip_high, dual, agg):
    logp, old, adv, mask = _batch()
    B, T = logp.shape
    mat = [[_per_token_loss(logp[b, t].item(), old[b, t].item(), adv[b, t].item(), clip_low, clip_high, dual) for t in range(T)] for b in range(B)]
    kept = [[mat[b][t] for t in range(T) if mask[b, t]] for b in range(B)]
    if agg == "token-mean":
        expected = sum(map(sum, kept)) / sum(map(len, kept))
    elif agg == "seq-mean-token-sum":
        expected = sum(map(sum, kept)) / B
    elif agg == "seq-mean-token-mean":
        expected = sum(sum(k) / max(len(k), 1) for k in kept) / B
    else:
        expected = sum(sum(k) / 16.0 for k in kept) / B
    loss, stats = policy_loss(logp, old, adv, mask, clip_low, clip_high, dual, agg=agg, constant=16.0)
    assert loss.item() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert 0.0 <= stats["clipfrac"].item() <= 1.0


def test_policy_loss_gradient_and_stats():
    lp = torch.log(torch.tensor([[1.5, 0.5, 1.1, 4.0]], dtype=torch.float64)).requires_grad_()
    old = torch.zeros(1, 4, dtype=torch.float64)
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]], dtype=torch.float64)
    mask = torch.ones(1, 4, dtype=torch.bool)
    loss, stats = policy_loss(lp, old, adv, mask, clip_low=0.2, clip_high=0.28, dual_clip=3.0)
    loss.backward()
    # token 0: ratio 1.5 > 1.28 with A > 0 -> clipped, no grad; token 1: 0.5 < 0.8 with A < 0 -> clipped;
    # token 2: inside -> grad -A * ratio / 4; token 3: A < 0, ratio 4 > dual clip 3 -> constant, no grad.
    torch.testing.assert_close(lp.grad, torch.tensor([[0.0, 0.0, -1.1 / 4, 0.0]], dtype=torch.float64))
    # clipfrac counts tokens where the clipped surrogate is the larger one: 0 and 1 (token 3's ratio
    # clip is not binding: -A * 4 > -A * 1.28, the dual clip is what bounds it)
    assert stats["clipfrac"].item() == pytest.approx(2 / 4)
    assert stats["dual_clipfrac"].item() == pytest.approx(1 / 4)
    with pytest.raises(ValueError, match="constant"):
        policy_loss(lp, old, adv, mask, agg="seq-sum-constant")
    with pytest.raises(ValueError, match="dual_clip"):
        policy_loss(lp, old, adv, mask, dual_clip=0.5)


def test_kl_estimators():
    logp = torch.tensor([-1.0, -2.0, -0.5, -30.0], dtype=torch.float64)
    ref = torch.tensor([-1.5, -1.0, -0.5, -1.0], dtype=torch.float64)
    d = (logp - ref).tolist()
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), logp - ref)
    torch.testing.assert_close(kl_penalty(logp, ref, "k2"), torch.tensor([0.5 * x * x for x in d], dtype=torch.float64))
    k3 = torch.tensor([math.exp(-x) + x - 1 for x in d], dtype=torch.float64)
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), k3)
    low = kl_penalty(logp, ref, "low_var_kl")
    torch.testing.assert_close(low[:3], k3[:3])
    assert low[3].item() == 10.0  # exp(29) clamped
    # k3 is an unbiased estimate of KL(pi || ref) when tokens are sampled from pi
    g = torch.Generator().manual_seed(0)
    pi, rho = torch.softmax(torch.randn(50, generator=g, dtype=torch.float64), 0), torch.softmax(torch.randn(50, generator=g, dtype=torch.float64), 0)
    exact = (pi * (pi.log() - rho.log())).sum()
    weighted = (pi * kl_penalty(pi.log(), rho.log(), "k3")).sum()
    torch.testing.assert_close(weighted, exact)
    with pytest.raises(ValueError, match="kind"):
        kl_penalty(logp, ref, "k4")


def test_far_off_policy_token_keeps_loss_and_gradient_finite():
    """One token with logp - old_logp > 88.7 overflowed exp to inf: the loss was inf/NaN and the
    gradient NaN for the whole batch (fails before the clamp: loss inf, grad NaN). Peers clamp the
    log-ratio to +-20 before exp; ppo_kl stays the unclamped statistic."""
    logp = torch.tensor([[-1.0, -0.5, -2.0]], requires_grad=True)
    old = torch.tensor([[-100.0, -0.6, -2.1]])
    adv = torch.tensor([[-1.0, 1.0, 1.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss, stats = policy_loss(logp, old, adv, mask, dual_clip=None)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    expected = (-(-1.0) * math.exp(20.0) - 1.0 * math.exp(0.1) - 1.0 * min(math.exp(0.1), 1.2)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert stats["ppo_kl"].item() == pytest.approx(-(99.0 + 0.1 + 0.1) / 3, rel=1e-6)
