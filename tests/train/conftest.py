"""Fixtures for trainer tests: a recipe writer around the session's small toy model."""

import pytest
import yaml


@pytest.fixture
def write_recipe(tmp_path, toy_model):
    def write(name="run", **sections):
        recipe = {
            "run": {"name": name, "steps": 3, "seed": 3, "output_dir": str(tmp_path / name)},
            "model": {"path": str(toy_model), "dtype": "fp32"},
            "actor": {"tp": 1, "pp": 1, "lr": 1e-4, "micro_batch_tokens": 512},
            "algorithm": {"name": "grpo"},
            "rollout": {"engine": "builtin", "n": 4, "temperature": 1.0, "max_new_tokens": 32, "transport": "tensor"},
            "data": {"train": ["toy-arith:rl_train"], "template": "none", "prompts_per_step": 4, "max_prompt_tokens": 96},
            "reward": {"scheme": "binary"},
            "eval": {"every": 0},
            "checkpoint": {"every": 0},
            "logging": {"wandb": "disabled", "samples_per_step": 0},
        }
        for key, value in sections.items():
            recipe.setdefault(key, {}).update(value)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        return path, tmp_path / name

    return write
