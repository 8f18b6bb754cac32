"""Megatron's torch_dist files written and read one parameter at a time (no model in memory).

A torch_dist directory as megatron-core 0.16.1 writes it (`dist_checkpointing.save`, the
"torch_dist" strategy on PyTorch Distributed Checkpoint):

    metadata.json      {"sharded_backend": "torch_dist", ...} (megatron-core's format marker)
    common.pt          torch.save of the non-tensor state (Megatron-LM: args, iteration, ...)
    .metadata          pickled torch.distributed.checkpoint Metadata: for every key its global
                       shape, dtype and chunks (offset, size), and where each chunk is stored
    __R_N.distcp       the chunks, each a torch.save record at the offset .metadata names

megatron-core keys a model's tensors by `ShardedTensor.key`: layers are stacked on a leading
axis (`decoder.layers.self_attention.linear_qkv.weight` has global shape [layers, ...] and one
chunk per layer), the gated MLP's fc1 is two chunks (gate, up), and layers' `_extra_state` are
byte objects. Which keys, shapes and chunks a model has is megatron-core's own answer: `model_layout`
builds the model on the meta device (shapes only, no memory) and reads its `sharded_state_dict()`.
The parameters themselves come from the per-architecture name mapping (megarl.models.mapping).

`TorchDistWriter` appends one parameter's chunks at a time to a single `__0_0.distcp` and writes
`.metadata` at the end; `TorchDistReader` reads them back. Each chunk is a torch.save record
(a zip archive, stored uncompressed): its small metadata records come from torch.save itself,
under `torch.serialization.skip_data()` (no tensor bytes touched), and its data bytes are
copied file to file by `RunCopier` from the runs `trace_runs` finds by applying the mapping to
block ids (`copy_file_range`, as `cp` does; no tensor is built). The same holds in reverse when
the stored chunks are the ones this layout writes (megarl's own output, or any TP=1 save); other
layouts (e.g. Megatron-LM at TP=2) are read as tensors from whichever chunks overlap each
parameter. Peak memory is about two of the largest parameter at most, whatever the model size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import pickle
import os
import struct
import uuid
import zipfile
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from megarl.checkpoint.safetensors_stream import CheckpointFormatError, RunCopier, TensorLocation, TensorRuns, trace_runs

TENSOR_FILE = "__0_0.distcp"
METADATA_FILE = ".metadata"  # torch.distributed.checkpoint's name
COMMON_FILE = "common.pt"  # megatron-core's name


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One stored chunk of a parameter: `key`'s region at `offset` of `shape` (stacked axes as 1),
    made of the parameter's elements `start` .. `start + numel` (row-major)."""

    key: str
    global_shape: tuple[int, ...]
    offset: tuple[int, ...]
    shape: tuple[int, ...]
    start: int
    prepend: int  # leading stacked axes (layers) of `shape`, each 1

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclasses.dataclass(frozen=True)
class ParamLayout:
    name: str  # the model's state-dict name (the mapping's Megatron name)
    shape: tuple[int, ...]  # the whole parameter (TP=PP=1)
    chunks: tuple[Chunk, ...]


@dataclasses.dataclass(frozen=True)
class ModelLayout:
    params: tuple[ParamLayout, ...]
    objects: tuple[tuple[str, object], ...]  # (DCP key, data) of megatron-core's ShardedObjects
    config: object  # the model's TransformerConfig (Megatron-LM's args are made from it)


