"""End-to-end CPU runs of the trainer with off-policy corrections (real Megatron actor, real built-in
rollout server, one step off-policy with rollout.mode=overlap): decoupled PPO and IcePop train with their
statistics in the metrics, and IcePop's mask reaches the gradient."""

import math

import pytest
from test_train_e2e import _metrics, _train


@pytest.mark.parametrize("correction,settings", [
    ("decoupled", {"importance_cap": 1.02}),
    ("icepop", {"importance_low": 0.98, "importance_cap": 1.02}),
], ids=["decoupled", "icepop"])
def test_off_policy_run_with_correction(write_recipe, correction, settings):
    """Bounds tight enough for the toy run (one optimizer step of lag moves log-probs by about 0.02; the
    published settings, AReaL's cap 5 and IcePop's wide [alpha, beta], would keep every token here)."""
    recipe, run_dir = write_recipe(correction, run={"steps": 3}, rollout={"mode": "overlap"},
                                   reward={"custom": "toy_rewards:mentions_seven"},
                                   algorithm={"name": "grpo", "importance_correction": correction, **settings})
    _train(recipe)
    rows = _metrics(run_dir)
    assert [r["rollout/policy_lag"] for r in rows] == [0, 1, 1]
    for r in rows:
        assert r["actor/grad_norm"] > 0 and math.isfinite(r["actor/pg_loss"])
        for key in ("is/weight_mean", "is/ratio_mean", "is/masked_frac", "is/truncated_frac"):
            assert math.isfinite(r[key]), (r["step"], key)
        assert 0 <= r["is/masked_frac"] <= 1 and r["is/truncated_frac"] == 0
    # step 1 is on-policy: the recomputed log-probs match the server's, every weight is 1 up to float noise
    assert rows[0]["is/masked_frac"] == 0 and rows[0]["is/weight_mean"] == pytest.approx(1.0, abs=1e-3)
    # later steps train on a batch the previous weights sampled: ratios move off 1, some leave the bounds
    for r in rows[1:]:
        assert r["is/ratio_mean"] != pytest.approx(1.0, abs=1e-5) and 0 < r["is/masked_frac"] < 0.9, r


def test_icepop_mask_reaches_the_gradient(write_recipe):
    """On-policy ratios are 1 (up to float noise), so IcePop bounds [1.5, 2] drop every token: no policy
    gradient (no KL or entropy term), a zero gradient norm, all tokens counted as masked."""
    recipe, run_dir = write_recipe("icepop_all_masked", run={"steps": 1}, reward={"custom": "toy_rewards:mentions_seven"},
                                   algorithm={"name": "grpo", "importance_correction": "icepop", "importance_low": 1.5,
                                              "importance_cap": 2.0})
    _train(recipe)
    (row,) = _metrics(run_dir)
    assert row["is/masked_frac"] == 1 and row["is/weight_mean"] == 0
    assert row["actor/grad_norm"] == 0 and row["actor/pg_loss"] == 0
