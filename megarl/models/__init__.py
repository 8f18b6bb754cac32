"""Models: Megatron GPT actor/critic built from Hugging Face configs, and the HF<->Megatron parameter mapping."""

from megarl.models import architectures  # noqa: F401  (fills the model_type registry that ModelSpec.from_hf reads)
from megarl.models.spec import ModelSpec, UnsupportedModelError

__all__ = ["ModelSpec", "UnsupportedModelError"]
