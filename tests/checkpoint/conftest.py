"""Fixtures for the checkpoint tests: tiny HF models of every architecture, with tokenizer files."""

import json

import pytest
import torch
from safetensors.torch import load_file

# A Qwen2.5-0.5B-shaped config at reduced size: 14 heads over 2 query groups, tied embeddings,
# qkv bias, and a vocab (1001) that no TP size divides.
QWEN05B_SHAPED = dict(hidden_size=112, num_attention_heads=14, num_key_value_heads=2, intermediate_size=160, num_hidden_layers=4)
TOKENIZER_FILES = {
    "tokenizer_config.json": json.dumps({"model_max_length": 256, "eos_token": "<|endoftext|>"}),
    "special_tokens_map.json": json.dumps({"eos_token": "<|endoftext|>"}),
    "vocab.json": json.dumps({"a": 0, "b": 1}),
    "merges.txt": "#version: 0.2\n",
}
ARCHS = ("qwen2", "qwen2_05b_shaped", "llama", "mistral")


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory):
    """{name: HF dir} for qwen2 (tied), a Qwen2.5-0.5B-shaped qwen2, llama and mistral."""
    from tiny_models import make_tiny_hf

    root = tmp_path_factory.mktemp("ckpt_hf")
    models = {
        "qwen2": make_tiny_hf("qwen2", root / "qwen2"),
        "qwen2_05b_shaped": make_tiny_hf("qwen2", root / "qwen2_05b_shaped", seed=1, **QWEN05B_SHAPED),
        "llama": make_tiny_hf("llama", root / "llama"),
        "mistral": make_tiny_hf("mistral", root / "mistral"),
    }
    for path in models.values():
        for name, text in TOKENIZER_FILES.items():
            (path / name).write_text(text)
    return models


def load_hf_weights(hf_dir) -> dict[str, torch.Tensor]:
    """All tensors of an HF directory, read with the safetensors library (single file or index)."""
    index = hf_dir / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    out = {}
    for f in files:
        out.update(load_file(str(hf_dir / f)))
    return out


def load_megatron_files(meg_dir) -> dict[str, dict[str, torch.Tensor]]:
    """{relative file path: tensors} of a megarl Megatron checkpoint, read with safetensors."""
    meta = json.loads((meg_dir / "megarl_checkpoint.json").read_text())
    return {f["path"]: load_file(str(meg_dir / f["path"])) for f in meta["files"]}


def assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert list(a) == list(b) or set(a) == set(b), f"{what}: names differ: {sorted(set(a) ^ set(b))[:5]}"
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, f"{what}: {name}"
        assert torch.equal(a[name], b[name]), f"{what}: {name} differs"
