"""Chooses how megarl's kernels run: compiled Triton on GPUs, the chunked torch reference on CPU.

Every public kernel takes `impl="auto" | "triton" | "torch"`:
- "auto": Triton when the tensors live on a GPU (and Triton imports), else the torch
  reference, which is chunked so its memory win holds on CPU too.
- "triton": force the Triton kernels. On CPU tensors this needs `TRITON_INTERPRET=1` set in
  the environment before `triton` is first imported (the tests do this in conftest.py).
- "torch": force the torch reference (also on GPUs, for comparisons and debugging).

Autotuning: multi-config `@triton.autotune` needs a GPU driver to benchmark the configs, so
`autotune_configs` returns the full H100-class list only when megarl runs on a GPU, and the
single interpreter-safe config otherwise (a single config is never benchmarked).
"""

from __future__ import annotations

import os

import torch

from megarl.runtime.device import is_gpu_device, on_gpu

IMPLS = ("auto", "triton", "torch")

try:  # Triton ships wheels for Linux only; everything still works through the torch path.
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401

    HAS_TRITON = True
    _TRITON_IMPORT_ERROR = ""
except Exception as exc:  # pragma: no cover - depends on the platform
    HAS_TRITON = False
    _TRITON_IMPORT_ERROR = repr(exc)


def interpreter_enabled() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0", "false", "False")


def resolve_impl(impl: str, *tensors: torch.Tensor) -> str:
    """Turn `impl` into "triton" or "torch" for tensors on their device, or raise a clear error."""
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r} is not one of {IMPLS}; pass impl='auto' to let megarl choose.")
    on_device = any(is_gpu_device(t.device) for t in tensors)
    if impl == "torch":
        return "torch"
    if impl == "auto":
        return "triton" if (on_device and HAS_TRITON) else "torch"
    # impl == "triton"
    if not HAS_TRITON:
        raise RuntimeError(f"impl='triton' was asked for but triton does not import ({_TRITON_IMPORT_ERROR}); use impl='torch'.")
    if not on_device and not interpreter_enabled():
        raise RuntimeError(
            "impl='triton' on CPU tensors needs Triton's interpreter: set TRITON_INTERPRET=1 in the "
            "environment before triton is imported, or use impl='torch' (the chunked reference)."
        )
    return "triton"


def autotune_configs(gpu_configs: list, interpreter_config):
    """The full config list on GPUs; one config (never benchmarked, so no driver needed) otherwise."""
    if on_gpu() and not interpreter_enabled():
        return gpu_configs
    return [interpreter_config]
