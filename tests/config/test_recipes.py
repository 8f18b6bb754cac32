"""Every shipped recipe loads, fits the real model it names, and equals the published values in
docs/recipes.md (or differs there and in the recipe with a reason)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from megarl.config import ConfigError, load_config, read_recipe
from megarl.model_configs.experts import Experts, check_experts
from megarl.models.spec import ModelSpec

REPO = Path(__file__).parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
CLUSTER = [p for p in CONFIGS if not p.stem.startswith("tiny_cpu")]  # the CPU demos name no real model

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
    "Qwen3-30B-A3B": dict(model_type="qwen3_moe", num_attention_heads=32, num_key_value_heads=4, num_hidden_layers=48, hidden_size=2048,
                          intermediate_size=6144, head_dim=128, num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768),
}


def published_tables() -> dict[str, list[tuple[str, str, str, str, str]]]:
    """docs/recipes.md: recipe name -> rows (field, megarl, published, source, why it differs)."""
    tables: dict[str, list] = {}
    current = None
    for line in (REPO / "docs" / "recipes.md").read_text().splitlines():
        if line.startswith("## "):
            current = tables.setdefault(line[3:].strip(), [])
        elif current is not None and line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            current.append(tuple(cell.strip("`") for cell in cells))
    return tables


def dotted(data: dict, field: str):
    for part in field.split("."):
        data = data[part]
    return data


def test_all_recipes_present_and_tabled():
    names = {p.stem for p in CONFIGS}
    assert "tiny_cpu" in names and "drgrpo_qwen2.5_math_7b" in names and "simplerl_ppo_qwen2.5_math_7b" in names
    assert sum(n.startswith("simplerl_zoo_") for n in names) == 10
    assert set(published_tables()) == {p.stem for p in CLUSTER}


@pytest.mark.parametrize("path", CLUSTER, ids=lambda p: p.stem)
def test_recipe_equals_published_table(path):
    resolved = load_config(path, check_files=False).model_dump()
    recipe_text = path.read_text() + (REPO / "configs" / "base" / "simplerl_zoo.yaml").read_text()
    rows = published_tables()[path.stem]
    assert len(rows) >= 15
    for field, megarl_value, published, source, why in rows:
        assert source, f"{path.stem}: {field} names no source"
        if megarl_value != published:
            assert why, f"{path.stem}: {field} differs from the published {published} without a reason in docs/recipes.md"
        if field.startswith("("):  # a published setting megarl has no field for (the reason says why)
            continue
        assert dotted(resolved, field) == yaml.safe_load(megarl_value), f"{path.stem}: {field}"
        if megarl_value != published:  # the recipe itself says why, on the line that sets it
            key = field.rsplit(".", 1)[1]
            assert re.search(rf"^\s*{key}:.*#.*differs", recipe_text, re.MULTILINE), f"{path.stem}: {field} lacks a reason comment"


@pytest.mark.parametrize("path", CLUSTER, ids=lambda p: p.stem)
def test_cluster_recipe_validates_against_real_model(path):
    cfg = load_config(path, check_files=False)
    model = Path(cfg.model.path).name
    spec = ModelSpec.from_hf(dict(REAL_MODELS[model], vocab_size=152064))
    spec.check_layout(cfg.actor.tp, cfg.actor.pp)
    check_experts(Experts.from_hf(REAL_MODELS[model]), cfg.actor.ep)  # ep splits a MoE model's experts (and only a MoE model's)
    if cfg.uses_critic:
        spec.check_layout(cfg.critic.tp, cfg.critic.pp, field="critic")


def test_zoo_recipes_are_short_deltas_on_one_base():
    for path in CONFIGS:
        if path.stem.startswith("simplerl_zoo_"):
            raw = yaml.safe_load(path.read_text())
            assert raw["base"] == "base/simplerl_zoo.yaml"
            assert len(path.read_text().splitlines()) <= 30, path.name


def test_base_merge_and_errors(tmp_path):
    (tmp_path / "base.yaml").write_text("actor: {lr: 1.0e-5, tp: 2}\ndata: {train: [a], template: abel}\n")
    (tmp_path / "delta.yaml").write_text("base: base.yaml\nactor: {tp: 1}\ndata: {train: [b]}\n")
    merged = read_recipe(tmp_path / "delta.yaml")
    assert merged == {"actor": {"lr": 1.0e-5, "tp": 1}, "data": {"train": ["b"], "template": "abel"}}
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        read_recipe(tmp_path / "loop.yaml")
    (tmp_path / "missing.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml does not exist"):
        read_recipe(tmp_path / "missing.yaml")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from tiny_models import make_tiny_hf

    # 8 heads and 8 query groups, 4 layers: every recipe's TP (1-8) and PP (1-2) fits.
    return make_tiny_hf("qwen2", tmp_path_factory.mktemp("tiny_qwen"), num_attention_heads=8, num_key_value_heads=8)


def test_megarl_config_prints_the_published_values(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """The first recipe through the `megarl config` program itself, the others through the same
    entry point in this process (a Python start with its imports costs ~2 s a recipe)."""
    from megarl.cli import main
    from megarl.model_configs import model_config_path

    tables = published_tables()
    monkeypatch.chdir(REPO)
    for i, path in enumerate(CLUSTER):
        model_dir = tiny_model_dir
        if "num_experts" in REAL_MODELS[Path(load_config(path, check_files=False).model.path).name]:
            model_dir = tmp_path / path.stem  # a MoE recipe's ep needs experts: the shipped config.json (no weights are read)
            model_dir.mkdir()
            (model_dir / "config.json").write_text(model_config_path(load_config(path, check_files=False).model.config).read_text())
        argv = ["config", str(path), f"model.path={model_dir}"]
        if i == 0:
            out = subprocess.run([sys.executable, "-m", "megarl.cli", *argv], capture_output=True, text=True, timeout=120)
            code, stdout, stderr = out.returncode, out.stdout, out.stderr
        else:
            code = main(argv)
            stdout, stderr = capsys.readouterr()
        assert code == 0, f"{path.name}: {stderr}"
        printed = yaml.safe_load(stdout)
        for field, megarl_value, *_ in tables[path.stem]:
            if not field.startswith("("):
                assert dotted(printed, field) == yaml.safe_load(megarl_value), f"{path.stem}: {field}"


def _recipe(stem: str):
    return load_config(REPO / "configs" / f"{stem}.yaml", check_files=False)


def test_upstream_reread_values():
    """The values the re-read of the upstream files changed (docs/recipes.md, "What the re-read changed")."""
    zoo = [p.stem for p in CONFIGS if p.stem.startswith("simplerl_zoo_")]
    for stem in zoo:
        cfg = _recipe(stem)
        assert cfg.reward.scheme == "hf-math-verify", stem  # truncated responses graded, as hf_math_verify.py
        assert cfg.eval.stop_token_ids is not None, stem  # math_eval.py's own ids, not the rollout's
    # The simple (abel) prompt only for Llama-3.1-8B, Mistral-7B and Qwen2.5-0.5B/1.5B (paper §2.1, App. B.3).
    simple = {s for s in zoo if _recipe(s).data.template == "abel"}
    assert simple == {"simplerl_zoo_llama3.1_8b", "simplerl_zoo_mistral_7b", "simplerl_zoo_qwen2.5_0.5b", "simplerl_zoo_qwen2.5_1.5b"}
    # 4k-context models: the script's 3072, which with the 1024-token prompt fills 4096 exactly.
    for stem in ("simplerl_zoo_qwen2.5_math_7b", "simplerl_zoo_deepseek_math_7b"):
        cfg = _recipe(stem)
        assert cfg.rollout.max_new_tokens + cfg.data.max_prompt_tokens == 4096
    assert _recipe("simplerl_zoo_llama3.1_8b").eval.stop_token_ids == []
    assert _recipe("simplerl_zoo_deepseek_math_7b").eval.stop_token_ids == []
    assert _recipe("simplerl_zoo_mistral_7b").eval.stop_token_ids == [22478, 24994, 26307, 9977]
    assert _recipe("simplerl_zoo_qwen2.5_7b").eval.stop_token_ids == [151645, 151643]
    dr = _recipe("drgrpo_qwen2.5_math_7b")
    assert dr.rollout.template_stops is False and dr.rollout.stop_token_ids == [] and dr.reward.scheme == "binary"
    assert dr.eval.benchmarks == ["aime24", "amc_drgrpo", "math500", "minerva_math_drgrpo", "olympiadbench"]
    ppo = _recipe("simplerl_ppo_qwen2.5_math_7b")
    assert ppo.algorithm.loss_agg == ppo.critic.loss_agg == "seq-mean-token-mean"
    episodes, prompts, n, train_batch = 20, 8523, 8, 128  # ppo_actor.py max_steps
    assert ppo.actor.lr_horizon_steps == ppo.critic.lr_horizon_steps == episodes * (prompts * n // train_batch) == 10640
    assert ppo.run.steps * ppo.algorithm.mini_batches < ppo.actor.lr_horizon_steps  # the run stops partway down the cosine


@pytest.mark.parametrize("path", CLUSTER, ids=lambda p: p.stem)
def test_cluster_recipe_names_the_shipped_config_of_its_model(path):
    """model.config is the published config.json megarl ships for model.path's model (plans without weights)."""
    import json

    from megarl.model_configs import model_config_path

    cfg = load_config(path, check_files=False)
    model = Path(cfg.model.path).name
    assert cfg.model.config == model
    shipped = json.loads(model_config_path(cfg.model.config).read_text())
    assert {key: shipped.get(key) for key in REAL_MODELS[model]} == REAL_MODELS[model]


def test_the_demo_checkpoints_every_10_steps_and_at_its_end():
    cfg = load_config(REPO / "configs" / "tiny_cpu.yaml", check_files=False)
    assert cfg.checkpoint.every == 10 and cfg.run.steps % cfg.checkpoint.every == 0