def model_layout(spec, dtype: torch.dtype) -> ModelLayout:
    """megatron-core's torch_dist layout of a TP=PP=1 actor of `spec` (its padded vocab as the spec
    pads it), from a model built on the meta device. Needs a world of one (init_runtime(1, 1))."""
    from megatron.core.dist_checkpointing import ShardedObject, ShardedTensor
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensorFactory

    from megarl.models.build import build_model

    meta = torch.device("meta")
    with meta:
        model = build_model(spec, role="actor", dtype=dtype, device=meta)
    params = dict(model.state_dict(keep_vars=True))
    layouts, objects = [], []
    for name, value in model.sharded_state_dict().items():
        if isinstance(value, ShardedObject):
            objects.append((value.unique_key, value.data))
            continue
        if isinstance(value, ShardedTensorFactory):
            value = value.build()
        pieces = [v for v in nested_values(value) if isinstance(v, ShardedTensor)] if not isinstance(value, ShardedTensor) else [value]
        param = params[name]
        chunks = []
        for piece in pieces:
            if piece.flattened_range is not None or not piece.data.is_contiguous():
                raise AssertionError(f"{name}: a flattened or strided chunk ({piece.key}); megarl cannot stream this layout")
            chunks.append(Chunk(piece.key, tuple(piece.global_shape), tuple(piece.global_offset),
                                (1,) * piece.prepend_axis_num + tuple(piece.local_shape),
                                piece.data.storage_offset() - param.storage_offset(), piece.prepend_axis_num))
        layouts.append(ParamLayout(name, tuple(param.shape), tuple(chunks)))
    return ModelLayout(tuple(layouts), tuple(objects), model.config)


@contextlib.contextmanager
def _no_crc32():
    """torch.save without the zip records' CRC-32 (7x faster; torch.load does not check it)."""
    from torch.utils.serialization import config

    before = config.save.compute_crc32
    config.save.compute_crc32 = False
    try:
        yield
    finally:
        config.save.compute_crc32 = before


class _FileSlice(io.RawIOBase):
    """A read-only window [start, start + length) of an open file (what zipfile and torch.load read)."""

    def __init__(self, fd: int, start: int, length: int):
        super().__init__()
        self.fd, self.start, self.length, self.pos = fd, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else self.length + offset
        return self.pos

    def readinto(self, buffer) -> int:
        data = os.pread(self.fd, max(0, min(len(buffer), self.length - self.pos)), self.start + self.pos)
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


class _FullWriter:
    """A raw file whose write() writes everything (torch.save ignores short writes, which a single
    write(2) of over 2 GiB makes)."""

    def __init__(self, raw):
        self.raw = raw

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += self.raw.write(view[done : done + (1 << 30)])
        return done

    def __getattr__(self, name):
        return getattr(self.raw, name)


def _data_offset(fd: int, start: int, length: int) -> tuple[int, int] | None:
    """(file offset, bytes) of the tensor data of the torch.save record at [start, start + length),
    or None when it is not one uncompressed storage."""
    try:
        with zipfile.ZipFile(_FileSlice(fd, start, length)) as archive:
            data = [i for i in archive.infolist() if i.filename.endswith("/data/0")]
            names = [i for i in archive.infolist() if "/data/" in i.filename and not i.filename.endswith(".pkl")]
    except zipfile.BadZipFile:
        return None
    if len(data) != 1 or len(names) != 1 or data[0].compress_type != zipfile.ZIP_STORED:
        return None
    header = os.pread(fd, 30, start + data[0].header_offset)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return start + data[0].header_offset + 30 + name_len + extra_len, data[0].file_size


