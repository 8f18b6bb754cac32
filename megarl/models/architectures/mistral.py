"""Mistral (7B v0.1 with its sliding-window attention, Mistral-Small with an explicit head_dim)."""

from __future__ import annotations

from typing import Any

from megarl.models.architectures.base import Architecture
from megarl.models.spec import ModelSpec, register_architecture


@register_architecture
class Mistral(Architecture):
    model_types = ("mistral",)
    models = "Mistral"

    def family_fields(self, cfg: dict[str, Any], where: str) -> dict[str, Any]:
        window = cfg.get("sliding_window")
        return {"sliding_window": int(window) if window else None}

    def megatron_config(self, spec: ModelSpec) -> dict[str, Any]:
        if not spec.sliding_window:
            return {}
        # HF: a query attends to itself and the previous sliding_window - 1 keys.
        return {"window_size": (spec.sliding_window - 1, 0)}
