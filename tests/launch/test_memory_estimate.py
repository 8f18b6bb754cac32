"""The per-GPU memory estimate behind `megarl submit --dry-run`: parameter counts against
transformers' own models, sharding arithmetic, and the refusal of layouts that cannot fit."""

import json

import pytest
from tiny_models import make_tiny_hf

from megarl.config import load_config
from megarl.launch.layout import LaunchError, LaunchOptions, plan_layout
from megarl.launch.memory import GIB, Shape, _rank_params, check_fits, estimate_memory
from megarl.models.spec import ModelSpec

QWEN25_32B = dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", vocab_size=152064, hidden_size=5120,
                  intermediate_size=27648, num_hidden_layers=64, num_attention_heads=40, num_key_value_heads=8,
                  max_position_embeddings=131072, rope_theta=1000000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)


@pytest.mark.parametrize("arch", ["qwen2", "llama", "mistral"])
def test_parameter_count_matches_transformers(tmp_path, arch):
    from transformers import AutoModelForCausalLM

    path = make_tiny_hf(arch, tmp_path / arch)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert Shape.of(ModelSpec.from_hf(path)).total_params() == sum(p.numel() for p in model.parameters())


def test_rank_params_partition_the_model(tmp_path):
    """TP shards every matrix, PP splits the layers; norms are replicated on every TP rank."""
    shape = Shape.of(ModelSpec.from_hf(make_tiny_hf("llama", tmp_path / "m")))
    sharded, replicated = shape.layer_params()
    total = shape.total_params()
    assert _rank_params(shape, 1, 1) == total
    embed = shape.vocab * shape.hidden
    # TP=2: every sharded matrix halves; norms stay whole on each rank
    assert _rank_params(shape, 2, 1) == shape.layers * (sharded // 2 + replicated) + 2 * embed // 2 + shape.hidden
    # PP=2 (untied): the first stage holds half the layers and the embedding, the last the output layer
    assert _rank_params(shape, 1, 2) == shape.layers // 2 * (sharded + replicated) + embed + shape.hidden


# The 32B recipe's earlier layout (TP8 x PP2 x DP2 on 4 trainer nodes, no sequence parallelism, no
# distributed optimizer): 50 GiB per GPU, so it fits 80 GiB GPUs and not 40 GiB ones.
OLD_32B_LAYOUT = ["actor.pp=2", "actor.sequence_parallel=false", "actor.distributed_optimizer=false", "slurm.nodes=8"]


def _qwen32b(tmp_path, *overrides):
    (tmp_path / "q32").mkdir()
    (tmp_path / "q32" / "config.json").write_text(json.dumps(QWEN25_32B))
    cfg = load_config("configs/simplerl_zoo_qwen2.5_32b.yaml", overrides=[f"model.path={tmp_path / 'q32'}", *OLD_32B_LAYOUT,
                                                                          *overrides], check_files=False)
    layout = plan_layout(cfg, LaunchOptions.from_recipe(cfg.slurm))
    return cfg, ModelSpec.from_hf(tmp_path / "q32"), layout


def test_shipped_32b_recipe_fits_80gb_with_headroom(tmp_path):
    (tmp_path / "q32").mkdir()
    (tmp_path / "q32" / "config.json").write_text(json.dumps(QWEN25_32B))
    cfg = load_config("configs/simplerl_zoo_qwen2.5_32b.yaml", overrides=[f"model.path={tmp_path / 'q32'}"], check_files=False)
    s = cfg.slurm
    layout = plan_layout(cfg, LaunchOptions(nodes=s.nodes, rollout_nodes=s.rollout_nodes, gpus_per_node=s.gpus_per_node))
    est = estimate_memory(cfg, ModelSpec.from_hf(tmp_path / "q32"), layout, gpu_gib=80)
    assert layout.trainer_nodes == 2 and est.trainer_gib < 0.8 * 80
    check_fits(est, cfg, ModelSpec.from_hf(tmp_path / "q32"), layout)


def test_32b_estimate_rows_and_table(tmp_path):
    cfg, spec, layout = _qwen32b(tmp_path)
    est = estimate_memory(cfg, spec, layout, gpu_gib=80)
    rows = {r.component: r.gib for r in est.trainer}
    params = _rank_params(Shape.of(spec), cfg.actor.tp, cfg.actor.pp)
    assert rows["actor weights"] == pytest.approx(params * 2 / GIB)
    assert rows["actor gradients"] == pytest.approx(params * 4 / GIB)
    assert rows["actor optimizer"] == pytest.approx(params * 12 / GIB)  # no distributed optimizer in this layout
    assert "reference weights" in rows  # KL 1e-3 keeps a reference policy
    table = est.table()
    assert "| trainer | total |" in table and "| server | KV cache |" in table and "KV cache: about" in table
    # distributed optimizer: the optimizer state splits over DP
    dist = estimate_memory(cfg.model_copy(update={"actor": cfg.actor.model_copy(update={"distributed_optimizer": True})}),
                           spec, layout, gpu_gib=80)
    assert {r.component: r.gib for r in dist.trainer}["actor optimizer"] == pytest.approx(params * 12 / layout.dp / GIB)


def test_layout_that_cannot_fit_is_refused_with_a_fix_that_fits(tmp_path):
    cfg, spec, layout = _qwen32b(tmp_path)
    est = estimate_memory(cfg, spec, layout, gpu_gib=40)
    with pytest.raises(LaunchError, match=r"over the 36.0 GiB budget .*; set actor.sequence_parallel=true") as err:
        check_fits(est, cfg, spec, layout)
    fixes = str(err.value).split("; set ")[1].split(" (see")[0].split()
    fixed = load_config("configs/simplerl_zoo_qwen2.5_32b.yaml",
                        overrides=[f"model.path={tmp_path / 'q32'}", *OLD_32B_LAYOUT, *fixes], check_files=False)
    check_fits(estimate_memory(fixed, spec, layout, gpu_gib=40), fixed, spec, layout)  # no error
    # servers whose weights leave no KV cache on the GPU are refused too
    with pytest.raises(LaunchError, match=r"KV cache holds about 0 tokens, less than one sequence of 9,216: raise rollout.server_tp"):
        check_fits(estimate_memory(cfg, spec, layout, gpu_gib=16), cfg, spec, layout)