class TorchDistWriter:
    """Write one torch_dist directory: `write(name, tensor)` each parameter of the layout in order
    (the whole TP=PP=1 tensor), then `close(common_state)`. The directory must exist."""

    def __init__(self, directory: str | Path, layout: ModelLayout):
        from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex
        from torch.distributed.checkpoint.filesystem import _StorageInfo

        self.dir = Path(directory)
        self.layout = layout
        self._next = 0
        self._file = _FullWriter(open(self.dir / TENSOR_FILE, "w+b", buffering=0))
        self._state: dict = {}
        self._storage: dict = {}
        self.bytes_written = 0
        with _no_crc32():
            for key, data in layout.objects:  # as megatron-core stores a ShardedObject
                buf = io.BytesIO()
                torch.save([data], buf)
                self._storage[MetadataIndex(key)] = _StorageInfo(TENSOR_FILE, self._file.tell(), buf.tell())
                self._file.write(buf.getbuffer())
                self._state[key] = BytesStorageMetadata()

    def write(self, name: str, tensor: torch.Tensor) -> int:
        """Append the next parameter of the layout (the whole TP=PP=1 tensor)."""
        want = self._expect(name)
        if tuple(tensor.shape) != want.shape:
            raise CheckpointFormatError(f"{self.dir}: {name} is {tuple(tensor.shape)}, the layout has {want.shape}")
        flat = tensor.detach().contiguous().reshape(-1)
        start = self._file.tell()
        with _no_crc32():
            for chunk in want.chunks:
                data = flat[chunk.start : chunk.start + chunk.numel].view(chunk.shape)
                if data.untyped_storage().nbytes() != data.numel() * data.element_size():
                    data = data.clone()  # torch.save stores a view's whole storage
                offset = self._file.tell()
                torch.save(data, self._file)
                self._record(chunk, tensor.dtype, offset)
        self._next += 1
        self.bytes_written += self._file.tell() - start
        return self._file.tell() - start

    def _record(self, chunk: Chunk, dtype: torch.dtype, offset: int) -> None:
        from torch.distributed.checkpoint.filesystem import _StorageInfo
        from torch.distributed.checkpoint.metadata import (
            ChunkStorageMetadata,
            MetadataIndex,
            TensorProperties,
            TensorStorageMetadata,
        )

        index = MetadataIndex(chunk.key, torch.Size(chunk.offset))
        self._storage[index] = _StorageInfo(TENSOR_FILE, offset, self._file.tell() - offset)
        entry = self._state.setdefault(chunk.key, TensorStorageMetadata(
            TensorProperties(dtype=dtype), torch.Size(chunk.global_shape), []))
        entry.chunks.append(ChunkStorageMetadata(torch.Size(chunk.offset), torch.Size(chunk.shape)))

    def write_runs(self, name: str, chunk_runs: Sequence[TensorRuns], copier: RunCopier, dtype: torch.dtype) -> int:
        """Append the next parameter from file runs (one per chunk, from `param_runs_from_hf`), as
        `dtype`: torch.save writes each record's metadata without data, the copier its bytes."""
        want = self._expect(name)
        start = self._file.tell()
        for chunk, runs in zip(want.chunks, chunk_runs, strict=True):
            if runs.total_numel != chunk.numel:
                raise CheckpointFormatError(f"{self.dir}: {name} chunk {chunk.offset} has {runs.total_numel} elements in its runs, "
                                            f"{chunk.numel} in the layout")
            offset = self._file.tell()
            with _no_crc32(), torch.serialization.skip_data():  # a tensor never touched: no memory is used
                torch.save(torch.empty(chunk.shape, dtype=dtype), self._file)
            end = self._file.tell()
            data = _data_offset(self._file.fileno(), offset, end - offset)
            if data is None or data[1] != chunk.numel * dtype.itemsize:
                raise AssertionError(f"torch.save wrote no single stored data record for {chunk.key}; this torch is not supported")
            self._file.seek(data[0])
            copier.copy(runs, self._file.fileno(), dtype)
            self._file.seek(end)
            self._record(chunk, dtype, offset)
        self._next += 1
        self.bytes_written += self._file.tell() - start
        return self._file.tell() - start

    def _expect(self, name: str) -> ParamLayout:
        if self._next >= len(self.layout.params):
            raise CheckpointFormatError(f"{self.dir}: parameter {name!r} written after all of the layout's parameters")
        want = self.layout.params[self._next]
        if name != want.name:
            raise CheckpointFormatError(f"{self.dir}: expected {want.name} next, got {name}")
        return want

    def close(self, common_state: dict) -> None:
        from megatron.core.dist_checkpointing.core import CheckpointingConfig, save_config
        from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

        self._file.close()
        if self._next != len(self.layout.params):
            missing = [p.name for p in self.layout.params[self._next :]]
            raise CheckpointFormatError(f"{self.dir}: closed with {len(missing)} parameter(s) not written: {missing[:3]}")
        metadata = Metadata(state_dict_metadata=self._state, storage_data=self._storage,
                            storage_meta=StorageMeta(checkpoint_id=str(self.dir), save_id=str(uuid.uuid4())))
        with open(self.dir / METADATA_FILE, "wb") as f:
            pickle.dump(metadata, f)
        torch.save(common_state, self.dir / COMMON_FILE)
        save_config(CheckpointingConfig("torch_dist", 1, "torch", 1), str(self.dir))

    def abort(self) -> None:
        self._file.close()


