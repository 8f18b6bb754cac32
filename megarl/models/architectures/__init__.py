"""Architecture families, one module each; importing this package registers them all
(megarl.models.spec holds the model_type -> family registry)."""

from megarl.models.architectures import llama, mistral, qwen2, qwen3, qwen3_moe  # noqa: F401  (each registers itself)
from megarl.models.architectures.base import Architecture

__all__ = ["Architecture"]
