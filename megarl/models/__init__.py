"""Models: Megatron GPT actor/critic built from Hugging Face configs, and the HF<->Megatron parameter mapping."""

from megarl.models.spec import ModelSpec, UnsupportedModelError

__all__ = ["ModelSpec", "UnsupportedModelError"]
