"""Flattened weight buckets: many named tensors packed into one uint8 buffer plus metadata.

This is SGLang's `flattened_bucket` load format (`sglang/srt/weight_sync/tensor_bucket.py`):
each tensor is flattened, viewed as bytes and placed at `[start_idx, end_idx)` of one uint8
tensor; the metadata records `(name, shape, dtype, start_idx, end_idx, numel)` where `numel`
counts bytes. The same layout is used by the `tensor` transport (the buffer travels as a
shared-memory / CUDA-IPC handle) and by the `distributed` transport (the buffer is broadcast
once, and the receiver rebuilds the layout from `names`, `dtypes`, `shapes` alone).

Wire format of the `tensor` transport (SGLang's `MultiprocessingSerializer`): a base64
`ForkingPickler` pickle of `{"flattened_tensor": uint8 tensor, "metadata": [metadata...]}` whose
metadata objects are global `sglang.srt.weight_sync.tensor_bucket.FlattenedTensorMetadata`, the
one metadata class SGLang's allow-list unpickler admits. `serialize_payload` writes it (with
SGLang's own serializer and class when asked and installed, else megarl's identical encoder) and
`load_payload` reads it through an allow-list unpickler: tensor and storage rebuild functions,
the shared-memory / CUDA-IPC handle rebuilders of `torch.multiprocessing.reductions`, torch's
dtypes and `Size`, and the metadata class; any other global is refused before anything runs.
"""

from __future__ import annotations

import base64
import binascii
import copyreg
import io
import pickle
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

SGLANG_METADATA_GLOBAL = ("sglang.srt.weight_sync.tensor_bucket", "FlattenedTensorMetadata")


@dataclass
class FlattenedTensorMetadata:
    """Where one named tensor lives inside a flattened bucket (byte offsets).

    Field for field SGLang's class; in a payload it is written as SGLang's global
    (`SGLANG_METADATA_GLOBAL`), so SGLang reads it as its own."""

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


# ---- the tensor transport's wire format -------------------------------------------------------------

class UnsafePayloadError(ValueError):
    """A weight payload names a global outside the allow-list; nothing in it was executed."""


def _allowed_globals() -> set[tuple[str, str]]:
    allowed = {
        ("torch", "Size"), ("torch", "Tensor"), ("torch", "device"), ("torch", "UntypedStorage"),
        ("torch.storage", "UntypedStorage"), ("torch.storage", "TypedStorage"),
        ("torch.nn.parameter", "Parameter"), ("collections", "OrderedDict"),
        ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
        # what torch.multiprocessing's reducers emit for shared-memory and CUDA-IPC handles
        ("torch.multiprocessing.reductions", "rebuild_tensor"),
        ("torch.multiprocessing.reductions", "rebuild_cuda_tensor"),
        ("torch.multiprocessing.reductions", "rebuild_storage_filename"),
        ("torch.multiprocessing.reductions", "rebuild_storage_empty"),
        ("torch.multiprocessing.reductions", "rebuild_typed_storage"),
        ("torch.multiprocessing.reductions", "rebuild_typed_storage_child"),
        # SGLang's sender-side patch of the CUDA reducer (device by UUID)
        ("sglang.srt.utils.patch_torch", "_rebuild_cuda_tensor_modified"),
    }
    storages = [n for n in dir(torch) if n.endswith("Storage") and isinstance(getattr(torch, n), type)]
    allowed.update(("torch", n) for n in storages)
    return allowed


class WeightPayloadUnpickler(pickle.Unpickler):
    """SGLang-style allow-list unpickler for `tensor`-transport payloads (never plain `pickle.loads`)."""

    ALLOWED = frozenset(_allowed_globals())

    def find_class(self, module: str, name: str):
        if (module, name) == SGLANG_METADATA_GLOBAL:
            return FlattenedTensorMetadata
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise UnsafePayloadError(f"Blocked unsafe global ({module}.{name}) in a weight payload: only tensor handles "
                                 "and FlattenedTensorMetadata may be sent")


def load_payload(data: str | bytes):
    """Read one base64 `tensor`-transport payload through the allow-list unpickler."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError, TypeError) as err:
        raise ValueError(f"a weight payload must be a base64 string: {err}") from None
    try:
        return WeightPayloadUnpickler(io.BytesIO(raw)).load()
    except UnsafePayloadError:
        raise
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError) as err:
        raise ValueError(f"the weight payload is not a valid pickle of tensor handles: {err}") from None


class _WirePickler(pickle._Pickler):
    """`ForkingPickler` semantics (torch's tensor reducers: handles, not data) that writes megarl's
    `FlattenedTensorMetadata` as SGLang's global, so the bytes read as SGLang's class on the other side."""

    def __init__(self, file):
        from multiprocessing.reduction import ForkingPickler

        import torch.multiprocessing.reductions  # noqa: F401 - registers the tensor reducers with ForkingPickler

        super().__init__(file, protocol=max(4, pickle.DEFAULT_PROTOCOL))
        self.dispatch_table = copyreg.dispatch_table.copy()
        self.dispatch_table.update(ForkingPickler._extra_reducers)

    def save_global(self, obj, name=None):
        if obj is FlattenedTensorMetadata:
            module, qualname = SGLANG_METADATA_GLOBAL
            self.save(module)
            self.save(qualname)
            self.write(pickle.STACK_GLOBAL)
            self.memoize(obj)
            return
        super().save_global(obj, name)


def sglang_wire():
    """(SGLang's MultiprocessingSerializer, its FlattenedTensorMetadata), or None when sglang is not importable."""
    try:
        from sglang.srt.utils.common import MultiprocessingSerializer
        from sglang.srt.weight_sync.tensor_bucket import FlattenedTensorMetadata as SGLangMetadata
    except ImportError:
        return None
    return MultiprocessingSerializer, SGLangMetadata


def serialize_payload(flattened_tensor: torch.Tensor, metadata: Sequence[FlattenedTensorMetadata], *,
                      use_sglang: bool = False) -> str:
    """One `serialized_named_tensors` entry: a base64 ForkingPickler pickle of the bucket's handles.

    `use_sglang`: write it with SGLang's own serializer and metadata class (when sglang is importable;
    otherwise megarl's encoder, which writes the same globals). Callers share CPU tensors by file name
    (see `weight_sync`)."""
    wire = sglang_wire() if use_sglang else None
    if wire is not None:
        serializer, sglang_metadata = wire
        metadata = [sglang_metadata(m.name, m.shape, m.dtype, m.start_idx, m.end_idx, m.numel) for m in metadata]
        return serializer.serialize({"flattened_tensor": flattened_tensor, "metadata": list(metadata)}, output_str=True)
    out = io.BytesIO()
    _WirePickler(out).dump({"flattened_tensor": flattened_tensor, "metadata": list(metadata)})
    return base64.b64encode(out.getvalue()).decode("ascii")
