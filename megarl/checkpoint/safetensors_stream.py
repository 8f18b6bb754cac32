"""Streaming safetensors I/O: write a file tensor by tensor and read single tensors without mmap.

`safetensors.torch.save_file` needs the whole state dict in memory and `safe_open` maps the
file, so every page touched stays in the process's resident set until the handle closes. For
conversions whose peak memory must not grow with the model, this module writes the format
itself (8-byte little-endian header length, a JSON header with dtype/shape/data_offsets, then
the raw bytes in header order) once all shapes are known up front, and reads a tensor with
`preadv` straight into a freshly allocated tensor. Files are fully compatible with the
safetensors library (the tests read them back with it).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Iterable, Sequence

import torch


class CheckpointFormatError(ValueError):
    """A checkpoint file is missing, truncated or corrupt, or a writer was misused (names the file)."""


DTYPE_TO_SAFETENSORS = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
SAFETENSORS_TO_DTYPE = {v: k for k, v in DTYPE_TO_SAFETENSORS.items()}
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
_MAX_IO_CHUNK = 1 << 30  # one preadv/write call moves at most this many bytes


def tensor_nbytes(shape: Sequence[int], dtype: torch.dtype) -> int:
    numel = 1
    for d in shape:
        numel *= int(d)
    return numel * torch.empty((), dtype=dtype).element_size()


class SafetensorsWriter:
    """Write one safetensors file incrementally: declare (name, dtype, shape) up front, then
    `write(name, tensor)` each tensor exactly once, in declaration order, then `close()`.

    Writing a tensor twice, out of order, with another shape or dtype, or closing before all
    declared tensors are written raises CheckpointFormatError; the file is then incomplete and
    the caller (which writes into a temporary directory) discards it.
    """

    def __init__(
        self,
        path: str | Path,
        entries: Iterable[tuple[str, torch.dtype, Sequence[int]]],
        metadata: dict[str, str] | None = None,
    ):
        self.path = Path(path)
        self._entries: list[tuple[str, torch.dtype, tuple[int, ...]]] = []
        header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
        offset = 0
        for name, dtype, shape in entries:
            if name in header:
                raise CheckpointFormatError(f"{self.path}: tensor {name!r} declared twice")
            if dtype not in DTYPE_TO_SAFETENSORS:
                raise CheckpointFormatError(f"{self.path}: tensor {name!r} has unsupported dtype {dtype}")
            shape = tuple(int(d) for d in shape)
            nbytes = tensor_nbytes(shape, dtype)
            header[name] = {"dtype": DTYPE_TO_SAFETENSORS[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self._entries.append((name, dtype, shape))
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # align the data section to 8 bytes, as safetensors does
        self.data_bytes = offset
        self.file_bytes = 8 + len(raw) + offset
        self._next = 0
        self._file = open(self.path, "wb", buffering=0)
        self._file.write(struct.pack("<Q", len(raw)) + raw)

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self._entries]

    def expected(self) -> tuple[str, torch.dtype, tuple[int, ...]] | None:
        """The next tensor this writer expects, or None when complete."""
        return self._entries[self._next] if self._next < len(self._entries) else None

    def write(self, name: str, tensor: torch.Tensor) -> int:
        """Append `tensor` (must be the next declared one); returns the bytes written."""
        if self._next >= len(self._entries):
            raise CheckpointFormatError(f"{self.path}: tensor {name!r} written but all declared tensors are already written")
        want_name, want_dtype, want_shape = self._entries[self._next]
        if name != want_name:
            raise CheckpointFormatError(f"{self.path}: expected tensor {want_name!r} next, got {name!r}")
        if tensor.dtype != want_dtype or tuple(tensor.shape) != want_shape:
            raise CheckpointFormatError(
                f"{self.path}: tensor {name!r} is {tensor.dtype} {tuple(tensor.shape)}, declared {want_dtype} {want_shape}"
            )
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        view = memoryview(data)
        for start in range(0, len(view), _MAX_IO_CHUNK):
            chunk = view[start : start + _MAX_IO_CHUNK]
            written = 0
            while written < len(chunk):
                written += self._file.write(chunk[written:])
        self._next += 1
        return len(view)

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.close()
        if self._next != len(self._entries):
            missing = [name for name, _, _ in self._entries[self._next :]]
            raise CheckpointFormatError(f"{self.path}: closed with {len(missing)} declared tensor(s) not written: {missing[:3]}")

    def abort(self) -> None:
        """Close without the completeness check (the file is left incomplete for the caller to discard)."""
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> "SafetensorsWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class SafetensorsReader:
    """Header of one safetensors file, validated on open; `get(name)` reads one tensor with preadv.

    Corrupt or truncated files raise CheckpointFormatError naming the file and what is wrong.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointFormatError(f"{self.path}: file does not exist")
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointFormatError(f"{self.path}: truncated ({size} bytes); not a safetensors file")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > _MAX_HEADER_BYTES or 8 + header_len > size:
                raise CheckpointFormatError(
                    f"{self.path}: header length {header_len} does not fit the file ({size} bytes); the file is corrupt or truncated"
                )
            raw = f.read(header_len)
        try:
            header = json.loads(raw)
            if not isinstance(header, dict):
                raise ValueError("header is not a JSON object")
        except (ValueError, UnicodeDecodeError) as err:
            raise CheckpointFormatError(f"{self.path}: header is not valid JSON ({err}); the file is corrupt") from err
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self._data_start = 8 + header_len
        self.tensors: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        end_of_data = 0
        for name, info in header.items():
            try:
                dtype = SAFETENSORS_TO_DTYPE[info["dtype"]]
                shape = tuple(int(d) for d in info["shape"])
                begin, end = (int(x) for x in info["data_offsets"])
            except (KeyError, TypeError, ValueError) as err:
                raise CheckpointFormatError(f"{self.path}: bad header entry for tensor {name!r} ({err!r})") from err
            if end - begin != tensor_nbytes(shape, dtype) or begin < 0:
                raise CheckpointFormatError(f"{self.path}: tensor {name!r} offsets {begin}..{end} do not match its shape {shape}")
            self.tensors[name] = (dtype, shape, begin, end)
            end_of_data = max(end_of_data, end)
        if self._data_start + end_of_data > size:
            raise CheckpointFormatError(
                f"{self.path}: header needs {self._data_start + end_of_data} bytes but the file has {size}; the file is truncated"
            )

    def names(self) -> list[str]:
        return list(self.tensors)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name][1]

    def dtype(self, name: str) -> torch.dtype:
        return self.tensors[name][0]

    def nbytes(self, name: str) -> int:
        _, _, begin, end = self.tensors[name]
        return end - begin

    def get(self, name: str) -> torch.Tensor:
        if name not in self.tensors:
            raise CheckpointFormatError(f"{self.path}: no tensor {name!r} in this file")
        dtype, shape, begin, end = self.tensors[name]
        buffer = torch.empty(end - begin, dtype=torch.uint8)
        view = memoryview(buffer.numpy())
        fd = os.open(self.path, os.O_RDONLY)
        try:
            done = 0
            while done < len(view):
                n = os.preadv(fd, [view[done : done + _MAX_IO_CHUNK]], self._data_start + begin + done)
                if n <= 0:
                    raise CheckpointFormatError(f"{self.path}: unexpected end of file reading tensor {name!r}")
                done += n
        finally:
            os.close(fd)
        if end == begin:
            return torch.empty(shape, dtype=dtype)
        return buffer.view(dtype).reshape(shape)
