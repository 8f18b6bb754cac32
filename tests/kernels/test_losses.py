"""Policy losses (PPO clip with clip-higher and dual clip, GSPO, CISPO), aggregation modes and KL estimators
vs explicit formulas and hand-computed cases."""

import math

import pytest
import torch

from megarl.kernels.losses import cispo_policy_loss, gspo_policy_loss, gspo_sequence_loss_reference, kl_penalty, policy_loss


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


def _gspo_case():
    """Three sequences: log-ratios [0.1, -0.3] (A=+1), [0.2, 0.1, 0.0] (A=-0.5, one masked token after),
    [0.05] (A=+2)."""
    old = torch.tensor([[-1.0, -1.0, -1.0, -1.0], [-2.0, -2.0, -2.0, -2.0], [-0.5, -0.5, -0.5, -0.5]], dtype=torch.float64)
    delta = torch.tensor([[0.1, -0.3, 0.0, 0.0], [0.2, 0.1, 0.0, 7.0], [0.05, 0.0, 0.0, 0.0]], dtype=torch.float64)
    logp = (old + delta).requires_grad_()
    adv = torch.tensor([[1.0], [-0.5], [2.0]], dtype=torch.float64).expand(3, 4).contiguous()
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    return logp, old, adv, mask


def test_gspo_by_hand():
    """GSPO (arXiv 2507.18071): s_i = exp(mean_t(logp - old)), loss = (1/G) sum_i max(-A_i s_i, -A_i clip(s_i,
    1 - 3e-4, 1 + 4e-4)). By hand: s = exp(-0.1) = 0.904837418, exp(0.1) = 1.105170918, exp(0.05) = 1.051271096.
    Sequence losses: -0.904837418 (A > 0, ratio below the range: unclipped), +0.5 * 1.105170918 = 0.552585459
    (A < 0, ratio above: unclipped), -2 * 1.0004 = -2.0008 (A > 0, ratio above: clipped). Mean -0.784350653.
    Gradient per token: -A_i s_i / |y_i| / G = -0.904837418 / 6 = -0.150806236, 0.5 * 1.105170918 / 9 =
    0.061398384, 0 for the clipped sequence and for masked tokens (the 7.0 log-ratio is masked out)."""
    logp, old, adv, mask = _gspo_case()
    loss, stats = gspo_policy_loss(logp, old, adv, mask, clip_low=3e-4, clip_high=4e-4, agg="seq-mean-token-mean")
    assert loss.item() == pytest.approx(-0.784350653, abs=1e-9)
    loss.backward()
    g0, g1 = -0.150806236, 0.061398384
    expected = torch.tensor([[g0, g0, 0, 0], [g1, g1, g1, 0], [0, 0, 0, 0]], dtype=torch.float64)
    torch.testing.assert_close(logp.grad, expected, atol=1e-9, rtol=0)
    # clipfrac counts tokens: the clipped sequence's 1 of 6 masked tokens
    assert stats["clipfrac"].item() == pytest.approx(1 / 6)


def test_gspo_token_form_equals_the_sequence_form_in_value_and_gradient():
    """GSPO-token (s_i,t = sg[s_i] pi_t / sg[pi_t]) with seq-mean-token-mean and sequence advantages is the
    paper's sequence objective: same value and same gradient, on a random batch with clipping active."""
    g = torch.Generator().manual_seed(3)
    old = torch.randn(6, 9, generator=g, dtype=torch.float64) - 2
    logp_a = (old + 0.01 * torch.randn(6, 9, generator=g, dtype=torch.float64)).requires_grad_()
    logp_b = logp_a.detach().clone().requires_grad_()
    adv = torch.randn(6, 1, generator=g, dtype=torch.float64).expand(6, 9).contiguous()
    mask = torch.arange(9)[None, :] < torch.tensor([9, 1, 4, 7, 2, 5])[:, None]
    token, _ = gspo_policy_loss(logp_a, old, adv, mask, 3e-4, 4e-4, agg="seq-mean-token-mean")
    sequence = gspo_sequence_loss_reference(logp_b, old, adv, mask, 3e-4, 4e-4)
    torch.testing.assert_close(token, sequence, atol=1e-12, rtol=0)
    token.backward()
    sequence.backward()
    torch.testing.assert_close(logp_a.grad, logp_b.grad, atol=1e-12, rtol=0)
    row_grad = logp_a.grad.abs().sum(dim=1)
    assert (row_grad == 0).any() and (row_grad > 0).any()  # both clipped and live sequences


def test_cispo_by_hand():
    """CISPO (MiniMax-M1, arXiv 2506.13585 eq. 4-5): loss_t = -sg(clip(r_t, 1 - eps_low, 1 + eps_high)) A_t logp_t,
    token-mean. logp = [-1, -0.5, -2], old = [-1.2, -0.5, -0.4]: r = [exp(0.2) = 1.2214, 1, exp(-1.6) = 0.201897];
    eps_low = 1 (no lower bound), eps_high = 0.2: w = [1.2, 1, 0.201897]. A = [1, -1, 2]:
    loss = (1.2 - 0.5 + 0.807586072) / 3 = 0.502528691. Gradient -w_t A_t / 3 = [-0.4, 0.333333, -0.134597679]:
    the clipped token 0 keeps its gradient (PPO's clip would zero it). One of three weights clipped."""
    logp = torch.tensor([[-1.0, -0.5, -2.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-1.2, -0.5, -0.4]], dtype=torch.float64)
    adv = torch.tensor([[1.0, -1.0, 2.0]], dtype=torch.float64)
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss, stats = cispo_policy_loss(logp, old, adv, mask, clip_low=1.0, clip_high=0.2, agg="token-mean")
    assert loss.item() == pytest.approx(0.502528691, abs=1e-9)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.4, 1 / 3, -0.134597679]], dtype=torch.float64), atol=1e-9, rtol=0)
    assert stats["clipfrac"].item() == pytest.approx(1 / 3)
    assert stats["ppo_kl"].item() == pytest.approx(-(0.2 + 0.0 - 1.6) / 3)


@pytest.mark.parametrize("loss_fn", [gspo_policy_loss, cispo_policy_loss], ids=["gspo", "cispo"])
def test_new_losses_stay_finite_far_off_policy(loss_fn):
    """A log-ratio of +99 (exp overflows float32 past 88.7) is clamped to +-20 before exp, as in policy_loss."""
    logp = torch.tensor([[-1.0, -0.5], [-2.0, -1.0]], requires_grad=True)
    old = torch.tensor([[-100.0, -0.6], [-2.1, -200.0]])
    adv = torch.tensor([[-1.0, -1.0], [1.0, 1.0]])
    loss, _ = loss_fn(logp, old, adv, torch.ones(2, 2, dtype=torch.bool))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()


def test_new_losses_reject_bad_shapes_and_clips():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="must share one"):
        gspo_policy_loss(x, x, torch.zeros(2, 1), x.bool())
    with pytest.raises(ValueError, match="must be >= 0"):
        cispo_policy_loss(x, x, x, x.bool(), clip_low=-0.1)
