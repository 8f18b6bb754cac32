"""configs/tiny_cpu_longtail.yaml resolves its built-in model and generated sets through megarl's config
check and the trainer's model resolution (megarl/demo/builtins.py is the one table of names)."""

from pathlib import Path

import pytest

from megarl.config import ConfigError, load_config

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu_longtail.yaml"


def test_longtail_recipe_validates_with_its_builtin_names():
    cfg = load_config(RECIPE, ["rollout.mode=async", "rollout.partial=true", "rollout.max_staleness=2"])
    assert cfg.model.path == "builtin:toy-arith-long"
    assert cfg.data.train == ["toy-arith-long:rl_train"] and cfg.eval.benchmarks == ["toy-arith-long:heldout:200"]
    assert cfg.rollout.max_new_tokens + cfg.data.max_prompt_tokens <= 768  # fits the long model's context
    assert cfg.rollout.n == 8 and cfg.data.template == "none"  # the rest is tiny_cpu's


def test_unknown_builtin_names_are_config_errors():
    with pytest.raises(ConfigError, match="builtin:toy-arith-long"):
        load_config(RECIPE, ["model.path=builtin:toy-arith-longer"])
    with pytest.raises(ConfigError, match="data.train"):
        load_config(RECIPE, ["data.train=[toy-arith-long:test]"])
