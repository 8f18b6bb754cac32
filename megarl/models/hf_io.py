"""Lazy reading of Hugging Face safetensors checkpoints and loading them into Megatron models.

`HFCheckpoint` opens a model directory (single `model.safetensors` or a sharded set with
`model.safetensors.index.json`) and reads one tensor at a time, so memory does not grow with
the model. `load_hf_into_model` fills this rank's Megatron actor/critic through the shared
mapping declaration (megarl.models.mapping).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from megarl.models.mapping import stage_mappings
from megarl.models.spec import ModelSpec


class CheckpointError(ValueError):
    """A checkpoint on disk is missing, incomplete or corrupt (the message names the file)."""


class HFCheckpoint:
    def __init__(self, hf_dir: str | Path):
        self.dir = Path(hf_dir)
        if not self.dir.is_dir():
            raise CheckpointError(f"{self.dir}: not a directory; pass a Hugging Face model directory")
        index = self.dir / "model.safetensors.index.json"
        single = self.dir / "model.safetensors"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as err:
                raise CheckpointError(f"{index}: not a valid safetensors index ({err})") from err
        elif single.is_file():
            weight_map = {name: single.name for name in self._keys(single)}
        else:
            raise CheckpointError(
                f"{self.dir}: no model.safetensors or model.safetensors.index.json "
                "(only safetensors checkpoints are supported; convert .bin with transformers first)"
            )
        missing = sorted({f for f in weight_map.values() if not (self.dir / f).is_file()})
        if missing:
            raise CheckpointError(f"{index}: lists shard file(s) that do not exist: {', '.join(missing)}")
        self.weight_map: dict[str, str] = weight_map
        self._handles: dict[str, object] = {}

    @staticmethod
    def _keys(path: Path) -> list[str]:
        try:
            with safe_open(str(path), framework="pt") as f:
                return list(f.keys())
        except Exception as err:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"{path}: cannot read safetensors header ({err}); the file is corrupt or truncated") from err

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def names(self) -> list[str]:
        return list(self.weight_map)

    def get(self, name: str) -> torch.Tensor:
        if name not in self.weight_map:
            raise CheckpointError(f"{self.dir}: tensor {name!r} is not in the checkpoint")
        file = self.weight_map[name]
        handle = self._handles.get(file)
        if handle is None:
            try:
                handle = safe_open(str(self.dir / file), framework="pt")
            except Exception as err:
                raise CheckpointError(f"{self.dir / file}: cannot open ({err}); the shard is corrupt or truncated") from err
            self._handles[file] = handle
        try:
            return handle.get_tensor(name)
        except Exception as err:
            raise CheckpointError(f"{self.dir / file}: cannot read tensor {name!r} ({err}); the shard is corrupt") from err

    def close(self) -> None:
        self._handles.clear()


@torch.no_grad()
def load_hf_into_model(model, hf_dir: str | Path, spec: ModelSpec | None = None) -> dict[str, int]:
    """Copy an HF checkpoint into this rank's Megatron model. Returns {"params": n, "bytes": b}.

    Every parameter of the model is filled exactly once (the critic's value head excepted);
    a missing tensor or a shape mismatch raises CheckpointError naming it.
    """
    from megatron.core import parallel_state as ps

    spec = spec or model.megarl_spec
    role = getattr(model, "megarl_role", "actor")
    tp, tp_rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    pp, pp_rank = ps.get_pipeline_model_parallel_world_size(), ps.get_pipeline_model_parallel_rank()
    ep, ep_rank = ps.get_expert_model_parallel_world_size(), ps.get_expert_model_parallel_rank()
    etp, etp_rank = ps.get_expert_tensor_parallel_world_size(), ps.get_expert_tensor_parallel_rank()
    from megarl.models.build import layer_impl

    params = dict(model.named_parameters())
    ckpt = HFCheckpoint(hf_dir)
    filled, nbytes = set(), 0
    try:
        for name, mapping in stage_mappings(spec, pp_rank, pp, layer_impl=layer_impl(), role=role, ep_rank=ep_rank, ep=ep):
            if name not in params:
                raise CheckpointError(f"Megatron model has no parameter {name!r} (mapping and model disagree)")
            hf = []
            for hf_name in mapping.hf:
                if hf_name not in ckpt:
                    raise CheckpointError(f"{hf_dir}: tensor {hf_name!r} (for {name}) is missing from the checkpoint")
                hf.append(ckpt.get(hf_name))
            if mapping.expert is None:
                shard = mapping.to_megatron_shard(hf, tp_rank, tp, spec)
            else:  # experts split over the expert-tensor-parallel group
                shard = mapping.to_megatron_shard(hf, etp_rank, etp, spec)
            target = params[name]
            if tuple(shard.shape) != tuple(target.shape):
                raise CheckpointError(
                    f"{hf_dir}: {mapping.hf} gives shape {tuple(shard.shape)} for {name}, model expects {tuple(target.shape)}"
                )
            target.copy_(shard)
            filled.add(name)
            nbytes += shard.numel() * shard.element_size()
    finally:
        ckpt.close()
    unfilled = [n for n in params if n not in filled and not (role == "critic" and n == "output_layer.weight")]
    if unfilled:
        raise CheckpointError(f"{hf_dir}: no checkpoint tensor fills model parameter(s) {unfilled[:5]}")
    return {"params": len(filled), "bytes": nbytes}
