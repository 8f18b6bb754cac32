"""A standalone process group for weight broadcast between the trainer and rollout servers.

The trainer (rank 0) and every server rank join a group of their own through a TCPStore
rendezvous, apart from the trainer's default (torchrun) process group. The backend comes from
the request: gloo on CPU, NCCL on GPUs. The rendezvous keys are laid out exactly as SGLang's
`init_custom_process_group` lays them out (`sglang/srt/utils/common.py`): the TCPStore is wrapped
in `PrefixStore(group_name)` and the group is made by torch's own process-group helper, which
adds `"{group_name}/"` and `"{device}/"` prefixes. So megarl's sender meets SGLang's receivers
(and megarl's built-in server, which uses this class too) on the same keys; NCCL exchanges its
unique id through them as well.

The store is made here rather than through torch's `tcp://` rendezvous: under torchrun that
rendezvous would connect to the launcher's agent store instead of hosting this group's store.
"""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist

from megarl.runtime.device import get_device, on_gpu

DEFAULT_GROUP_NAME = "weight_update_group"  # SGLang's default group_name


def sglang_prefixed_store(store: dist.Store, group_name: str) -> dist.Store:
    """The store as SGLang's `init_custom_process_group` hands it to torch: prefixed by the group name."""
    return dist.PrefixStore(group_name, store)


class UpdateGroup:
    """One rank of a weight-update process group; broadcasts from rank 0."""

    def __init__(self, *, backend: str, master_address: str, master_port: int, rank: int, world_size: int,
                 group_name: str = DEFAULT_GROUP_NAME, timeout_s: float = 120.0):
        if backend not in ("gloo", "nccl"):
            raise ValueError(f"weight-update group backend {backend!r} is not supported; use 'gloo' (CPU) or 'nccl' (GPU)")
        if backend == "nccl" and not on_gpu():
            raise ValueError("backend 'nccl' needs CUDA GPUs; this process runs on CPU: use backend 'gloo'")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside the group of world_size {world_size}")
        if not group_name:
            raise ValueError("a weight-update group needs a non-empty group_name (SGLang prefixes its store keys with it)")
        from torch.distributed.distributed_c10d import Backend, _new_process_group_helper, _world

        if group_name in _world.pg_names.values():
            raise ValueError(f"a process group named {group_name!r} already exists in this process; destroy it first "
                             "or use another group_name")
        timeout = datetime.timedelta(seconds=timeout_s)
        self.backend, self.rank, self.world_size, self.group_name = backend, rank, world_size, group_name
        self.store = dist.TCPStore(master_address, int(master_port), world_size, rank == 0, timeout=timeout,
                                   multi_tenant=True)
        self.group, _ = _new_process_group_helper(world_size, rank, [], Backend(backend),
                                                  sglang_prefixed_store(self.store, group_name),
                                                  group_name=group_name, timeout=timeout)
        _world.pg_group_ranks[self.group] = {i: i for i in range(world_size)}
        self.device = torch.device("cpu") if backend == "gloo" else get_device()

    def broadcast(self, tensor: torch.Tensor) -> None:
        """Broadcast `tensor` from rank 0 into every rank's `tensor` (blocks until done)."""
        options = dist.BroadcastOptions()
        options.rootRank = 0
        self.group.broadcast([tensor], options).wait()

    def close(self) -> None:
        if self.group is not None:
            dist.destroy_process_group(self.group)
        self.group = None
        self.store = None
