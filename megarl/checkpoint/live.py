"""The trainer's side of megarl Megatron checkpoints: every rank loads or saves its own shard file.

`load_megatron_checkpoint(model, dir)` fills this rank's live model from the checkpoint file of
its (TP rank, PP stage); the checkpoint's layout must equal the run's (reshard it offline with
tools/reshard.py otherwise). Names are stored with Megatron's "local" layer names; under
Transformer Engine layers they are translated through the mapping.

`save_megatron_checkpoint(model, dir, hf_assets_dir)` is collective: data-parallel rank 0 of each
(TP, PP) position writes its file into `<dir>.tmp-<pid of rank 0>`, and after a barrier global
rank 0 writes megarl_checkpoint.json and renames the directory into place.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from megarl.checkpoint.convert import VALUE_HEAD, plan_files, plan_stage
from megarl.checkpoint.format import (
    HF_ASSETS_DIR,
    META_FILE,
    MegatronCheckpoint,
    MegatronCheckpointMeta,
    check_output_dir,
    copy_hf_assets,
    dtype_name,
    read_hf_config,
    shard_file_name,
)
from megarl.checkpoint.safetensors_stream import CheckpointFormatError, SafetensorsWriter
from megarl.models.export import unwrap_model
from megarl.models.mapping import stage_mappings
from megarl.runtime import collectives


def _layout():
    from megatron.core import parallel_state as ps

    return (
        ps.get_tensor_model_parallel_world_size(),
        ps.get_pipeline_model_parallel_world_size(),
        ps.get_tensor_model_parallel_rank(),
        ps.get_pipeline_model_parallel_rank(),
        ps.get_data_parallel_rank(),
    )


def _canonical_to_live_names(spec, pp_rank: int, pp: int, role: str) -> dict[str, str]:
    """Checkpoint ("local") name -> this process's parameter name (differs for TE norms)."""
    from megarl.models.build import layer_impl

    local = stage_mappings(spec, pp_rank, pp, layer_impl="local", role=role)
    live = stage_mappings(spec, pp_rank, pp, layer_impl=layer_impl(), role=role)
    return {a: b for (a, _), (b, _) in zip(local, live, strict=True)}


@torch.no_grad()
def load_megatron_checkpoint(model, meg_dir: str | Path) -> dict[str, int]:
    """Fill this rank's model from a megarl Megatron checkpoint. Returns {"params": n, "bytes": b}."""
    module = unwrap_model(model)
    spec, role = module.megarl_spec, getattr(module, "megarl_role", "actor")
    tp, pp, tp_rank, pp_rank, _ = _layout()
    ckpt = MegatronCheckpoint(meg_dir)
    meta = ckpt.meta
    if (meta.tp, meta.pp) != (tp, pp):
        raise CheckpointFormatError(
            f"{meg_dir}: checkpoint layout is tp={meta.tp} pp={meta.pp} but this run uses tp={tp} pp={pp}; "
            f"reshard it first: python tools/reshard.py --in {meg_dir} --out {meg_dir}_tp{tp}pp{pp} --tp {tp} --pp {pp}"
        )
    if ckpt.spec != spec:
        raise CheckpointFormatError(f"{meg_dir / META_FILE}: its config describes another model than the one built ({ckpt.spec} vs {spec})")
    if meta.role == "critic" and role == "actor":
        raise CheckpointFormatError(f"{meg_dir}: a critic checkpoint has no LM head; it cannot fill an actor")
    reader = ckpt.reader(tp_rank, pp_rank)
    params = dict(module.named_parameters())
    names = _canonical_to_live_names(spec, pp_rank, pp, role)
    if role == "critic" and pp_rank == pp - 1 and VALUE_HEAD in reader:
        names[VALUE_HEAD] = VALUE_HEAD  # a critic checkpoint carries the trained value head
    filled, nbytes = set(), 0
    for stored, live in names.items():
        if stored not in reader:
            raise CheckpointFormatError(f"{reader.path}: tensor {stored!r} is missing")
        if live not in params:
            raise CheckpointFormatError(f"the model has no parameter {live!r} for checkpoint tensor {stored!r} (mapping and model disagree)")
        tensor = reader.get(stored)
        target = params[live]
        if tuple(tensor.shape) != tuple(target.shape):
            raise CheckpointFormatError(f"{reader.path}: {stored!r} has shape {tuple(tensor.shape)}, the model expects {tuple(target.shape)}")
        target.copy_(tensor)
        filled.add(live)
        nbytes += tensor.numel() * tensor.element_size()
    fresh_head_ok = role == "critic" and VALUE_HEAD not in reader
    unfilled = [n for n in params if n not in filled and not (fresh_head_ok and n == VALUE_HEAD)]
    if unfilled:
        raise CheckpointFormatError(f"{meg_dir}: no checkpoint tensor fills model parameter(s) {unfilled[:5]}")
    return {"params": len(filled), "bytes": nbytes}


