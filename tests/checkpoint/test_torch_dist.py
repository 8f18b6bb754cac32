"""Interchange with the Megatron ecosystem through torch_dist checkpoints: tools/ write them in
Megatron-LM's layout (tracker, iter_NNNNNNN/, megatron-core GPT names), megatron-core recognizes and
loads them into a fresh GPTModel at TP2 x PP2, megatron-core saves that model again (chunks per TP
shard), and torch_dist -> HF gives the HF weights back bitwise from either."""

import os
import sys
from pathlib import Path

import pytest
import torch
from dist_utils import torchrun
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]


def _tool(name, *args):
    import subprocess

    proc = subprocess.run([sys.executable, str(ROOT / "tools" / name), *map(str, args), "--no-progress"],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc


def _hf_tensors(directory):
    out = {}
    for path in sorted(Path(directory).glob("*.safetensors")):
        out.update(load_file(path))
    return out


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_hf_to_torch_dist_to_hf_round_trip_is_bitwise(hf_models, tmp_path, arch):
    root = tmp_path / "mcore"
    _tool("convert_hf_to_megatron.py", "--hf-dir", hf_models[arch], "--out", root, "--iteration", 7)
    assert (root / "latest_checkpointed_iteration.txt").read_text().strip() == "7"
    assert sorted(p.name for p in root.iterdir()) == ["hf", "iter_0000007", "latest_checkpointed_iteration.txt"]
    from megatron.core import dist_checkpointing

    iter_dir = root / "iter_0000007"
    assert dist_checkpointing.check_is_distributed_checkpoint(str(iter_dir))
    names = set(dist_checkpointing.load_tensors_metadata(str(iter_dir)))
    assert {"embedding.word_embeddings.weight", "decoder.layers.self_attention.linear_qkv.weight",
            "decoder.layers.self_attention.linear_qkv.layer_norm_weight", "decoder.layers.mlp.linear_fc1.weight",
            "decoder.final_layernorm.weight"} <= names  # megatron-core GPT names (TE's fused norm names)

    back = tmp_path / "hf_back"
    _tool("convert_megatron_to_hf.py", "--megatron-dir", root, "--out", back)
    want, have = _hf_tensors(hf_models[arch]), _hf_tensors(back)
    assert sorted(have) == sorted(want)
    for name, tensor in want.items():
        assert have[name].dtype == tensor.dtype and torch.equal(have[name], tensor), name


def _through_a_layout_is_bitwise(src, tmp_path, tp, pp, ep=1, vocab_tp=1):
    """HF -> torch_dist (streamed) -> a model at tp x pp x ep (megatron-core's load, and megarl's) ->
    megatron-core's save at that layout -> HF: the input, bitwise."""
    root, saved, back = tmp_path / "mcore", tmp_path / "saved", tmp_path / "hf_back"
    _tool("convert_hf_to_megatron.py", "--hf-dir", src, "--out", root, "--tp", vocab_tp)
    job = [str(Path(__file__).with_name("torch_dist_job.py")), str(src), str(root), str(tp), str(pp), str(saved), str(ep)]
    proc = torchrun(job, nproc=max(tp * pp, ep * pp))
    assert "OK" in proc.stdout
    from megarl.checkpoint import torch_dist_to_hf

    torch_dist_to_hf(saved, back)
    want, have = _hf_tensors(src), _hf_tensors(back)
    assert sorted(have) == sorted(want)
    for name, tensor in want.items():
        assert have[name].dtype == tensor.dtype and torch.equal(have[name], tensor), name


def test_hf_to_torch_dist_at_tp2_pp2_to_hf_is_bitwise(hf_models, tmp_path):
    """A TP2 x PP2 model reads the checkpoint from the TP shards' chunks and saves it again at its layout."""
    _through_a_layout_is_bitwise(hf_models["qwen2_05b_shaped"], tmp_path, tp=2, pp=2, vocab_tp=2)


def test_a_moe_checkpoint_loads_and_saves_at_ep2_bitwise(hf_models, tmp_path):
    """A Qwen3-MoE converted without any layout, loaded at EP2 (each rank its half of the experts) and saved
    again at EP2: a checkpoint moves between EP layouts (megatron-core reshards the experts on load)."""
    _through_a_layout_is_bitwise(hf_models["qwen3_moe"], tmp_path, tp=1, pp=1, ep=2)


def test_a_torch_dist_checkpoint_without_hf_config_names_the_fix(hf_models, tmp_path):
    from megarl.checkpoint.safetensors_stream import CheckpointFormatError
    from megarl.checkpoint.torch_dist import hf_assets_of

    with pytest.raises(CheckpointFormatError, match="set model.tokenizer"):
        hf_assets_of(tmp_path)
    assert hf_assets_of(tmp_path, hf_models["qwen2"]) == hf_models["qwen2"]
