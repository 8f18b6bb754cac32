"""Wraps a Megatron model for training: Megatron DDP, grad finalization and a Megatron optimizer.

Shared by the trainer (actor and critic) and the parity tests, so both exercise the same path.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class OptimSettings:
    optimizer: str = "adam"  # "adam" or "sgd"
    lr: float = 1e-6
    min_lr: float = 0.0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    sgd_momentum: float = 0.0
    clip_grad: float = 1.0
    distributed_optimizer: bool = False
    optimizer_offload: bool = False  # optimizer state and step on the CPU (Megatron's HybridDeviceOptimizer)
    grad_reduce_in_fp32: bool = True


def wrap_for_training(model, settings: OptimSettings):
    """Return (ddp_model, optimizer). The model's config gets the no-sync and finalize hooks that
    Megatron's pipeline schedule calls (grad all-reduce over DP, tied-embedding and layernorm
    reductions)."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from megarl.runtime.device import on_gpu

    config = model.config
    offload = settings.optimizer_offload and on_gpu()
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=settings.grad_reduce_in_fp32,
        overlap_grad_reduce=False,
        use_distributed_optimizer=settings.distributed_optimizer,
    )
    ddp = DistributedDataParallel(config=config, ddp_config=ddp_config, module=model)
    config.no_sync_func = ddp.no_sync
    config.finalize_model_grads_func = finalize_model_grads
    dtype = next(model.parameters()).dtype
    opt_config = OptimizerConfig(
        optimizer=settings.optimizer,
        lr=settings.lr,
        min_lr=settings.min_lr,
        weight_decay=settings.weight_decay,
        adam_beta1=settings.adam_beta1,
        adam_beta2=settings.adam_beta2,
        adam_eps=settings.adam_eps,
        sgd_momentum=settings.sgd_momentum,
        clip_grad=settings.clip_grad,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        params_dtype=dtype,
        use_distributed_optimizer=settings.distributed_optimizer,
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
