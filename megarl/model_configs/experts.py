"""The mixture-of-experts facts of a Hugging Face config.json (Qwen3-MoE, Qwen2-MoE spelling), read as
plain JSON, and the expert-parallel layout checks megatron-core makes of them.

A layer is a MoE layer when it is not in `mlp_only_layers` and `(layer + 1) % decoder_sparse_step == 0`
(transformers' Qwen3MoeDecoderLayer / Qwen2MoeDecoderLayer); the other layers keep the dense MLP of
`intermediate_size`. Qwen2-MoE adds one shared expert of `shared_expert_intermediate_size` (with a
one-output gate) to every MoE layer; Qwen3-MoE has none.

Expert parallelism (`actor.ep`) splits each MoE layer's experts over `ep` ranks. megatron-core 0.16.1
(`parallel_state.initialize_model_parallel`) builds the expert groups over the same world as the dense
ones: world % (expert_tp x ep x pp) == 0, and expert data parallelism is world / (expert_tp x ep x pp).
The plan assumes expert_tensor_parallel_size = EXPERT_TP = 1 (each expert whole on its EP rank, as
slime's `--expert-tensor-parallel-size 1`), so ep must divide tp x dp, the ranks of one pipeline stage.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

EXPERT_TP = 1  # expert_tensor_parallel_size the plan and the layout checks assume


@dataclasses.dataclass(frozen=True)
class Experts:
    num_experts: int
    top_k: int
    ffn_hidden_size: int  # moe_intermediate_size: one expert's SwiGLU width
    moe_layers: tuple[int, ...]  # indices of the MoE layers (the rest are dense)
    shared_ffn_hidden_size: int = 0  # Qwen2-MoE's shared expert (0: none)

    @classmethod
    def from_hf(cls, config: dict[str, Any]) -> "Experts | None":
        """The config's experts, or None for a dense model (no `num_experts`, or 0). transformers 5 saves
        Qwen3-MoE's `num_experts` as `num_local_experts` (its attribute_map); both spellings are read."""
        num = int(config.get("num_experts") or config.get("num_local_experts") or 0)
        if num <= 0:
            return None
        layers = int(config["num_hidden_layers"])
        step = int(config.get("decoder_sparse_step") or 1)
        dense = set(config.get("mlp_only_layers") or [])
        moe_layers = tuple(i for i in range(layers) if i not in dense and (i + 1) % step == 0)
        return cls(num_experts=num, top_k=int(config["num_experts_per_tok"]),
                   ffn_hidden_size=int(config["moe_intermediate_size"]), moe_layers=moe_layers,
                   shared_ffn_hidden_size=int(config.get("shared_expert_intermediate_size") or 0))

    @classmethod
    def from_hf_path(cls, path: str | Path) -> "Experts | None":
        """From a config.json, or a directory holding one."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        return cls.from_hf(json.loads(path.read_text()))

    def expert_params(self, hidden: int) -> int:
        """Params of one routed expert (gate, up and down projections)."""
        return 3 * hidden * self.ffn_hidden_size


def expert_data_parallel(tp: int, dp: int, ep: int) -> int:
    """Ranks that hold a copy of the same experts (megatron-core's expert data-parallel size, pp aside)."""
    return tp * dp // (EXPERT_TP * ep)


def ep_choices(experts: Experts, stage_ranks: int) -> list[int]:
    """The expert-parallel sizes that split the experts evenly and divide a pipeline stage's ranks."""
    return [e for e in range(1, stage_ranks + 1) if stage_ranks % (EXPERT_TP * e) == 0 and experts.num_experts % e == 0]


def check_experts(experts: Experts | None, ep: int, field: str = "actor") -> None:
    """Raise ValueError when `ep` cannot split this model's experts (or the model has none)."""
    if experts is None:
        if ep > 1:
            raise ValueError(f"{field}.ep={ep} splits experts, but the model is dense (its config.json has no num_experts); "
                             f"set {field}.ep=1")
        return
    if experts.num_experts % ep:
        choices = [e for e in range(1, experts.num_experts + 1) if experts.num_experts % e == 0]
        raise ValueError(f"{field}.ep={ep} does not divide num_experts={experts.num_experts}; choose {field}.ep from {choices}")


def check_expert_world(ep: int, tp: int, pp: int, world: int, field: str = "actor") -> None:
    """Raise ValueError unless megatron-core can build the expert groups: world % (expert_tp x ep x pp) == 0.
    Callers have checked world % (tp x pp) == 0 first."""
    if world % (EXPERT_TP * ep * pp):
        stage = world // pp
        fits = [e for e in range(1, stage + 1) if stage % (EXPERT_TP * e) == 0]
        raise ValueError(
            f"{field}.ep={ep} must divide the {stage} ranks of a pipeline stage ({field}.tp={tp} x data-parallel "
            f"{stage // tp}: megatron-core needs world {world} % (ep x pp = {ep * pp}) == 0); "
            f"choose {field}.ep from {fits} or change the rank count")
