"""The one place that decides megarl's device and collective backend.

On a machine with a CUDA GPU megarl runs on CUDA with NCCL; everywhere else on CPU with gloo.
Nothing outside this module names the CUDA device type: call `get_device()`, `backend()`,
`on_gpu()` or `is_gpu_device()` instead. `MEGARL_DEVICE=cpu` forces the CPU path on a GPU
machine (useful for debugging and for comparing the two paths).
"""

from __future__ import annotations

import functools
import os

import torch

GPU_TYPE = "cuda"


@functools.lru_cache(maxsize=None)
def on_gpu() -> bool:
    """True when megarl runs on CUDA GPUs."""
    forced = os.environ.get("MEGARL_DEVICE", "").strip().lower()
    if forced == "cpu":
        return False
    available = torch.cuda.is_available()
    if forced == GPU_TYPE and not available:
        raise RuntimeError("MEGARL_DEVICE=cuda was set but no CUDA device is available; unset it to run on CPU.")
    return available


def get_device(local_rank: int | None = None) -> torch.device:
    """The device this process computes on (its local GPU, or the CPU)."""
    if not on_gpu():
        return torch.device("cpu")
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", torch.cuda.current_device() if torch.cuda.is_initialized() else 0))
    return torch.device(GPU_TYPE, local_rank)


def current_gpu() -> torch.device:
    """The GPU this process is bound to (`set_current_device`); on a machine without one, the GPU
    device type alone (what a GPU-only process group needs; allocating there fails)."""
    if torch.cuda.is_available():
        return torch.device(GPU_TYPE, torch.cuda.current_device())
    return torch.device(GPU_TYPE)


def backend() -> str:
    """The torch.distributed backend for trainer collectives: NCCL on GPUs, gloo on CPU."""
    return "nccl" if on_gpu() else "gloo"


def is_gpu_device(device: torch.device | str | int | None) -> bool:
    """Whether `device` names a CUDA device (an int counts as a CUDA ordinal, as in torch)."""
    if device is None:
        return False
    if isinstance(device, int):
        return True
    return torch.device(device).type == GPU_TYPE


def synchronize() -> None:
    """Wait for queued device work (no-op on CPU); use before timing."""
    if on_gpu():
        torch.cuda.synchronize()


def empty_cache() -> None:
    """Hand the caching allocator's free blocks back to the driver, so another process on this GPU (a
    colocated SGLang server) can use them (no-op on CPU)."""
    if on_gpu():
        torch.cuda.empty_cache()


def memory_allocated() -> int | None:
    """Device memory in bytes that tensors hold now, or None on CPU."""
    return torch.cuda.memory_allocated() if on_gpu() else None


def max_memory_allocated() -> int | None:
    """Peak device memory in bytes since the last reset, or None on CPU (measure RSS there)."""
    return torch.cuda.max_memory_allocated() if on_gpu() else None


def reset_peak_memory() -> None:
    if on_gpu():
        torch.cuda.reset_peak_memory_stats()


def rng_state() -> torch.Tensor | None:
    """The current GPU's random-number generator state (None on CPU, where torch's own covers it)."""
    return torch.cuda.get_rng_state() if on_gpu() else None


def set_rng_state(state: torch.Tensor | None) -> None:
    """Restore what rng_state() returned (no-op on CPU or for None)."""
    if on_gpu() and state is not None:
        torch.cuda.set_rng_state(state)


def set_current_device(local_rank: int) -> None:
    """Bind this process to its local GPU (no-op on CPU)."""
    if on_gpu():
        torch.cuda.set_device(local_rank)


def accelerator_facts() -> dict:
    """What `megarl doctor` reports about the GPU stack: torch's CUDA build, the visible GPUs, NCCL."""
    facts = {"torch": torch.__version__, "cuda_build": torch.version.cuda, "gpus": 0, "gpu_name": None, "nccl": None}
    if torch.cuda.is_available():
        facts["gpus"] = torch.cuda.device_count()
        facts["gpu_name"] = torch.cuda.get_device_name(0)
        try:
            facts["nccl"] = ".".join(str(part) for part in torch.cuda.nccl.version())
        except (AttributeError, RuntimeError):
            facts["nccl"] = None
    return facts
