"""Advantage estimators (group baselines, GAE, REINFORCE++ returns, whitening) and their registry entries.

`estimate_advantages` turns each sequence's outcome score into per-token advantages with the
estimator its algorithm names in `megarl.algorithms.registry`. Functions on tensors (and lists of
per-sequence tensors); the kernels in `kernels/` do the
arithmetic through their dispatch (`impl="auto"`: the Triton kernels on the training device when
it is a GPU, the torch references on CPU), with the batch assembled on the training device and
copied back to the host once. Batch-wide statistics (whitening) are reduced over the
data-parallel group so every layout computes the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist

from megarl.kernels import gae, group_advantages
from megarl.algorithms.registry import GAE, RETURNS, SEQUENCE, estimator_fn, get_algorithm, register_advantage_estimator
from megarl.runtime import collectives
from megarl.runtime.device import get_device


def sequence_advantages(rewards: Sequence[float], groups: Sequence[int], mode: str, eps: float = 1e-6,
                        impl: str = "auto") -> list[float]:
    """Group-relative advantage per sequence; sequences of one prompt share a group id; `mode` is a
    `megarl.kernels.group_advantages` mode (an algorithm's `group_baseline`).

    Groups may differ in size (the kernel masks the missing slots)."""
    order = sorted(set(groups))
    index = {g: i for i, g in enumerate(order)}
    width = max(sum(1 for g in groups if g == k) for k in order)
    r = torch.zeros(len(order), width)
    mask = torch.zeros(len(order), width, dtype=torch.bool)
    slot = [0] * len(order)
    where = []
    for reward, g in zip(rewards, groups):
        row = index[g]
        r[row, slot[row]] = reward
        mask[row, slot[row]] = True
        where.append((row, slot[row]))
        slot[row] += 1
    device = get_device()
    adv = group_advantages(r.to(device), mask.to(device), mode=mode, eps=eps, impl=impl).cpu()
    return [float(adv[row, col]) for row, col in where]


def token_rewards(reward: float, length: int, kl: torch.Tensor | None, kl_coef: float) -> torch.Tensor:
    """Per-token reward: the outcome reward on the last token, minus kl_coef * KL per token."""
    out = torch.zeros(length, dtype=torch.float32)
    if length:
        out[-1] = reward
    if kl is not None and kl_coef:
        out = out - kl_coef * kl.float()
    return out


def _ragged_to_matrix(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded [B, T] float32 values and their mask, on the training device."""
    t_max = max(len(r) for r in rows)
    out = torch.zeros(len(rows), t_max)
    mask = torch.zeros(len(rows), t_max, dtype=torch.bool)
    for b, r in enumerate(rows):
        out[b, : len(r)], mask[b, : len(r)] = r.float(), True
    device = get_device()
    return out.to(device), mask.to(device)


def _split_rows(matrix: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-sequence rows of `matrix`, copied to the host in one transfer."""
    host = matrix.cpu()
    return [host[b, : len(r)] for b, r in enumerate(like)]


def gae_advantages(rewards: list[torch.Tensor], values: list[torch.Tensor], gamma: float, lam: float,
                   impl: str = "auto"):
    """GAE per sequence (ragged lists) -> (advantages, returns) lists."""
    if not rewards:
        return [], []
    R, M = _ragged_to_matrix(rewards)
    V, _ = _ragged_to_matrix([v[: len(r)] for r, v in zip(rewards, values)])
    adv, ret = gae(R, V, M, gamma, lam, impl=impl)
    return _split_rows(adv, rewards), _split_rows(ret, rewards)


def discounted_returns(rewards: list[torch.Tensor], gamma: float, impl: str = "auto") -> list[torch.Tensor]:
    """Returns-to-go per sequence (REINFORCE++): GAE's scan with values 0 and lambda 1."""
    if not rewards:
        return []
    R, M = _ragged_to_matrix(rewards)
    ret, _ = gae(R, torch.zeros_like(R), M, gamma, 1.0, impl=impl)
    return _split_rows(ret, rewards)


def whiten_across_ranks(values: list[torch.Tensor], group=None, shift_mean: bool = True, eps: float = 1e-8) -> list[torch.Tensor]:
    """Whiten ragged per-token tensors over all tokens of all data-parallel ranks."""
    flat = torch.cat([v.double() for v in values]) if values else torch.zeros(0, dtype=torch.float64)
    stats = torch.tensor([flat.numel(), flat.sum().item(), flat.pow(2).sum().item()], dtype=torch.float64)
    if group is not None and dist.is_initialized():
        collectives.all_reduce(stats, group=group)
    count, total, total_sq = stats.tolist()
    if count < 2:
        return [v.float() for v in values]
    mean = total / count
    var = max(total_sq / count - mean * mean, 0.0) * count / (count - 1)
    scale = 1.0 / (var + eps) ** 0.5
    return [((v.double() - mean) * scale + (0.0 if shift_mean else mean)).float() for v in values]


# ---- registered estimators ----------------------------------------------------------------------
@dataclass
class AdvantageInputs:
    """Per sequence of the local batch: `scores` is the outcome after the algorithm's group baseline
    (its group-relative advantage) or the raw reward when it has none; `kl` the per-token KL to the
    reference (KL in the reward) or None; `values` the critic's old values (PPO) or None."""

    scores: list[float]
    lengths: list[int]
    kl: list[torch.Tensor | None]
    values: list[torch.Tensor | None]


@dataclass
class TokenAdvantages:
    advantages: list[torch.Tensor]
    returns: list[torch.Tensor] | None = None  # value targets, for a critic


def estimate_advantages(algo, inputs: AdvantageInputs, dp_group=None) -> TokenAdvantages:
    """Per-token advantages with the estimator `algo.name` registers; with `algo.whiten_advantages`,
    whitened over every token of the data-parallel group afterwards."""
    out = estimator_fn(get_algorithm(algo.name))(inputs, algo, dp_group)
    if algo.whiten_advantages:
        out.advantages = whiten_across_ranks(out.advantages, dp_group)
    return out


def _token_rewards(inputs: AdvantageInputs, algo) -> list[torch.Tensor]:
    return [token_rewards(score, n, kl, algo.kl_coef) for score, n, kl in zip(inputs.scores, inputs.lengths, inputs.kl)]


@register_advantage_estimator(SEQUENCE)
def sequence_estimator(inputs: AdvantageInputs, algo, dp_group=None) -> TokenAdvantages:
    return TokenAdvantages([torch.full((n,), float(score), dtype=torch.float32) for score, n in zip(inputs.scores, inputs.lengths)])


@register_advantage_estimator(GAE)
def gae_estimator(inputs: AdvantageInputs, algo, dp_group=None) -> TokenAdvantages:
    adv, ret = gae_advantages(_token_rewards(inputs, algo), inputs.values, algo.gamma, algo.lam)
    return TokenAdvantages(whiten_across_ranks(adv, dp_group), ret)


@register_advantage_estimator(RETURNS)
def returns_estimator(inputs: AdvantageInputs, algo, dp_group=None) -> TokenAdvantages:
    """REINFORCE++ (score = reward) and REINFORCE++-baseline (score = reward - group mean): returns-to-go
    of the token rewards, whitened over the global batch (OpenRLHF's reinforce / reinforce_baseline)."""
    return TokenAdvantages(whiten_across_ranks(discounted_returns(_token_rewards(inputs, algo), algo.gamma), dp_group))
