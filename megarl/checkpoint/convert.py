"""Streaming checkpoint converters: HF -> Megatron, Megatron -> HF, and Megatron TP/PP resharding.

All three read the one mapping declaration (megarl.models.mapping) and hold no tensor data: the
mapping is applied to small tensors of block ids instead of weights (it is pure indexing), which
says for every output tensor which element ranges of which input files it is made of
(`TensorRuns`); `RunCopier` then copies those ranges file to file (copy_file_range, or two reused
staging buffers when the dtype changes). Outputs are written with SafetensorsWriter, whose headers
are planned up front from the mapping (each mapping kind derives its shapes from the config).
Neither torch.distributed nor Megatron is needed.

Built-in checks: every HF tensor is consumed exactly once and every Megatron tensor produced
exactly once, with the shapes the config implies; the numerics-relevant config fields survive the
round trip; outputs appear only complete (temporary directory, renamed at the end).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from megarl.checkpoint.format import (
    HF_ASSETS_DIR,
    HF_INDEX_FILE,
    META_FILE,
    HFSafetensorsDir,
    MegatronCheckpoint,
    MegatronCheckpointMeta,
    ShardFile,
    atomic_output_dir,
    check_output_dir,
    config_with_dtype,
    copy_hf_assets,
    dtype_name,
    parse_dtype,
    read_hf_config,
    shard_file_name,
)
from megarl.checkpoint.progress import TransferProgress
from megarl.checkpoint.safetensors_stream import (
    CheckpointFormatError,
    RunCopier,
    SafetensorsWriter,
    TensorLocation,
    TensorRuns,
    tensor_nbytes,
)
from megarl.models.mapping import OUTPUT_TIED, ParamMapping, hf_tensor_shapes, stage_mappings
from megarl.models.spec import ModelSpec

# The critic's value head is not part of the HF mapping; critic checkpoints carry it on the last stage.
VALUE_HEAD = "output_layer.weight"
# HF tensors some checkpoints carry that are derived, not weights.
IGNORED_HF_SUFFIXES = (".rotary_emb.inv_freq",)
DEFAULT_HF_SHARD_BYTES = 4 * 10**9


@dataclasses.dataclass
class ConversionReport:
    kind: str
    source: str
    output: str
    tp: int
    pp: int
    dtype: str
    tensors_read: int = 0
    bytes_read: int = 0
    tensors_written: int = 0
    bytes_written: int = 0
    files_written: int = 0
    seconds: float = 0.0
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def gb_per_s(self) -> float:
        return self.bytes_written / self.seconds / 1e9 if self.seconds > 0 else 0.0


# ---- planning (shapes only, no data) -----------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PlannedTensor:
    name: str  # Megatron name in the stage ("local" layer names)
    mapping: ParamMapping | None  # None for the critic's value head
    shape: tuple[int, ...]  # per TP rank


def plan_stage(spec: ModelSpec, pp_rank: int, tp: int, pp: int, role: str = "actor") -> list[PlannedTensor]:
    """The tensors of each (any TP rank, stage `pp_rank`) file, in file order."""
    planned = [
        PlannedTensor(name, mapping, mapping.megatron_shape(spec, tp))
        for name, mapping in stage_mappings(spec, pp_rank, pp, layer_impl="local", role=role)
    ]
    if role == "critic" and pp_rank == pp - 1:
        planned.append(PlannedTensor(VALUE_HEAD, None, (1, spec.hidden_size)))
    return planned


def plan_files(spec: ModelSpec, tp: int, pp: int, role: str = "actor") -> list[ShardFile]:
    files = []
    for pp_rank in range(pp):
        tensors = {t.name: list(t.shape) for t in plan_stage(spec, pp_rank, tp, pp, role)}
        files += [ShardFile(shard_file_name(r, pp_rank), r, pp_rank, dict(tensors)) for r in range(tp)]
    return files


def check_mapping_coverage(spec: ModelSpec, pp: int, role: str = "actor") -> None:
    """Every HF tensor of the spec is consumed by exactly one mapping entry over all stages
    (the tied output-layer copy aside); raises if the mapping and the spec disagree."""
    counts = Counter()
    for pp_rank in range(pp):
        for _, mapping in stage_mappings(spec, pp_rank, pp, layer_impl="local", role=role):
            if mapping is not OUTPUT_TIED:
                counts.update(mapping.hf)
    expected = set(hf_tensor_shapes(spec))
    if role == "critic" and not spec.tie_word_embeddings:
        expected.discard("lm_head.weight")
    twice = sorted(n for n, c in counts.items() if c > 1)
    missing = sorted(expected - set(counts))
    extra = sorted(set(counts) - expected)
    if twice or missing or extra:
        raise AssertionError(f"mapping does not cover the HF tensors exactly once: twice={twice[:3]} missing={missing[:3]} extra={extra[:3]}")


def _check_hf_dtypes(src: HFSafetensorsDir, config: dict) -> None:
    """Every weight is stored in the dtype config.json declares (when it declares one), and in a
    floating-point dtype in any case: an integer tensor would convert silently to wrong weights."""
    declared = config.get("torch_dtype") or config.get("dtype")
    want = getattr(torch, declared, None) if isinstance(declared, str) else None
    for name in src.names():
        have = src.dtype(name)
        if not have.is_floating_point or (want is not None and want.is_floating_point and have != want):
            expected = f"config.json's dtype {declared}" if want is not None else "a floating-point dtype"
            raise CheckpointFormatError(
                f"{src.dir / src.weight_map[name]}: tensor {name!r} is stored as {dtype_name(have)}, "
                f"expected {expected}; the file is corrupt, or config.json's torch_dtype does not describe it"
            )


def _check_hf_inputs(src: HFSafetensorsDir, spec: ModelSpec) -> list[str]:
    """Names and shapes of the HF checkpoint against the config; returns tensors that are skipped."""
    expected = hf_tensor_shapes(spec)
    present = set(src.names())
    missing = [n for n in expected if n not in present]
    if missing:
        raise CheckpointFormatError(
            f"{src.dir}: {len(missing)} tensor(s) the config.json ({spec.model_type}, {spec.num_layers} layers) "
            f"requires are missing, e.g. {missing[:3]}; the checkpoint is incomplete or config.json does not describe it"
        )
    for name, shape in expected.items():
        if name in present and tuple(src.shape(name)) != tuple(shape):
            raise CheckpointFormatError(
                f"{src.dir / src.weight_map[name]}: tensor {name!r} has shape {tuple(src.shape(name))}, "
                f"config.json implies {tuple(shape)}"
            )
    skipped = []
    for name in sorted(present - set(expected)):
        if name.endswith(IGNORED_HF_SUFFIXES):
            skipped.append(name)
        elif name == "lm_head.weight" and spec.tie_word_embeddings:
            if not torch.equal(src.get(name), src.get("model.embed_tokens.weight")):
                raise CheckpointFormatError(
                    f"{src.dir}: config.json says tie_word_embeddings=true but lm_head.weight differs from "
                    "model.embed_tokens.weight; set tie_word_embeddings=false in config.json"
                )
            skipped.append(name)
        else:
            raise CheckpointFormatError(
                f"{src.dir / src.weight_map[name]}: tensor {name!r} is not part of a {spec.model_type} model with this "
                "config.json (wrong model_type / num_hidden_layers, or extra weights megarl does not convert)"
            )
    return skipped


def _check_against_plan(ckpt: MegatronCheckpoint) -> None:
    """The checkpoint's files hold exactly the tensors (names, shapes) its config and layout imply."""
    meta = ckpt.meta
    ckpt.spec.check_layout(meta.tp, meta.pp, field=META_FILE)
    for planned in plan_files(ckpt.spec, meta.tp, meta.pp, meta.role):
        listed = meta.file_of(planned.tp_rank, planned.pp_rank).tensors
        if listed != planned.tensors:
            wrong = sorted(set(listed) ^ set(planned.tensors)) or [n for n in listed if listed[n] != planned.tensors[n]]
            raise CheckpointFormatError(
                f"{ckpt.dir / planned.path}: tensors differ from what config.json at tp={meta.tp} pp={meta.pp} implies "
                f"(e.g. {wrong[:3]}); the checkpoint is corrupt or was not written by megarl"
            )
        ckpt.reader(planned.tp_rank, planned.pp_rank)  # opens and validates the file against the json


