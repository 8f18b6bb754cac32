"""RMSNorm for Megatron's local layer spec that works under sequence parallelism.

Megatron's torch fallback (`WrappedTorchNorm`, used when neither Transformer Engine nor apex is
installed) refuses `sequence_parallel`. Under sequence parallelism each TP rank normalizes its own
slice of the sequence with a replicated weight, so the weight's gradient is a partial sum that must
be summed over the TP group; Megatron's `finalize_model_grads` does that for every parameter marked
`sequence_parallel=True`. This norm is torch's RMSNorm with that mark, built from Megatron's
(config, hidden_size, eps) signature, its weight in the model's parameter dtype as Transformer
Engine's RMSNorm has it (a bf16 model has bf16 norms, and the optimizer gives them fp32 main copies
like every other weight; torch's norm still reduces in fp32).
"""

from __future__ import annotations

import torch


class RMSNorm(torch.nn.RMSNorm):
    def __init__(self, config, hidden_size: int, eps: float = 1e-5, **_ignored):
        if config.normalization != "RMSNorm":
            raise ValueError(f"megarl's norm implements RMSNorm; the model config asks for {config.normalization}")
        super().__init__(hidden_size, eps=eps, dtype=config.params_dtype)
        self.weight.sequence_parallel = bool(config.sequence_parallel)
