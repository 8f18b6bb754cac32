"""The per-GPU plan of a mixture-of-experts job (Qwen3-30B-A3B): expert parameters under expert
parallelism, their optimizer shards over the expert data-parallel group, top-k activations, the layout
checks megatron-core makes, and what `megarl submit --dry-run` prints. Every expected number is worked
out here from the shipped config.json, not copied from the tool's output."""

import json

import pytest

from megarl.config import ConfigError, load_config, validate_semantics
from megarl.launch import submit
from megarl.launch.layout import LaunchError, LaunchOptions, plan_layout
from megarl.launch.memory import GIB, HEADROOM, Shape, _rank_split, check_fits, estimate_memory
from megarl.model_configs import model_config_path
from megarl.model_configs.experts import Experts
from megarl.models.spec import ModelSpec

RECIPE = "configs/qwen3_30b_a3b_grpo.yaml"
CONFIG = json.loads(model_config_path("Qwen3-30B-A3B").read_text())
H, L, V = CONFIG["hidden_size"], CONFIG["num_hidden_layers"], CONFIG["vocab_size"]
E, K, F = CONFIG["num_experts"], CONFIG["num_experts_per_tok"], CONFIG["moe_intermediate_size"]
Q, KV = CONFIG["num_attention_heads"] * CONFIG["head_dim"], CONFIG["num_key_value_heads"] * CONFIG["head_dim"]
ATTENTION = H * (Q + 2 * KV) + Q * H  # q, k, v and o projections (no biases)
EXPERT = 3 * H * F  # gate, up, down of one expert
ROUTER = E * H


def _spec_experts():
    return ModelSpec.from_hf(CONFIG), Experts.from_hf(CONFIG)


def _plan(*overrides, gpus=8):
    cfg = load_config(RECIPE, overrides=list(overrides), check_files=False)
    layout = plan_layout(cfg, LaunchOptions.from_recipe(cfg.slurm, gpus_per_node=gpus))
    return cfg, layout


def test_qwen3_30b_a3b_has_the_published_parameter_count():
    """Model card: 30.5B parameters, 29.9B without the embeddings; every one of the 48 layers is MoE."""
    spec, experts = _spec_experts()
    assert experts.moe_layers == tuple(range(L))
    by_hand = L * (ATTENTION + 2 * H + ROUTER + E * EXPERT) + 2 * V * H + H
    total = Shape.of(spec, experts).total_params()
    assert total == by_hand
    assert round(total / 1e9, 1) == 30.5 and round((total - 2 * V * H) / 1e9, 1) == 29.9


