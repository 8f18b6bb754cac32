"""Mapping kinds and the architecture registry: declared shapes agree with the tensors each kind
produces and with transformers' own models; every kind round-trips bitwise; clear errors."""

import pytest
import torch
from tiny_models import TINY_CONFIGS

from megarl.models.mapping import QKV, Replicated, RowParallel, hf_tensor_shapes, stage_mappings
from megarl.models.spec import ModelSpec, UnsupportedModelError, register_architecture, supported_model_types


def _spec(arch: str) -> ModelSpec:
    return ModelSpec.from_hf(dict(TINY_CONFIGS[arch]))


@pytest.mark.parametrize("arch", sorted(TINY_CONFIGS))
def test_derived_hf_shapes_match_transformers(tiny_hf_models, arch):
    from safetensors import safe_open

    with safe_open(str(tiny_hf_models[arch] / "model.safetensors"), framework="pt") as f:
        actual = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    assert hf_tensor_shapes(ModelSpec.from_hf(tiny_hf_models[arch])) == actual


@pytest.mark.parametrize("arch", sorted(TINY_CONFIGS))
@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (2, 2)])
def test_every_kind_round_trips_bitwise_with_its_declared_shapes(arch, tp, pp):
    spec = _spec(arch)
    g = torch.Generator().manual_seed(0)
    for p in range(pp):
        for name, mapping in stage_mappings(spec, p, pp):
            hf = [torch.randn(shape, generator=g) for shape in mapping.hf_shapes(spec)]
            shards = [mapping.to_megatron_shard(hf, r, tp, spec) for r in range(tp)]
            assert all(tuple(s.shape) == mapping.megatron_shape(spec, tp) for s in shards), name
            if mapping.partition_dim is None:
                assert all(torch.equal(s, shards[0]) for s in shards), name
            back = mapping.to_hf(shards, spec)
            assert len(back) == len(hf) and all(torch.equal(a, b) for a, b in zip(hf, back)), name


def test_qkv_fuses_by_query_group():
    spec = _spec("qwen2")  # 4 heads over 2 groups, head_dim 16
    d, h = spec.head_dim, spec.hidden_size
    q = torch.arange(4 * d).repeat_interleave(h).reshape(4 * d, h).float()
    k, v = -q[: 2 * d] - 1, -q[: 2 * d] - 1000
    mapping = QKV("qkv", ("q", "k", "v"))
    fused = torch.cat([mapping.to_megatron_shard([q, k, v], r, 2, spec) for r in range(2)])
    # group 0: q heads 0-1, k head 0, v head 0; group 1: q heads 2-3, k head 1, v head 1
    expected = torch.cat([q[: 2 * d], k[:d], v[:d], q[2 * d:], k[d:], v[d:]])
    assert torch.equal(fused, expected)


def test_declared_dims_must_name_spec_sizes():
    with pytest.raises(ValueError, match=r"dims=\('hiden_size',\) must name ModelSpec sizes"):
        Replicated("decoder.final_layernorm.weight", "model.norm.weight", dims=("hiden_size",))
    with pytest.raises(ValueError, match="takes 3 HF tensor name"):
        QKV("decoder.layers.0.self_attention.linear_qkv.weight", ("q", "k"))
    assert RowParallel.partition_dim == 1 and Replicated.partition_dim is None and QKV.partition_dim == 0


def test_registry_lists_supported_types_and_refuses_duplicates():
    types = supported_model_types()
    assert {"qwen2", "llama", "mistral"} <= set(types)
    with pytest.raises(UnsupportedModelError) as err:
        ModelSpec.from_hf({"model_type": "gpt2"})
    assert "model_type='gpt2' is not supported" in str(err.value)
    assert all(f"{t} ({models})" in str(err.value) for t, models in types.items())
    duplicate = type("Duplicate", (), {"model_types": ("qwen2",)})
    with pytest.raises(ValueError, match="model_type 'qwen2' is registered twice"):
        register_architecture(duplicate)


def test_rope_scaling_only_where_the_family_supports_it():
    with pytest.raises(UnsupportedModelError, match="rope_type='yarn' is not supported"):
        ModelSpec.from_hf(dict(TINY_CONFIGS["llama"], rope_scaling={"rope_type": "yarn", "factor": 4.0}))
    with pytest.raises(UnsupportedModelError, match="rope_type='llama3' is not supported for Qwen2"):
        ModelSpec.from_hf(dict(TINY_CONFIGS["qwen2"], rope_scaling=TINY_CONFIGS["llama"]["rope_scaling"]))
