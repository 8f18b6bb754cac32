"""Gathers a TP/PP-sharded Megatron model back into full Hugging Face tensors, chunk by chunk.

The one route from a live model to HF tensors: weight sync (`megarl.train.stages.sync`: the push to
rollout servers), the HF export during training (`megarl.checkpoint.manager.export_hf`, streamed
into safetensors files), the parity checks (`megarl.train.parity`) and tools/bench_sync.py. Every rank must iterate `gather_hf_tensors` to the
end (it runs collectives); only `dst` receives the tensors. Extra memory is about one chunk
(`chunk_bytes` of HF tensors, default 32 MB) at a time: on a sending rank its flattened local shards,
their TP-gathered copies (tp times that) and the full HF tensors joined from them; on `dst`, when
the chunk comes from a later pipeline stage, the received buffer.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.distributed as dist

from megarl.models.build import layer_impl
from megarl.models.mapping import OUTPUT_TIED, hf_tensor_shapes, stage_mappings_all_experts
from megarl.models.spec import ModelSpec
from megarl.models.unwrap import unwrap_model
from megarl.runtime import collectives


# 32 MB: over gloo (CPU) 8-32 MB chunks gathered a 0.99 GB model fastest (0.90 s, against 1.08 s
# one parameter at a time and 1.7-2.3 s for 128-512 MB chunks; docs/benchmarks.md, weight sync).
DEFAULT_CHUNK_BYTES = 32 << 20


@torch.no_grad()
def gather_hf_tensors(model, dst: int = 0, spec: ModelSpec | None = None,
                      chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (hf_name, full tensor) on global rank `dst`; other ranks yield nothing.

    Parameters travel in chunks of about `chunk_bytes` (of full HF tensors): one TP all-gather of
    the chunk's flattened shards, and one send from a later pipeline stage to `dst`, instead of
    one collective per parameter (hundreds of small NCCL/gloo calls per sync otherwise).
    Replicated parameters (norms) are not gathered. Yielded tensors may be views of the chunk's
    buffers or of the live parameters: copy them before the next one is requested.
    """
    from megatron.core import parallel_state as ps

    module = unwrap_model(model)
    spec = spec or module.megarl_spec
    role = getattr(module, "megarl_role", "actor")
    pp, my_stage = ps.get_pipeline_model_parallel_world_size(), ps.get_pipeline_model_parallel_rank()
    ep = ps.get_expert_model_parallel_world_size() if spec.is_moe else 1
    # Who holds what: the TP group of (stage, DP rank 0) holds the dense parameters; the expert-TP
    # group of (stage, EP rank e, expert-DP rank 0) holds EP rank e's experts.
    holders = {
        None: (ps.get_data_parallel_rank() == 0, ps.get_tensor_model_parallel_world_size(),
               ps.get_tensor_model_parallel_group()),
    }
    if spec.is_moe:
        mine = ps.get_expert_model_parallel_rank() if ep > 1 else 0
        for e in range(ep):
            holders[e] = (e == mine and ps.get_expert_data_parallel_rank() == 0,
                          ps.get_expert_tensor_parallel_world_size(), ps.get_expert_tensor_parallel_group())
    params = dict(module.named_parameters())
    rank = dist.get_rank()
    first_param = next(module.parameters())
    device, dtype = first_param.device, first_param.dtype
    shapes = hf_tensor_shapes(spec)

    for stage in range(pp):
        items = [(name, m, owner) for name, m, owner in stage_mappings_all_experts(spec, stage, pp, ep, layer_impl=layer_impl(), role=role)
                 if m is not OUTPUT_TIED]  # the tied output layer is the embedding, exported once
        # Chunk boundaries from the HF shapes, which every rank knows (sender and receiver agree).
        for chunk in _chunks(items, shapes, dtype, chunk_bytes):
            for owner in dict.fromkeys(owner for _, _, owner in chunk):  # dense first, then each EP rank's experts
                part = [(name, m) for name, m, o in chunk if o == owner]
                holds, tp, group = holders[owner]
                src = _source_rank(stage, owner)
                out = None
                if my_stage == stage and holds:
                    shards = _gather_chunk([params[name].detach() for name, _ in part], [m for _, m in part], tp, group)
                    if rank == src:
                        out = [t for (_, m), parts in zip(part, shards) for t in m.to_hf(parts, spec)]
                names = [hf for _, m in part for hf in m.hf]
                if src != dst:
                    out = _route(out, names, shapes, src, dst, device, dtype)
                if rank == dst:
                    yield from zip(names, out)


