"""Fixtures for trainer tests: a recipe writer around the session's small toy model."""

import pytest
import yaml


def recipe_writer(root, toy_model):
    """write(name, **sections) -> (recipe path, run dir): the tests' base recipe under `root`, each
    section updated by the keyword of its name."""

    def write(name="run", **sections):
        recipe = {
            "run": {"name": name, "steps": 3, "seed": 3, "output_dir": str(root / name)},
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
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        return path, root / name

    return write


@pytest.fixture
def write_recipe(tmp_path, toy_model):
    return recipe_writer(tmp_path, toy_model)


@pytest.fixture(scope="module")
def write_module_recipe(tmp_path_factory, toy_model):
    """write_recipe for module-scoped fixtures: runs that several tests of a module share."""
    return recipe_writer(tmp_path_factory.mktemp("module_runs"), toy_model)
