"""Reading megarl's retired own Megatron layout, once, to migrate it to torch_dist.

That layout (megarl before torch_dist became its only Megatron format) is a directory with
`megarl_checkpoint.json` (tp, pp, dtype, role, the HF config) and one safetensors file per
(TP rank, PP stage), `mp_rank_TT_PPP/model.safetensors`, holding that rank's Megatron parameters
under the "local" layer names, plus `hf/`. `megarl_layout_to_torch_dist` gathers each parameter's
TP shards back into HF tensors through the mapping and streams them into the torch_dist converter:

    python tools/convert_megarl_layout_to_torch_dist.py --in OLD_DIR --out NEW_DIR
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from megarl.checkpoint.format import HF_ASSETS_DIR, parse_dtype
from megarl.checkpoint.safetensors_stream import CheckpointFormatError, SafetensorsReader

META_FILE = "megarl_checkpoint.json"


def shard_file_name(tp_rank: int, pp_rank: int) -> str:
    return f"mp_rank_{tp_rank:02d}_{pp_rank:03d}/model.safetensors"


def read_meta(old_dir: Path) -> dict:
    path = old_dir / META_FILE
    if not path.is_file():
        raise CheckpointFormatError(f"{path}: missing; {old_dir} is not a checkpoint in megarl's old layout")
    try:
        meta = json.loads(path.read_text())
        if meta.get("format") != "megarl-megatron" or meta.get("role") != "actor":
            raise ValueError(f"format={meta.get('format')!r} role={meta.get('role')!r}; expected an actor in 'megarl-megatron'")
        return meta
    except (ValueError, AttributeError) as err:
        raise CheckpointFormatError(f"{path}: not a megarl actor checkpoint description ({err})") from err


def read_hf_tensors(old_dir: str | Path, spec):
    """(HF name, tensor) of an old-layout actor checkpoint, in the mapping's order."""
    from megarl.models.mapping import OUTPUT_TIED, stage_mappings

    old_dir = Path(old_dir)
    meta = read_meta(old_dir)
    readers = {}

    def reader(tp_rank, pp_rank):
        if (tp_rank, pp_rank) not in readers:
            readers[tp_rank, pp_rank] = SafetensorsReader(old_dir / shard_file_name(tp_rank, pp_rank))
        return readers[tp_rank, pp_rank]

    for pp_rank in range(meta["pp"]):
        for name, mapping in stage_mappings(spec, pp_rank, meta["pp"], layer_impl="local"):
            if mapping is OUTPUT_TIED:
                continue
            shards = [reader(r, pp_rank).get(name) for r in range(meta["tp"])]
            yield from zip(mapping.hf, mapping.to_hf(shards, spec))


def megarl_layout_to_torch_dist(old_dir: str | Path, out: str | Path, *, iteration: int = 0, progress: bool = False):
    """Convert an old-layout megarl actor checkpoint (any TP/PP) to a torch_dist model checkpoint
    padded as it was (its TP size)."""
    from megarl.checkpoint.convert import ConversionReport, _offline_layout, write_torch_dist_model
    from megarl.checkpoint.format import dtype_name
    from megarl.checkpoint.torch_dist_files import params_from_hf
    from megarl.models.spec import ModelSpec

    old_dir = Path(old_dir)
    meta = read_meta(old_dir)
    dtype = parse_dtype(meta["dtype"])
    spec = ModelSpec.from_hf(meta["hf_config"])
    stream = read_hf_tensors(old_dir, spec)
    spec, layout = _offline_layout(spec, dtype, meta["tp"])
    report = ConversionReport("megarl_layout_to_torch_dist", str(old_dir), str(out), meta["tp"], meta["pp"], dtype_name(dtype))
    pending: dict[str, torch.Tensor] = {}

    def read_hf(names):  # the layout's order differs from the old files' by a few tensors per layer
        while any(n not in pending for n in names):
            name, tensor = next(stream)
            pending[name] = tensor
        report.tensors_read += len(names)
        return [pending.pop(n) for n in names]

    total = sum(torch.Size(p.shape).numel() * dtype.itemsize for p in layout.params)
    assets = old_dir / HF_ASSETS_DIR
    params = params_from_hf(spec, layout, read_hf, dtype)
    return write_torch_dist_model(out, spec, params, layout, assets, dtype, iteration=iteration, total=total,
                                  progress=progress, report=report)