@torch.no_grad()
def save_megatron_checkpoint(model, out_dir: str | Path, hf_assets_dir: str | Path) -> Path:
    """Collective save of a live TP/PP model as a megarl Megatron checkpoint.

    `hf_assets_dir` holds config.json and tokenizer files (the base HF model directory, or the
    `hf/` directory of the checkpoint training started from). Every rank must call this.
    """
    module = unwrap_model(model)
    spec, role = module.megarl_spec, getattr(module, "megarl_role", "actor")
    tp, pp, tp_rank, pp_rank, dp_rank = _layout()
    out_dir = Path(out_dir)
    rank = dist.get_rank()
    failure: list[str | None] = [None]
    if rank == 0:
        try:
            check_output_dir(out_dir)
        except FileExistsError as err:
            failure[0] = str(err)
    tag = [str(os.getpid()) if rank == 0 else None]
    collectives.broadcast_objects(tag, src=0)
    collectives.broadcast_objects(failure, src=0)
    if failure[0]:
        raise FileExistsError(failure[0])
    tmp = out_dir.parent / f"{out_dir.name}.tmp-{tag[0]}"
    dtype = next(module.parameters()).dtype

    error = None
    path = tmp / shard_file_name(tp_rank, pp_rank)
    if dp_rank == 0:
        try:
            params = dict(module.named_parameters())
            names = _canonical_to_live_names(spec, pp_rank, pp, role)
            planned = plan_stage(spec, pp_rank, tp, pp, role)
            path.parent.mkdir(parents=True, exist_ok=True)
            with SafetensorsWriter(path, [(t.name, dtype, t.shape) for t in planned]) as writer:
                for t in planned:
                    live = VALUE_HEAD if t.mapping is None else names[t.name]
                    writer.write(t.name, params[live].detach())
        except Exception as err:  # reported collectively below so no rank hangs at the barrier
            error = f"rank {rank} ({path}): {err}"
    errors = collectives.all_gather_objects(error)
    errors = [e for e in errors if e]
    if not errors and rank == 0:
        try:
            config = read_hf_config(hf_assets_dir)
            meta = MegatronCheckpointMeta(tp=tp, pp=pp, dtype=dtype_name(dtype), role=role, hf_config=config, files=plan_files(spec, tp, pp, role))
            (tmp / META_FILE).write_text(meta.to_json())
            copy_hf_assets(hf_assets_dir, tmp / HF_ASSETS_DIR)
            check_output_dir(out_dir)
            if out_dir.exists():
                out_dir.rmdir()
            os.replace(tmp, out_dir)
        except Exception as err:
            errors.append(f"rank 0: {err}")
    final = [errors]
    collectives.broadcast_objects(final, src=0)
    if final[0]:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointFormatError(f"saving {out_dir} failed: {'; '.join(final[0])}")
    return out_dir
