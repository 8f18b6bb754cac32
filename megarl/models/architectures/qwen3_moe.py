"""Qwen3-MoE (Qwen3-30B-A3B), recognised for planning only: `megarl submit --dry-run` and the config
checks read its config.json (the attention is Qwen3's; megarl.model_configs.experts reads the experts).
Building, converting or syncing it needs the Qwen3-MoE layer table (megatron-core's MoE layer and the
hub's `mlp.experts.{i}.*` names), which this module does not declare: every such use is refused here
rather than built as a dense Qwen3."""

from __future__ import annotations

from typing import Any

from megarl.models.architectures.qwen3 import Qwen3
from megarl.models.mapping import ParamMapping
from megarl.models.spec import ModelSpec, UnsupportedModelError, register_architecture

_PLAN_ONLY = ("Qwen3-MoE is recognised for planning (megarl submit --dry-run) but its expert layers are not "
              "declared in this build; use a build with the Qwen3-MoE architecture to train or convert it")


@register_architecture
class Qwen3Moe(Qwen3):
    model_types = ("qwen3_moe",)
    models = "Qwen3-MoE (planning only)"

    def layer_mappings(self, spec: ModelSpec, layer_impl: str) -> list[ParamMapping]:
        raise UnsupportedModelError(_PLAN_ONLY)

    def megatron_config(self, spec: ModelSpec) -> dict[str, Any]:
        raise UnsupportedModelError(_PLAN_ONLY)
