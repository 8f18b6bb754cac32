"""rollout.mode=async end to end on CPU (real Megatron actor, real built-in server, real grading): with
max_staleness 0 it trains exactly the synchronous run's batches; kill -9 and resume trains every prompt
once; the staleness in the per-step metrics stays within the bound."""

import json

import pytest
from test_train_e2e import _metrics, _train, _train_until_killed

from megarl.data import load_prompts
from megarl.data.prompt_stream import PromptStream


def _prompts(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "prompts.jsonl").read_text().splitlines() if line.strip()]


def test_async_with_zero_staleness_equals_sync(write_recipe):
    """max_staleness 0: every token from the trained policy, so the async producer must hand the trainer
    the synchronous run's batches (same prompts, same samples, same rewards) step for step."""
    common = dict(run={"steps": 2}, reward={"custom": "toy_rewards:mentions_seven"})
    recipe, run_dir = write_recipe("sync", rollout={"mode": "sync"}, **common)
    _train(recipe)
    recipe2, run_dir2 = write_recipe("async0", rollout={"mode": "async", "max_staleness": 0, "partial": True}, **common)
    _train(recipe2)
    assert _prompts(run_dir) == _prompts(run_dir2)
    sync, asyn = _metrics(run_dir), _metrics(run_dir2)
    for want, have in zip(sync, asyn, strict=True):
        assert have["rollout/staleness_max"] == 0 and have["rollout/policy_lag"] == 0
        for key in ("reward/mean", "reward/accuracy", "response/length_mean", "response/length_max", "batch/sequences",
                    "advantage/abs_mean"):
            assert have[key] == want[key], (want["step"], key)
        # sync takes the ratio's denominator from the update's own forward pass, async (off-policy mode)
        # from the server's log-probs of the same tokens: equal up to float noise
        for key in ("actor/pg_loss", "actor/entropy", "actor/grad_norm"):
            assert have[key] == pytest.approx(want[key], rel=1e-4, abs=1e-5), (want["step"], key)


def test_async_kill_9_and_resume_trains_every_prompt_once(write_recipe, tmp_path):
    """SIGKILL while the producer grades (groups in flight and buffered), resume from the last checkpoint:
    the prompts the checkpoint had drawn but not trained are generated again and trained; no prompt is
    trained twice, none is lost; staleness stays within the bound throughout."""
    settings = dict(run={"steps": 6}, checkpoint={"every": 1, "keep_last": 2},
                    rollout={"mode": "async", "max_staleness": 2, "partial": True},
                    reward={"custom": "toy_rewards:mentions_seven_then_crash"})
    recipe, run_dir = write_recipe("killed_async", **settings)
    _train_until_killed(recipe, tmp_path, 6 * 16 + 4)
    # the producer runs up to max_staleness + 1 steps ahead: the kill lands around step 3
    done = sorted(p for p in (run_dir / "checkpoints").glob("step_??????") if (p / "COMPLETE").exists())
    assert done and done[-1].name < "step_000006", done
    state = json.loads((done[-1] / "trainer_state.json").read_text())
    pending = state["async"]["requeue"]
    assert pending, "the checkpoint held no drawn-but-untrained prompts: the test would prove nothing"
    _train(recipe)
    rows, steps = _metrics(run_dir), _prompts(run_dir)
    assert [r["step"] for r in rows] == [s["step"] for s in steps] == [1, 2, 3, 4, 5, 6]
    trained = [i for s in steps for i in s["ids"]]
    assert len(trained) == len(set(trained)) == 6 * 4  # none twice
    # none lost: every prompt drawn (before or after the kill) is trained or pending at the end
    final = json.loads((run_dir / "checkpoints" / "step_000006" / "trainer_state.json").read_text())["async"]
    stream = PromptStream(load_prompts("toy-arith:rl_train"), 3)
    pending_end = [stream.row_at(tuple(k)).id for k in final["requeue"]]
    assert {stream.row_at(tuple(k)).id for k in pending} <= set(trained) | set(pending_end)
    drawn = [stream.row_at((0, p)).id for p in range(final["prompts"]["position"])]
    assert sorted(trained + pending_end) == sorted(drawn)
    assert all(0 <= r["rollout/staleness_max"] <= 2 for r in rows)
