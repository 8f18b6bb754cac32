"""Constants and comparison helpers shared by the checkpoint tests."""

import json

import torch
from safetensors.torch import load_file

TOKENIZER_FILES = {
    "tokenizer_config.json": json.dumps({"model_max_length": 256, "eos_token": "<|endoftext|>"}),
    "special_tokens_map.json": json.dumps({"eos_token": "<|endoftext|>"}),
    "vocab.json": json.dumps({"a": 0, "b": 1}),
    "merges.txt": "#version: 0.2\n",
}
ARCHS = ("qwen2", "qwen2_05b_shaped", "llama", "mistral")


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
