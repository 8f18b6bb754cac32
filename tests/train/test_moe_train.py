"""A Qwen3-MoE actor trains end to end at EP=2 (two torchrun ranks over gloo, all-to-all dispatch):
the built-in server returns each token's experts, the samples carry them through THD packing, and the
log-prob and update passes replay them (moe/router_mismatch 0 at every step) while the router's own
choice is reported as moe/router_drift; with actor.router_replay=false training routes by itself and
the mismatch with the rollout's routes is reported (equal to the drift)."""

import math
import shutil

import pytest
from test_train_e2e import _metrics, _train
from tiny_models import make_tiny_hf


@pytest.fixture(scope="module")
def moe_model(toy_model, tmp_path_factory):
    """A random tiny Qwen3-MoE with the toy model's tokenizer (its vocabulary size)."""
    import json

    vocab = json.loads((toy_model / "config.json").read_text())["vocab_size"]
    out = make_tiny_hf("qwen3_moe", tmp_path_factory.mktemp("moe_train") / "model", vocab_size=vocab,
                       max_position_embeddings=512)
    for f in toy_model.iterdir():
        if "token" in f.name or f.name == "generation_config.json":
            shutil.copy(f, out / f.name)
    return out


@pytest.mark.parametrize("replay", [True, False], ids=["replay", "no-replay"])
def test_moe_grpo_at_ep2_replays_the_rollout_routes(write_recipe, moe_model, replay):
    recipe, run_dir = write_recipe(f"moe_{replay}", run={"steps": 2}, model={"path": str(moe_model)},
                                   actor={"ep": 2, "router_replay": replay, "lr": 1e-3},
                                   reward={"custom": "toy_rewards:mentions_seven"}, rollout={"max_new_tokens": 16},
                                   algorithm={"name": "grpo", "mini_batches": 2})
    _train(recipe, nproc=2)
    rows = _metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["actor/grad_norm"] > 0 and math.isfinite(r["actor/pg_loss"])
        assert all(f"moe/load_imbalance/layer{i}" in r for i in (0, 2, 3))
        if replay:
            assert r["moe/router_mismatch"] == 0.0 and 0.0 <= r["moe/router_drift"] <= 1.0
        else:
            assert r["moe/router_mismatch"] == r["moe/router_drift"]
    if not replay:  # the second mini-batch's update runs on weights one optimizer step past the rollout's
        assert max(r["moe/router_mismatch"] for r in rows) > 0


def test_moe_routes_travel_with_async_samples(write_recipe, moe_model):
    """rollout.mode=async with partial rollouts: samples generated ahead of the update (policy lag 1)
    carry their routes into training, and replay holds (mismatch 0 at every step)."""
    recipe, run_dir = write_recipe("moe_async", run={"steps": 3}, model={"path": str(moe_model)},
                                   actor={"ep": 2, "router_replay": True, "lr": 1e-3},
                                   reward={"custom": "toy_rewards:mentions_seven"}, rollout={"max_new_tokens": 16, "mode": "async",
                                                                                              "partial": True},
                                   algorithm={"name": "grpo"})
    _train(recipe, nproc=2)
    rows = _metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert max(r["rollout/policy_lag"] for r in rows) >= 1  # trained on samples from an older policy
    assert all(r["moe/router_mismatch"] == 0.0 for r in rows), [r["moe/router_mismatch"] for r in rows]
