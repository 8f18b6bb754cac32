"""Llama 3 / 3.1 and Llama-architecture models (DeepSeek-Math), with llama3 RoPE scaling."""

from __future__ import annotations

from typing import Any

import torch

from megarl.models.architectures.base import Architecture
from megarl.models.spec import ModelSpec, UnsupportedModelError, register_architecture


@register_architecture
class Llama(Architecture):
    model_types = ("llama",)
    models = "Llama 3/3.1, DeepSeek-Math"

    def rope_scaling(self, rope: dict[str, Any], where: str) -> dict | None:
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type in (None, "default"):
            return None
        if rope_type != "llama3":
            raise UnsupportedModelError(
                f"{where}: rope_type={rope_type!r} is not supported; megarl supports default RoPE and 'llama3' scaling"
            )
        return {
            "factor": float(rope["factor"]),
            "low_freq_factor": float(rope.get("low_freq_factor", 1.0)),
            "high_freq_factor": float(rope.get("high_freq_factor", 4.0)),
            "original_max_position_embeddings": int(rope.get("original_max_position_embeddings", 8192)),
        }

    def adapt_model(self, model, spec: ModelSpec) -> None:
        """Llama 3.1 RoPE scaling with the checkpoint's own parameters (Megatron's `rope_scaling=True`
        hard-codes 8192/1/4, so the model is built without it and the frequencies are set here)."""
        if not spec.rope_scaling:
            return
        rope = model.rotary_pos_emb
        dim = spec.head_dim
        base = torch.arange(0, dim, 2, dtype=torch.float32, device=rope.inv_freq.device)
        inv_freq = 1.0 / (spec.rope_theta ** (base / dim))
        scaling = spec.rope_scaling
        rope.inv_freq = rope._apply_scaling(
            inv_freq,
            factor=scaling["factor"],
            low_freq_factor=scaling["low_freq_factor"],
            high_freq_factor=scaling["high_freq_factor"],
            original_max_position_embeddings=scaling["original_max_position_embeddings"],
        )
