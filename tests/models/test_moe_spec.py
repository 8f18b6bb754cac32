"""Qwen3-MoE spec, layouts and mapping tables (no model built): the config fields it reads, the
layers it routes, clear errors for layouts that cannot split it, and each EP rank's share of the
experts under Megatron's local and HF's global numbering."""

import pytest
from tiny_models import TINY_CONFIGS

from megarl.models.architectures.qwen3_moe import moe_megatron_config
from megarl.models.mapping import stage_mappings, stage_mappings_all_experts
from megarl.models.spec import ModelSpec, UnsupportedModelError


def _spec(**overrides) -> ModelSpec:
    return ModelSpec.from_hf(dict(TINY_CONFIGS["qwen3_moe"], **overrides))


def test_reads_the_moe_fields_and_the_layers_it_routes():
    spec = _spec()
    assert (spec.num_experts, spec.moe_top_k, spec.moe_ffn_hidden_size, spec.norm_topk_prob) == (8, 2, 32, True)
    assert spec.moe_layers == (0, 2, 3) and spec.router_aux_loss_coef == 0.001
    assert _spec(decoder_sparse_step=2, mlp_only_layers=[]).moe_layers == (1, 3)  # every second layer, 1-based as HF
    config = moe_megatron_config(spec)
    assert config["moe_router_pre_softmax"] is False  # top-k of the logits, softmax over them = renormalized top-k
    assert moe_megatron_config(_spec(norm_topk_prob=False))["moe_router_pre_softmax"] is True
    assert config["moe_layer_freq"] == [1, 0, 1, 1] and config["moe_router_load_balancing_type"] == "aux_loss"
    assert moe_megatron_config(_spec(router_aux_loss_coef=0.0))["moe_router_load_balancing_type"] == "none"


def test_layouts_that_cannot_split_the_experts_are_refused_naming_the_fix():
    spec = _spec()
    with pytest.raises(ValueError, match=r"actor.ep=3 does not divide num_experts=8; choose ep from \[1, 2, 4, 8\]"):
        spec.check_layout(1, 1, ep=3)
    with pytest.raises(ValueError, match="needs actor.sequence_parallel=true"):
        spec.check_layout(2, 1, ep=2, sequence_parallel=False)
    spec.check_layout(2, 1, ep=2, sequence_parallel=True)
    with pytest.raises(ValueError, match="actor.ep=2 needs a mixture-of-experts model; qwen3 is dense"):
        ModelSpec.from_hf(dict(TINY_CONFIGS["qwen3"])).check_layout(1, 1, ep=2)
    with pytest.raises(UnsupportedModelError, match="num_experts_per_tok=9"):
        _spec(num_experts_per_tok=9)


def test_each_ep_rank_maps_its_own_experts_local_to_global():
    spec = _spec()
    rank1 = dict(stage_mappings(spec, 0, 1, ep_rank=1, ep=2))
    experts = {n: m for n, m in rank1.items() if m.expert is not None}
    assert len(experts) == 3 * 4 * 2  # 3 MoE layers x 4 local experts x (fc1, fc2)
    fc1 = rank1["decoder.layers.0.mlp.experts.local_experts.0.linear_fc1.weight"]
    assert fc1.expert == 4 and fc1.hf == ("model.layers.0.mlp.experts.4.gate_proj.weight", "model.layers.0.mlp.experts.4.up_proj.weight")
    assert rank1["decoder.layers.1.mlp.linear_fc1.weight"].hf[0] == "model.layers.1.mlp.gate_proj.weight"  # the dense layer
    assert rank1["decoder.layers.2.mlp.router.weight"].hf == ("model.layers.2.mlp.gate.weight",)
    te = dict(stage_mappings(spec, 0, 1, layer_impl="te", ep_rank=1, ep=2))
    assert te["decoder.layers.0.mlp.experts.linear_fc2.weight3"].hf == ("model.layers.0.mlp.experts.7.down_proj.weight",)
    assert "decoder.layers.0.pre_mlp_layernorm.weight" in te  # a MoE layer's norm is not fused under TE
    owners = {m.hf: (name, owner) for name, m, owner in stage_mappings_all_experts(spec, 0, 1, 2)}
    assert owners[("model.layers.3.mlp.experts.6.down_proj.weight",)] == ("decoder.layers.3.mlp.experts.local_experts.2.linear_fc2.weight", 1)
    assert owners[("model.norm.weight",)][1] is None
