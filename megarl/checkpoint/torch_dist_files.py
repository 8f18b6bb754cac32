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
`.metadata` at the end; `TorchDistReader` fills one parameter at a time from whichever stored
chunks overlap it (any TP/PP layout megatron-core wrote). Peak memory is about two of the
largest parameter (the embedding), whatever the model size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import pickle
import uuid
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch

from megarl.checkpoint.safetensors_stream import CheckpointFormatError

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

    def largest_param_bytes(self, dtype: torch.dtype) -> int:
        return max(math.prod(p.shape) for p in self.params) * dtype.itemsize


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
                                piece.data.storage_offset() - param.storage_offset()))
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


class TorchDistWriter:
    """Write one torch_dist directory: `write(name, tensor)` each parameter of the layout in order
    (the whole TP=PP=1 tensor), then `close(common_state)`. The directory must exist."""

    def __init__(self, directory: str | Path, layout: ModelLayout):
        from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex
        from torch.distributed.checkpoint.filesystem import _StorageInfo

        self.dir = Path(directory)
        self.layout = layout
        self._next = 0
        self._file = open(self.dir / TENSOR_FILE, "wb")
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
        from torch.distributed.checkpoint.filesystem import _StorageInfo
        from torch.distributed.checkpoint.metadata import (
            ChunkStorageMetadata,
            MetadataIndex,
            TensorProperties,
            TensorStorageMetadata,
        )

        if self._next >= len(self.layout.params):
            raise CheckpointFormatError(f"{self.dir}: parameter {name!r} written after all of the layout's parameters")
        want = self.layout.params[self._next]
        if name != want.name or tuple(tensor.shape) != want.shape:
            raise CheckpointFormatError(f"{self.dir}: expected {want.name} {want.shape} next, got {name} {tuple(tensor.shape)}")
        flat = tensor.detach().contiguous().reshape(-1)
        start = self._file.tell()
        with _no_crc32():
            for chunk in want.chunks:
                data = flat[chunk.start : chunk.start + chunk.numel].view(chunk.shape)
                if data.untyped_storage().nbytes() != data.numel() * data.element_size():
                    data = data.clone()  # torch.save stores a view's whole storage
                offset = self._file.tell()
                torch.save(data, self._file)
                index = MetadataIndex(chunk.key, torch.Size(chunk.offset))
                self._storage[index] = _StorageInfo(TENSOR_FILE, offset, self._file.tell() - offset)
                entry = self._state.setdefault(chunk.key, TensorStorageMetadata(
                    TensorProperties(dtype=tensor.dtype), torch.Size(chunk.global_shape), []))
                entry.chunks.append(ChunkStorageMetadata(torch.Size(chunk.offset), torch.Size(chunk.shape)))
        self._next += 1
        written = self._file.tell() - start
        self.bytes_written += written
        return written

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


def _file_view(stream, offset: int, length: int):
    try:
        from torch.distributed.checkpoint.filesystem import _create_file_view

        return _create_file_view(stream, offset, length)
    except ImportError:  # another torch: read the record into memory
        stream.seek(offset)
        return io.BytesIO(stream.read(length))


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
        return torch.load(_file_view(self._streams[info.relative_path], info.offset, info.length),
                          map_location="cpu", weights_only=True)

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


def read_hf_tensors(reader: TorchDistReader, layout: ModelLayout, spec, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) from a torch_dist directory in the mapping's order (HF file order), one
    parameter read at a time in its stored dtype."""
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
        tensor = reader.read_param(param, entry.properties.dtype, prefix)
        yield from zip(mapping.hf, mapping.to_hf([tensor], spec))
        del tensor
