"""Wraps a Megatron model for training: Megatron DDP, grad finalization and a Megatron optimizer.

Shared by the trainer (actor and critic) and the parity tests, so both exercise the same path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the recipe's section; megarl.config sits above the models
    from megarl.config import ParallelConfig


def wrap_for_training(model, par: ParallelConfig):
    """Return (ddp_model, optimizer) for the recipe's actor or critic section `par` (optimizer kind,
    learning rate, Adam betas and eps, weight decay, gradient clipping, distributed optimizer,
    offload). The model's config gets the no-sync and finalize hooks that Megatron's pipeline
    schedule calls (grad all-reduce over DP, tied-embedding and layernorm reductions).

    Fixed here, not settings: gradients reduce in fp32 (Megatron's main grads; megarl.launch.memory
    counts them), and SGD has no momentum (megatron-core's OptimizerConfig defaults it to 0.9)."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from megarl.runtime.device import on_gpu

    config = model.config
    offload = par.optimizer_offload and on_gpu()
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=False,
        use_distributed_optimizer=par.distributed_optimizer,
    )
    ddp = DistributedDataParallel(config=config, ddp_config=ddp_config, module=model)
    config.no_sync_func = ddp.no_sync
    config.finalize_model_grads_func = finalize_model_grads
    dtype = next(model.parameters()).dtype
    opt_config = OptimizerConfig(
        optimizer=par.optimizer,
        lr=par.lr,
        min_lr=par.min_lr,
        weight_decay=par.weight_decay,
        adam_beta1=par.adam_beta1,
        adam_beta2=par.adam_beta2,
        adam_eps=par.adam_eps,
        sgd_momentum=0.0,
        clip_grad=par.clip_grad,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        params_dtype=dtype,
        use_distributed_optimizer=par.distributed_optimizer,
        # On a CPU runtime the optimizer state is in host memory already (Megatron's hybrid
        # optimizer moves CUDA parameters only), so the switch changes nothing there.
        optimizer_cpu_offload=offload,
        optimizer_offload_fraction=1.0 if offload else 0.0,
    )
    optimizer = get_megatron_optimizer(opt_config, [ddp])
    return ddp, optimizer


def zero_grads(ddp, optimizer) -> None:
    ddp.zero_grad_buffer()
    optimizer.zero_grad()
