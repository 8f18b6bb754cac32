"""Policy losses (PPO clip with clip-higher and dual clip, GSPO, CISPO), four aggregation modes, KL estimators.

Plain torch on purpose: these are a handful of elementwise ops over [B, T] plus one reduction,
which torch (or torch.compile) already fuses well; the expensive inputs (log-probs) come from
the fused kernels in `megarl.kernels.logprob`.

policy_loss, per token with ratio = exp(clamp(logp - old_logp, -20, 20)) and advantage A (the clamp,
as in verl, OpenRLHF and slime, keeps one far-off-policy token from overflowing exp to inf and
poisoning the loss or its gradient with NaN; ppo_kl is taken from the unclamped log-ratio):
    clipped = max(-A * ratio, -A * clamp(ratio, 1 - clip_low, 1 + clip_high))
    with dual_clip = c > 1 and A < 0: loss = min(clipped, -A * c)   (Ye et al. 2020)
aggregation over masked tokens of [B, T]:
    token-mean           sum(loss * mask) / sum(mask)                          (DAPO, verl default)
    seq-mean-token-sum   mean over sequences of sum over tokens
    seq-mean-token-mean  mean over sequences of (token sum / sequence length)  (GRPO paper)
    seq-sum-constant     mean over sequences of (token sum / constant)         (Dr. GRPO; constant =
                         the max generation length, the same for every batch)
Sequences with no unmasked token count as 0 in the seq-mean modes (and still count in the mean).

gspo_policy_loss (Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv 2507.18071):
sequence-level ratio s_i = exp(mean over the response's tokens of (logp - old_logp)), length-normalized,
clipped per sequence with its own small range (paper: 3e-4 below, 4e-4 above):
    loss_i = max(-A_i * s_i, -A_i * clamp(s_i, 1 - clip_low, 1 + clip_high))
computed in the GSPO-token form s_i,t = sg[s_i] * pi_t / sg[pi_t] (same value s_i and same gradient
s_i * grad(logp_t) per token), so token-level advantages and every aggregation mode apply; with
seq-mean-token-mean it is the paper's (1/G) sum_i loss_i. `gspo_sequence_loss_reference` is the
sequence form written directly from the paper, for tests.

cispo_policy_loss (MiniMax-M1, arXiv 2506.13585, eq. 4-5): REINFORCE with a clipped, stop-gradient
importance weight, so no token loses its gradient:
    loss_t = -sg(clamp(ratio_t, 1 - clip_low, 1 + clip_high)) * A_t * logp_t      (token-mean in the paper)
Both clamp their log-ratios to +-LOG_RATIO_LIMIT before exp, as policy_loss does.

KL estimators of KL(pi || ref) per token from log-probs (Schulman, "Approximating KL divergence"):
    k1 = logp - ref_logp;  k2 = 0.5 * (logp - ref_logp)^2;  k3 = exp(ref - logp) - (ref - logp) - 1;
    low_var_kl = k3 with the log-ratio clamped to [-20, 20] and the result to [-10, 10] (verl's form).
"""

from __future__ import annotations

import torch

from megarl.algorithms.registry import AGG_MODES, KL_KINDS  # the names, declared where the config reads them

LOG_RATIO_LIMIT = 20.0  # |logp - old_logp| before exp in the PPO ratio (the peers' value)


