"""End-to-end CPU training with the algorithms the registry added: GSPO at TP2 x PP2 (4 torchrun ranks),
CISPO and REINFORCE++-baseline at TP1; 3 steps each through the real built-in server and grading."""

import math

import pytest
from test_train_e2e import _metrics, _train

CASES = {
    # two mini-batches: the second sees weights one optimizer step newer, so GSPO's 3e-4 / 4e-4 sequence
    # clip has ratios away from 1 to clip
    "gspo": ({"tp": 2, "pp": 2}, 4, {"name": "gspo", "loss_agg": "seq-mean-token-mean", "mini_batches": 2}),
    "cispo": ({}, 1, {"name": "cispo", "mini_batches": 2}),
    "reinforce_pp_baseline": ({}, 1, {"name": "reinforce_pp_baseline"}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_three_steps(write_recipe, name):
    actor, nproc, algorithm = CASES[name]
    recipe, run_dir = write_recipe(name, actor=actor, algorithm=algorithm, reward={"custom": "toy_rewards:mentions_seven"})
    _train(recipe, nproc=nproc)
    rows = _metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        for key in ("reward/mean", "actor/pg_loss", "actor/entropy", "actor/grad_norm", "actor/clipfrac", "actor/ppo_kl"):
            assert key in r and math.isfinite(r[key]), (name, key, r)
        assert r["actor/grad_norm"] > 0
    if name == "gspo":  # a sequence ratio one Adam step off leaves GSPO's tiny clip range
        assert max(r["actor/clipfrac"] for r in rows) > 0
