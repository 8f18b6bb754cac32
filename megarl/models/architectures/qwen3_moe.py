"""Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B): Qwen3's attention (q/k head norms, explicit head_dim)
with a routed mixture of experts in place of the MLP in the layers that `decoder_sparse_step` and
`mlp_only_layers` select (the rest keep a dense MLP of `intermediate_size`). Each token goes to the
top `num_experts_per_tok` of `num_experts` SwiGLU experts of width `moe_intermediate_size`, chosen by
a softmax router (`mlp.gate`); with `norm_topk_prob` the chosen probabilities are renormalized to
sum to 1. No shared experts.

On the Megatron side the layer is megatron-core's MoELayer: a TopKRouter (`mlp.router`) and the
experts as a SequentialMLP of per-expert MLPs with the local layer spec (CPU), or one grouped GEMM
(TEGroupedMLP) with Transformer Engine. Softmax-then-top-k with renormalization equals Megatron's
top-k-then-softmax (`moe_router_pre_softmax=False`); without renormalization Megatron takes the
softmax first (`moe_router_pre_softmax=True`).

The hub's checkpoints name each expert's weights (`mlp.experts.{i}.gate_proj/up_proj/down_proj`);
transformers 5 fuses them into 3-D tensors in memory but saves them under the hub's names, so the
mapping reads and writes those.
"""

from __future__ import annotations

from typing import Any

import torch

from megarl.models.architectures.base import _norm_names
from megarl.models.architectures.qwen3 import Qwen3
from megarl.models.mapping import GatedMLP, ParamMapping, Replicated, RowParallel
from megarl.models.spec import ModelSpec, UnsupportedModelError, register_architecture


def moe_layer_indices(cfg: dict[str, Any], num_layers: int) -> tuple[int, ...]:
    """The layers HF's Qwen3-MoE / Qwen2-MoE builds as sparse: every `decoder_sparse_step`-th
    (1-based) layer not listed in `mlp_only_layers`."""
    step = int(cfg.get("decoder_sparse_step", 1) or 1)
    dense = {int(i) for i in cfg.get("mlp_only_layers") or ()}
    return tuple(i for i in range(num_layers) if i not in dense and (i + 1) % step == 0)


@register_architecture
class Qwen3Moe(Qwen3):
    model_types = ("qwen3_moe",)
    models = "Qwen3-MoE (Qwen3-30B-A3B)"

    def family_fields(self, cfg: dict[str, Any], where: str) -> dict[str, Any]:
        fields = super().family_fields(cfg, where)
        experts = int(cfg.get("num_experts", cfg.get("num_local_experts", 0)) or 0)
        top_k = int(cfg.get("num_experts_per_tok", 0) or 0)
        if experts < 1 or not 1 <= top_k <= experts:
            raise UnsupportedModelError(
                f"{where}: num_experts={experts}, num_experts_per_tok={top_k}; a Qwen3-MoE config needs "
                "num_experts >= 1 and 1 <= num_experts_per_tok <= num_experts"
            )
        if "moe_intermediate_size" not in cfg:
            raise UnsupportedModelError(f"{where}: missing field 'moe_intermediate_size' (the experts' width)")
        if cfg.get("shared_expert_intermediate_size"):
            raise UnsupportedModelError(f"{where}: shared experts are not part of Qwen3-MoE; check model_type")
        num_layers = int(cfg["num_hidden_layers"])
        fields.update(
            num_experts=experts,
            moe_top_k=top_k,
            moe_ffn_hidden_size=int(cfg["moe_intermediate_size"]),
            norm_topk_prob=bool(cfg.get("norm_topk_prob", False)),
            moe_layers=moe_layer_indices(cfg, num_layers),
            router_aux_loss_coef=float(cfg.get("router_aux_loss_coef", 0.0) or 0.0),
            router_z_loss_coef=float(cfg.get("router_z_loss_coef", 0.0) or 0.0),
        )
        return fields

    def layer_mappings_at(self, spec: ModelSpec, layer_impl: str, layer: int) -> list[ParamMapping]:
        dense = self.layer_mappings(spec, layer_impl)
        if not spec.is_moe_layer(layer):
            return dense
        _, fused_mlp_norm = _norm_names(layer_impl)
        meg, hf = "decoder.layers.{layer}", "model.layers.{layer}"
        # The MLP norm: a module of its own in the MoE layer under TE too (not fused into a linear).
        attention = [m for m in dense if ".mlp." not in m.megatron and m.megatron != fused_mlp_norm]
        experts = f"{meg}.mlp.experts.local_experts.{{expert}}" if layer_impl == "local" else None
        if experts:
            fc1, fc2 = f"{experts}.linear_fc1.weight", f"{experts}.linear_fc2.weight"
        else:  # TEGroupedMLP: one weight per local expert, suffixed with its local index
            fc1, fc2 = f"{meg}.mlp.experts.linear_fc1.weight{{expert}}", f"{meg}.mlp.experts.linear_fc2.weight{{expert}}"
        expert = f"{hf}.mlp.experts.{{expert}}"
        return attention + [
            Replicated(f"{meg}.pre_mlp_layernorm.weight", f"{hf}.post_attention_layernorm.weight", dims=("hidden_size",)),
            Replicated(f"{meg}.mlp.router.weight", f"{hf}.mlp.gate.weight", dims=("num_experts", "hidden_size")),
            GatedMLP(fc1, (f"{expert}.gate_proj.weight", f"{expert}.up_proj.weight"), size="moe_ffn_hidden_size"),
            RowParallel(fc2, f"{expert}.down_proj.weight", dims=("hidden_size", "moe_ffn_hidden_size")),
        ]

    def megatron_config(self, spec: ModelSpec) -> dict[str, Any]:
        return dict(super().megatron_config(spec), **moe_megatron_config(spec))


def moe_megatron_config(spec: ModelSpec) -> dict[str, Any]:
    """TransformerConfig fields of a routed mixture of experts without shared experts."""
    aux = spec.router_aux_loss_coef
    return dict(
        num_moe_experts=spec.num_experts,
        moe_router_topk=spec.moe_top_k,
        moe_ffn_hidden_size=spec.moe_ffn_hidden_size,
        moe_router_score_function="softmax",
        moe_router_pre_softmax=not spec.norm_topk_prob,
        moe_router_load_balancing_type="aux_loss" if aux > 0 else "none",
        moe_aux_loss_coeff=aux,
        moe_z_loss_coeff=spec.router_z_loss_coef or None,
        moe_layer_freq=[int(spec.is_moe_layer(i)) for i in range(spec.num_layers)],
        moe_token_dispatcher_type="alltoall",
    )


def per_expert_views(hf_model) -> dict:
    """The hub's per-expert names of a transformers MoE model whose experts are fused in memory
    (transformers 5: `mlp.experts.gate_up_proj` [experts, 2 * width, hidden] with each expert's gate
    rows first, `mlp.experts.down_proj` [experts, hidden, width]), as views into those tensors: writing
    a view updates the model (the built-in server's weight updates arrive under the hub's names)."""
    views = {}
    for name, module in hf_model.named_modules():
        gate_up, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
        if not name.endswith("mlp.experts") or not (isinstance(gate_up, torch.Tensor) and gate_up.dim() == 3):
            continue
        width = gate_up.shape[1] // 2
        for e in range(gate_up.shape[0]):
            views[f"{name}.{e}.gate_proj.weight"] = gate_up[e, :width]
            views[f"{name}.{e}.up_proj.weight"] = gate_up[e, width:]
            views[f"{name}.{e}.down_proj.weight"] = down[e]
    return views
