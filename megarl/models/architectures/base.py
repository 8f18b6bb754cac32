"""The dense decoder every supported family shares (RMSNorm, SwiGLU, GQA, RoPE): its HF config
parsing, its layer table and the hooks a family module overrides.

A family module subclasses `Architecture`, overrides only what differs, and registers itself with
`@register_architecture` (megarl.models.spec) for its HF `model_type`s. Everything else
(conversion, resharding, loading, weight sync, the model builder) asks the spec's architecture.
"""

from __future__ import annotations

from typing import Any, ClassVar

from megarl.models.mapping import QKV, GatedMLP, ParamMapping, Replicated, RowParallel
from megarl.models.spec import ModelSpec, UnsupportedModelError

REQUIRED_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


class Architecture:
    model_types: ClassVar[tuple[str, ...]] = ()  # the HF config.json model_type values it builds
    models: ClassVar[str] = ""  # the models it covers, for error messages

    def __repr__(self) -> str:
        return type(self).__name__

    # ---- HF config -> ModelSpec ---------------------------------------------------------
    def spec_from_config(self, cfg: dict[str, Any], where: str) -> ModelSpec:
        """Parse an HF config dict (`where` names it in errors) into a ModelSpec."""
        for key in REQUIRED_FIELDS:
            if key not in cfg:
                raise UnsupportedModelError(f"{where}: missing field {key!r} required to build the model")
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise UnsupportedModelError(f"{where}: hidden_act={act!r}; megarl's gated MLP supports only 'silu'")
        if cfg.get("mlp_bias"):
            raise UnsupportedModelError(f"{where}: mlp_bias=true is not supported (no SimpleRL-Zoo model uses it)")
        rope = dict(cfg.get("rope_parameters") or {})
        if cfg.get("rope_scaling"):
            rope.update(cfg["rope_scaling"])
        num_heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        fields = dict(
            model_type=cfg["model_type"],
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            ffn_hidden_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or num_heads),
            head_dim=int(cfg.get("head_dim") or hidden // num_heads),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=bool(cfg.get("attention_bias", False)),
            rope_scaling=self.rope_scaling(rope, where),
        )
        fields.update(self.family_fields(cfg, where))
        return ModelSpec(**fields)

    def family_fields(self, cfg: dict[str, Any], where: str) -> dict[str, Any]:
        """ModelSpec fields this family reads differently from the shared parsing (or rejects)."""
        return {}

    def rope_scaling(self, rope: dict[str, Any], where: str) -> dict | None:
        """The RoPE scaling parameters this family supports (plain RoPE only, by default)."""
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in (None, "default"):
            raise UnsupportedModelError(
                f"{where}: rope_type={rope_type!r} is not supported for {self.models}; megarl supports default RoPE here"
            )
        return None

    # ---- the layer table --------------------------------------------------------------------
    def layer_mappings(self, spec: ModelSpec, layer_impl: str) -> list[ParamMapping]:
        """Per-layer mappings (with `{layer}` placeholders) for Megatron's local or TE layers."""
        attn_norm, mlp_norm = _norm_names(layer_impl)
        meg, hf = "decoder.layers.{layer}", "model.layers.{layer}"
        qkv = tuple(f"{hf}.self_attn.{p}_proj" for p in "qkv")
        table: list[ParamMapping] = [
            Replicated(attn_norm, f"{hf}.input_layernorm.weight", dims=("hidden_size",)),
            QKV(f"{meg}.self_attention.linear_qkv.weight", tuple(f"{n}.weight" for n in qkv)),
            RowParallel(f"{meg}.self_attention.linear_proj.weight", f"{hf}.self_attn.o_proj.weight", dims=("hidden_size", "q_size")),
            Replicated(mlp_norm, f"{hf}.post_attention_layernorm.weight", dims=("hidden_size",)),
            GatedMLP(f"{meg}.mlp.linear_fc1.weight", (f"{hf}.mlp.gate_proj.weight", f"{hf}.mlp.up_proj.weight")),
            RowParallel(f"{meg}.mlp.linear_fc2.weight", f"{hf}.mlp.down_proj.weight", dims=("hidden_size", "ffn_hidden_size")),
        ]
        if spec.qkv_bias:
            table.append(QKV(f"{meg}.self_attention.linear_qkv.bias", tuple(f"{n}.bias" for n in qkv), bias=True))
        return table

    def layer_mappings_at(self, spec: ModelSpec, layer_impl: str, layer: int) -> list[ParamMapping]:
        """The mappings of global layer `layer` (a family whose layers differ overrides this; expert
        weights carry an `{expert}` placeholder that megarl.models.mapping expands per EP rank)."""
        return self.layer_mappings(spec, layer_impl)

    # ---- Megatron -----------------------------------------------------------------------
    def megatron_config(self, spec: ModelSpec) -> dict[str, Any]:
        """TransformerConfig fields this family adds to the shared ones (see models.build)."""
        return {}

    def adapt_model(self, model, spec: ModelSpec) -> None:
        """Adjust a freshly built GPTModel where Megatron's constructor cannot express the family."""


def _norm_names(layer_impl: str) -> tuple[str, str]:
    """Megatron names of the two per-layer norms: separate modules (local spec) or fused into the
    following linear (Transformer Engine spec)."""
    if layer_impl == "te":
        return (
            "decoder.layers.{layer}.self_attention.linear_qkv.layer_norm_weight",
            "decoder.layers.{layer}.mlp.linear_fc1.layer_norm_weight",
        )
    return "decoder.layers.{layer}.input_layernorm.weight", "decoder.layers.{layer}.pre_mlp_layernorm.weight"
