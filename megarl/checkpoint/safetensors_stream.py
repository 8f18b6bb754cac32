"""Streaming safetensors I/O: write a file tensor by tensor and read single tensors without mmap.

`safetensors.torch.save_file` needs the whole state dict in memory and `safe_open` maps the
file, so every page touched stays in the process's resident set until the handle closes. For
conversions whose peak memory must not grow with the model, this module writes the format
itself (8-byte little-endian header length, a JSON header with dtype/shape/data_offsets, then
the raw bytes in header order) once all shapes are known up front, and reads a tensor with
`preadv` straight into a freshly allocated tensor. Files are fully compatible with the
safetensors library (the tests read them back with it).

Converters do not hold tensors at all: they describe each output tensor as `TensorRuns` (element
ranges of input files, or zeros; `trace_runs` finds them by applying the mapping to block ids)
and `RunCopier` moves the bytes file to file, in the kernel with
`copy_file_range` when the dtype is unchanged (as coreutils `cp` does), else through two staging
buffers allocated once per conversion. Fresh memory per tensor cost a page fault per 4 KiB, which
made conversion CPU-bound at a fraction of `cp`'s speed.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import mmap
import os
import struct
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
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
# copy_file_range errors that mean "not here" (other filesystem, old kernel, special file): copy in user space.
_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EPERM, errno.EBADF})
DEFAULT_STAGING_BYTES = 32 * 2**20
# Runs below this size are gathered through the staging buffer: a copy_file_range call costs tens
# of microseconds, which dominates for the per-row pieces of a TP split along dim 1.
_KERNEL_COPY_MIN_BYTES = 256 * 2**10
# Gaps up to this size between gathered runs of one file are read (into a scratch buffer) rather
# than costing another preadv call.
_MAX_READ_GAP = 16 * 2**10
_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # map the pages in one go instead of a fault per 64 KiB
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
_ZEROS = bytes(2**20)


def tensor_nbytes(shape: Sequence[int], dtype: torch.dtype) -> int:
    numel = 1
    for d in shape:
        numel *= int(d)
    return numel * dtype.itemsize


@dataclasses.dataclass(frozen=True)
class TensorLocation:
    """Where one tensor's bytes are in a safetensors file."""

    path: Path
    offset: int  # absolute file offset of the first byte
    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclasses.dataclass(frozen=True)
class TensorRuns:
    """One tensor as a sequence of runs: run i is `numel[i]` consecutive elements of
    `sources[source[i]]`'s file starting at byte `offset[i]`, or `numel[i]` zeros where
    `source[i]` is -1. Arrays, not objects: a TP split along dim 1 makes one run per row."""

    sources: tuple[TensorLocation, ...]
    source: np.ndarray  # int64
    offset: np.ndarray  # int64, absolute file offsets
    numel: np.ndarray  # int64

    @classmethod
    def whole(cls, loc: TensorLocation) -> "TensorRuns":
        return cls((loc,), np.zeros(1, np.int64), np.array([loc.offset], np.int64), np.array([math.prod(loc.shape)], np.int64))

    @property
    def total_numel(self) -> int:
        return int(self.numel.sum())


def _write_all(fd: int, view: memoryview) -> None:
    done = 0
    while done < len(view):
        done += os.write(fd, view[done : done + _MAX_IO_CHUNK])


def _writev_pieces(dst_fd: int, maps: dict[int, tuple[mmap.mmap, int]], which: list[int], starts: list[int], ends: list[int]) -> None:
    """Write the pieces [start, end) of the mapped files `maps[which]` (mapping, file offset of its first byte), in order."""
    views = {k: memoryview(mapped) for k, (mapped, _) in maps.items()}
    bases = {k: base for k, (_, base) in maps.items()}
    iov = [views[k][a - bases[k] : b - bases[k]] for k, a, b in zip(which, starts, ends)]
    for i in range(0, len(iov), _IOV_MAX):
        batch = iov[i : i + _IOV_MAX]
        done = os.writev(dst_fd, batch)
        for piece in batch:  # after a short write (rare), the rest piece by piece
            if done < len(piece):
                _write_all(dst_fd, piece[max(done, 0) :])
            done -= len(piece)
    for piece in iov:
        piece.release()
    for view in views.values():
        view.release()


