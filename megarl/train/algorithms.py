"""Advantage estimation and loss composition for PPO, GRPO, Dr. GRPO, RLOO and REINFORCE++.

Functions on tensors (and lists of per-sequence tensors); the kernels in `kernels/` do the
arithmetic through their dispatch (`impl="auto"`: the Triton kernels on the training device when
it is a GPU, the torch references on CPU), with the batch assembled on the training device and
copied back to the host once. Batch-wide statistics (whitening) are reduced over the
data-parallel group so every layout computes the same numbers.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
import torch.distributed as dist

from kernels import gae, group_advantages, kl_penalty, policy_loss
from megarl.runtime import collectives
from megarl.runtime.device import get_device
from megarl.train.batch import LossTargets

GROUP_MODE = {"grpo": "grpo", "drgrpo": "drgrpo", "rloo": "rloo"}


@dataclasses.dataclass(frozen=True)
class LossNormalizer:
    """Totals of one mini-batch over all data-parallel ranks, which turn each micro-batch's loss into
    its share of the mini-batch's loss."""

    tokens: float  # response tokens in the loss
    sequences: float  # sequences in the loss
    num_microbatches: int  # on this rank (Megatron divides each loss by it)
    dp: int  # data-parallel ranks (DDP averages over them)


def sequence_advantages(rewards: Sequence[float], groups: Sequence[int], mode: str, eps: float = 1e-6,
                        impl: str = "auto") -> list[float]:
    """Group-relative advantage per sequence; sequences of one prompt share a group id.

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
    adv = group_advantages(r.to(device), mask.to(device), mode=GROUP_MODE[mode], eps=eps, impl=impl).cpu()
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


def actor_loss(
    logp: torch.Tensor,
    entropy: torch.Tensor,
    mb: LossTargets,
    algo,
    normalizer: LossNormalizer,
) -> tuple[torch.Tensor, dict]:
    """PPO-clip policy loss + KL loss + entropy bonus for one micro-batch, scaled so that summing
    over micro-batches and averaging over DP ranks (what Megatron does) gives the loss of the whole
    mini-batch under `algo.loss_agg`."""
    mask = mb.loss_mask
    adv, old = mb.advantages, mb.old_logp
    if mb.is_weights is not None:
        adv = adv * mb.is_weights
    pg, stats = policy_loss(
        logp, old, adv, mask, clip_low=algo.clip_low, clip_high=algo.clip_high, dual_clip=algo.dual_clip,
        agg=algo.loss_agg, constant=algo.loss_constant,
    )
    scale = _agg_scale(mask, algo.loss_agg, normalizer)
    from kernels.losses import aggregate

    loss = pg
    kl_value = torch.zeros((), device=logp.device)
    if algo.kl_coef and not algo.kl_in_reward:
        kl_value = aggregate(kl_penalty(logp, mb.ref_logp, algo.kl_type), mask, algo.loss_agg, algo.loss_constant)
        loss = loss + algo.kl_coef * kl_value
    ent_value = aggregate(entropy, mask, algo.loss_agg, algo.loss_constant)
    if algo.entropy_coef:
        loss = loss - algo.entropy_coef * ent_value
    tokens = mask.sum().clamp(min=1)
    stats = {
        "pg_loss": pg.detach(), "kl_loss": kl_value.detach(), "entropy": (entropy * mask).sum().detach() / tokens,
        "clipfrac": stats["clipfrac"], "ppo_kl": stats["ppo_kl"], "tokens": mask.sum().detach().float(),
        "dual_clipfrac": stats["dual_clipfrac"],
    }
    return loss * scale, stats


def value_loss(values: torch.Tensor, mb: LossTargets, clip: float | None, normalizer: LossNormalizer) -> tuple[torch.Tensor, dict]:
    """Clipped value loss, token-mean over the mini-batch."""
    mask = mb.loss_mask.float()
    returns, old = mb.returns, mb.old_values
    err = (values - returns) ** 2
    if clip is not None:
        clipped = old + (values - old).clamp(-clip, clip)
        err = torch.maximum(err, (clipped - returns) ** 2)
    tokens = mask.sum()
    loss = 0.5 * (err * mask).sum() / tokens.clamp(min=1)
    scale = _agg_scale(mb.loss_mask, "token-mean", normalizer)
    stats = {"vf_loss": loss.detach(), "values": (values * mask).sum().detach() / tokens.clamp(min=1), "tokens": tokens.detach()}
    return loss * scale, stats


def _agg_scale(mask: torch.Tensor, agg: str, normalizer: LossNormalizer) -> float:
    """Factor turning a micro-batch mean into its share of the global mini-batch mean, undoing
    Megatron's division by the number of micro-batches and DDP's average over DP ranks."""
    undo = normalizer.num_microbatches * normalizer.dp
    if agg == "token-mean":
        return float(mask.sum()) / max(normalizer.tokens, 1) * undo
    return mask.shape[0] / max(normalizer.sequences, 1) * undo
