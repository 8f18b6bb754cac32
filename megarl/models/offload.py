"""Offload a model's device memory (weights, gradient buffers, optimizer state) to host memory and back.

Colocated training shares each GPU between the trainer and an SGLang server: while the server
generates, the trainer's weights, gradients and optimizer state would otherwise stay resident
next to the server's weights and KV cache. `StorageOffload` moves whole tensor *storages*: each is
copied to a host buffer (pinned on GPUs, for fast copies back) and then shrunk to zero bytes, so
the device allocator can hand the memory to the server (`empty_cache` returns the freed blocks from this
process's caching allocator to the driver); `reload` grows each storage back to its
size and copies the bytes in. Because the storage objects themselves are kept, every tensor and
view that points into them (parameters that are views of Megatron's contiguous buffers,
`main_grad`, the optimizer's references) stays valid without re-wiring anything.

The same code runs on CPU, where "device" memory is host memory: there the test measures the
bytes of storage released and checks that training continues bit for bit.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import torch

from megarl.runtime import device
from megarl.runtime.device import on_gpu, synchronize


@dataclasses.dataclass
class _Held:
    storage: torch.UntypedStorage
    host: torch.Tensor  # uint8, nbytes long
    nbytes: int


class StorageOffload:
    """Offload the storages behind `tensors` (deduplicated) and restore them in place."""

    def __init__(self):
        self._held: list[_Held] = []

    @property
    def offloaded(self) -> bool:
        return bool(self._held)

    def offload(self, tensors: Iterable[torch.Tensor]) -> int:
        """Copy each distinct storage to host memory and free it on the device; returns bytes freed."""
        if self._held:
            raise RuntimeError("offload() called twice without reload(); reload first")
        seen: set[int] = set()
        freed = 0
        for tensor in tensors:
            storage = tensor.untyped_storage()
            nbytes = storage.nbytes()
            if nbytes == 0 or storage.data_ptr() in seen or not storage.resizable():
                continue
            seen.add(storage.data_ptr())
            device_bytes = torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)
            host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=on_gpu())
            host.copy_(device_bytes, non_blocking=True)
            self._held.append(_Held(storage, host, nbytes))
            freed += nbytes
        synchronize()  # the copies must land before the storages shrink
        for held in self._held:
            held.storage.resize_(0)
        device.empty_cache()  # else the freed blocks stay in this process's caching allocator, out of SGLang's reach
        return freed

    def reload(self) -> int:
        """Grow every offloaded storage back and copy its bytes in; returns bytes restored."""
        restored = 0
        for held in self._held:
            held.storage.resize_(held.nbytes)
            torch.empty(0, dtype=torch.uint8, device=held.storage.device).set_(held.storage).copy_(held.host, non_blocking=True)
            restored += held.nbytes
        synchronize()
        self._held = []
        return restored


def training_tensors(model, ddp=None, optimizer=None) -> list[torch.Tensor]:
    """Every tensor a trainable Megatron model keeps on its device: parameters (and the DDP
    buffers they may view), gradient buffers, the optimizer's main parameters and state."""
    tensors = [p.data for p in model.parameters()]
    if ddp is not None:
        for buffer in list(getattr(ddp, "buffers", [])) + list(getattr(ddp, "expert_parallel_buffers", [])):
            for name in ("param_data", "grad_data"):
                data = getattr(buffer, name, None)
                if isinstance(data, torch.Tensor):
                    tensors.append(data)
    if optimizer is not None:
        for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
            inner = getattr(opt, "optimizer", None)
            if inner is None:
                continue
            for group in inner.param_groups:
                tensors += [p.data for p in group["params"]]  # fp32 main params (mixed precision) or the params
            for state in inner.state.values():
                tensors += [v for v in state.values() if isinstance(v, torch.Tensor) and v.dim() > 0]
    return tensors
