"""The one HF <-> Megatron parameter mapping declaration, used by loading, conversion, resharding
and weight sync.

An architecture is a table of `ParamMapping`s. Each entry names one Megatron parameter (with
`{layer}` standing for the global layer index), the Hugging Face tensor(s) it is made from, and
how it is split over tensor-parallel ranks:

  replicated  same tensor on every TP rank (norms)
  column      split along dim 0 (column-parallel linear: o = x W^T, W rows split)
  row         split along dim 1 (row-parallel linear)
  vocab       split along dim 0 after padding the vocab rows to the padded vocab size
  qkv         q, k, v fused per query group ([q heads of the group, k, v] per group), then dim 0
  gated_mlp   gate and up: each TP rank holds [gate shard; up shard]

`to_megatron_shard` builds one TP rank's tensor from the HF tensors; `to_hf` rebuilds the HF
tensors from all TP ranks' shards. Both are exact (pure indexing), so a round trip is bitwise.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import torch

from megarl.models.spec import ModelSpec

KINDS = ("replicated", "column", "row", "vocab", "qkv", "gated_mlp")


@dataclasses.dataclass(frozen=True)
class ParamMapping:
    megatron: str
    hf: tuple[str, ...]
    kind: str

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown mapping kind {self.kind!r}; one of {KINDS}")

    def at_layer(self, layer: int) -> "ParamMapping":
        return ParamMapping(
            self.megatron.replace("{layer}", str(layer)), tuple(h.replace("{layer}", str(layer)) for h in self.hf), self.kind
        )

    # ---- HF -> one TP rank ---------------------------------------------------------------
    def to_megatron_shard(self, hf: Sequence[torch.Tensor], tp_rank: int, tp: int, spec: ModelSpec) -> torch.Tensor:
        if len(hf) != len(self.hf):
            raise ValueError(f"{self.megatron}: expected {len(self.hf)} HF tensors ({self.hf}), got {len(hf)}")
        if self.kind == "replicated":
            return hf[0]
        if self.kind == "column":
            return hf[0].chunk(tp, dim=0)[tp_rank]
        if self.kind == "row":
            return hf[0].chunk(tp, dim=1)[tp_rank]
        if self.kind == "vocab":
            full = hf[0]
            padded = spec.padded_vocab_size(tp)
            rows = padded // tp
            start, stop = tp_rank * rows, (tp_rank + 1) * rows
            shard = full.new_zeros((rows,) + tuple(full.shape[1:]))
            real = full[start:min(stop, full.shape[0])]
            shard[: real.shape[0]] = real
            return shard
        if self.kind == "qkv":
            return _fuse_qkv(hf[0], hf[1], hf[2], spec).chunk(tp, dim=0)[tp_rank]
        if self.kind == "gated_mlp":
            gate, up = hf
            return torch.cat([gate.chunk(tp, dim=0)[tp_rank], up.chunk(tp, dim=0)[tp_rank]], dim=0)
        raise AssertionError(self.kind)

    # ---- all TP ranks -> HF -------------------------------------------------------------
    def to_hf(self, shards: Sequence[torch.Tensor], spec: ModelSpec) -> tuple[torch.Tensor, ...]:
        if self.kind == "replicated":
            return (shards[0],)
        if self.kind == "column":
            return (torch.cat(list(shards), dim=0),)
        if self.kind == "row":
            return (torch.cat(list(shards), dim=1),)
        if self.kind == "vocab":
            return (torch.cat(list(shards), dim=0)[: spec.vocab_size],)
        if self.kind == "qkv":
            return _split_qkv(torch.cat(list(shards), dim=0), spec)
        if self.kind == "gated_mlp":
            halves = [s.chunk(2, dim=0) for s in shards]
            return torch.cat([h[0] for h in halves], dim=0), torch.cat([h[1] for h in halves], dim=0)
        raise AssertionError(self.kind)


def _fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """[q; k; v] (HF) -> per query group [q_g; k_g; v_g] (Megatron), for weights and biases."""
    groups, d = spec.num_kv_heads, spec.head_dim
    tail = tuple(q.shape[1:])
    q = q.reshape(groups, spec.heads_per_group * d, *tail)
    k = k.reshape(groups, d, *tail)
    v = v.reshape(groups, d, *tail)
    return torch.cat([q, k, v], dim=1).reshape(-1, *tail)


def _split_qkv(fused: torch.Tensor, spec: ModelSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    groups, d = spec.num_kv_heads, spec.head_dim
    tail = tuple(fused.shape[1:])
    per_group = fused.reshape(groups, (spec.heads_per_group + 2) * d, *tail)
    q, k, v = per_group.split([spec.heads_per_group * d, d, d], dim=1)
    return q.reshape(-1, *tail).contiguous(), k.reshape(-1, *tail).contiguous(), v.reshape(-1, *tail).contiguous()


def _norm_names(layer_impl: str) -> tuple[str, str]:
    """Megatron names of the two per-layer norms: separate modules (local spec) or fused into the
    following linear (Transformer Engine spec)."""
    if layer_impl == "te":
        return (
            "decoder.layers.{layer}.self_attention.linear_qkv.layer_norm_weight",
            "decoder.layers.{layer}.mlp.linear_fc1.layer_norm_weight",
        )
    return "decoder.layers.{layer}.input_layernorm.weight", "decoder.layers.{layer}.pre_mlp_layernorm.weight"


def layer_mappings(spec: ModelSpec, layer_impl: str = "local") -> list[ParamMapping]:
    """Per-layer mappings (with `{layer}` placeholders). Same table for Qwen2, Llama and Mistral."""
    attn_norm, mlp_norm = _norm_names(layer_impl)
    hf = "model.layers.{layer}"
    table = [
        ParamMapping(attn_norm, (f"{hf}.input_layernorm.weight",), "replicated"),
        ParamMapping(
            "decoder.layers.{layer}.self_attention.linear_qkv.weight",
            (f"{hf}.self_attn.q_proj.weight", f"{hf}.self_attn.k_proj.weight", f"{hf}.self_attn.v_proj.weight"),
            "qkv",
        ),
        ParamMapping("decoder.layers.{layer}.self_attention.linear_proj.weight", (f"{hf}.self_attn.o_proj.weight",), "row"),
        ParamMapping(mlp_norm, (f"{hf}.post_attention_layernorm.weight",), "replicated"),
        ParamMapping(
            "decoder.layers.{layer}.mlp.linear_fc1.weight",
            (f"{hf}.mlp.gate_proj.weight", f"{hf}.mlp.up_proj.weight"),
            "gated_mlp",
        ),
        ParamMapping("decoder.layers.{layer}.mlp.linear_fc2.weight", (f"{hf}.mlp.down_proj.weight",), "row"),
    ]
    if spec.qkv_bias:
        table.append(
            ParamMapping(
                "decoder.layers.{layer}.self_attention.linear_qkv.bias",
                (f"{hf}.self_attn.q_proj.bias", f"{hf}.self_attn.k_proj.bias", f"{hf}.self_attn.v_proj.bias"),
                "qkv",
            )
        )
    return table


EMBEDDING = ParamMapping("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), "vocab")
FINAL_NORM = ParamMapping("decoder.final_layernorm.weight", ("model.norm.weight",), "replicated")
OUTPUT_UNTIED = ParamMapping("output_layer.weight", ("lm_head.weight",), "vocab")
# With tied embeddings and PP > 1, the last stage keeps its own copy of the embedding as
# output_layer.weight (Megatron all-reduces their gradients); it is loaded from the embedding.
OUTPUT_TIED = ParamMapping("output_layer.weight", ("model.embed_tokens.weight",), "vocab")


def stage_mappings(
    spec: ModelSpec, pp_rank: int, pp: int, *, layer_impl: str = "local", role: str = "actor"
) -> Iterator[tuple[str, ParamMapping]]:
    """(Megatron name in this stage's state dict, mapping with global HF names) for one PP stage.

    Megatron numbers layers locally within a stage; HF names carry the global index.
    The critic has no output layer mapping (its value head is new, see models.build).
    """
    first, last = pp_rank == 0, pp_rank == pp - 1
    if first:
        yield EMBEDDING.megatron, EMBEDDING
    templates = layer_mappings(spec, layer_impl)
    for local, global_layer in enumerate(spec.layers_of_stage(pp_rank, pp)):
        for template in templates:
            name = template.megatron.replace("{layer}", str(local))
            yield name, template.at_layer(global_layer)
    if last:
        yield FINAL_NORM.megatron, FINAL_NORM
        if role == "actor":
            if not spec.tie_word_embeddings:
                yield OUTPUT_UNTIED.megatron, OUTPUT_UNTIED
            elif pp > 1:
                yield OUTPUT_TIED.megatron, OUTPUT_TIED


def hf_tensor_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every tensor a complete HF checkpoint of this spec holds, with its shape (lm_head only when untied)."""
    h, d, f = spec.hidden_size, spec.head_dim, spec.ffn_hidden_size
    q, kv = spec.num_heads * d, spec.num_kv_heads * d
    per_layer = {
        "input_layernorm.weight": (h,),
        "post_attention_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (q, h),
        "self_attn.k_proj.weight": (kv, h),
        "self_attn.v_proj.weight": (kv, h),
        "self_attn.o_proj.weight": (h, q),
        "mlp.gate_proj.weight": (f, h),
        "mlp.up_proj.weight": (f, h),
        "mlp.down_proj.weight": (h, f),
    }
    if spec.qkv_bias:
        per_layer.update({"self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,), "self_attn.v_proj.bias": (kv,)})
    shapes = {"model.embed_tokens.weight": (spec.vocab_size, h)}
    for layer in range(spec.num_layers):
        shapes.update({f"model.layers.{layer}.{leaf}": shape for leaf, shape in per_layer.items()})
    shapes["model.norm.weight"] = (h,)
    if not spec.tie_word_embeddings:
        shapes["lm_head.weight"] = (spec.vocab_size, h)
    return shapes