class TorchDistReader:
    """Read regions of a torch_dist directory's tensors from the chunks that cover them."""

    def __init__(self, directory: str | Path):
        from torch.distributed.checkpoint import FileSystemReader

        self.dir = Path(directory)
        try:
            self.metadata = FileSystemReader(str(self.dir)).read_metadata()
        except (OSError, pickle.UnpicklingError, EOFError) as err:
            raise CheckpointFormatError(f"{self.dir / METADATA_FILE}: unreadable ({err}); not a complete torch_dist checkpoint") from err
        self._streams: dict[str, object] = {}

    def keys(self) -> dict:
        return self.metadata.state_dict_metadata

    def _load(self, key: str, offset: torch.Size) -> torch.Tensor:
        from torch.distributed.checkpoint.metadata import MetadataIndex

        info = self.metadata.storage_data[MetadataIndex(key, offset)]
        if info.relative_path not in self._streams:
            self._streams[info.relative_path] = open(self.dir / info.relative_path, "rb")
        return torch.load(_FileSlice(self._streams[info.relative_path].fileno(), info.offset, info.length),
                          map_location="cpu", weights_only=True)

    def chunk_location(self, key: str, chunk: Chunk) -> TensorLocation | None:
        """Where the stored chunk of `key` at exactly `chunk`'s offset and shape keeps its bytes
        (one contiguous, uncompressed storage), or None (not stored so, or another layout)."""
        from torch.distributed.checkpoint.metadata import MetadataIndex

        entry = self.metadata.state_dict_metadata.get(key)
        if entry is None or not any(tuple(c.offsets) == chunk.offset and tuple(c.sizes) == chunk.shape for c in entry.chunks):
            return None
        info = self.metadata.storage_data[MetadataIndex(key, torch.Size(chunk.offset))]
        if info.transform_descriptors:
            return None
        path = self.dir / info.relative_path
        if info.relative_path not in self._streams:
            self._streams[info.relative_path] = open(path, "rb")
        fd = self._streams[info.relative_path].fileno()
        data = _data_offset(fd, info.offset, info.length)
        dtype = entry.properties.dtype
        if data is None or data[1] != chunk.numel * dtype.itemsize:
            return None
        with torch.serialization.skip_data():  # the record's tensor metadata only; its storage stays untouched
            stored = torch.load(_FileSlice(fd, info.offset, info.length), map_location="cpu", weights_only=True)
        if (not torch.is_tensor(stored) or stored.dtype != dtype or tuple(stored.shape) != chunk.shape
                or not stored.is_contiguous() or stored.storage_offset() != 0):
            return None
        return TensorLocation(path, data[0], chunk.shape[chunk.prepend :], dtype)

    def read_into(self, key: str, offset: Sequence[int], out: torch.Tensor) -> None:
        """Fill `out` with `key`'s region at global `offset` (out's shape) from the stored chunks."""
        entry = self.metadata.state_dict_metadata.get(key)
        if entry is None or not hasattr(entry, "chunks"):
            raise CheckpointFormatError(f"{self.dir}: no tensor {key!r}")
        if len(entry.size) != out.dim():
            raise CheckpointFormatError(f"{self.dir}: {key} has {len(entry.size)} dimensions, expected {out.dim()}")
        covered = 0
        for chunk in entry.chunks:
            lo = [max(a, b) for a, b in zip(offset, chunk.offsets)]
            hi = [min(a + n, b + m) for a, n, b, m in zip(offset, out.shape, chunk.offsets, chunk.sizes)]
            if any(h <= low for low, h in zip(lo, hi)):
                continue
            stored = self._load(key, chunk.offsets)
            src, dst = stored, out
            for dim, (low, h) in enumerate(zip(lo, hi)):
                src = src.narrow(dim, low - chunk.offsets[dim], h - low)
                dst = dst.narrow(dim, low - offset[dim], h - low)
            dst.copy_(src)
            covered += math.prod(h - low for low, h in zip(lo, hi))
            del stored, src
        if covered != out.numel():
            raise CheckpointFormatError(f"{self.dir}: the chunks of {key} cover {covered} of the {out.numel()} elements "
                                        f"at {tuple(offset)} {tuple(out.shape)}; the checkpoint is incomplete")

    def read_param(self, param: ParamLayout, dtype: torch.dtype, prefix: str = "") -> torch.Tensor:
        tensor = torch.empty(param.shape, dtype=dtype)
        flat = tensor.view(-1)
        for chunk in param.chunks:
            self.read_into(prefix + chunk.key, chunk.offset, flat[chunk.start : chunk.start + chunk.numel].view(chunk.shape))
        return tensor

    def close(self) -> None:
        for stream in self._streams.values():
            stream.close()
        self._streams.clear()


