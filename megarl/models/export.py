"""Gathers a TP/PP-sharded Megatron model back into full Hugging Face tensors, one at a time.

Used by weight sync (push to rollout servers), HF export of checkpoints and parity tests. Every
rank must iterate `gather_hf_tensors` to the end (it runs collectives); only `dst` receives
the tensors. Peak extra memory is one full parameter (plus its TP shards).
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.distributed as dist

from megarl.models.mapping import OUTPUT_TIED, hf_tensor_shapes, stage_mappings
from megarl.models.spec import ModelSpec


def unwrap_model(model):
    """The Megatron model inside DDP / Float16Module wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


@torch.no_grad()
def gather_hf_tensors(model, dst: int = 0, spec: ModelSpec | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (hf_name, full tensor) on global rank `dst`; other ranks yield nothing."""
    from megatron.core import parallel_state as ps

    from megarl.models.build import layer_impl

    module = unwrap_model(model)
    spec = spec or module.megarl_spec
    role = getattr(module, "megarl_role", "actor")
    tp, pp = ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size()
    my_stage, tp_group = ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_group()
    holds_stage_copy = ps.get_data_parallel_rank() == 0
    params = dict(module.named_parameters())
    rank = dist.get_rank()
    first_param = next(module.parameters())
    device, dtype = first_param.device, first_param.dtype
    shapes = hf_tensor_shapes(spec)

    for stage in range(pp):
        # Global rank of (this stage, TP rank 0, DP rank 0): the sender for this stage.
        src = _stage_source_rank(stage)
        for name, mapping in stage_mappings(spec, stage, pp, layer_impl=layer_impl(), role=role):
            if mapping is OUTPUT_TIED:
                continue  # the tied output layer is the embedding, exported once
            tensors = None
            if my_stage == stage and holds_stage_copy:
                local = params[name].detach()
                if tp > 1:
                    shards = [torch.empty_like(local) for _ in range(tp)]
                    dist.all_gather(shards, local.contiguous(), group=tp_group)
                else:
                    shards = [local]
                if rank == src:
                    tensors = mapping.to_hf(shards, spec)
            if src != dst:
                tensors = _route(tensors, mapping, shapes, src, dst, device, dtype)
            if rank == dst:
                yield from zip(mapping.hf, tensors)


_FIRST_PP_RANKS: list[int] | None = None


def _stage_source_rank(stage: int) -> int:
    """Global rank holding (this stage, TP rank 0, DP rank 0): the pipeline group of global rank 0."""
    global _FIRST_PP_RANKS
    if _FIRST_PP_RANKS is None:
        from megatron.core import parallel_state as ps

        mine = torch.tensor(dist.get_process_group_ranks(ps.get_pipeline_model_parallel_group()), dtype=torch.int64)
        dist.broadcast(mine, src=0)
        _FIRST_PP_RANKS = mine.tolist()
    return _FIRST_PP_RANKS[stage]


def _route(tensors, mapping, shapes, src, dst, device, dtype):
    """Send the HF tensors of one mapping from `src` to `dst` (point-to-point)."""
    rank = dist.get_rank()
    if rank == src:
        for t in tensors:
            dist.send(t.contiguous(), dst=dst)
        return None
    if rank == dst:
        out = []
        for name in mapping.hf:
            buf = torch.empty(shapes[name], dtype=dtype, device=device)
            dist.recv(buf, src=src)
            out.append(buf)
        return tuple(out)
    return None
