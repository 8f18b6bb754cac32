"""Off-policy corrections (`algorithm.importance_correction`): per-token weights on the policy gradient
that account for the servers' behaviour policy differing from the trainer's proximal policy.

Three policies meet in an off-policy step (Hilton et al. 2021, "Batch size-invariance for policy
optimization", arXiv 2110.00641): the behaviour policy that sampled the batch (the servers' log-probs,
possibly older weights and always another numerical implementation), the proximal policy (the actor's
log-probs recomputed before the update: the PPO ratio's denominator, `old_logp`), and the policy being
trained. A correction turns the per-token log-ratio

    log rho_t = proximal_logp_t - behaviour_logp_t

into a weight w_t >= 0 that multiplies token t's policy-gradient term; tokens whose ratio is out of
bounds may be dropped (w_t = 0). Inputs are [B, T] matrices whose rows are sequences (megarl's
per-sequence loss targets), so a sequence's tokens are its row under `mask`:

    none       w = 1
    tis        w = min(rho, cap)                                    (truncated IS; Yao et al. 2025)
    mis        rho_L at level L: token rho_t; sequence exp(sum_t log rho_t); geometric exp(mean_t log rho_t);
               w = rho_L if low <= rho_L <= cap else 0              (masked IS: verl mismatch_helper.py
               `compute_rollout_importance_weights`, rollout_is_mode="mask", lower bound 1/upper by default)
    icepop     w = rho_t if alpha <= rho_t <= beta else 0           (IcePop, Ling Team 2025: M(k) = k on
               [alpha, beta], 0 elsewhere; slime `icepop_function`), alpha = importance_low, beta = importance_cap
    decoupled  w = rho_t if rho_t <= cap else 0 (no bound when cap is None)
               (decoupled PPO: the clipped ratio pi_theta / pi_prox times the behaviour weight pi_prox / pi_behav;
               AReaL realhf/impl/model/utils/ppo_functional.py `actor_loss_fn`, behav_imp_weight_cap)

tis keeps the exact arithmetic it had before the registry (exp of the unclamped log-ratio); the others
take exp of the log-ratio clamped to +-LOG_RATIO_LIMIT first, as verl's safety bound does, and compare
the ratio itself with the bounds (inclusive). icepop is mis at token level under its paper's name.

How a weight enters the loss: `losses.actor_loss` multiplies the advantage by it. Every registered policy
loss is positively homogeneous in the advantage (PPO clip with dual clip, GSPO, CISPO), so this equals
weighting each token's loss (AReaL's `pg_loss * behav_imp_weight`, slime's `pg_loss * tis_weights`).
A dropped token keeps its place in the aggregation's denominator and in the KL and entropy terms, as in
AReaL and slime (verl instead removes it from the loss mask, so the mean is over kept tokens only).
"""

from __future__ import annotations

import dataclasses

import torch

from megarl.kernels.losses import LOG_RATIO_LIMIT
from megarl.algorithms.registry import register_correction

# Statistics every correction reports (token means over the mask; `is/<name>` in the step's metrics).
STAT_NAMES = ("weight_mean", "ratio_mean", "masked_frac", "truncated_frac")


@dataclasses.dataclass(frozen=True)
class Correction:
    """A correction's result for one [B, T] micro-batch."""

    weights: torch.Tensor  # float: multiplies each token's policy-gradient term; 0 where dropped and off the mask
    dropped: torch.Tensor  # bool: tokens of the mask whose weight the correction set to 0
    stats: dict[str, torch.Tensor]  # detached token means over the mask, one per STAT_NAMES, and "tokens"


def sequence_log_ratio(log_ratio: torch.Tensor, mask: torch.Tensor, level: str) -> torch.Tensor:
    """The log-ratio compared with the bounds at `level`, on every token of its row: the token's own
    (token), the row's sum over the mask (sequence: log of the product of the token ratios) or its
    mean (geometric: log of their geometric mean)."""
    if level == "token":
        return log_ratio
    fmask = mask.to(log_ratio.dtype)
    total = (log_ratio * fmask).sum(-1, keepdim=True)
    if level == "sequence":
        return total.expand_as(log_ratio)
    if level == "geometric":
        return (total / fmask.sum(-1, keepdim=True).clamp(min=1)).expand_as(log_ratio)
    raise ValueError(f"level={level!r} is not one of token, sequence, geometric")


