"""Fixtures for the checkpoint tests: tiny HF models of every architecture, with tokenizer files."""

import pytest
from ckpt_helpers import TOKENIZER_FILES

# A Qwen2.5-0.5B-shaped config at reduced size: 14 heads over 2 query groups, tied embeddings,
# qkv bias, and a vocab (1001) that no TP size divides.
QWEN05B_SHAPED = dict(hidden_size=112, num_attention_heads=14, num_key_value_heads=2, intermediate_size=160, num_hidden_layers=4)


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory):
    """{name: HF dir} for qwen2 (tied), a Qwen2.5-0.5B-shaped qwen2, llama, mistral and a Qwen3-MoE."""
    from tiny_models import make_tiny_hf

    root = tmp_path_factory.mktemp("ckpt_hf")
    models = {
        "qwen2": make_tiny_hf("qwen2", root / "qwen2"),
        "qwen2_05b_shaped": make_tiny_hf("qwen2", root / "qwen2_05b_shaped", seed=1, **QWEN05B_SHAPED),
        "llama": make_tiny_hf("llama", root / "llama"),
        "mistral": make_tiny_hf("mistral", root / "mistral"),
        "qwen3_moe": make_tiny_hf("qwen3_moe", root / "qwen3_moe"),
    }
    for path in models.values():
        for name, text in TOKENIZER_FILES.items():
            (path / name).write_text(text)
    return models
