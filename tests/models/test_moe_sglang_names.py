"""Weight sync of Qwen3-MoE to SGLang: every HF tensor megarl exports (the names gather_hf_tensors
yields, which the parity test checks equal the checkpoint's) is taken by SGLang's own
`Qwen3MoeForCausalLM.load_weights`, experts included, with the expert id and shard that the name
means, and every SGLang parameter is filled.

SGLang's model module needs CUDA-only packages to import, so the test runs the source of its
`load_weights` and of `FusedMoE.make_expert_params_mapping`, read from the installed sglang, against
a stand-in model holding SGLang's Qwen3-MoE parameter names (qwen3_moe.py / qwen2_moe.py:
QKVParallelLinear `qkv_proj`, `o_proj`, `q_norm`/`k_norm`, the router as ReplicatedLinear `gate`,
FusedMoE `experts.w13_weight`/`experts.w2_weight`, a dense layer's `gate_up_proj`/`down_proj`).
"""

from __future__ import annotations

import ast
import logging
import textwrap
from pathlib import Path

import pytest
import torch

from megarl.models.mapping import hf_tensor_shapes
from megarl.models.spec import ModelSpec

sglang = pytest.importorskip("sglang")
SGLANG = Path(sglang.__file__).parent / "srt"

# Qwen3-30B-A3B's config.json (the hub's), with 4 layers instead of 48 to keep the name list short.
QWEN3_30B_A3B = dict(
    model_type="qwen3_moe", vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=4,
    num_attention_heads=32, num_key_value_heads=4, head_dim=128, max_position_embeddings=40960,
    rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False, attention_bias=False,
    num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768, norm_topk_prob=True,
    decoder_sparse_step=1, mlp_only_layers=[2], router_aux_loss_coef=0.001,
)


def _method_source(path: Path, cls: str, method: str) -> str:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == method:
                    item.decorator_list = []
                    return ast.unparse(item)
    raise AssertionError(f"{path}: no {cls}.{method} (sglang changed; update this test)")


def _sglang_load_weights():
    """SGLang's Qwen3MoeForCausalLM.load_weights, bound to its own FusedMoE expert mapping."""
    from sglang.srt.layers.utils import get_layer_id

    mapping_src = _method_source(SGLANG / "layers/moe/fused_moe_triton/layer.py", "FusedMoE", "make_expert_params_mapping")
    fused_moe = type("FusedMoE", (), {})
    ns: dict = {"List": list, "Tuple": tuple}
    exec(mapping_src, ns)
    fused_moe.make_expert_params_mapping = classmethod(ns["make_expert_params_mapping"])
    calls = []

    def default_weight_loader(param, loaded_weight):
        calls.append((param.sglang_name, None, None, loaded_weight))

    ns = {"FusedMoE": fused_moe, "get_layer_id": get_layer_id, "default_weight_loader": default_weight_loader,
          "torch": torch, "logger": logging.getLogger("sglang-test"), "Iterable": object, "Tuple": tuple,
          "LazyValue": lambda fn: None}
    exec(textwrap.dedent(_method_source(SGLANG / "models/qwen3_moe.py", "Qwen3MoeForCausalLM", "load_weights")), ns)
    return ns["load_weights"], calls


class _Param:
    def __init__(self, name, calls):
        self.sglang_name = name

        def weight_loader(param, loaded_weight, *args, **kwargs):
            calls.append((name, kwargs.get("shard_id", args[-1] if args else None), kwargs.get("expert_id"), loaded_weight))

        self.weight_loader = weight_loader


def _sglang_param_names(spec: ModelSpec) -> list[str]:
    names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    for layer in range(spec.num_layers):
        p = f"model.layers.{layer}"
        names += [f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight",
                  f"{p}.self_attn.qkv_proj.weight", f"{p}.self_attn.o_proj.weight",
                  f"{p}.self_attn.q_norm.weight", f"{p}.self_attn.k_norm.weight"]
        if spec.is_moe_layer(layer):
            names += [f"{p}.mlp.gate.weight", f"{p}.mlp.experts.w13_weight", f"{p}.mlp.experts.w2_weight"]
        else:
            names += [f"{p}.mlp.gate_up_proj.weight", f"{p}.mlp.down_proj.weight"]
    return names


def test_sglang_qwen3_moe_loader_takes_every_exported_name():
    spec = ModelSpec.from_hf(dict(QWEN3_30B_A3B))
    load_weights, calls = _sglang_load_weights()
    params = {name: _Param(name, calls) for name in _sglang_param_names(spec)}
    fake = type("Qwen3MoeForCausalLM", (), {})()
    fake.config = type("Config", (), {"num_experts": spec.num_experts})()
    fake.model = object()  # no start_layer: one pipeline stage
    fake.routed_experts_weights_of_layer = None
    fake.named_parameters = lambda: iter(params.items())
    exported = list(hf_tensor_shapes(spec))
    assert sum(".mlp.experts." in n for n in exported) == 3 * 3 * 128  # 3 MoE layers (layer 2 dense)
    # Each weight is a distinct marker tensor, so every loader call is traced to the name it came from.
    markers = {name: torch.tensor([i]) for i, name in enumerate(exported)}
    load_weights(fake, [(name, markers[name]) for name in exported])
    by_marker = {int(w.item()): (param, shard, expert) for param, shard, expert, w in calls}
    assert len(calls) == len(exported) == len(by_marker), "some exported tensor was skipped or loaded twice"
    shards = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}
    for i, name in enumerate(exported):
        param, shard, expert = by_marker[i]
        parts = name.split(".")
        if ".mlp.experts." in name:
            layer, index, proj = parts[2], int(parts[5]), parts[6]
            target = "w2_weight" if proj == "down_proj" else "w13_weight"
            assert (param, shard, expert) == (f"model.layers.{layer}.mlp.experts.{target}", shards[proj], index), name
        else:
            assert expert is None, name
    assert {param for param, *_ in calls} == set(params), "SGLang parameters left unfilled"
