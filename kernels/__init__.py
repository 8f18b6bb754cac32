"""Triton kernels for megarl (log-probs, entropy, advantages, losses) with torch references.

Public API (each kernel takes `impl="auto" | "triton" | "torch"`, see `kernels.dispatch`):
- `logprobs_and_entropy(logits, labels, temperature, tp_group, impl)`: fused, vocab-parallel.
- `linear_logprobs_and_entropy(hidden, weight, labels, temperature, tp_group, impl)`: from the
  output layer's input and weight, never holding the full logits.
- `gae`, `group_advantages`, `masked_whiten`: advantage estimators.
- `policy_loss`, `kl_penalty`: PPO loss with clip-higher / dual clip / aggregation modes, KL estimators.
"""

from kernels.advantages import gae, group_advantages, masked_whiten
from kernels.linear_logprob import linear_logprobs_and_entropy
from kernels.logprob import logprobs_and_entropy
from kernels.losses import kl_penalty, policy_loss

__all__ = [
    "gae",
    "group_advantages",
    "kl_penalty",
    "linear_logprobs_and_entropy",
    "logprobs_and_entropy",
    "masked_whiten",
    "policy_loss",
]
