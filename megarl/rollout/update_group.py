"""A standalone process group for weight broadcast between the trainer and rollout servers.

The trainer (rank 0) and every server rank join a group of their own through a TCPStore
rendezvous, apart from the trainer's default (torchrun) process group. The backend comes from
the request: gloo on CPU, NCCL on GPUs. This is the CPU/GPU-neutral equivalent of SGLang's
`init_custom_process_group`, used by both `weight_sync` (sender) and `server` (receiver).
"""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist

from megarl.runtime.device import get_device, on_gpu


class UpdateGroup:
    """One rank of a weight-update process group; broadcasts from rank 0."""

    def __init__(self, *, backend: str, master_address: str, master_port: int, rank: int, world_size: int,
                 timeout_s: float = 120.0):
        if backend not in ("gloo", "nccl"):
            raise ValueError(f"weight-update group backend {backend!r} is not supported; use 'gloo' (CPU) or 'nccl' (GPU)")
        if backend == "nccl" and not on_gpu():
            raise ValueError("backend 'nccl' needs CUDA GPUs; this process runs on CPU: use backend 'gloo'")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside the group of world_size {world_size}")
        timeout = datetime.timedelta(seconds=timeout_s)
        self.backend, self.rank, self.world_size = backend, rank, world_size
        self.store = dist.TCPStore(master_address, int(master_port), world_size, rank == 0, timeout=timeout)
        if backend == "gloo":
            self.group = dist.ProcessGroupGloo(self.store, rank, world_size, timeout)
            self.device = torch.device("cpu")
        else:  # pragma: no cover - needs GPUs
            self.group = dist.ProcessGroupNCCL(self.store, rank, world_size)
            self.device = get_device()

    def broadcast(self, tensor: torch.Tensor) -> None:
        """Broadcast `tensor` from rank 0 into every rank's `tensor` (blocks until done)."""
        options = dist.BroadcastOptions()
        options.rootRank = 0
        self.group.broadcast([tensor], options).wait()

    def close(self) -> None:
        self.group = None
        self.store = None
