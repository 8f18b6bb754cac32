"""HF -> Megatron -> HF round trips, resharding and dtype conversion: bitwise, for every architecture."""

import json

import pytest
import torch
from ckpt_helpers import ARCHS, TOKENIZER_FILES, assert_same_tensors, load_hf_weights, load_megatron_files

from megarl.checkpoint import hf_to_megatron, megatron_to_hf, reshard
from megarl.models.mapping import stage_mappings
from megarl.models.spec import ModelSpec


@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip_tp2_pp2_is_bitwise(hf_models, tmp_path, arch):
    src = hf_models[arch]
    meg, back = tmp_path / "meg", tmp_path / "hf2"
    report = hf_to_megatron(src, meg, tp=2, pp=2)
    spec = ModelSpec.from_hf(src)

    # The Megatron side: one file per (tp, pp) with exactly the stage's local parameter names,
    # readable by the safetensors library, vocab padded to a multiple of 128 * tp.
    files = load_megatron_files(meg)
    assert sorted(files) == sorted(f"mp_rank_{t:02d}_{p:03d}/model.safetensors" for t in range(2) for p in range(2))
    for (t, p) in [(t, p) for t in range(2) for p in range(2)]:
        names = [n for n, _ in stage_mappings(spec, p, 2)]
        assert list(files[f"mp_rank_{t:02d}_{p:03d}/model.safetensors"]) == names
    embedding = files["mp_rank_00_000/model.safetensors"]["embedding.word_embeddings.weight"]
    assert embedding.shape[0] * 2 == spec.padded_vocab_size(2) and spec.padded_vocab_size(2) % 256 == 0
    last = files["mp_rank_01_001/model.safetensors"]
    assert "output_layer.weight" in last  # tied: the last stage's copy; untied: lm_head
    assert report.tensors_written == sum(len(f) for f in files.values())
    for name in TOKENIZER_FILES:
        assert (meg / "hf" / name).read_text() == (src / name).read_text()

    megatron_to_hf(meg, back, max_shard_bytes=300_000)
    original, converted = load_hf_weights(src), load_hf_weights(back)
    assert_same_tensors(original, converted, arch)
    index = json.loads((back / "model.safetensors.index.json").read_text())
    shard_files = sorted(set(index["weight_map"].values()))
    assert len(shard_files) > 1 and shard_files[0] == f"model-00001-of-{len(shard_files):05d}.safetensors"
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in original.values())
    assert ModelSpec.from_hf(back) == spec
    for name in TOKENIZER_FILES:
        assert (back / name).read_text() == (src / name).read_text()
    assert not list(tmp_path.glob("*.tmp-*"))


def test_reshard_2x2_to_1x4_to_1x1_equals_direct(hf_models, tmp_path):
    src = hf_models["qwen2"]  # tied embeddings: the output-layer copy appears and disappears with PP
    hf_to_megatron(src, tmp_path / "d22", tp=2, pp=2)
    hf_to_megatron(src, tmp_path / "d14", tp=1, pp=4)
    hf_to_megatron(src, tmp_path / "d11", tp=1, pp=1)
    reshard(tmp_path / "d22", tmp_path / "r14", tp=1, pp=4)
    reshard(tmp_path / "r14", tmp_path / "r11", tp=1, pp=1)
    reshard(tmp_path / "r11", tmp_path / "r22", tp=2, pp=2)
    for direct, resharded in [("d14", "r14"), ("d11", "r11"), ("d22", "r22")]:
        a, b = load_megatron_files(tmp_path / direct), load_megatron_files(tmp_path / resharded)
        assert list(a) == list(b)
        for path in a:
            assert_same_tensors(a[path], b[path], f"{resharded}/{path}")
        meta_a = json.loads((tmp_path / direct / "megarl_checkpoint.json").read_text())
        meta_b = json.loads((tmp_path / resharded / "megarl_checkpoint.json").read_text())
        assert meta_a == meta_b
        assert (tmp_path / resharded / "hf" / "tokenizer_config.json").is_file()


def test_reshard_untied_mistral_4x1_from_2x2(hf_models, tmp_path):
    src = hf_models["mistral"]
    hf_to_megatron(src, tmp_path / "d22", tp=2, pp=2)
    reshard(tmp_path / "d22", tmp_path / "r21", tp=2, pp=1)
    hf_to_megatron(src, tmp_path / "d21", tp=2, pp=1)
    a, b = load_megatron_files(tmp_path / "d21"), load_megatron_files(tmp_path / "r21")
    for path in a:
        assert_same_tensors(a[path], b[path], path)


def test_dtype_conversion_rounds_once(hf_models, tmp_path):
    src = hf_models["llama"]
    hf_to_megatron(src, tmp_path / "meg", tp=2, pp=1, dtype="bf16")
    files = load_megatron_files(tmp_path / "meg")
    assert all(t.dtype == torch.bfloat16 for f in files.values() for t in f.values())
    megatron_to_hf(tmp_path / "meg", tmp_path / "hf_bf16")
    expected = {k: v.to(torch.bfloat16) for k, v in load_hf_weights(src).items()}
    assert_same_tensors(expected, load_hf_weights(tmp_path / "hf_bf16"), "bf16")
    config = json.loads((tmp_path / "hf_bf16" / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    megatron_to_hf(tmp_path / "meg", tmp_path / "hf_fp32", dtype="fp32")
    assert_same_tensors({k: v.float() for k, v in expected.items()}, load_hf_weights(tmp_path / "hf_fp32"), "fp32")


def test_conversion_memory_does_not_grow_with_the_model(tmp_path):
    """Conversions copy file to file: page faults (fresh memory touched) stay far below one per
    4 KiB moved. Allocating each tensor afresh faulted every page twice (read and output), which
    made conversion CPU-bound at a third to a half of `cp`'s speed on 7B shapes (issue 14)."""
    import resource

    from tiny_models import make_tiny_hf

    src = make_tiny_hf("qwen2", tmp_path / "hf", hidden_size=512, intermediate_size=1536, num_hidden_layers=2,
                       num_attention_heads=8, num_key_value_heads=2, vocab_size=16000)
    moved = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    assert moved > 50 * 2**20
    steps = [
        lambda: hf_to_megatron(src, tmp_path / "meg", tp=2, pp=2),
        lambda: megatron_to_hf(tmp_path / "meg", tmp_path / "back"),
        lambda: reshard(tmp_path / "meg", tmp_path / "r11", tp=1, pp=1),
    ]
    for step in steps:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        assert faults < moved / 4096 / 8, f"{faults} minor page faults converting {moved} bytes"
    assert_same_tensors(load_hf_weights(src), load_hf_weights(tmp_path / "back"), "round trip")
