"""Each algorithm's advantages and losses on a fixed batch against hand-computed references."""

import math

import pytest
import torch

from megarl.algorithms import advantages as A
from megarl.algorithms.losses import LossNormalizer, actor_loss, value_loss
from megarl.config import AlgorithmConfig
from megarl.algorithms.losses import LossTargets


def test_mean_std_mean_leave_one_out_sequence_advantages_by_hand():
    rewards = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    groups = [0, 0, 0, 0, 1, 1, 1, 1]
    # group 0: mean 0.5, unbiased std sqrt(1/3); group 1 identical values
    std = math.sqrt(((0.5**2) * 4) / 3)
    grpo = A.sequence_advantages(rewards, groups, "mean_std", eps=0.0)
    signs = [1, -1, -1, 1, 1, 1, -1, -1]
    assert grpo == pytest.approx([s * 0.5 / std for s in signs], rel=1e-6)
    dr = A.sequence_advantages(rewards, groups, "mean")
    assert dr == pytest.approx([s * 0.5 for s in signs])
    # RLOO: r_i - mean of the other three = +2/3 for a 1, -2/3 for a 0 (two of each per group)
    rloo = A.sequence_advantages(rewards, groups, "leave_one_out")
    assert rloo == pytest.approx([s * 2 / 3 for s in signs], rel=1e-6)


def test_identical_rewards_give_zero_advantage():
    assert A.sequence_advantages([1.0, 1.0, 1.0], [0, 0, 0], "mean_std") == [0.0, 0.0, 0.0]


def test_gae_by_hand():
    # Two tokens, reward 1 at the end, values v0=0.5, v1=0.25, gamma=0.9, lambda=0.8
    r = [torch.tensor([0.0, 1.0])]
    v = [torch.tensor([0.5, 0.25])]
    adv, ret = A.gae_advantages(r, v, gamma=0.9, lam=0.8)
    d1 = 1.0 - 0.25
    d0 = 0.0 + 0.9 * 0.25 - 0.5
    expected = torch.tensor([d0 + 0.9 * 0.8 * d1, d1])
    torch.testing.assert_close(adv[0], expected)
    torch.testing.assert_close(ret[0], expected + torch.tensor([0.5, 0.25]))


def test_token_rewards_and_returns():
    kl = torch.tensor([0.1, 0.2, 0.3])
    r = A.token_rewards(1.0, 3, kl, kl_coef=0.5)
    torch.testing.assert_close(r, torch.tensor([-0.05, -0.1, 1.0 - 0.15]))
    ret = A.discounted_returns([r], gamma=1.0)[0]
    torch.testing.assert_close(ret, torch.tensor([0.85 - 0.15, 0.85 - 0.1 + 0.0, 0.85]), atol=1e-6, rtol=0)


def test_whitening_matches_torch():
    vals = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0, 10.0])]
    flat = torch.cat(vals).double()
    expected = (flat - flat.mean()) / flat.std()
    got = torch.cat(A.whiten_across_ranks(vals, group=None)).double()
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def _mb(logp_old, adv, mask):
    return LossTargets(old_logp=logp_old, advantages=adv, loss_mask=mask)


def _norm(tokens, sequences, num_microbatches=1, dp=1):
    return LossNormalizer(tokens=tokens, sequences=sequences, num_microbatches=num_microbatches, dp=dp)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-sum-constant"])
def test_actor_loss_by_hand(agg):
    algo = AlgorithmConfig(name="drgrpo" if agg == "seq-sum-constant" else "grpo", loss_agg=agg, loss_constant=4,
                           clip_low=0.2, clip_high=0.28)
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.1, 0.0]], requires_grad=True)
    old = torch.tensor([[-1.2, -1.5, -0.5], [-0.3, -0.4, 0.0]])
    adv = torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, -2.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    entropy = torch.ones(2, 3)
    norm = _norm(5, 2)
    loss, stats = actor_loss(logp, entropy, _mb(old, adv, mask), algo, norm)
    # by hand: ratio = exp(logp - old); per-token loss = max(-A r, -A clip(r, 0.8, 1.28))
    per_token = []
    for lp_row, o_row, a_row in zip(logp.tolist(), old.tolist(), adv.tolist()):
        row = []
        for lp, o, a in zip(lp_row, o_row, a_row):
            r = math.exp(lp - o)
            row.append(max(-a * r, -a * min(max(r, 0.8), 1.28)))
        per_token.append(row)
    m = mask.tolist()
    if agg == "token-mean":
        expected = sum(v for row, mr in zip(per_token, m) for v, k in zip(row, mr) if k) / 5
    elif agg == "seq-mean-token-mean":
        expected = sum(sum(v for v, k in zip(row, mr) if k) / sum(mr) for row, mr in zip(per_token, m)) / 2
    else:
        expected = sum(sum(v for v, k in zip(row, mr) if k) / 4 for row, mr in zip(per_token, m)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert logp.grad[1, 2] == 0  # masked token gets no gradient


def test_loss_scale_sums_microbatches_to_global_mean():
    """Two micro-batches of one mini-batch: scaled losses (as Megatron averages them) equal the
    token-mean over the whole mini-batch."""
    algo = AlgorithmConfig(name="grpo")
    torch.manual_seed(0)
    logp = torch.randn(4, 5)
    old = logp + 0.01 * torch.randn(4, 5)
    adv = torch.randn(4, 1).expand(4, 5).contiguous()
    mask = torch.rand(4, 5) > 0.3
    mask[:, 0] = True
    ent = torch.zeros(4, 5)
    whole, _ = actor_loss(logp, ent, _mb(old, adv, mask), algo, _norm(int(mask.sum()), 4))
    norm = _norm(int(mask.sum()), 4, num_microbatches=2)
    parts = [actor_loss(logp[s], ent[s], _mb(old[s], adv[s], mask[s]), algo, norm)[0] for s in (slice(0, 1), slice(1, 4))]
    assert (sum(parts) / 2).item() == pytest.approx(whole.item(), rel=1e-5)


def test_value_loss_clipping_by_hand():
    values = torch.tensor([[1.0, 0.0]])
    mb = LossTargets(loss_mask=torch.tensor([[True, True]]), returns=torch.tensor([[0.0, 1.0]]), old_values=torch.tensor([[0.8, 0.5]]))
    loss, _ = value_loss(values, mb, clip=0.1, normalizer=_norm(2, 1), agg="token-mean")
    # token 0: unclipped (1-0)^2=1, clipped 0.9^2=0.81 -> 1; token 1: (0-1)^2=1, clipped (0.4-1)^2=0.36 -> 1
    assert loss.item() == pytest.approx(0.5 * (1 + 1) / 2)
