"""Single-process checks of the architecture features the parity tests rely on, and layout errors."""

import pytest
import torch
from tiny_models import make_tiny_hf

from megarl.models.spec import ModelSpec, UnsupportedModelError


def _hf_logits(path, ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize(
    "arch,override",
    [("mistral", {"sliding_window": None}), ("llama", {"rope_scaling": None})],
)
def test_tiny_models_exercise_the_feature(tmp_path, arch, override):
    """Sliding window and llama3 RoPE scaling change transformers' logits on the tiny models,
    so matching them in the parity test means megarl implements them."""
    with_feature = make_tiny_hf(arch, tmp_path / "a")
    without = make_tiny_hf(arch, tmp_path / "b", **override)
    ids = torch.randint(0, 900, (1, 16), generator=torch.Generator().manual_seed(0))
    assert (_hf_logits(with_feature, ids) - _hf_logits(without, ids)).abs().max() > 1e-3


def test_spec_reads_features(tiny_hf_models):
    qwen = ModelSpec.from_hf(tiny_hf_models["qwen2"])
    assert qwen.qkv_bias and qwen.tie_word_embeddings and qwen.num_kv_heads == 2
    llama = ModelSpec.from_hf(tiny_hf_models["llama"])
    assert llama.rope_scaling["original_max_position_embeddings"] == 64 and not llama.qkv_bias
    mistral = ModelSpec.from_hf(tiny_hf_models["mistral"])
    assert mistral.sliding_window == 5 and mistral.head_dim == 32
    assert qwen.padded_vocab_size(1) == 1024 and qwen.padded_vocab_size(2) == 1024 and qwen.padded_vocab_size(16) == 2048


def test_layout_errors_name_field_and_fix(tiny_hf_models):
    spec = ModelSpec.from_hf(tiny_hf_models["qwen2"])
    with pytest.raises(ValueError, match=r"actor.tp=3 does not divide num_attention_heads=4; choose tp from \[1, 2\]"):
        spec.check_layout(3, 1)
    with pytest.raises(ValueError, match=r"actor.tp=4 does not divide num_key_value_heads=2"):
        spec.check_layout(4, 1)
    with pytest.raises(ValueError, match=r"critic.pp=3 does not divide num_hidden_layers=4"):
        spec.check_layout(1, 3, field="critic")


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "vocab_size": 10}')
    with pytest.raises(UnsupportedModelError, match="model_type='gpt2' is not supported"):
        ModelSpec.from_hf(tmp_path)
    with pytest.raises(FileNotFoundError, match="no HF config.json"):
        ModelSpec.from_hf(tmp_path / "missing")