def aggregate(loss_mat: torch.Tensor, mask: torch.Tensor, agg: str = "token-mean", constant: float | None = None) -> torch.Tensor:
    """Reduce a per-token [B, T] matrix to a scalar with one of AGG_MODES."""
    if agg not in AGG_MODES:
        raise ValueError(f"agg={agg!r} is not one of {AGG_MODES}.")
    mask = mask.to(loss_mat.dtype)
    masked = loss_mat * mask
    if agg == "token-mean":
        return masked.sum() / mask.sum().clamp(min=1)
    token_sum = masked.sum(dim=-1)
    if agg == "seq-mean-token-sum":
        return token_sum.mean()
    if agg == "seq-mean-token-mean":
        return (token_sum / mask.sum(dim=-1).clamp(min=1)).mean()
    if constant is None or not constant > 0:
        raise ValueError(f"agg='seq-sum-constant' needs constant > 0 (Dr. GRPO uses the max generation length), got {constant}.")
    return (token_sum / constant).mean()


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    agg: str = "token-mean",
    constant: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate loss (scalar) and detached stats: clipfrac, dual_clipfrac, ppo_kl, ratio_mean."""
    _check_shapes(logp, old_logp, advantages, mask)
    _check_clip(clip_low, clip_high)
    if dual_clip is not None and not dual_clip > 1.0:
        raise ValueError(f"dual_clip={dual_clip} must be > 1 (typically 3.0) or None.")
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT))
    unclipped = -advantages * ratio
    clipped_ratio = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss_mat = torch.maximum(unclipped, clipped_ratio)
    dual_hit = torch.zeros_like(loss_mat, dtype=torch.bool)
    if dual_clip is not None:
        lower = -advantages * dual_clip
        dual_hit = (advantages < 0) & (loss_mat > lower)
        loss_mat = torch.where(advantages < 0, torch.minimum(loss_mat, lower), loss_mat)
    loss = aggregate(loss_mat, mask, agg, constant)
    with torch.no_grad():
        fmask = mask.to(loss_mat.dtype)
        denom = fmask.sum().clamp(min=1)
        stats = {
            "clipfrac": ((clipped_ratio > unclipped).to(fmask.dtype) * fmask).sum() / denom,
            "dual_clipfrac": (dual_hit.to(fmask.dtype) * fmask).sum() / denom,
            "ppo_kl": (-log_ratio * fmask).sum() / denom,
            "ratio_mean": (ratio * fmask).sum() / denom,
        }
    return loss, stats


def _check_shapes(logp, old_logp, advantages, mask) -> None:
    if not (logp.shape == old_logp.shape == advantages.shape == mask.shape):
        raise ValueError(
            f"logp {tuple(logp.shape)}, old_logp {tuple(old_logp.shape)}, advantages {tuple(advantages.shape)} "
            f"and mask {tuple(mask.shape)} must share one [B, T] shape (broadcast sequence advantages first)."
        )


def _check_clip(clip_low: float, clip_high: float) -> None:
    if clip_low < 0 or clip_high < 0:
        raise ValueError(f"clip_low={clip_low} and clip_high={clip_high} must be >= 0.")


def _ratio_stats(log_ratio: torch.Tensor, ratio: torch.Tensor, clipped: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Detached token means over the mask: clipfrac, dual_clipfrac (0: no dual clip), ppo_kl, ratio_mean."""
    with torch.no_grad():
        fmask = mask.to(ratio.dtype)
        denom = fmask.sum().clamp(min=1)
        return {
            "clipfrac": (clipped.to(fmask.dtype) * fmask).sum() / denom,
            "dual_clipfrac": torch.zeros((), dtype=fmask.dtype, device=fmask.device),
            "ppo_kl": (-log_ratio * fmask).sum() / denom,
            "ratio_mean": (ratio * fmask).sum() / denom,
        }


def sequence_log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B]: mean over each row's masked tokens of logp - old_logp (0 for a row with no token)."""
    fmask = mask.to(logp.dtype)
    return ((logp - old_logp) * fmask).sum(-1) / fmask.sum(-1).clamp(min=1)


def gspo_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    agg: str = "seq-mean-token-mean",
    constant: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO's sequence-level clipped loss in its token form (see the module docstring); stats as policy_loss,
    clipfrac counting the tokens of clipped sequences and ratio_mean the sequence ratios."""
    _check_shapes(logp, old_logp, advantages, mask)
    _check_clip(clip_low, clip_high)
    seq_log_ratio = sequence_log_ratio(logp, old_logp, mask).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    # log s_i,t = sg[log s_i] + logp_t - sg[logp_t]: the value is s_i, the gradient s_i * grad(logp_t)
    ratio = torch.exp(logp - logp.detach() + seq_log_ratio.detach().unsqueeze(-1))
    unclipped = -advantages * ratio
    clipped_ratio = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = aggregate(torch.maximum(unclipped, clipped_ratio), mask, agg, constant)
    return loss, _ratio_stats(logp - old_logp, ratio, clipped_ratio > unclipped, mask)


def gspo_sequence_loss_reference(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
    clip_low: float = 3e-4, clip_high: float = 4e-4,
) -> torch.Tensor:
    """The paper's objective as written, negated: mean over sequences of
    max(-A_i s_i, -A_i clip(s_i)), with A_i the sequence's mean token advantage."""
    s = torch.exp(sequence_log_ratio(logp, old_logp, mask))
    fmask = mask.to(logp.dtype)
    a = (advantages * fmask).sum(-1) / fmask.sum(-1).clamp(min=1)
    return torch.maximum(-a * s, -a * torch.clamp(s, 1.0 - clip_low, 1.0 + clip_high)).mean()


def cispo_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 1.0,
    clip_high: float = 4.0,
    agg: str = "token-mean",
    constant: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CISPO: -sg(clip(ratio)) * A * logp per token, aggregated; clipfrac counts tokens whose weight was clipped."""
    _check_shapes(logp, old_logp, advantages, mask)
    _check_clip(clip_low, clip_high)
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)).detach()
    weight = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = aggregate(-weight * advantages * logp, mask, agg, constant)
    return loss, _ratio_stats(log_ratio, ratio, weight != ratio, mask)


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "low_var_kl") -> torch.Tensor:
    """Per-token KL estimate between the policy and the reference policy."""
    if kind not in KL_KINDS:
        raise ValueError(f"kind={kind!r} is not one of {KL_KINDS}.")
    if logp.shape != ref_logp.shape:
        raise ValueError(f"logp {tuple(logp.shape)} and ref_logp {tuple(ref_logp.shape)} must have one shape.")
    diff = logp - ref_logp
    if kind == "k1":
        return diff
    if kind == "k2":
        return 0.5 * diff.pow(2)
    log_ratio = -diff  # log(ref / pi)
    if kind == "k3":
        return torch.exp(log_ratio) - log_ratio - 1.0
    log_ratio = log_ratio.clamp(-20.0, 20.0)
    return (torch.exp(log_ratio) - log_ratio - 1.0).clamp(-10.0, 10.0)
