"""Qwen2 / Qwen2.5 (incl. Qwen2.5-Math): the shared dense decoder with q/k/v biases."""

from __future__ import annotations

from typing import Any

from megarl.models.architectures.base import Architecture
from megarl.models.spec import UnsupportedModelError, register_architecture


def reject_per_layer_windows(cfg: dict[str, Any], where: str) -> None:
    """Qwen configs can switch on sliding windows for some layers; megarl builds full attention only."""
    if cfg.get("use_sliding_window"):
        raise UnsupportedModelError(
            f"{where}: use_sliding_window=true (Qwen per-layer windows) is not supported; set it to false"
        )


@register_architecture
class Qwen2(Architecture):
    model_types = ("qwen2",)
    models = "Qwen2/Qwen2.5"

    def family_fields(self, cfg: dict[str, Any], where: str) -> dict[str, Any]:
        reject_per_layer_windows(cfg, where)
        return {"qkv_bias": True}  # Qwen2 always has q/k/v biases (its config has no attention_bias field)
