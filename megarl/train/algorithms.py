"""Transitional re-export of `megarl.algorithms.advantages` and `megarl.algorithms.losses` (their old home);
new code imports those modules directly."""

from kernels import kl_penalty  # noqa: F401  (the trainer's KL-in-reward call reads it from here)
from megarl.algorithms.advantages import (  # noqa: F401
    AdvantageInputs,
    TokenAdvantages,
    discounted_returns,
    estimate_advantages,
    gae_advantages,
    sequence_advantages,
    token_rewards,
    whiten_across_ranks,
)
from megarl.algorithms.losses import actor_loss, value_loss  # noqa: F401