def _write_meta(out: Path, spec_config: dict, tp: int, pp: int, dtype: torch.dtype, role: str, spec: ModelSpec) -> None:
    meta = MegatronCheckpointMeta(tp=tp, pp=pp, dtype=dtype_name(dtype), role=role, hf_config=spec_config, files=plan_files(spec, tp, pp, role))
    (out / META_FILE).write_text(meta.to_json())


def _stage_writers(tmp: Path, planned: list[PlannedTensor], tp: int, pp_rank: int, dtype: torch.dtype) -> list[SafetensorsWriter]:
    writers = []
    for r in range(tp):
        path = tmp / shard_file_name(r, pp_rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        writers.append(SafetensorsWriter(path, [(t.name, dtype, t.shape) for t in planned]))
    return writers


def _close_all(writers: list[SafetensorsWriter]) -> None:
    for w in writers:
        w.close()


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


# ---- HF -> Megatron ----------------------------------------------------------------------------
def hf_to_megatron(
    hf_dir: str | Path,
    out_dir: str | Path,
    *,
    tp: int = 1,
    pp: int = 1,
    dtype: str | torch.dtype | None = None,
    progress: bool = False,
) -> ConversionReport:
    """Convert an HF safetensors model directory into a megarl Megatron checkpoint at (tp, pp).

    The result is an actor checkpoint; a critic starts from it too (megarl's loader skips the LM
    head and the critic keeps its fresh value head).
    """
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    check_output_dir(out_dir)
    role = "actor"
    config = read_hf_config(hf_dir)
    spec = ModelSpec.from_hf(hf_dir)
    spec.check_layout(tp, pp, field="checkpoint")
    check_mapping_coverage(spec, pp, role)
    src = HFSafetensorsDir(hf_dir)
    skipped = _check_hf_inputs(src, spec)
    _check_hf_dtypes(src, config)
    out_dtype = parse_dtype(dtype) or src.dtype("model.embed_tokens.weight")
    plans = [plan_stage(spec, p, tp, pp, role) for p in range(pp)]
    total = sum(tensor_nbytes(t.shape, out_dtype) for plan in plans for t in plan) * tp
    report = ConversionReport("hf_to_megatron", str(hf_dir), str(out_dir), tp, pp, dtype_name(out_dtype))
    if skipped:
        report.notes.append(f"skipped derived/duplicate HF tensors: {skipped}")

    with atomic_output_dir(out_dir) as tmp, TransferProgress(f"HF->Megatron {tp}x{pp}", total, progress) as bar, RunCopier() as copier:
        for pp_rank, planned in enumerate(plans):
            writers = _stage_writers(tmp, planned, tp, pp_rank, out_dtype)
            try:
                for t in planned:
                    sources = [src.readers[src.weight_map[h]].location(h) for h in t.mapping.hf]
                    _count_read(report, sources)
                    mapping, blocks = t.mapping, tp if t.mapping.partition_dim == 1 else 1  # TP splits on block edges
                    shard_runs = trace_runs(sources, blocks, lambda ids: [mapping.to_megatron_shard(ids, r, tp, spec) for r in range(tp)])
                    for writer, runs in zip(writers, shard_runs):
                        bar.advance(writer.write_runs(t.name, runs, copier))
                _close_all(writers)
            except BaseException:
                for w in writers:
                    w.abort()
                raise
        _write_meta(tmp, config, tp, pp, out_dtype, role, spec)
        copy_hf_assets(hf_dir, tmp / HF_ASSETS_DIR)
        report.tensors_written, report.bytes_written, report.seconds = bar.tensors, bar.bytes, bar.seconds
        report.files_written = tp * pp
    return report


def _count_read(report: ConversionReport, sources: Sequence[TensorLocation]) -> None:
    report.tensors_read += len(sources)
    report.bytes_read += sum(tensor_nbytes(loc.shape, loc.dtype) for loc in sources)


# ---- Megatron -> HF ----------------------------------------------------------------------------
def plan_hf_files(spec: ModelSpec, pp: int, dtype: torch.dtype, max_shard_bytes: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    """HF tensors in mapping order (each produced exactly once), grouped into files of at most
    `max_shard_bytes` (a tensor larger than that gets a file of its own)."""
    shapes = hf_tensor_shapes(spec)
    order = [
        h
        for p in range(pp)
        for _, mapping in stage_mappings(spec, p, pp, layer_impl="local")
        if mapping is not OUTPUT_TIED
        for h in mapping.hf
    ]
    if sorted(order) != sorted(shapes) or len(set(order)) != len(order):
        raise AssertionError("the mapping does not produce every HF tensor exactly once")
    files: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name in order:
        nbytes = tensor_nbytes(shapes[name], dtype)
        if files[-1] and size + nbytes > max_shard_bytes:
            files.append([])
            size = 0
        files[-1].append((name, shapes[name]))
        size += nbytes
    return files


def _hf_file_name(i: int, n: int) -> str:
    return f"model-{i + 1:05d}-of-{n:05d}.safetensors"  # with an index even for one file


def megatron_to_hf(
    meg_dir: str | Path,
    out_dir: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    max_shard_bytes: int = DEFAULT_HF_SHARD_BYTES,
    progress: bool = False,
) -> ConversionReport:
    """Convert a megarl Megatron checkpoint into a standard HF model directory (sharded safetensors
    with model.safetensors.index.json, config.json, tokenizer files)."""
    meg_dir, out_dir = Path(meg_dir), Path(out_dir)
    check_output_dir(out_dir)
    ckpt = MegatronCheckpoint(meg_dir)
    meta, spec = ckpt.meta, ckpt.spec
    if meta.role != "actor":
        raise CheckpointFormatError(f"{meg_dir / META_FILE}: role={meta.role!r}; only actor checkpoints have an LM head to export")
    _check_against_plan(ckpt)
    out_dtype = parse_dtype(dtype) or meta.torch_dtype
    hf_files = plan_hf_files(spec, meta.pp, out_dtype, max_shard_bytes)
    names = [_hf_file_name(i, len(hf_files)) for i in range(len(hf_files))]
    total = sum(tensor_nbytes(shape, out_dtype) for f in hf_files for _, shape in f)
    report = ConversionReport("megatron_to_hf", str(meg_dir), str(out_dir), meta.tp, meta.pp, dtype_name(out_dtype))
    weight_map: dict[str, str] = {}

    with atomic_output_dir(out_dir) as tmp, TransferProgress(f"Megatron {meta.tp}x{meta.pp}->HF", total, progress) as bar, RunCopier() as copier:
        file_iter = iter(zip(names, hf_files))
        writer: SafetensorsWriter | None = None

        def next_writer() -> SafetensorsWriter:
            name, entries = next(file_iter)
            for tensor_name, _ in entries:
                weight_map[tensor_name] = name
            return SafetensorsWriter(tmp / name, [(n, out_dtype, s) for n, s in entries], {"format": "pt"})

        try:
            for pp_rank in range(meta.pp):
                for t in plan_stage(spec, pp_rank, meta.tp, meta.pp):
                    if t.mapping is OUTPUT_TIED:
                        continue
                    sources = [ckpt.reader(r, pp_rank).location(t.name) for r in range(meta.tp)]
                    _count_read(report, sources)
                    mapping = t.mapping
                    hf_runs = trace_runs(sources, 1, lambda ids: mapping.to_hf(ids, spec))
                    for hf_name, runs in zip(t.mapping.hf, hf_runs):
                        if writer is None or writer.expected() is None:
                            if writer is not None:
                                writer.close()
                            writer = next_writer()
                        bar.advance(writer.write_runs(hf_name, runs, copier))
            if writer is not None:
                writer.close()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (tmp / HF_INDEX_FILE).write_text(json.dumps(index, indent=2))
        if ckpt.hf_assets().is_dir():
            copy_hf_assets(ckpt.hf_assets(), tmp)
        else:
            report.notes.append(f"{ckpt.hf_assets()} is missing: no tokenizer files copied")
        config = config_with_dtype(meta.hf_config, out_dtype)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        _check_numerics_config(ModelSpec.from_hf(tmp), spec, tmp / "config.json")
        report.tensors_written, report.bytes_written, report.seconds = bar.tensors, bar.bytes, bar.seconds
        report.files_written = len(names)
    return report


def _check_numerics_config(written: ModelSpec, expected: ModelSpec, where: Path) -> None:
    fields = ("rope_theta", "rope_scaling", "rms_norm_eps", "tie_word_embeddings", "sliding_window", "vocab_size", "head_dim", "num_kv_heads", "qkv_bias")
    wrong = [f for f in fields if getattr(written, f) != getattr(expected, f)]
    if wrong:
        raise AssertionError(f"{where}: config fields {wrong} changed in conversion; this is a megarl bug")


# ---- Megatron -> Megatron (resharding) ---------------------------------------------------------
def reshard(
    in_dir: str | Path,
    out_dir: str | Path,
    *,
    tp: int,
    pp: int,
    dtype: str | torch.dtype | None = None,
    progress: bool = False,
) -> ConversionReport:
    """Rewrite a megarl Megatron checkpoint at another TP/PP layout (no HF directory in between:
    each parameter is gathered from the source TP shards and re-split, one at a time)."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    check_output_dir(out_dir)
    src = MegatronCheckpoint(in_dir)
    meta, spec = src.meta, src.spec
    spec.check_layout(tp, pp, field="checkpoint")
    _check_against_plan(src)
    out_dtype = parse_dtype(dtype) or meta.torch_dtype
    # Where each parameter lives in the source: keyed by the global HF names it maps to.
    source_of: dict[tuple[str, ...], tuple[int, str, ParamMapping]] = {}
    for pp_rank in range(meta.pp):
        for name, mapping in stage_mappings(spec, pp_rank, meta.pp, layer_impl="local", role=meta.role):
            if mapping is not OUTPUT_TIED:
                source_of.setdefault(mapping.hf, (pp_rank, name, mapping))
    plans = [plan_stage(spec, p, tp, pp, meta.role) for p in range(pp)]
    total = sum(tensor_nbytes(t.shape, out_dtype) for plan in plans for t in plan) * tp
    report = ConversionReport("reshard", str(in_dir), str(out_dir), tp, pp, dtype_name(out_dtype))
    report.notes.append(f"from tp={meta.tp} pp={meta.pp}")

    # Column blocks per source shard so that both the source and the target TP splits fall on block edges.
    blocks = math.lcm(meta.tp, tp) // meta.tp

    def resplit(src_mapping: ParamMapping, mapping: ParamMapping) -> Callable[[list[torch.Tensor]], list[torch.Tensor]]:
        return lambda ids: [mapping.to_megatron_shard(src_mapping.to_hf(ids, spec), r, tp, spec) for r in range(tp)]

    with atomic_output_dir(out_dir) as tmp, TransferProgress(f"reshard {meta.tp}x{meta.pp}->{tp}x{pp}", total, progress) as bar, RunCopier() as copier:
        for pp_rank, planned in enumerate(plans):
            writers = _stage_writers(tmp, planned, tp, pp_rank, out_dtype)
            try:
                for t in planned:
                    if t.mapping is None:  # critic value head: replicated, on the last stage
                        head = src.reader(0, meta.pp - 1).location(VALUE_HEAD)
                        runs = TensorRuns.whole(head)
                        for writer in writers:
                            bar.advance(writer.write_runs(t.name, runs, copier))
                        continue
                    src_stage, src_name, src_mapping = source_of[t.mapping.hf]
                    sources = [src.reader(r, src_stage).location(src_name) for r in range(meta.tp)]
                    _count_read(report, sources)
                    split = 1 if t.mapping.partition_dim != 1 and src_mapping.partition_dim != 1 else blocks
                    for writer, runs in zip(writers, trace_runs(sources, split, resplit(src_mapping, t.mapping))):
                        bar.advance(writer.write_runs(t.name, runs, copier))
                _close_all(writers)
            except BaseException:
                for w in writers:
                    w.abort()
                raise
        _write_meta(tmp, meta.hf_config, tp, pp, out_dtype, meta.role, spec)
        if src.hf_assets().is_dir():
            copy_hf_assets(src.hf_assets(), tmp / HF_ASSETS_DIR)
        report.tensors_written, report.bytes_written, report.seconds = bar.tensors, bar.bytes, bar.seconds
        report.files_written = tp * pp
    return report


# ---- reading a Megatron checkpoint back as HF tensors (verification, tests) --------------------
def iter_hf_tensors(meg_dir: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, full tensor) for every HF tensor of a megarl Megatron checkpoint, one mapping at a time."""
    ckpt = MegatronCheckpoint(meg_dir)
    meta, spec = ckpt.meta, ckpt.spec
    for pp_rank in range(meta.pp):
        for name, mapping in stage_mappings(spec, pp_rank, meta.pp, layer_impl="local", role=meta.role):
            if mapping is OUTPUT_TIED:
                continue
            shards = [ckpt.reader(r, pp_rank).get(name) for r in range(meta.tp)]
            yield from zip(mapping.hf, mapping.to_hf(shards, spec))