@pytest.mark.parametrize("model_type", ["qwen3_moe", "qwen2_moe"])
def test_moe_parameter_count_matches_transformers(model_type):
    """Routed experts, router, dense layers (mlp_only_layers, decoder_sparse_step) and Qwen2-MoE's shared
    expert and gate, counted against transformers' own models (less Qwen3's q/k head norms, which the plan
    leaves out for every Qwen3 model: 2 x head_dim per layer)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    params = dict(vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, num_experts=6, num_experts_per_tok=2, moe_intermediate_size=16,
                  decoder_sparse_step=2, mlp_only_layers=[3], tie_word_embeddings=False)
    if model_type == "qwen2_moe":
        params["shared_expert_intermediate_size"] = 24
    config = AutoConfig.for_model(model_type, **params)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    counted = sum(p.numel() for name, p in model.named_parameters() if not name.endswith(("q_norm.weight", "k_norm.weight")))
    experts = Experts.from_hf(config.to_dict())
    assert experts.moe_layers == (1,)  # (i + 1) % 2 == 0 and not in mlp_only_layers: layer 1 only
    shape = Shape(hidden=32, ffn=48, layers=4, heads=4, kv_heads=2, head_dim=8, vocab=101, tied=False,
                  qkv_bias=model_type == "qwen2_moe", experts=experts.num_experts, top_k=experts.top_k,
                  expert_ffn=experts.ffn_hidden_size, moe_layers=frozenset(experts.moe_layers),
                  shared_ffn=experts.shared_ffn_hidden_size)
    assert shape.total_params() == counted


@pytest.mark.parametrize("tp,pp,ep", [(4, 1, 8), (2, 1, 4), (1, 2, 8), (8, 1, 1)])
def test_rank_split_by_hand(tp, pp, ep):
    """Attention and embeddings split by TP (and the layers by PP); experts by EP, each whole (expert TP 1)."""
    spec, experts = _spec_experts()
    layers = L // pp
    dense = layers * (ATTENTION // tp + 2 * H + ROUTER) + (V * H // tp) * (2 if pp == 1 else 1) + H
    expert = layers * (E // ep) * EXPERT
    assert _rank_split(Shape.of(spec, experts), tp, pp, ep) == (dense, expert)


def test_recipe_plan_on_8xh100_by_hand():
    """slime's layout on one trainer node: TP4 x DP2, EP8 x expert DP1, optimizer state in host memory."""
    spec, experts = _spec_experts()
    cfg, layout = _plan()
    assert (layout.tp, layout.pp, layout.dp, layout.ep, layout.trainer_nodes) == (4, 1, 2, 8, 1)
    est = estimate_memory(cfg, spec, layout, gpu_gib=80, experts=experts)
    rows = {r.component: r.gib for r in est.trainer}
    dense = L * (ATTENTION // 4 + 2 * H + ROUTER) + 2 * (V * H // 4) + H
    expert = L * (E // 8) * EXPERT  # 16 whole experts per layer
    assert rows["actor weights"] == pytest.approx((dense + expert) * 2 / GIB)
    assert rows["actor gradients"] == pytest.approx((dense + expert) * 4 / GIB)
    assert "actor optimizer" not in rows  # offloaded: host RAM, split over DP 2 (dense) and expert DP 1 (experts)
    host = {r.component: r.gib for r in est.host}
    assert host["actor optimizer (offloaded)"] == pytest.approx((dense * 12 / 2 + expert * 12 / 1) / GIB)
    # full recompute, sequence parallel: each layer's input (2 h / tp per token) plus one MoE layer's working set:
    # attention and norms 15 h / tp, and for the tokens / tp the rank dispatches: 3 h + 8 E + k (4 h + 6 f); logits
    tokens, tp = 20480, 4
    moe_layer = tokens * H * 15 / tp + tokens / tp * (3 * H + 8 * E + K * (4 * H + 6 * F))
    activations = L * tokens * H * 2 / tp + moe_layer + tokens * V / tp * 4
    assert rows["actor activations"] == pytest.approx(activations / GIB)
    assert "reference weights" not in rows  # kl_coef 0: no reference policy
    total_bytes = (L * (ATTENTION + 2 * H + ROUTER + E * EXPERT) + 2 * V * H + H) * 2
    assert {r.component: r.gib for r in est.server}["weights"] == pytest.approx(total_bytes / 8 / GIB)  # server TP 8
    assert est.peak_gib <= 80 * (1 - HEADROOM)
    check_fits(est, cfg, spec, layout, experts)


def test_optimizer_on_the_gpu_fits_h200_not_h100():
    """Without the CPU offload the Adam state of 16 whole experts per layer (expert DP 1) stays on each GPU:
    over an H100's budget (the fix named), within an H200's."""
    spec, experts = _spec_experts()
    cfg, layout = _plan("actor.optimizer_offload=false")
    on_h200 = estimate_memory(cfg, spec, layout, gpu_gib=140, experts=experts)
    dense = L * (ATTENTION // 4 + 2 * H + ROUTER) + 2 * (V * H // 4) + H
    expert = L * (E // 8) * EXPERT
    assert {r.component: r.gib for r in on_h200.trainer}["actor optimizer"] == pytest.approx((dense * 12 / 2 + expert * 12) / GIB)
    check_fits(on_h200, cfg, spec, layout, experts)
    with pytest.raises(LaunchError, match=r"over the 72.0 GiB budget .*; set actor.optimizer_offload=true \("):
        check_fits(estimate_memory(cfg, spec, layout, gpu_gib=80, experts=experts), cfg, spec, layout, experts)
    # at EP4 the fix widens expert parallelism first (fewer experts per rank), then offloads
    cfg4, layout4 = _plan("actor.optimizer_offload=false", "actor.ep=4")
    with pytest.raises(LaunchError, match=r"; set actor.ep=8 actor.optimizer_offload=true \("):
        check_fits(estimate_memory(cfg4, spec, layout4, gpu_gib=80, experts=experts), cfg4, spec, layout4, experts)


def test_expert_parallel_layouts_megatron_cannot_build_are_refused():
    cfg, _ = _plan()
    with pytest.raises(LaunchError, match=r"actor.ep=16 must divide the 8 ranks of a pipeline stage .*choose actor.ep from \[1, 2, 4, 8\]"):
        _plan("actor.ep=16")
    with pytest.raises(LaunchError, match=r"actor.ep=8 must divide the 4 ranks of a pipeline stage"):
        _plan("actor.pp=2")  # 8 GPUs / PP 2 = 4 ranks per stage: EP 8 does not fit megatron-core's world % (ep x pp)
    with pytest.raises(ConfigError, match=r"actor.ep=8 must divide the 4 ranks"):
        validate_semantics(cfg, check_files=False, world_size=4)  # the trainer's own check at launch
    with pytest.raises(ConfigError, match=r"actor.ep=3 does not divide num_experts=128; choose actor.ep from \[1, 2, 4, 8, 16"):
        load_config(RECIPE, overrides=["actor.ep=3"], weights=False)
    with pytest.raises(ConfigError, match=r"actor.ep=2 splits experts, but the model is dense .*; set actor.ep=1"):
        load_config("configs/simplerl_zoo_qwen2.5_32b.yaml", overrides=["actor.ep=2"], weights=False)
    with pytest.raises(ConfigError, match=r"critic.tp/pp/ep=.*/2 must equal actor.tp/pp/ep=.*/1 \(actor and critic share the ranks\)"):
        load_config("configs/simplerl_ppo_qwen2.5_math_7b.yaml", overrides=["critic.ep=2"], check_files=False)


def _dry_run(capsys, *args):
    rc = submit.main([RECIPE, "--dry-run", "--no-path-checks", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_dry_run_prints_the_moe_plan_on_h100_and_h200(capsys):
    expert_b = L * (E // 8) * EXPERT / 1e9
    rc, script, table = _dry_run(capsys)
    assert rc == 0
    assert "world 8 = TP 4 x PP 1 x DP 2; experts EP 8 x expert DP 1" in script
    assert f"(TP 4, PP 1, EP 8: {expert_b:.2f}B of them experts)" in table
    assert "top-8 of 128 experts" in table and "budget 72.0 GiB" in table
    rc, script, table = _dry_run(capsys, "--gpu-memory-gb", "140", "actor.optimizer_offload=false")
    assert rc == 0 and "budget 126.0 GiB" in table and "| trainer | actor optimizer |" in table
    rc, _, err = _dry_run(capsys, "actor.optimizer_offload=false")
    assert rc == 2 and "set actor.optimizer_offload=true" in err
    # 6 trainer nodes: EP 3 divides the 48 ranks but not the 128 experts; --no-path-checks skips load_config's model
    # checks, so the plan makes them again
    rc, _, err = _dry_run(capsys, "--nodes", "7", "--rollout-nodes", "1", "actor.ep=3")
    assert rc == 2 and "actor.ep=3 does not divide num_experts=128" in err
