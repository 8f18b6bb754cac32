"""HF -> torch_dist -> HF round trips and dtype conversion, bitwise, for every architecture; the
written layout is megatron-core's own; memory does not grow with the model; an old own-layout
checkpoint migrates in one command."""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ckpt_helpers import ARCHS, TOKENIZER_FILES, assert_same_tensors, load_hf_weights, write_old_megarl_layout

from megarl.checkpoint import hf_to_torch_dist, torch_dist_to_hf
from megarl.models.spec import ModelSpec

TOOLS = Path(__file__).parents[2] / "tools"


def _layout(iter_dir: Path) -> dict:
    """{key: (global shape, dtype, sorted chunks)} of a torch_dist directory's .metadata."""
    metadata = pickle.loads((iter_dir / ".metadata").read_bytes())
    return {k: (tuple(v.size), v.properties.dtype, sorted((tuple(c.offsets), tuple(c.sizes)) for c in v.chunks))
            if hasattr(v, "chunks") else "bytes" for k, v in metadata.state_dict_metadata.items()}


@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip_is_bitwise(hf_models, tmp_path, arch):
    src = hf_models[arch]
    root, back = tmp_path / "mcore", tmp_path / "hf2"
    report = hf_to_torch_dist(src, root, vocab_tp=2, iteration=3)
    spec = ModelSpec.from_hf(src)
    assert sorted(p.name for p in root.iterdir()) == ["hf", "iter_0000003", "latest_checkpointed_iteration.txt"]
    layout = _layout(root / "iter_0000003")
    assert layout["embedding.word_embeddings.weight"][0] == (spec.padded_vocab_size(2), spec.hidden_size)
    if spec.is_moe:  # a MoE model's layers are saved apart (megatron-core's keys per layer), its experts stacked
        layers = json.loads((src / "config.json").read_text())["num_hidden_layers"]
        assert [f"decoder.layers.{i}.self_attention.linear_qkv.weight" in layout for i in range(layers)] == [True] * layers
        assert any(".mlp.experts." in key for key in layout)
    else:
        assert layout["decoder.layers.self_attention.linear_qkv.weight"][2][1][0] == (1, 0, 0)  # one chunk per layer
    assert report.tensors_read == len(load_hf_weights(src)) - ("lm_head.weight" in load_hf_weights(src) and spec.tie_word_embeddings)
    for name in TOKENIZER_FILES:
        assert (root / "hf" / name).read_text() == (src / name).read_text()

    torch_dist_to_hf(root, back, max_shard_bytes=300_000)
    original = load_hf_weights(src)
    assert_same_tensors(original, load_hf_weights(back), arch)
    index = json.loads((back / "model.safetensors.index.json").read_text())
    shard_files = sorted(set(index["weight_map"].values()))
    assert len(shard_files) > 1 and shard_files[0] == f"model-00001-of-{len(shard_files):05d}.safetensors"
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in original.values())
    assert ModelSpec.from_hf(back) == spec
    for name in TOKENIZER_FILES:
        assert (back / name).read_text() == (src / name).read_text()
    assert not list(tmp_path.glob("*.tmp-*"))


def test_the_layout_is_megatron_cores_own_and_reads_back_alike(hf_models, tmp_path):
    """The streamed output has the keys, shapes, chunks and common state megatron-core's own save
    of the model writes, and both read back to the same HF files byte for byte."""
    from megarl.checkpoint.torch_dist import save_model
    from megarl.models.build import build_model
    from megarl.models.hf_io import load_hf_into_model
    from megarl.runtime.distributed import init_runtime

    src = hf_models["qwen2_05b_shaped"]
    hf_to_torch_dist(src, tmp_path / "streamed")
    init_runtime(1, 1)
    spec = ModelSpec.from_hf(src)
    model = build_model(spec, dtype=torch.float32)
    load_hf_into_model(model, src, spec)
    save_model(model, tmp_path / "mcore", src)
    ours, theirs = tmp_path / "streamed" / "iter_0000000", tmp_path / "mcore" / "iter_0000000"
    assert _layout(ours) == _layout(theirs)
    assert str(torch.load(ours / "common.pt", weights_only=False)) == str(torch.load(theirs / "common.pt", weights_only=False))
    assert (ours / "metadata.json").read_text() == (theirs / "metadata.json").read_text()
    torch_dist_to_hf(tmp_path / "streamed", tmp_path / "a")
    torch_dist_to_hf(tmp_path / "mcore", tmp_path / "b")
    for path in (tmp_path / "a").glob("*.safetensors"):
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes()


def test_dtype_conversion_rounds_once(hf_models, tmp_path):
    src = hf_models["llama"]
    hf_to_torch_dist(src, tmp_path / "mcore", dtype="bf16")
    assert {v[1] for v in _layout(tmp_path / "mcore" / "iter_0000000").values() if v != "bytes"} == {torch.bfloat16}
    torch_dist_to_hf(tmp_path / "mcore", tmp_path / "hf_bf16")
    expected = {k: v.to(torch.bfloat16) for k, v in load_hf_weights(src).items()}
    assert_same_tensors(expected, load_hf_weights(tmp_path / "hf_bf16"), "bf16")
    config = json.loads((tmp_path / "hf_bf16" / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    torch_dist_to_hf(tmp_path / "mcore", tmp_path / "hf_fp32", dtype="fp32")
    assert_same_tensors({k: v.float() for k, v in expected.items()}, load_hf_weights(tmp_path / "hf_fp32"), "fp32")


def test_conversion_memory_does_not_grow_with_the_model(tmp_path):
    """Conversions copy file to file: page faults (fresh memory touched) stay far below one per
    4 KiB moved. Building each tensor in fresh memory faulted every page (read and output) and ran
    at 0.24x `cp` on 7B shapes (the first torch_dist streaming version, docs/benchmarks.md)."""
    import resource

    from tiny_models import make_tiny_hf

    src = make_tiny_hf("qwen2", tmp_path / "hf", hidden_size=512, intermediate_size=1536, num_hidden_layers=2,
                       num_attention_heads=8, num_key_value_heads=2, vocab_size=16000)
    moved = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    assert moved > 50 * 2**20
    hf_to_torch_dist(src, tmp_path / "warm")  # megatron-core's imports and the meta model's first build
    steps = [lambda: hf_to_torch_dist(src, tmp_path / "mcore"), lambda: torch_dist_to_hf(tmp_path / "mcore", tmp_path / "back")]
    for step in steps:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        assert faults < moved / 4096 / 8, f"{faults} minor page faults converting {moved} bytes"
    assert_same_tensors(load_hf_weights(src), load_hf_weights(tmp_path / "back"), "round trip")


def test_an_old_own_layout_checkpoint_migrates_in_one_command(hf_models, tmp_path):
    src = hf_models["mistral"]  # untied: the LM head comes from the last stage
    old = tmp_path / "old"
    write_old_megarl_layout(src, old, tp=2, pp=2)
    proc = subprocess.run([sys.executable, str(TOOLS / "convert_megarl_layout_to_torch_dist.py"), "--in", str(old),
                           "--out", str(tmp_path / "new"), "--no-progress"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    layout = _layout(tmp_path / "new" / "iter_0000000")
    assert layout["embedding.word_embeddings.weight"][0][0] == ModelSpec.from_hf(src).padded_vocab_size(2)  # padded as it was
    torch_dist_to_hf(tmp_path / "new", tmp_path / "back")
    assert_same_tensors(load_hf_weights(src), load_hf_weights(tmp_path / "back"), "migrated")
