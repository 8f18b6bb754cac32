"""Qwen3 dense: the shared decoder with RMSNorm on each query and key head (q_norm, k_norm over
head_dim, before RoPE), no q/k/v biases, and an explicit head_dim that may differ from
hidden_size / num_attention_heads. Megatron builds the head norms with `qk_layernorm=True`."""

from __future__ import annotations

from typing import Any

from megarl.models.architectures.base import Architecture
from megarl.models.architectures.qwen2 import reject_per_layer_windows
from megarl.models.mapping import ParamMapping, Replicated
from megarl.models.spec import ModelSpec, register_architecture


@register_architecture
class Qwen3(Architecture):
    model_types = ("qwen3",)
    models = "Qwen3 dense"

    def family_fields(self, cfg: dict[str, Any], where: str) -> dict[str, Any]:
        reject_per_layer_windows(cfg, where)
        return {}

    def layer_mappings(self, spec: ModelSpec, layer_impl: str) -> list[ParamMapping]:
        meg, hf = "decoder.layers.{layer}.self_attention", "model.layers.{layer}.self_attn"
        return super().layer_mappings(spec, layer_impl) + [
            Replicated(f"{meg}.q_layernorm.weight", f"{hf}.q_norm.weight", dims=("head_dim",)),
            Replicated(f"{meg}.k_layernorm.weight", f"{hf}.k_norm.weight", dims=("head_dim",)),
        ]

    def megatron_config(self, spec: ModelSpec) -> dict[str, Any]:
        return {"qk_layernorm": True}