class RunCopier:
    """Copies TensorRuns into an output file at its current position, converting the dtype if asked.

    Large runs in the same dtype: `copy_file_range` (the kernel copies page cache to page cache,
    nothing is mapped into this process), falling back for good to `preadv` + `write` through the
    staging buffer where the kernel refuses (another filesystem, old kernel). Small runs (the
    per-row pieces of a split along dim 1) in the same dtype: one `writev` of many pieces from a
    read-only mapping of the source span (`map_files`), else gathered into the staging buffer with
    one `preadv` per stretch of the file and written with one `write`. Other dtypes are cast from
    one staging buffer into a second one. The buffers are allocated and touched once, on first
    use, so memory stays flat whatever the tensor sizes.
    """

    def __init__(self, staging_bytes: int = DEFAULT_STAGING_BYTES, kernel_copy: bool = True, map_files: bool = True):
        self.staging_bytes = staging_bytes
        self.kernel_copy = kernel_copy and hasattr(os, "copy_file_range")
        self.map_files = map_files
        self._fds: dict[Path, int] = {}
        self._staging: tuple[torch.Tensor, torch.Tensor, memoryview] | None = None

    def _fd(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is None:
            fd = os.open(path, os.O_RDONLY)
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)  # larger readahead for the big runs
            self._fds[path] = fd
        return fd

    def _buffers(self) -> tuple[torch.Tensor, torch.Tensor, memoryview]:
        """(raw, cast, scratch): raw bytes as read, their cast to another dtype, and room for skipped gaps."""
        if self._staging is None:
            raw, cast = (torch.zeros(self.staging_bytes, dtype=torch.uint8) for _ in range(2))
            self._staging = (raw, cast, memoryview(bytearray(b"\0" * _MAX_READ_GAP)))
        return self._staging

    def _read(self, path: Path, offset: int, view: memoryview) -> None:
        """Fill `view` from `path` at byte `offset`."""
        fd, got = self._fd(path), 0
        while got < len(view):
            n = os.preadv(fd, [view[got:]], offset + got)
            if n <= 0:
                raise CheckpointFormatError(f"{path}: unexpected end of file at byte {offset + got}")
            got += n

    def _copy_same_dtype(self, path: Path, offset: int, nbytes: int, dst_fd: int) -> None:
        done = 0
        while done < nbytes and self.kernel_copy:
            try:
                n = os.copy_file_range(self._fd(path), dst_fd, min(nbytes - done, _MAX_IO_CHUNK), offset + done)
            except OSError as err:
                if err.errno not in _NO_KERNEL_COPY:
                    raise
                self.kernel_copy = False
                break
            if n <= 0:
                raise CheckpointFormatError(f"{path}: unexpected end of file at byte {offset + done}")
            done += n
        staging = memoryview(self._buffers()[0].numpy()) if done < nbytes else None
        while done < nbytes:
            chunk = staging[: min(len(staging), nbytes - done)]
            self._read(path, offset + done, chunk)
            _write_all(dst_fd, chunk)
            done += len(chunk)

    def _copy_cast(self, loc: TensorLocation, offset: int, numel: int, dst_fd: int, dtype: torch.dtype) -> None:
        raw, cast, _ = self._buffers()
        per_chunk = self.staging_bytes // max(loc.dtype.itemsize, dtype.itemsize)
        for first in range(0, numel, per_chunk):
            count = min(per_chunk, numel - first)
            src = raw[: count * loc.dtype.itemsize]
            self._read(loc.path, offset + first * loc.dtype.itemsize, memoryview(src.numpy()))
            dst = cast[: count * dtype.itemsize]
            dst.view(dtype).copy_(src.view(loc.dtype))
            _write_all(dst_fd, memoryview(dst.numpy()))

    def _gather(self, runs: TensorRuns, nbytes: np.ndarray, lo: int, hi: int, dst_fd: int, dtype: torch.dtype) -> None:
        """Runs lo..hi (small, one source dtype, fitting the staging buffer) gathered into it in
        output order and written once (cast first if the dtype changes). They are read in file
        order: one preadv per stretch of a file, each run landing at its place in the buffer and
        gaps of up to _MAX_READ_GAP read into scratch (cheaper than another call)."""
        raw, cast, scratch = self._buffers()
        view = memoryview(raw.numpy())
        dest = np.zeros(hi - lo + 1, np.int64)
        np.cumsum(nbytes[lo:hi], out=dest[1:])
        order = np.lexsort((runs.offset[lo:hi], runs.source[lo:hi]))  # by file, then position
        source, offset, size, start = runs.source[lo:hi][order], runs.offset[lo:hi][order], nbytes[lo:hi][order], dest[:-1][order]
        gap = np.full(hi - lo, -1, np.int64)
        gap[1:] = offset[1:] - (offset[:-1] + size[:-1])
        joined = (gap >= 0) & (gap <= _MAX_READ_GAP)
        joined[1:] &= source[1:] == source[:-1]
        joined[:: (_IOV_MAX - 1) // 2] = False  # at most IOV_MAX iovecs per preadv
        firsts = np.flatnonzero(~joined).tolist() + [hi - lo]
        gaps, starts, ends = gap.tolist(), start.tolist(), (start + size).tolist()
        for a, b in zip(firsts[:-1], firsts[1:]):
            iov = [view[starts[a] : ends[a]]]
            for i in range(a + 1, b):
                if gaps[i]:
                    iov.append(scratch[: gaps[i]])
                iov.append(view[starts[i] : ends[i]])
            want = int(offset[b - 1] + size[b - 1] - offset[a])
            path = runs.sources[int(source[a])].path
            if os.preadv(self._fd(path), iov, int(offset[a])) != want:
                raise CheckpointFormatError(f"{path}: unexpected end of file reading {want} bytes at {int(offset[a])}")
        total, src_dtype = int(dest[-1]), runs.sources[int(source[0])].dtype
        if src_dtype == dtype:
            _write_all(dst_fd, view[:total])
        else:
            out = cast[: total // src_dtype.itemsize * dtype.itemsize]
            out.view(dtype).copy_(raw[:total].view(src_dtype))
            _write_all(dst_fd, memoryview(out.numpy()))

    def _gather_mapped(self, runs: TensorRuns, nbytes: np.ndarray, lo: int, hi: int, dst_fd: int) -> None:
        """Runs lo..hi (small, already in the output dtype) written with writev straight from a
        read-only mapping of each source's span: one copy, page cache to page cache, as
        copy_file_range makes, without a call per run. The mappings last for this batch only."""
        source, offset, size = runs.source[lo:hi], runs.offset[lo:hi], nbytes[lo:hi]
        maps: dict[int, tuple[mmap.mmap, int]] = {}
        try:
            for k in np.unique(source).tolist():
                mine = source == k
                first = int(offset[mine].min()) // mmap.ALLOCATIONGRANULARITY * mmap.ALLOCATIONGRANULARITY
                last = int((offset[mine] + size[mine]).max())
                fd = self._fd(runs.sources[k].path)
                maps[k] = (mmap.mmap(fd, last - first, flags=mmap.MAP_SHARED | _MAP_POPULATE, prot=mmap.PROT_READ, offset=first), first)
            _writev_pieces(dst_fd, maps, source.tolist(), offset.tolist(), (offset + size).tolist())
        finally:
            for mapped, _ in maps.values():
                try:
                    mapped.close()
                except BufferError:  # views still held by a traceback: the mapping goes with them
                    pass

    def copy(self, runs: TensorRuns, dst_fd: int, dtype: torch.dtype) -> int:
        """Append `runs`, as `dtype`, to `dst_fd`; returns the bytes written."""
        itemsize = np.array([loc.dtype.itemsize for loc in runs.sources] + [dtype.itemsize], np.int64)
        nbytes = runs.numel * itemsize[runs.source]  # source -1 picks the output itemsize
        # Per run: small (gathered), or alone (zeros, or large enough for copy_file_range / a chunked cast).
        alone = (runs.source < 0) | (nbytes >= _KERNEL_COPY_MIN_BYTES)
        # A gathered batch must fit the staging buffer, also once cast, and have one source dtype.
        cap = self.staging_bytes // max(1, -(-dtype.itemsize // int(itemsize[:-1].min())))
        batch_start, batch_bytes = None, 0

        def gather(lo: int, hi: int) -> None:
            if self.map_files and runs.sources[int(runs.source[lo])].dtype == dtype:
                try:
                    return self._gather_mapped(runs, nbytes, lo, hi, dst_fd)
                except OSError as err:  # a file that cannot be mapped: read it instead, from now on
                    if err.errno not in _NO_KERNEL_COPY | {errno.ENODEV}:
                        raise
                    self.map_files = False
            self._gather(runs, nbytes, lo, hi, dst_fd, dtype)

        alone_l, nbytes_l, source_l = alone.tolist(), nbytes.tolist(), runs.source.tolist()
        for i in range(len(source_l)):
            if batch_start is not None and (
                alone_l[i] or batch_bytes + nbytes_l[i] > cap or runs.sources[source_l[i]].dtype != runs.sources[source_l[batch_start]].dtype
            ):
                gather(batch_start, i)
                batch_start, batch_bytes = None, 0
            if not alone_l[i]:
                batch_start = i if batch_start is None else batch_start
                batch_bytes += nbytes_l[i]
                continue
            if source_l[i] < 0:
                for start in range(0, nbytes_l[i], len(_ZEROS)):
                    _write_all(dst_fd, memoryview(_ZEROS)[: min(len(_ZEROS), nbytes_l[i] - start)])
                continue
            loc, offset = runs.sources[source_l[i]], int(runs.offset[i])
            if loc.dtype == dtype:
                self._copy_same_dtype(loc.path, offset, nbytes_l[i], dst_fd)
            else:
                self._copy_cast(loc, offset, int(runs.numel[i]), dst_fd, dtype)
        if batch_start is not None:
            gather(batch_start, len(source_l))
        return runs.total_numel * dtype.itemsize

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._staging = None

    def __enter__(self) -> "RunCopier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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

    def _declared_next(self, name: str) -> tuple[str, torch.dtype, tuple[int, ...]]:
        if self._next >= len(self._entries):
            raise CheckpointFormatError(f"{self.path}: tensor {name!r} written but all declared tensors are already written")
        entry = self._entries[self._next]
        if name != entry[0]:
            raise CheckpointFormatError(f"{self.path}: expected tensor {entry[0]!r} next, got {name!r}")
        return entry

    def write_runs(self, name: str, runs: TensorRuns, copier: RunCopier) -> int:
        """Append the next declared tensor from file runs (cast to the declared dtype); returns the bytes written."""
        _, want_dtype, want_shape = self._declared_next(name)
        numel = runs.total_numel
        if numel * want_dtype.itemsize != tensor_nbytes(want_shape, want_dtype):
            raise CheckpointFormatError(f"{self.path}: tensor {name!r} has {numel} elements in its runs, declared {want_shape}")
        written = copier.copy(runs, self._file.fileno(), want_dtype)
        self._next += 1
        return written

    def write(self, name: str, tensor: torch.Tensor) -> int:
        """Append `tensor` (must be the next declared one); returns the bytes written."""
        _, want_dtype, want_shape = self._declared_next(name)
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

    def location(self, name: str) -> TensorLocation:
        if name not in self.tensors:
            raise CheckpointFormatError(f"{self.path}: no tensor {name!r} in this file")
        dtype, shape, begin, _ = self.tensors[name]
        return TensorLocation(self.path, self._data_start + begin, shape, dtype)

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


# ---- tracing a mapping to file runs (no tensor data) -------------------------------------------
def trace_runs(
    sources: Sequence[TensorLocation], blocks: int, apply: Callable[[list[torch.Tensor]], Sequence[torch.Tensor]]
) -> list[TensorRuns]:
    """The runs of each tensor `apply` makes from `sources`, found without reading them.

    Each source of shape (rows, ...) stands in as a tensor of block ids, (rows, blocks) for a
    matrix (`blocks` equal column blocks per row: enough that every split of the columns the
    mapping makes falls on block edges) or (rows,) for a vector. Mapping kinds only index, pad
    with zeros, split and concatenate, so an output id says which source block lands there (0:
    padding); consecutive blocks that are consecutive in one file merge into one run.
    """
    ids, bases, block_numel = [], [], set()
    next_id = 1
    for loc in sources:
        if len(loc.shape) not in (1, 2) or (len(loc.shape) == 1 and blocks != 1):
            raise AssertionError(f"{loc.path}: cannot trace a tensor of shape {loc.shape} in {blocks} column blocks")
        rows = loc.shape[0]
        cols = loc.shape[1] if len(loc.shape) == 2 else 1
        if cols % blocks:
            raise CheckpointFormatError(f"{loc.path}: tensor of shape {loc.shape} does not split into {blocks} column blocks")
        block_numel.add(cols // blocks)
        count = rows * (blocks if len(loc.shape) == 2 else 1)
        ids.append(torch.arange(next_id, next_id + count, dtype=torch.int64).reshape((rows, blocks) if len(loc.shape) == 2 else (rows,)))
        bases.append(next_id)
        next_id += count
    if len(block_numel) != 1:
        raise AssertionError(f"sources {[loc.shape for loc in sources]} have different block sizes; the mapping cannot be traced")
    (numel,) = block_numel
    starts = np.array(bases, dtype=np.int64)
    offsets = np.array([loc.offset for loc in sources], dtype=np.int64)
    block_bytes = np.array([numel * loc.dtype.itemsize for loc in sources], dtype=np.int64)
    result = []
    for out in apply(ids):
        flat = out.reshape(-1).numpy()
        which = np.searchsorted(starts, flat, side="right") - 1  # -1: a padding zero
        src = np.maximum(which, 0)
        byte = np.where(which >= 0, offsets[src] + (flat - starts[src]) * block_bytes[src], -1)
        new_run = np.ones(len(flat), dtype=bool)
        new_run[1:] = (which[1:] != which[:-1]) | ((which[1:] >= 0) & (byte[1:] != byte[:-1] + block_bytes[src[:-1]]))
        first = np.flatnonzero(new_run)
        lengths = np.diff(np.append(first, len(flat)))
        result.append(TensorRuns(tuple(sources), which[first].astype(np.int64), byte[first], lengths * numel))
    return result
