"""Process-group and Megatron parallel-state setup from torchrun or Slurm environment variables.

`init_runtime(tp, pp)` is the one entry point: it picks NCCL+CUDA or gloo+CPU (via
megarl.runtime.device), applies the Megatron CPU adaptations when on CPU, initializes
torch.distributed, Megatron's TP/PP/DP groups, and seeds every RNG deterministically.
A plain `python` process (no launcher variables) becomes a world of one.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import random

import numpy as np
import torch

from megarl.runtime import device as dev
from megarl.runtime.seeds import fold_seed
from megarl.runtime.ports import free_port  # noqa: F401  (re-exported: megarl.runtime.distributed.free_port)


@dataclasses.dataclass(frozen=True)
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    tp: int
    pp: int
    dp: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    device: torch.device
    backend: str
    ep: int = 1  # expert parallelism: the experts of each MoE layer split over ep ranks of the DP group
    ep_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launcher_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun, else Slurm (srun), else a single process.

    Under Slurm the sbatch scripts export MASTER_ADDR (first trainer node) and MASTER_PORT.
    """
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and "MASTER_ADDR" in env:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy, torch and Megatron's model-parallel RNG tracker (TP ranks differ)."""
    from megatron.core import tensor_parallel

    random.seed(seed)
    np.random.seed(fold_seed(seed, 32))
    torch.manual_seed(fold_seed(seed, 64))
    tensor_parallel.model_parallel_cuda_manual_seed(fold_seed(seed, 62))  # it adds small per-rank offsets


def init_runtime(tp: int = 1, pp: int = 1, seed: int = 1234, timeout_minutes: int = 30, ep: int = 1) -> Runtime:
    """Initialize torch.distributed and Megatron parallel state (idempotent for the same layout).

    `ep` > 1 splits each MoE layer's experts over `ep` ranks of the data-parallel group (Megatron's
    expert_model_parallel_size; the experts keep TP as their expert-tensor parallelism), so the
    data-parallel size world / (tp * pp) must be a multiple of ep."""
    from megatron.core import parallel_state as ps

    rank, world_size, local_rank = launcher_env()
    if world_size % (tp * pp):
        raise ValueError(
            f"world size {world_size} is not a multiple of tp*pp = {tp}*{pp} = {tp * pp}; "
            f"launch a multiple of {tp * pp} processes or change actor.tp / actor.pp"
        )
    if ep < 1 or (world_size // (tp * pp)) % ep:
        raise ValueError(
            f"actor.ep={ep} must divide the data-parallel size world/(tp*pp) = {world_size}/({tp}*{pp}) = "
            f"{world_size // (tp * pp)}; launch tp*pp*ep = {tp * pp * max(ep, 1)} processes (or a multiple) or change actor.ep"
        )
    if not dev.on_gpu():
        from megarl.runtime import megatron_on_cpu

        megatron_on_cpu.apply()
    dev.set_current_device(local_rank)
    if not torch.distributed.is_initialized():
        # A single process rendezvous on a fresh local port (never on inherited MASTER_* values,
        # which may belong to a parent process's own group).
        init_method = f"tcp://127.0.0.1:{free_port()}" if world_size == 1 and "RANK" not in os.environ else "env://"
        torch.distributed.init_process_group(
            backend=dev.backend(),
            init_method=init_method,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
    if ps.model_parallel_is_initialized():
        if (ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size(),
                ps.get_expert_model_parallel_world_size()) != (tp, pp, ep):
            ps.destroy_model_parallel()
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                     expert_model_parallel_size=ep)
    seed_everything(seed)
    return current_runtime()


def current_runtime() -> Runtime:
    from megatron.core import parallel_state as ps

    return Runtime(
        rank=torch.distributed.get_rank(),
        world_size=torch.distributed.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0))),
        tp=ps.get_tensor_model_parallel_world_size(),
        pp=ps.get_pipeline_model_parallel_world_size(),
        dp=ps.get_data_parallel_world_size(),
        tp_rank=ps.get_tensor_model_parallel_rank(),
        pp_rank=ps.get_pipeline_model_parallel_rank(),
        dp_rank=ps.get_data_parallel_rank(),
        device=dev.get_device(),
        backend=dev.backend(),
        ep=ps.get_expert_model_parallel_world_size(),
        ep_rank=ps.get_expert_model_parallel_rank(),
    )


def shutdown_runtime() -> None:
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
