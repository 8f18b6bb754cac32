"""The actor's and critic's losses for one micro-batch: the algorithm's registered policy loss plus KL and
entropy terms, scaled so Megatron's micro-batch and data-parallel averaging give the mini-batch loss."""

from __future__ import annotations

import dataclasses

import torch

from megarl.kernels.losses import aggregate, cispo_policy_loss, gspo_policy_loss, kl_penalty, policy_loss
from megarl.algorithms.registry import get_algorithm, policy_loss_fn, register_policy_loss


@dataclasses.dataclass
class LossTargets:
    """What the losses read for one micro-batch, per sequence and response token [B, T] (right-padded;
    None: not used by this recipe)."""

    loss_mask: torch.Tensor  # response tokens that count (overlong-filtered sequences excluded)
    advantages: torch.Tensor | None = None
    old_logp: torch.Tensor | None = None  # the PPO ratio's denominator (None: single pass fills it in)
    ref_logp: torch.Tensor | None = None  # KL as a loss
    behaviour_logp: torch.Tensor | None = None  # the rollout server's log-probs
    is_weights: torch.Tensor | None = None  # per-token off-policy correction weights (megarl/algorithms/corrections.py)
    returns: torch.Tensor | None = None  # critic
    old_values: torch.Tensor | None = None  # critic


@dataclasses.dataclass(frozen=True)
class LossNormalizer:
    """Totals of one mini-batch over all data-parallel ranks, which turn each micro-batch's loss into
    its share of the mini-batch's loss."""

    tokens: float  # response tokens in the loss
    sequences: float  # sequences in the loss
    num_microbatches: int  # on this rank (Megatron divides each loss by it)
    dp: int  # data-parallel ranks (DDP averages over them)


@register_policy_loss("ppo_clip")
def ppo_clip_loss(logp, old_logp, advantages, mask, algo):
    """PPO's clipped surrogate (clip-higher, optional dual clip)."""
    return policy_loss(logp, old_logp, advantages, mask, clip_low=algo.clip_low, clip_high=algo.clip_high,
                       dual_clip=algo.dual_clip, agg=algo.loss_agg, constant=algo.loss_constant)


@register_policy_loss("gspo")
def gspo_loss(logp, old_logp, advantages, mask, algo):
    """GSPO's sequence-level ratio, clipped at algorithm.gspo_clip_low / gspo_clip_high."""
    return gspo_policy_loss(logp, old_logp, advantages, mask, clip_low=algo.gspo_clip_low, clip_high=algo.gspo_clip_high,
                            agg=algo.loss_agg, constant=algo.loss_constant)


@register_policy_loss("cispo")
def cispo_loss(logp, old_logp, advantages, mask, algo):
    """CISPO's clipped stop-gradient importance weight, at algorithm.cispo_clip_low / cispo_clip_high."""
    return cispo_policy_loss(logp, old_logp, advantages, mask, clip_low=algo.cispo_clip_low, clip_high=algo.cispo_clip_high,
                             agg=algo.loss_agg, constant=algo.loss_constant)


def actor_loss(
    logp: torch.Tensor,
    entropy: torch.Tensor,
    mb: LossTargets,
    algo,
    normalizer: LossNormalizer,
) -> tuple[torch.Tensor, dict]:
    """The algorithm's policy loss + KL loss + entropy bonus for one micro-batch, scaled so that summing
    over micro-batches and averaging over DP ranks (what Megatron does) gives the loss of the whole
    mini-batch under `algo.loss_agg`."""
    mask = mb.loss_mask
    adv, old = mb.advantages, mb.old_logp
    if mb.is_weights is not None:
        # The importance correction's weight w >= 0 (megarl.algorithms.corrections): every registered policy
        # loss is positively homogeneous in the advantage, so loss(w * A) = w * loss(A) token by token.
        adv = adv * mb.is_weights
    pg, stats = policy_loss_fn(get_algorithm(algo.name))(logp, old, adv, mask, algo)
    scale = _agg_scale(mask, algo.loss_agg, normalizer)
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


def value_loss(values: torch.Tensor, mb: LossTargets, clip: float | None, normalizer: LossNormalizer,
               agg: str) -> tuple[torch.Tensor, dict]:
    """Clipped value loss 0.5 x max((v - R)^2, (v_clipped - R)^2), aggregated over the mini-batch with `agg`
    (critic.loss_agg: token-mean, or seq-mean-token-mean as OpenRLHF's ValueLoss)."""
    mask = mb.loss_mask.float()
    returns, old = mb.returns, mb.old_values
    err = (values - returns) ** 2
    if clip is not None:
        clipped = old + (values - old).clamp(-clip, clip)
        err = torch.maximum(err, (clipped - returns) ** 2)
    tokens = mask.sum()
    loss = 0.5 * aggregate(err, mb.loss_mask, agg)
    scale = _agg_scale(mb.loss_mask, agg, normalizer)
    stats = {"vf_loss": loss.detach(), "values": (values * mask).sum().detach() / tokens.clamp(min=1), "tokens": tokens.detach()}
    return loss * scale, stats


def _agg_scale(mask: torch.Tensor, agg: str, normalizer: LossNormalizer) -> float:
    """Factor turning a micro-batch mean into its share of the global mini-batch mean, undoing
    Megatron's division by the number of micro-batches and DDP's average over DP ranks."""
    undo = normalizer.num_microbatches * normalizer.dp
    if agg == "token-mean":
        return float(mask.sum()) / max(normalizer.tokens, 1) * undo
    return mask.shape[0] / max(normalizer.sequences, 1) * undo
