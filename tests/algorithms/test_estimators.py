"""The registered estimators and losses on hand-computed cases: REINFORCE++-baseline, the whitening switch,
and GSPO / CISPO reached through `actor_loss` with the config's clip values."""

import math

import pytest
import torch

from megarl.algorithms.advantages import AdvantageInputs, estimate_advantages, sequence_advantages
from megarl.algorithms.losses import LossNormalizer, actor_loss
from megarl.algorithms.losses import LossTargets
from megarl.algorithms.registry import get_algorithm
from megarl.config import AlgorithmConfig


def _inputs(scores, lengths, kl=None):
    return AdvantageInputs(scores=scores, lengths=lengths, kl=kl or [None] * len(lengths), values=[None] * len(lengths))


def test_reinforce_pp_baseline_by_hand():
    """REINFORCE++-baseline (Hu et al. 2025; OpenRLHF `reinforce_baseline`): score = r - group mean, placed on
    the last token, returns-to-go (gamma = 1), then whitened over every token of the batch.
    Groups {1, 0} and {1, 1}: scores 0.5, -0.5, 0, 0; lengths 2, 1, 1, 3: returns [0.5, 0.5], [-0.5], [0],
    [0, 0, 0]. Over the 7 tokens: mean 0.5 / 7 = 0.0714286, unbiased variance 0.1190476, so
    0.5 -> 1.2421180, -0.5 -> -1.6561573, 0 -> -0.2070197."""
    spec = get_algorithm("reinforce_pp_baseline")
    scores = sequence_advantages([1.0, 0.0, 1.0, 1.0], [0, 0, 1, 1], spec.group_baseline)
    assert scores == pytest.approx([0.5, -0.5, 0.0, 0.0])
    out = estimate_advantages(AlgorithmConfig(name="reinforce_pp_baseline", gamma=1.0), _inputs(scores, [2, 1, 1, 3]))
    hi, lo, zero = 1.2421180, -1.6561573, -0.2070197
    expected = [[hi, hi], [lo], [zero], [zero, zero, zero]]
    for got, want in zip(out.advantages, expected):
        torch.testing.assert_close(got, torch.tensor(want), atol=1e-6, rtol=0)
    assert out.returns is None


def test_reinforce_pp_baseline_takes_kl_in_the_reward():
    """With KL in the reward, token t's reward is -kl_coef * KL_t (+ score on the last): one sequence of score
    0.5 and KL [0.2, 0.4], coef 0.5: rewards [-0.1, 0.3], returns [0.2, 0.3]; a second, score -0.5, one token,
    KL 0: return -0.5. Whitened over [0.2, 0.3, -0.5]: mean 0, unbiased std sqrt(0.19) = 0.4358899."""
    algo = AlgorithmConfig(name="reinforce_pp_baseline", kl_coef=0.5, kl_in_reward=True)
    out = estimate_advantages(algo, _inputs([0.5, -0.5], [2, 1], kl=[torch.tensor([0.2, 0.4]), torch.zeros(1)]))
    std = math.sqrt(0.19)
    torch.testing.assert_close(torch.cat(out.advantages), torch.tensor([0.2, 0.3, -0.5]) / std, atol=1e-6, rtol=0)


@pytest.mark.parametrize("whiten", [False, True])
def test_whitening_switch_for_group_algorithms(whiten):
    """GRPO scores 1 and -1 on responses of 1 and 3 tokens. Off: [1], [-1, -1, -1]. On: over the 4 tokens,
    mean -0.5, unbiased variance (1.5^2 + 3 * 0.5^2) / 3 = 1: [1.5], [-0.5, -0.5, -0.5]."""
    out = estimate_advantages(AlgorithmConfig(name="grpo", whiten_advantages=whiten), _inputs([1.0, -1.0], [1, 3]))
    expected = [[1.5], [-0.5] * 3] if whiten else [[1.0], [-1.0] * 3]
    for got, want in zip(out.advantages, expected):
        torch.testing.assert_close(got, torch.tensor(want), atol=1e-6, rtol=0)


def _batch():
    f64 = torch.float64
    logp = torch.tensor([[-1.0, -0.5, -2.0], [-0.3, -0.2, 0.0]], dtype=f64, requires_grad=True)
    old = torch.tensor([[-1.0005, -0.5, -2.0], [-0.3, -0.2001, 0.0]], dtype=f64)
    mb = LossTargets(old_logp=old, advantages=torch.tensor([[1.0] * 3, [-1.0] * 3], dtype=f64),
                     loss_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]).bool())
    norm = LossNormalizer(tokens=5, sequences=2, num_microbatches=1, dp=1)
    return logp, mb, norm


def test_actor_loss_uses_gspo_with_its_clip_values():
    """gspo through the registry (seq-mean-token-mean): s = exp(0.0005 / 3) = 1.000166681 (A = +1, inside
    1 + 4e-4: unclipped) and exp(0.0001 / 2) = 1.000050001 (A = -1, unclipped): loss (-1.000166681 +
    1.000050001) / 2 = -0.000058340. With gspo_clip_high = 1e-4 the first is clipped at 1.0001:
    (-1.0001 + 1.000050001) / 2 = -0.000024999, and its 3 of the 5 tokens count as clipped."""
    logp, mb, norm = _batch()
    algo = AlgorithmConfig(name="gspo", loss_agg="seq-mean-token-mean")
    loss, stats = actor_loss(logp, torch.zeros(2, 3), mb, algo, norm)
    assert loss.item() == pytest.approx(-0.000058340, abs=1e-9) and stats["clipfrac"].item() == 0
    algo = AlgorithmConfig(name="gspo", loss_agg="seq-mean-token-mean", gspo_clip_high=1e-4)
    loss, stats = actor_loss(logp, torch.zeros(2, 3), mb, algo, norm)
    assert loss.item() == pytest.approx(-0.000024999, abs=1e-9) and stats["clipfrac"].item() == pytest.approx(3 / 5)


def test_actor_loss_uses_cispo_with_its_clip_values():
    """cispo through the registry, token-mean over 5 tokens of -w A logp: with the defaults (no lower bound,
    cap 5) w = r = [exp(0.0005), 1, 1, 1, exp(0.0001)]: (1.000500125 + 0.5 + 2 - 0.3 - 0.2 * 1.000100005) / 5 =
    0.600096025. With cispo_clip_high = 0.0002, w_0 = 1.0002: (1.0002 + 0.5 + 2 - 0.3 - 0.200020001) / 5 = 0.600036."""
    logp, mb, norm = _batch()
    loss, _ = actor_loss(logp, torch.zeros(2, 3), mb, AlgorithmConfig(name="cispo"), norm)
    assert loss.item() == pytest.approx(0.600096025, abs=1e-9)
    loss, stats = actor_loss(logp, torch.zeros(2, 3), mb, AlgorithmConfig(name="cispo", cispo_clip_high=0.0002), norm)
    assert loss.item() == pytest.approx(0.600036, abs=1e-9) and stats["clipfrac"].item() == pytest.approx(1 / 5)
