"""Flattened weight buckets: many named tensors packed into one uint8 buffer plus metadata.

This is SGLang's `flattened_bucket` load format (`sglang/srt/weight_sync/tensor_bucket.py`):
each tensor is flattened, viewed as bytes and placed at `[start_idx, end_idx)` of one uint8
tensor; the metadata records `(name, shape, dtype, start_idx, end_idx, numel)` where `numel`
counts bytes. The same layout is used by the `tensor` transport (the buffer travels as a
shared-memory / CUDA-IPC handle) and by the `distributed` transport (the buffer is broadcast
once, and the receiver rebuilds the layout from `names`, `dtypes`, `shapes` alone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch


@dataclass
class FlattenedTensorMetadata:
    """Where one named tensor lives inside a flattened bucket (byte offsets)."""

    name: str
    shape: torch.Size
    dtype: torch.dtype
    start_idx: int
    end_idx: int
    numel: int  # bytes, as in SGLang's FlattenedTensorMetadata


def dtype_from_name(name: str | torch.dtype) -> torch.dtype:
    """`"bfloat16"` / `"torch.bfloat16"` / `torch.bfloat16` -> `torch.bfloat16`, with a clear error."""
    if isinstance(name, torch.dtype):
        return name
    short = str(name).removeprefix("torch.")
    dtype = getattr(torch, short, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}: use a torch dtype name such as 'float32' or 'bfloat16'")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` -> `"bfloat16"` (the form SGLang's distributed endpoint takes)."""
    return str(dtype).removeprefix("torch.")


def tensor_nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def layout_metadata(names: Sequence[str], dtypes: Sequence[str | torch.dtype],
                    shapes: Sequence[Sequence[int]]) -> list[FlattenedTensorMetadata]:
    """The metadata of a bucket whose tensors are packed back to back in the given order."""
    if not (len(names) == len(dtypes) == len(shapes)):
        raise ValueError(f"names ({len(names)}), dtypes ({len(dtypes)}) and shapes ({len(shapes)}) must have equal lengths")
    metadata, offset = [], 0
    for name, dtype, shape in zip(names, dtypes, shapes):
        dtype = dtype_from_name(dtype)
        size = torch.Size(shape)
        nbytes = size.numel() * torch.empty((), dtype=dtype).element_size()
        metadata.append(FlattenedTensorMetadata(name, size, dtype, offset, offset + nbytes, nbytes))
        offset += nbytes
    return metadata


def pack_into(buffer: torch.Tensor, named_tensors: Sequence[tuple[str, torch.Tensor]]) -> list[FlattenedTensorMetadata]:
    """Copy `named_tensors` back to back into the uint8 `buffer`; return their metadata."""
    if buffer.dtype != torch.uint8 or buffer.dim() != 1:
        raise ValueError(f"a bucket buffer must be a 1-D uint8 tensor, got {buffer.dtype} with shape {tuple(buffer.shape)}")
    metadata = layout_metadata([n for n, _ in named_tensors], [t.dtype for _, t in named_tensors],
                               [t.shape for _, t in named_tensors])
    if metadata and metadata[-1].end_idx > buffer.numel():
        raise ValueError(f"bucket buffer holds {buffer.numel()} bytes but the tensors need {metadata[-1].end_idx}")
    for meta, (_, tensor) in zip(metadata, named_tensors):
        target = buffer[meta.start_idx:meta.end_idx].view(tensor.dtype).view(tensor.shape)
        target.copy_(tensor.detach(), non_blocking=True)
    return metadata


def unpack(buffer: torch.Tensor, metadata: Iterable[FlattenedTensorMetadata]) -> list[tuple[str, torch.Tensor]]:
    """Views of each named tensor inside `buffer` (no copy); callers copy before the buffer goes away."""
    out = []
    for meta in metadata:
        if meta.end_idx > buffer.numel() or meta.end_idx - meta.start_idx != meta.numel:
            raise ValueError(f"bucket metadata for {meta.name!r} ({meta.start_idx}:{meta.end_idx}) does not fit a buffer of {buffer.numel()} bytes")
        dtype = dtype_from_name(meta.dtype)
        out.append((meta.name, buffer[meta.start_idx:meta.end_idx].view(dtype).view(torch.Size(meta.shape))))
    return out
