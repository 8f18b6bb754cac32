"""megarl's Triton kernels (log-probs, entropy, advantages, losses), each with its torch reference.

The modules live in the repository's top-level `kernels/` folder, which is installed as this
package (setup.py's `package_dir`); that folder has no `__init__.py`, so it is never importable as
a top-level `kernels` and never shadows Hugging Face's `kernels` package (a dependency of
transformers >= 5.25), from the repository root or anywhere else. In a source checkout (editable
install, or the checkout on PYTHONPATH) this file adds that folder to the package's path; a wheel
holds the modules here.

Modules (each kernel takes `impl="auto" | "triton" | "torch"`, see `megarl.kernels.dispatch`):
- `logprob.logprobs_and_entropy(logits, labels, temperature, tp_group, impl)`: fused, vocab-parallel.
- `linear_logprob.linear_logprobs_and_entropy(hidden, weight, labels, temperature, tp_group, impl)`:
  from the output layer's input and weight, never holding the full logits.
- `advantages.gae`, `group_advantages`, `masked_whiten`: advantage estimators.
- `losses.policy_loss`, `kl_penalty`: PPO loss with clip-higher / dual clip / aggregation modes, KL
  estimators.
"""

from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[2]
if (_CHECKOUT / "setup.py").is_file() and (_CHECKOUT / "kernels" / "dispatch.py").is_file():
    __path__.append(str(_CHECKOUT / "kernels"))

from megarl.kernels.advantages import gae, group_advantages, masked_whiten  # noqa: E402
from megarl.kernels.linear_logprob import linear_logprobs_and_entropy  # noqa: E402
from megarl.kernels.logprob import logprobs_and_entropy  # noqa: E402
from megarl.kernels.losses import kl_penalty, policy_loss  # noqa: E402

__all__ = [
    "gae",
    "group_advantages",
    "kl_penalty",
    "linear_logprobs_and_entropy",
    "logprobs_and_entropy",
    "masked_whiten",
    "policy_loss",
]
