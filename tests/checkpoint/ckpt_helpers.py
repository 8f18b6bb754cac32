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
ARCHS = ("qwen2", "qwen2_05b_shaped", "llama", "mistral", "qwen3_moe")


def load_hf_weights(hf_dir) -> dict[str, torch.Tensor]:
    """All tensors of an HF directory, read with the safetensors library (single file or index)."""
    index = hf_dir / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    out = {}
    for f in files:
        out.update(load_file(str(hf_dir / f)))
    return out


def write_old_megarl_layout(hf_dir, out, tp: int, pp: int) -> None:
    """A checkpoint in megarl's retired own layout (what its converter wrote before torch_dist):
    megarl_checkpoint.json plus one safetensors file per (TP rank, PP stage), "local" names."""
    from safetensors.torch import save_file

    from megarl.checkpoint.format import copy_hf_assets, read_hf_config
    from megarl.models.mapping import stage_mappings
    from megarl.models.spec import ModelSpec

    spec, hf = ModelSpec.from_hf(hf_dir), load_hf_weights(hf_dir)
    files = []
    for p in range(pp):
        for t in range(tp):
            tensors = {name: m.to_megatron_shard([hf[h] for h in m.hf], t, tp, spec).contiguous()
                       for name, m in stage_mappings(spec, p, pp)}
            path = f"mp_rank_{t:02d}_{p:03d}/model.safetensors"
            (out / path).parent.mkdir(parents=True)
            save_file(tensors, str(out / path))
            files.append({"path": path, "tp_rank": t, "pp_rank": p, "tensors": {n: list(v.shape) for n, v in tensors.items()}})
    meta = {"tp": tp, "pp": pp, "dtype": "F32", "role": "actor", "hf_config": read_hf_config(hf_dir), "files": files,
            "format": "megarl-megatron", "format_version": 1}
    (out / "megarl_checkpoint.json").write_text(json.dumps(meta))
    copy_hf_assets(hf_dir, out / "hf")


def assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert list(a) == list(b) or set(a) == set(b), f"{what}: names differ: {sorted(set(a) ^ set(b))[:5]}"
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, f"{what}: {name}"
        assert torch.equal(a[name], b[name]), f"{what}: {name} differs"
