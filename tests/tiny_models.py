"""Tiny random Hugging Face models of each supported architecture, built from configs (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch

# Shapes chosen to exercise the mapping: GQA (2 query groups), a vocab that no TP size divides,
# tied embeddings (Qwen2.5-0.5B style), llama3 RoPE scaling, Mistral sliding window with an
# explicit head_dim != hidden / heads (Mistral-Small style), Qwen3 q/k head norms with an explicit
# head_dim (32, not 64 / 4) and tied embeddings (Qwen3-0.6B style).
TINY_CONFIGS = {
    "qwen2": dict(
        model_type="qwen2", vocab_size=1001, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rope_theta=1000000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=True,
    ),
    "llama": dict(
        model_type="llama", vocab_size=999, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64},
        rope_theta=500000.0,
    ),
    "mistral": dict(
        model_type="mistral", vocab_size=1003, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
        sliding_window=5, rms_norm_eps=1e-5, tie_word_embeddings=False, rope_theta=10000.0,
    ),
    "qwen3": dict(
        model_type="qwen3", vocab_size=1005, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
        rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, attention_bias=False,
    ),
    # Qwen3-30B-A3B's shape in miniature: 8 experts, top-2 renormalized, a dense layer among the MoE
    # ones (mlp_only_layers), untied embeddings.
    "qwen3_moe": dict(
        model_type="qwen3_moe", vocab_size=1007, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
        rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False, attention_bias=False,
        num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True,
        decoder_sparse_step=1, mlp_only_layers=[1], router_aux_loss_coef=0.001,
    ),
}


def make_tiny_hf(arch: str, out_dir: str | Path, seed: int = 0, **overrides) -> Path:
    """Save a tiny random model of `arch` (a key of TINY_CONFIGS) to `out_dir`; returns the path."""
    from transformers import AutoConfig, AutoModelForCausalLM

    params = dict(TINY_CONFIGS[arch], **overrides)
    model_type = params.pop("model_type")
    config = AutoConfig.for_model(model_type, **params)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Random norms (HF initializes them to 1) so a swapped norm mapping cannot pass unnoticed.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
            if name.endswith("mlp.gate.weight"):  # a MoE router: decisive top-k (no near-ties to flip)
                p.mul_(20.0)
    out = Path(out_dir)
    model.save_pretrained(out)
    return out


def megatron_lm_layout(root: str | Path, iteration: int = 10) -> Path:
    """The directory layout of a Megatron-LM torch_dist checkpoint without its tensors: the tracker file and
    iter_NNNNNNN/ holding megatron-core's metadata.json (what recognizes the format); returns the iteration dir."""
    import json

    root = Path(root)
    step = root / f"iter_{iteration:07d}"
    step.mkdir(parents=True)
    (root / "latest_checkpointed_iteration.txt").write_text(str(iteration))
    (step / "metadata.json").write_text(json.dumps({"sharded_backend": "torch_dist", "sharded_backend_version": 1,
                                                    "common_backend": "torch", "common_backend_version": 1}))
    return step
