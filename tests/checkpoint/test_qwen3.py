"""Qwen3 dense (q/k head RMSNorm, no qkv bias, explicit head_dim, tied embeddings) against
transformers' Qwen3ForCausalLM: a bitwise round trip through the conversion tools (torch_dist).
Logits within 1e-4 (fp32) and one SGD step agreeing across layouts, sequence parallelism
included: tests/train/test_parity.py (qwen3 is one of its architectures)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from ckpt_helpers import assert_same_tensors, load_hf_weights
from tiny_models import make_tiny_hf

from megarl.models.spec import ModelSpec

TOOLS = Path(__file__).resolve().parents[2] / "tools"


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
    from transformers import Qwen3ForCausalLM

    path = make_tiny_hf("qwen3", tmp_path_factory.mktemp("qwen3") / "hf")
    (path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 256}))
    assert type(Qwen3ForCausalLM.from_pretrained(path)) is Qwen3ForCausalLM
    return path


def _tool(name: str, *args) -> str:
    proc = subprocess.run([sys.executable, str(TOOLS / name), *map(str, args), "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_spec_reads_qwen3(qwen3_dir):
    spec = ModelSpec.from_hf(qwen3_dir)
    assert spec.model_type == "qwen3" and spec.head_dim == 32 != spec.hidden_size // spec.num_heads
    assert not spec.qkv_bias and spec.tie_word_embeddings
    norms = [m for m in spec.architecture.layer_mappings(spec, "local") if "layernorm" in m.megatron and "self_attention" in m.megatron]
    assert [m.hf_shapes(spec) for m in norms] == [((32,),), ((32,),)]


def test_round_trip_through_tools_is_bitwise(qwen3_dir, tmp_path):
    from megatron.core import dist_checkpointing

    meg, back = tmp_path / "meg", tmp_path / "hf2"
    out = _tool("convert_hf_to_megatron.py", "--hf-dir", qwen3_dir, "--out", meg, "--tp", 2, "--verify", "--verify-tol", 1e-4)
    assert "logit" in out, out  # --verify ran megarl's model on the torch_dist checkpoint against transformers
    stored = dist_checkpointing.load_tensors_metadata(str(meg / "iter_0000000"))
    assert {"decoder.layers.self_attention.q_layernorm.weight", "decoder.layers.self_attention.k_layernorm.weight"} <= set(stored)
    assert "decoder.layers.self_attention.linear_qkv.bias" not in stored
    _tool("convert_megatron_to_hf.py", "--megatron-dir", meg, "--out", back, "--max-shard-size", "300000")
    original = load_hf_weights(qwen3_dir)
    assert any(name.endswith("self_attn.q_norm.weight") for name in original)
    assert_same_tensors(original, load_hf_weights(back), "qwen3")
    assert ModelSpec.from_hf(back) == ModelSpec.from_hf(qwen3_dir)