def _chunks(items, shapes, dtype, chunk_bytes: int):
    """Consecutive groups of (name, mapping) of about `chunk_bytes` of HF tensors each."""
    size = torch.empty((), dtype=dtype).element_size()
    chunk, used = [], 0
    for item in items:
        nbytes = sum(math.prod(shapes[hf]) for hf in item[1].hf) * size
        if chunk and used + nbytes > chunk_bytes:
            yield chunk
            chunk, used = [], 0
        chunk.append(item)
        used += nbytes
    if chunk:
        yield chunk


def _gather_chunk(local: list[torch.Tensor], mappings, tp: int, group) -> list[list[torch.Tensor]]:
    """Every TP rank's shard of each parameter ([shard per TP rank] per parameter), with one
    all-gather of the flattened sharded ones."""
    if tp == 1:
        return [[t] for t in local]
    sharded = [i for i, m in enumerate(mappings) if m.partition_dim is not None]
    out = [[t] for t in local]  # replicated: every rank holds the whole tensor
    if not sharded:
        return out
    flat = torch.cat([local[i].reshape(-1) for i in sharded])
    gathered = collectives.all_gather(flat, group=group)  # stays on the weights' device under NCCL
    sizes = [local[i].numel() for i in sharded]
    per_rank = [g.split(sizes) for g in gathered]
    for j, i in enumerate(sharded):
        out[i] = [per_rank[r][j].view(local[i].shape) for r in range(tp)]
    return out


_SOURCES: dict[tuple, dict[tuple, int]] = {}  # per parallel layout


def _source_rank(stage: int, owner: int | None) -> int:
    """Global rank that assembles the HF tensors of one stage's parameters: for the dense ones
    (owner None) the rank at (stage, TP rank 0, DP rank 0); for EP rank `owner`'s experts the rank
    at (stage, expert-TP rank 0, EP rank owner, expert-DP rank 0). Learned once from every rank."""
    from megatron.core import parallel_state as ps

    layout = (dist.get_world_size(), ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size(),
              ps.get_expert_model_parallel_world_size())
    if layout not in _SOURCES:
        me = (ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank(), ps.get_data_parallel_rank(),
              ps.get_expert_tensor_parallel_rank(), ps.get_expert_model_parallel_rank(), ps.get_expert_data_parallel_rank())
        sources: dict[tuple, int] = {}
        for r, (pp_rank, tp_rank, dp_rank, etp_rank, ep_rank, edp_rank) in enumerate(collectives.all_gather_objects(me)):
            if tp_rank == 0 and dp_rank == 0:
                sources.setdefault((pp_rank, None), r)
            if etp_rank == 0 and edp_rank == 0:
                sources.setdefault((pp_rank, ep_rank), r)
        _SOURCES[layout] = sources
    return _SOURCES[layout][(stage, owner)]


def _route(tensors, names, shapes, src, dst, device, dtype):
    """Send one chunk of HF tensors from `src` to `dst` as one flat message."""
    rank = dist.get_rank()
    if rank == src:
        collectives.send(torch.cat([t.reshape(-1) for t in tensors]), dst=dst)
        return None
    if rank == dst:
        sizes = [math.prod(shapes[name]) for name in names]
        buf = torch.empty(sum(sizes), dtype=dtype, device=device)
        collectives.recv(buf, src=src)
        return [part.view(shapes[name]) for part, name in zip(buf.split(sizes), names)]
    return None
