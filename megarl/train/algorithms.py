"""Transitional re-export of `megarl.algorithms.advantages` and `megarl.algorithms.losses` (their old home);
new code imports those modules directly."""

from megarl.kernels import kl_penalty  # the trainer's KL-in-reward call reads it from here
from megarl.algorithms.advantages import (
    AdvantageInputs,
    TokenAdvantages,
    discounted_returns,
    estimate_advantages,
    gae_advantages,
    sequence_advantages,
    token_rewards,
    whiten_across_ranks,
)
from megarl.algorithms.losses import actor_loss, value_loss

__all__ = [
    "AdvantageInputs", "TokenAdvantages", "actor_loss", "discounted_returns", "estimate_advantages", "gae_advantages",
    "kl_penalty", "sequence_advantages", "token_rewards", "value_loss", "whiten_across_ranks",
]
