"""megarl's collectives: every torch.distributed call that moves data goes through here.

A process group only accepts tensors of the device types its backend maps: an NCCL group
(megarl's default on GPUs) maps only the GPU, so a CPU tensor fails with "No backend type
associated with device type cpu"; a plain gloo group maps both; `init_process_group("cuda:gloo")`
maps only the GPU (how the tests emulate NCCL on CPU machines). These helpers read the group's
mapping (`communication_device`), run the collective there and hand the result back on the
caller's device, so call sites may build small bookkeeping tensors on the CPU and large ones
(weights, logits) stay on the device they live on: no copy happens when the tensor already sits
on a device the group maps.

Tensor helpers work in place, as torch.distributed does, and also return their tensor. Object
helpers (pickled Python values) use torch's own device handling. An AST test
(tests/runtime/test_collectives_routing.py) keeps direct torch.distributed collective calls out of the
rest of megarl, kernels/ and tools/.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.distributed import ReduceOp

from megarl.runtime import device as dev

__all__ = [
    "ReduceOp",
    "all_gather",
    "all_gather_objects",
    "all_reduce",
    "barrier",
    "broadcast",
    "broadcast_objects",
    "communication_device",
    "recv",
    "send",
]

_OPS = {"sum": ReduceOp.SUM, "max": ReduceOp.MAX, "min": ReduceOp.MIN, "product": ReduceOp.PRODUCT}


def mapped_device_types(group=None) -> list[str]:
    """Device types `group`'s backend accepts, from its backend config ("cpu:gloo,cuda:nccl")."""
    config = str(dist.get_backend_config(group))
    return [part.split(":", 1)[0].strip() for part in config.split(",") if ":" in part]


def communication_device(group=None, preferred: torch.device | None = None) -> torch.device:
    """The device tensors must be on to take part in a collective over `group` (default: the
    default group): `preferred` (the caller's tensor's device) when the group maps its type,
    else the CPU when mapped, else the current GPU (NCCL, or a group created as "cuda:gloo")."""
    types = mapped_device_types(group)
    if preferred is not None and torch.device(preferred).type in types:
        return torch.device(preferred)
    if "cpu" in types:
        return torch.device("cpu")
    if types and all(dev.is_gpu_device(t) for t in types):
        return dev.current_gpu()
    raise RuntimeError(
        f"process group with backend config {dist.get_backend_config(group)!r} maps no device megarl can use; "
        "create it with backend 'nccl' or 'gloo'"
    )


def _op(op) -> ReduceOp:
    if isinstance(op, str):
        if op not in _OPS:
            raise ValueError(f"reduce op {op!r} is not one of {sorted(_OPS)}")
        return _OPS[op]
    return op


def _on(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` itself when it is already a contiguous tensor on `device`, else a copy there."""
    if tensor.device == device and tensor.is_contiguous():
        return tensor
    return tensor.to(device).contiguous()


def _write_back(tensor: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
    if result is not tensor:
        tensor.copy_(result)
    return tensor


def all_reduce(tensor: torch.Tensor, op: str | ReduceOp = "sum", group=None) -> torch.Tensor:
    """Reduce `tensor` over `group` in place (on the group's device) and return it."""
    work = _on(tensor, communication_device(group, tensor.device))
    dist.all_reduce(work, op=_op(op), group=group)
    return _write_back(tensor, work)


def broadcast(tensor: torch.Tensor, src: int, group=None) -> torch.Tensor:
    """Overwrite `tensor` with global rank `src`'s in place and return it."""
    work = _on(tensor, communication_device(group, tensor.device))
    dist.broadcast(work, src=src, group=group)
    return _write_back(tensor, work)


def all_gather(tensor: torch.Tensor, group=None) -> list[torch.Tensor]:
    """Every rank's `tensor` (equal shapes), in group-rank order, on `tensor`'s device. Device
    tensors on a group that maps their device (NCCL and GPU weights) never leave it."""
    work = _on(tensor, communication_device(group, tensor.device))
    out = [torch.empty_like(work) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, work, group=group)
    return [t if t.device == tensor.device else t.to(tensor.device) for t in out]


def send(tensor: torch.Tensor, dst: int, group=None) -> None:
    """Send `tensor` to global rank `dst`."""
    dist.send(_on(tensor, communication_device(group, tensor.device)), dst=dst, group=group)


def recv(tensor: torch.Tensor, src: int, group=None) -> torch.Tensor:
    """Receive into `tensor` from global rank `src` and return it."""
    work = _on(tensor, communication_device(group, tensor.device))
    dist.recv(work, src=src, group=group)
    return _write_back(tensor, work)


def barrier(group=None) -> None:
    """Wait for every rank of `group`."""
    dist.barrier(group=group)


def broadcast_objects(objects: list[Any], src: int = 0, group=None) -> list[Any]:
    """Replace the entries of `objects` with rank `src`'s (picklable values) and return it."""
    dist.broadcast_object_list(objects, src=src, group=group, device=communication_device(group))
    return objects


def all_gather_objects(obj: Any, group=None) -> list[Any]:
    """Every rank's `obj`, in group-rank order."""
    out: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out
