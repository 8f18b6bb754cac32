"""Streaming checkpoint conversion: HF <-> Megatron's torch_dist, one tensor at a time.

HF -> torch_dist: each parameter of megatron-core's model (its keys, shapes and chunks from
`torch_dist_files.model_layout`, a model built on the meta device) is made from its HF tensors
through the per-architecture mapping (megarl.models.mapping) and appended to the torch_dist file;
torch_dist -> HF reads each parameter back from whichever chunks cover it (any TP/PP layout that
megatron-core, Megatron-LM or Megatron-Bridge wrote) and writes its HF tensors into safetensors
files planned up front. `write_hf_model` is also the route of the trainer's HF export (the
tensors gathered from the live model, models/export.gather_hf_tensors). Peak memory is about
two of the largest tensor, whatever the model size; no torch.distributed beyond a world of one.

Built-in checks: every HF tensor is consumed exactly once and produced exactly once, with the
shapes its config implies; the numerics-relevant config fields survive the round trip; outputs
appear only complete (temporary directory, renamed at the end).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from pathlib import Path
from typing import Iterable

import torch

from megarl.checkpoint.format import (
    HF_ASSETS_DIR,
    HF_INDEX_FILE,
    HFSafetensorsDir,
    atomic_output_dir,
    config_with_dtype,
    copy_hf_assets,
    dtype_name,
    parse_dtype,
    read_hf_config,
)
from megarl.checkpoint.progress import TransferProgress
from megarl.checkpoint.safetensors_stream import CheckpointFormatError, RunCopier, SafetensorsWriter, TensorRuns, tensor_nbytes
from megarl.models.mapping import OUTPUT_TIED, hf_tensor_shapes, stage_mappings
from megarl.models.spec import ModelSpec

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



# ---- checks on the HF side --------------------------------------------------------------------
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



# ---- writing an HF model directory from a stream of tensors ------------------------------------
def plan_hf_files(spec: ModelSpec, pp: int, dtype: torch.dtype, max_shard_bytes: int,
                  layer_impl: str = "local") -> list[list[tuple[str, tuple[int, ...]]]]:
    """HF tensors in mapping order (each produced exactly once; the order of `layer_impl`'s layer
    table), grouped into files of at most `max_shard_bytes` (a tensor larger than that gets a file
    of its own)."""
    shapes = hf_tensor_shapes(spec)
    order = [
        h
        for p in range(pp)
        for _, mapping in stage_mappings(spec, p, pp, layer_impl=layer_impl)
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


def write_hf_model(out_dir: str | Path, spec: ModelSpec, hf_config: dict, assets_dir: str | Path | None,
                   tensors: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype, *,
                   max_shard_bytes: int = DEFAULT_HF_SHARD_BYTES, progress: bool = False,
                   report: ConversionReport | None = None) -> ConversionReport:
    """Write `tensors` ((HF name, tensor or TensorRuns) in the mapping's order, each HF tensor once)
    as a standard HF directory: sharded safetensors with model.safetensors.index.json, config.json
    (its dtype set to `dtype`) and the tokenizer files of `assets_dir`. Each tensor goes to disk as
    it comes (runs: copied file to file)."""
    from megarl.models.build import layer_impl

    # The order both producers iterate in: gather_hf_tensors and read_hf_tensors follow the live layer table.
    hf_files = plan_hf_files(spec, 1, dtype, max_shard_bytes, layer_impl())
    names = [_hf_file_name(i, len(hf_files)) for i in range(len(hf_files))]
    total = sum(tensor_nbytes(shape, dtype) for f in hf_files for _, shape in f)
    report = report or ConversionReport("to_hf", "", str(out_dir), 1, 1, dtype_name(dtype))
    weight_map: dict[str, str] = {}
    with atomic_output_dir(out_dir) as tmp, TransferProgress(f"-> HF {out_dir}", total, progress) as bar, RunCopier() as copier:
        stream = iter(tensors)
        for file_name, entries in zip(names, hf_files):
            with SafetensorsWriter(tmp / file_name, [(n, dtype, s) for n, s in entries], {"format": "pt"}) as writer:
                for want, _ in entries:
                    name, tensor = next(stream, (None, None))
                    if name is None:
                        raise CheckpointFormatError(f"{out_dir}: the source ended before HF tensor {want!r}")
                    if isinstance(tensor, TensorRuns):
                        bar.advance(writer.write_runs(name, tensor, copier))
                    else:
                        bar.advance(writer.write(name, tensor.to(dtype)))
                    weight_map[name] = file_name
        extra = next(stream, None)
        if extra is not None:
            raise CheckpointFormatError(f"{out_dir}: the source has a tensor {extra[0]!r} beyond the HF model's")
        (tmp / HF_INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        if assets_dir is not None and Path(assets_dir).is_dir():
            copy_hf_assets(assets_dir, tmp)
        else:
            report.notes.append(f"{assets_dir} is missing: no tokenizer files copied")
        (tmp / "config.json").write_text(json.dumps(config_with_dtype(hf_config, dtype), indent=2) + "\n")
        _check_numerics_config(ModelSpec.from_hf(tmp), spec, tmp / "config.json")
        report.tensors_written, report.bytes_written, report.seconds = bar.tensors, bar.bytes, bar.seconds
        report.files_written = len(names)
    return report


def _check_numerics_config(written: ModelSpec, expected: ModelSpec, where: Path) -> None:
    fields = ("rope_theta", "rope_scaling", "rms_norm_eps", "tie_word_embeddings", "sliding_window", "vocab_size", "head_dim", "num_kv_heads", "qkv_bias")
    wrong = [f for f in fields if getattr(written, f) != getattr(expected, f)]
    if wrong:
        raise AssertionError(f"{where}: config fields {wrong} changed in conversion; this is a megarl bug")



# ---- HF -> torch_dist ---------------------------------------------------------------------------
def _offline_layout(spec: ModelSpec, dtype: torch.dtype, vocab_tp: int):
    """(spec with the vocab padded as at TP `vocab_tp`, its torch_dist layout) in a world of one."""
    from megarl.checkpoint.torch_dist_files import model_layout
    from megarl.runtime.distributed import init_runtime

    init_runtime(1, 1)
    spec = dataclasses.replace(spec, vocab_multiple=spec.vocab_multiple * vocab_tp)
    return spec, model_layout(spec, dtype)


def write_torch_dist_model(out: str | Path, spec: ModelSpec, params, layout, hf_assets_dir: str | Path,
                           dtype: torch.dtype, *, iteration: int, total: int, progress: bool, report: ConversionReport):
    """Write `params` ((state-dict name, whole parameter or its chunks' TensorRuns) in layout order)
    as a Megatron-LM model checkpoint root: tracker, iter_NNNNNNN/ (torch_dist), hf/ (config and
    tokenizer)."""
    import megarl.checkpoint.torch_dist as torch_dist
    from megarl.checkpoint.torch_dist_files import TorchDistWriter

    with atomic_output_dir(out) as tmp, TransferProgress(f"-> torch_dist {out}", total, progress) as bar, RunCopier() as copier:
        iter_dir = tmp / torch_dist.iteration_dir_name(iteration)
        iter_dir.mkdir()
        writer = TorchDistWriter(iter_dir, layout)
        try:
            for name, value in params:
                bar.advance(writer.write(name, value) if torch.is_tensor(value) else writer.write_runs(name, value, copier, dtype))
        except BaseException:
            writer.abort()
            raise
        args = torch_dist.megatron_lm_args(spec, layout.config, 1, 1, dtype)
        writer.close({"args": args, "iteration": iteration, "checkpoint_version": torch_dist.CHECKPOINT_VERSION})
        copy_hf_assets(hf_assets_dir, tmp / HF_ASSETS_DIR)
        torch_dist.write_tracker(tmp, iteration)
        report.tensors_written, report.seconds = bar.tensors, bar.seconds
        report.bytes_written = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        report.files_written = sum(1 for p in tmp.rglob("*") if p.is_file())
    report.notes.append(f"torch_dist, loadable at any TP/PP with {spec.padded_vocab_size(1)} padded vocab rows")
    return report


def hf_to_torch_dist(hf_dir: str | Path, out: str | Path, *, dtype: str | torch.dtype | None = None,
                     iteration: int = 0, vocab_tp: int = 1, progress: bool = False) -> ConversionReport:
    """Write an HF model as a Megatron-LM torch_dist checkpoint (`out/latest_checkpointed_iteration.txt`,
    `out/iter_NNNNNNN/`, `out/hf/`), one parameter at a time. Its vocab is padded as Megatron pads
    it at TP `vocab_tp` (loadable at any TP/PP with that padded vocab)."""
    from megarl.checkpoint.format import check_output_dir
    from megarl.checkpoint.torch_dist_files import param_runs_from_hf

    hf_dir = Path(hf_dir)
    check_output_dir(out)
    config = read_hf_config(hf_dir)
    spec = ModelSpec.from_hf(hf_dir)
    check_mapping_coverage(spec, 1)
    src = HFSafetensorsDir(hf_dir)
    skipped = _check_hf_inputs(src, spec)
    _check_hf_dtypes(src, config)
    out_dtype = parse_dtype(dtype) or src.dtype("model.embed_tokens.weight")
    spec, layout = _offline_layout(spec, out_dtype, vocab_tp)
    report = ConversionReport("hf_to_torch_dist", str(hf_dir), str(out), vocab_tp, 1, dtype_name(out_dtype))
    if skipped:
        report.notes.append(f"skipped derived/duplicate HF tensors: {skipped}")

    def params():
        for name, runs, sources in param_runs_from_hf(spec, layout, lambda h: src.readers[src.weight_map[h]].location(h)):
            report.tensors_read += len(sources)
            report.bytes_read += sum(tensor_nbytes(loc.shape, loc.dtype) for loc in sources)
            yield name, runs

    total = sum(tensor_nbytes(p.shape, out_dtype) for p in layout.params)
    return write_torch_dist_model(out, spec, params(), layout, hf_dir, out_dtype,
                                  iteration=iteration, total=total, progress=progress, report=report)


# ---- torch_dist -> HF ---------------------------------------------------------------------------
def open_torch_dist_model(src: str | Path, hf_assets: str | Path | None = None, *, as_runs: bool = True):
    """(spec, HF config, assets dir, HF tensor stream, reader) of a torch_dist model checkpoint
    (megarl, Megatron-LM or Megatron-Bridge: a root with the tracker, an iter dir, or a megarl
    resume checkpoint's actor). The stream yields (HF name, TensorRuns or tensor; tensors only
    without `as_runs`) in the mapping's order."""
    import megarl.checkpoint.torch_dist as torch_dist
    from megarl.checkpoint.torch_dist_files import TorchDistReader, read_hf_tensors

    directory = torch_dist.resolve_checkpoint_dir(src)
    assets = torch_dist.hf_assets_of(directory if directory.name == "torch_dist" else Path(src), hf_assets)
    spec = ModelSpec.from_hf(assets)
    reader = TorchDistReader(directory)
    stored = reader.keys()
    prefix = torch_dist.model_prefix(stored, directory)
    embedding = stored.get(prefix + "embedding.word_embeddings.weight")
    if embedding is None or not hasattr(embedding, "size"):
        raise CheckpointFormatError(f"{directory}: no embedding.word_embeddings.weight; not a megatron-core GPT checkpoint")
    rows = embedding.size[0]
    vocab_tp = next((t for t in range(1, 1025) if spec.padded_vocab_size(t) == rows), None)
    if vocab_tp is None:
        raise CheckpointFormatError(f"{directory}: the embedding has {rows} rows, which no TP size pads "
                                    f"{assets / 'config.json'}'s vocab_size={spec.vocab_size} to")
    spec, layout = _offline_layout(spec, embedding.properties.dtype, vocab_tp)
    return spec, read_hf_config(assets), assets, read_hf_tensors(reader, layout, spec, prefix, as_runs=as_runs), reader


def torch_dist_to_hf(src: str | Path, out: str | Path, *, hf_assets: str | Path | None = None,
                     dtype: str | torch.dtype | None = None, max_shard_bytes: int = DEFAULT_HF_SHARD_BYTES,
                     progress: bool = False) -> ConversionReport:
    """Write a torch_dist model checkpoint as an HF model directory, one parameter at a time. The HF
    config and tokenizer come from `<root>/hf/` or `hf_assets`."""
    from megarl.checkpoint.format import check_output_dir

    check_output_dir(out)
    start = time.perf_counter()
    spec, config, assets, tensors, reader = open_torch_dist_model(src, hf_assets)
    declared = parse_dtype(dtype)
    report = ConversionReport("torch_dist_to_hf", str(src), str(out), 1, 1, "")

    def counted():
        for name, value in tensors:
            report.tensors_read += 1
            report.bytes_read += (tensor_nbytes(value.sources[0].shape, value.sources[0].dtype) if isinstance(value, TensorRuns)
                                  else value.numel() * value.element_size())
            yield name, value

    stream = counted()
    first = next(stream)
    out_dtype = declared or (first[1].sources[0].dtype if isinstance(first[1], TensorRuns) else first[1].dtype)
    report.dtype = dtype_name(out_dtype)
    try:
        write_hf_model(out, spec, config, assets, _chain(first, stream), out_dtype, max_shard_bytes=max_shard_bytes,
                       progress=progress, report=report)
    finally:
        reader.close()
    report.seconds = time.perf_counter() - start
    return report


def _chain(first, rest):
    yield first
    yield from rest
