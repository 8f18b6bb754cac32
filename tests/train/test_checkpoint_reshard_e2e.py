"""`megarl train` with the distributed optimizer saves a torch_dist checkpoint at TP2 x DP2 (4 ranks)
and resumes it at TP1 x PP2 (2 ranks): the resumed steps' metrics equal the uninterrupted run's.

Tolerance: rollouts, rewards and response lengths must be identical (the servers sample from the
synced weights with fixed seeds); losses, entropy, KL and grad norm match to rel 1e-4, the same
bound as the layout parity test (test_train_e2e.py): TP, PP and DP sum the same float32 terms in
another order (about 1e-6 relative per reduction), which Adam's normalized update carries on.
"""

import pytest
from test_train_e2e import _metrics, _train

EXACT = ("reward/mean", "response/length_mean", "batch/sequences")
CLOSE = ("actor/pg_loss", "actor/entropy", "actor/grad_norm", "actor/ppo_kl", "actor/kl")


def test_distributed_optimizer_checkpoint_resumes_on_another_layout(write_recipe):
    settings = dict(run={"steps": 4}, checkpoint={"every": 2, "keep_last": 2}, reward={"custom": "toy_rewards:mentions_seven"},
                    algorithm={"name": "grpo", "kl_coef": 0.01}, actor={"tp": 2, "distributed_optimizer": True})
    recipe, run_dir = write_recipe("straight", **settings)
    _train(recipe, nproc=4)
    expected = _metrics(run_dir)

    recipe2, run_dir2 = write_recipe("resharded", **settings)
    _train(recipe2, "run.steps=2", nproc=4)  # TP2 x DP2, checkpoint at step 2
    assert sorted(p.name for p in (run_dir2 / "checkpoints").iterdir()) == ["step_000002"]
    proc = _train(recipe2, "actor.tp=1", "actor.pp=2", nproc=2)  # TP1 x PP2 (DP1)
    out = proc.stdout + proc.stderr
    assert "resumed from checkpoint at step 2" in out and "resharded to" in out, out[-3000:]
    got = _metrics(run_dir2)
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    for want, have in zip(expected[2:], got[2:]):
        for key in EXACT:
            assert have[key] == want[key], (want["step"], key)
        for key in CLOSE:
            if key in want:
                assert have[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), (want["step"], key)