def bounds(algo) -> tuple[float, float | None]:
    """(low, high) of the masking corrections: importance_low (default 1 / importance_cap) and importance_cap."""
    high = algo.importance_cap
    low = algo.importance_low if algo.importance_low is not None else (1.0 / high if high else 0.0)
    return low, high


def _result(ratio: torch.Tensor, weights: torch.Tensor, keep: torch.Tensor, truncated: torch.Tensor,
            mask: torch.Tensor) -> Correction:
    mask = mask.bool()
    weights = torch.where(keep & mask, weights, torch.zeros_like(weights))
    dropped = mask & ~keep
    with torch.no_grad():
        fmask = mask.to(ratio.dtype)
        tokens = fmask.sum()
        denom = tokens.clamp(min=1)
        stats = {
            "weight_mean": weights.sum() / denom,
            "ratio_mean": torch.where(mask, ratio, torch.zeros_like(ratio)).sum() / denom,
            "masked_frac": dropped.to(ratio.dtype).sum() / denom,
            "truncated_frac": (truncated & mask).to(ratio.dtype).sum() / denom,
            "tokens": tokens,
        }
    return Correction(weights=weights.detach(), dropped=dropped, stats=stats)


def _check(proximal: torch.Tensor, behaviour: torch.Tensor, mask: torch.Tensor) -> None:
    if not proximal.shape == behaviour.shape == mask.shape:
        raise ValueError(f"proximal log-probs {tuple(proximal.shape)}, behaviour log-probs {tuple(behaviour.shape)} "
                         f"and mask {tuple(mask.shape)} must share one [B, T] shape")


def _masked(proximal: torch.Tensor, behaviour: torch.Tensor, mask: torch.Tensor, low: float, high: float | None,
            level: str = "token") -> Correction:
    """Weight rho_L where low <= rho_L <= high (no upper test for high None), 0 elsewhere."""
    _check(proximal, behaviour, mask)
    log_ratio = sequence_log_ratio((proximal - behaviour).detach(), mask, level)
    ratio = torch.exp(log_ratio.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT))
    keep = ratio >= low
    if high is not None:
        keep = keep & (ratio <= high)
    return _result(ratio, ratio, keep, torch.zeros_like(keep), mask)


@register_correction("none")
def no_correction(proximal, behaviour, mask, algo) -> Correction:
    """Weight 1 on every token of the mask."""
    _check(proximal, behaviour, mask)
    ones = torch.ones_like(proximal)
    return _result(ones, ones, torch.ones_like(mask, dtype=torch.bool), torch.zeros_like(mask, dtype=torch.bool), mask)


@register_correction("tis")
def truncated_is(proximal, behaviour, mask, algo) -> Correction:
    """min(rho_t, importance_cap) per token; nothing dropped (truncated_frac: tokens above the cap)."""
    _check(proximal, behaviour, mask)
    log_ratio = (proximal - behaviour).detach()
    ratio = torch.exp(log_ratio)  # unclamped, as before the registry; only the statistic is kept finite
    keep = torch.ones_like(mask, dtype=torch.bool)
    return _result(torch.exp(log_ratio.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)), ratio.clamp(max=algo.importance_cap),
                   keep, ratio > algo.importance_cap, mask)


@register_correction("mis")
def masked_is(proximal, behaviour, mask, algo) -> Correction:
    """rho at importance_level where it lies in [importance_low, importance_cap], else 0 (a sequence's tokens
    together at sequence and geometric level)."""
    low, high = bounds(algo)
    return _masked(proximal, behaviour, mask, low, high, algo.importance_level)


@register_correction("icepop")
def icepop(proximal, behaviour, mask, algo) -> Correction:
    """IcePop's M(rho_t; alpha, beta): rho_t on [importance_low, importance_cap], else 0, per token. The
    Ring-1T paper (arXiv 2510.18855) gives the objective
        E[ 1/G sum_i 1/|y_i| sum_t M(pi_train(old) / pi_infer(old)) * min(r A, clip(r) A) ],
    r = pi_theta / pi_train(old); alpha and beta are settings (megarl's defaults [1/2, 2] are what slime's
    IcePop test runs; prime-rl's IcePop port started at [0.5, 5])."""
    low, high = bounds(algo)
    return _masked(proximal, behaviour, mask, low, high)


@register_correction("decoupled")
def decoupled(proximal, behaviour, mask, algo) -> Correction:
    """The behaviour weight pi_prox / pi_behav per token, 0 above importance_cap (AReaL's behav_imp_weight_cap;
    no lower bound)."""
    return _masked(proximal, behaviour, mask, 0.0, algo.importance_cap)