# ---- the model's parameters from HF tensors, and back, through the mapping -------------------------
def _mappings(spec) -> dict:
    from megarl.models.build import layer_impl
    from megarl.models.mapping import stage_mappings

    return dict(stage_mappings(spec, 0, 1, layer_impl=layer_impl()))


def params_from_hf(spec, layout: ModelLayout, read_hf: Callable[[Sequence[str]], list[torch.Tensor]],
                   dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """(state-dict name, whole TP=PP=1 parameter) in layout order, each made from its HF tensors."""
    mappings = _mappings(spec)
    for param in layout.params:
        mapping = mappings.get(param.name)
        if mapping is None:
            raise AssertionError(f"the model's parameter {param.name} has no mapping for {spec.model_type}")
        hf = [t.to(dtype) for t in read_hf(mapping.hf)]
        yield param.name, mapping.to_megatron_shard(hf, 0, 1, spec).contiguous()
        del hf


def _chunk_ids(ids: torch.Tensor, param: ParamLayout) -> list[torch.Tensor]:
    """The block ids of each chunk of `param`, from the ids of the whole parameter."""
    per = math.prod(param.shape) // ids.numel()  # elements per id
    flat = ids.reshape(-1)
    if any(c.start % per or c.numel % per for c in param.chunks):
        raise AssertionError(f"{param.name}: its chunks do not fall on the mapping's block edges")
    return [flat[c.start // per : (c.start + c.numel) // per] for c in param.chunks]


def param_runs_from_hf(spec, layout: ModelLayout, locate: Callable[[str], TensorLocation]
                       ) -> Iterator[tuple[str, list[TensorRuns], list[TensorLocation]]]:
    """(state-dict name, runs of each chunk, the HF sources) for every parameter in layout order:
    where in the HF files each chunk's elements are (no tensor data read)."""
    mappings = _mappings(spec)
    for param in layout.params:
        mapping = mappings.get(param.name)
        if mapping is None:
            raise AssertionError(f"the model's parameter {param.name} has no mapping for {spec.model_type}")
        sources = [locate(h) for h in mapping.hf]
        runs = trace_runs(sources, 1, lambda ids: _chunk_ids(mapping.to_megatron_shard(ids, 0, 1, spec), param))
        yield param.name, runs, sources


def read_hf_tensors(reader: TorchDistReader, layout: ModelLayout, spec, prefix: str = "", *,
                    as_runs: bool = True) -> Iterator[tuple[str, torch.Tensor | TensorRuns]]:
    """(HF name, TensorRuns or tensor) from a torch_dist directory in the mapping's order (HF file
    order): file runs where the stored chunks are this layout's, else one parameter read at a
    time in its stored dtype (always, without `as_runs`)."""
    params = {param.name: param for param in layout.params}
    for name, mapping in _mappings(spec).items():
        if name not in params:
            continue  # the tied output layer: the embedding, read once
        param = params[name]
        key = prefix + param.chunks[0].key
        entry = reader.keys().get(key)
        if entry is None or not hasattr(entry, "properties"):
            raise CheckpointFormatError(f"{reader.dir}: has no tensor {key!r} for the model's {param.name}")
        if tuple(entry.size) != param.chunks[0].global_shape:
            raise CheckpointFormatError(
                f"{reader.dir}: {key} has global shape {tuple(entry.size)}, the model of its HF config needs "
                f"{param.chunks[0].global_shape}")
        sources = [reader.chunk_location(prefix + c.key, c) for c in param.chunks] if as_runs else [None]
        if all(sources):  # stored as this layout writes it: file runs, no tensor built
            yield from zip(mapping.hf, trace_runs(sources, 1, lambda ids: mapping.to_hf([torch.cat(ids, 0)], spec)))
            continue
        tensor = reader.read_param(param, entry.properties.dtype, prefix)
        yield from zip(mapping.hf, mapping.to_hf([tensor], spec))
        del tensor
