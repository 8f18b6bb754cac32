"""Every shipped recipe loads, validates, and its parallel layout fits the real model it names."""

from pathlib import Path

import pytest

from megarl.config import load_config
from megarl.models.spec import ModelSpec

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))

# Published config.json facts of the models the recipes name (no download needed).
REAL_MODELS = {
    "Qwen2.5-0.5B": dict(model_type="qwen2", num_attention_heads=14, num_key_value_heads=2, num_hidden_layers=24, hidden_size=896, intermediate_size=4864),
    "Qwen2.5-1.5B": dict(model_type="qwen2", num_attention_heads=12, num_key_value_heads=2, num_hidden_layers=28, hidden_size=1536, intermediate_size=8960),
    "Qwen2.5-7B": dict(model_type="qwen2", num_attention_heads=28, num_key_value_heads=4, num_hidden_layers=28, hidden_size=3584, intermediate_size=18944),
    "Qwen2.5-Math-7B": dict(model_type="qwen2", num_attention_heads=28, num_key_value_heads=4, num_hidden_layers=28, hidden_size=3584, intermediate_size=18944),
    "Qwen2.5-14B": dict(model_type="qwen2", num_attention_heads=40, num_key_value_heads=8, num_hidden_layers=48, hidden_size=5120, intermediate_size=13824),
    "Qwen2.5-32B": dict(model_type="qwen2", num_attention_heads=40, num_key_value_heads=8, num_hidden_layers=64, hidden_size=5120, intermediate_size=27648),
    "Llama-3.1-8B": dict(model_type="llama", num_attention_heads=32, num_key_value_heads=8, num_hidden_layers=32, hidden_size=4096, intermediate_size=14336),
    "Mistral-7B-v0.1": dict(model_type="mistral", num_attention_heads=32, num_key_value_heads=8, num_hidden_layers=32, hidden_size=4096, intermediate_size=14336),
    "Mistral-Small-24B-Base-2501": dict(model_type="mistral", num_attention_heads=32, num_key_value_heads=8, num_hidden_layers=40, hidden_size=5120, intermediate_size=32768, head_dim=128),
    "deepseek-math-7b-base": dict(model_type="llama", num_attention_heads=32, num_key_value_heads=32, num_hidden_layers=30, hidden_size=4096, intermediate_size=11008),
}


def test_all_recipes_present():
    names = {p.stem for p in CONFIGS}
    assert "tiny_cpu" in names and "drgrpo_qwen2.5_math_7b" in names and "simplerl_ppo_qwen2.5_math_7b" in names
    assert sum(n.startswith("simplerl_zoo_") for n in names) == 10


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem != "tiny_cpu"], ids=lambda p: p.stem)
def test_cluster_recipe_validates_against_real_model(path):
    cfg = load_config(path, check_files=False)
    model = Path(cfg.model.path).name
    spec = ModelSpec.from_hf(dict(REAL_MODELS[model], vocab_size=152064))
    spec.check_layout(cfg.actor.tp, cfg.actor.pp)
    if cfg.uses_critic:
        spec.check_layout(cfg.critic.tp, cfg.critic.pp, field="critic")
    assert cfg.rollout.n == 8 and cfg.rollout.temperature == 1.0
    if cfg.algorithm.name == "drgrpo":
        assert cfg.algorithm.kl_coef == 0 and cfg.algorithm.loss_agg == "seq-sum-constant" and cfg.actor.lr == 1e-6
    elif cfg.algorithm.name == "grpo":
        big = model in ("Qwen2.5-32B", "Mistral-Small-24B-Base-2501")
        assert cfg.algorithm.kl_coef == (1e-3 if big else 1e-4) and cfg.actor.lr == 5e-7
