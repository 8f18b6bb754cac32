"""Recipes load into typed config; overrides apply; bad values fail with one clear line."""

import subprocess
import sys

import pytest
import yaml

from megarl.config import ConfigError, load_config


@pytest.fixture
def recipe(tmp_path, tiny_hf_models):
    data = tmp_path / "train.jsonl"
    data.write_text('{"id": "a", "problem": "1+1?", "answer": "2"}\n')
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "run": {"name": "t", "steps": 3},
        "model": {"path": str(tiny_hf_models["qwen2"]), "dtype": "fp32"},
        "actor": {"tp": 1},
        "algorithm": {"name": "grpo"},
        "rollout": {"n": 4},
        "data": {"train": [str(data)]},
    }))
    return path


def test_load_and_override(recipe):
    cfg = load_config(recipe, ["actor.tp=2", "rollout.n=8", "rollout.temperature=0.6", "algorithm.kl_coef=1e-3"])
    assert cfg.actor.tp == 2 and cfg.rollout.n == 8 and cfg.rollout.temperature == 0.6
    assert cfg.algorithm.kl_coef == 1e-3
    assert cfg.run.output_dir == "runs/t"


@pytest.mark.parametrize(
    "override,message",
    [
        (["actor.tp=3"], r"actor.tp=3 does not divide num_attention_heads=4; choose tp from \[1, 2\]"),
        (["actor.tp=4"], r"actor.tp=4 does not divide num_attention_heads=4|actor.tp=4 does not divide num_key_value_heads=2"),
        (["actor.pp=3"], r"actor.pp=3 does not divide num_hidden_layers=4"),
        (["rollout.temprature=0.5"], r"unknown key 'rollout.temprature'; did you mean 'rollout.temperature'\?"),
        (["actor.tp=zero"], r"actor.tp='zero': Input should be a valid integer"),
        (["rollout.n=1"], r"rollout.n=1: group baselines need at least 2 samples"),
        (["model.path=/nonexistent/model"], r"model.path='/nonexistent/model' does not exist"),
        (["data.train=[/nope.jsonl]"], r"data.train\[0\]='/nope.jsonl' does not exist"),
        (["algorithm.name=drgrpo"], r"drgrpo needs algorithm.loss_agg=seq-sum-constant"),
        (["actor.tp"], r"override 'actor.tp' is not key=value"),
        (["rollout.mode=overlap", "rollout.colocate=true"], r"rollout.mode=overlap needs the servers to keep generating"),
        (["rollout.mode=async", "rollout.colocate=true"], r"rollout.mode=async needs the servers to keep generating"),
        (["rollout.overlap=true"], r"rollout.overlap was replaced by rollout.mode \(overlap for true, sync for false\)"),
        (["rollout.partial=true"], r"rollout.partial=true applies to rollout.mode=async, not sync"),
        (["rollout.mode=eager"], r"rollout.mode='eager': Input should be 'sync', 'overlap' or 'async'"),
        (["rollout.mode=async", "rollout.max_staleness=-1"], r"rollout.max_staleness=-1: Input should be greater than or equal to 0"),
    ],
)
def test_bad_values_name_field_value_and_fix(recipe, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(recipe, override)


def test_missing_recipe_and_missing_section(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "r.yaml").write_text("run: {steps: 1}\n")
    with pytest.raises(ConfigError, match="model is required but missing"):
        load_config(tmp_path / "r.yaml")


def test_world_size_check(recipe):
    from megarl.config import validate_semantics

    cfg = load_config(recipe, ["actor.tp=2"])
    with pytest.raises(ConfigError, match="world size 3 is not a multiple of actor.tp\\*actor.pp = 2"):
        validate_semantics(cfg, world_size=3)


def _megarl(*args):
    return subprocess.run([sys.executable, "-m", "megarl.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_help_lists_subcommands():
    out = _megarl("--help")
    assert out.returncode == 0
    for cmd in ("train", "eval", "serve", "submit", "grade"):
        assert f"  {cmd} " in out.stdout


def test_cli_bad_config_is_one_line_no_traceback(recipe):
    out = _megarl("config", str(recipe), "actor.tp=3")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip() and "Warning" not in line and "warnings.warn" not in line]
    assert lines == ["megarl: config error: actor.tp=3 does not divide num_attention_heads=4; choose tp from [1, 2]"]


def test_cli_unknown_command():
    out = _megarl("trian")
    assert out.returncode == 2 and "Did you mean `megarl train`" in out.stderr
