"""tools/async_model.py: the discrete-event model of sync, overlap and async RL step schedules.

Hand-computed schedules (equal lengths: every figure follows from the costs), the long-tail case
async exists for, and the staleness bound over many random schedules."""

import importlib.util
import math
import random
import statistics
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "tools" / "async_model.py"
_SPEC = importlib.util.spec_from_file_location("async_model", _PATH)
am = importlib.util.module_from_spec(_SPEC)
sys.modules["async_model"] = am
_SPEC.loader.exec_module(am)


def fixed(length):
    return lambda rng: length


def cluster(**kw):
    base = dict(servers=1, decode=am.DecodeCost(step_s=1.0), update_per_token_s=0.0, update_fixed_s=3.0, sync_s=1.0,
                max_running=64)
    base.update(kw)
    return am.Cluster(**base)


WORK = am.Workload(prompts=2, n=2, prompt_tokens=5, lengths=fixed(10))


def test_decode_cost_sums_steps_and_inverts():
    cost = am.DecodeCost(step_s=0.01, per_seq_s=0.002, per_ctx_token_s=1e-5)
    b, ctx = 7, 300
    by_hand = sum(0.01 + 0.002 * b + 1e-5 * (ctx + i * b) for i in range(25))
    assert cost.steps_s(25, b, ctx) == pytest.approx(by_hand)
    assert cost.steps_s(0, b, ctx) == 0.0
    for seconds in (0.0, 0.05, by_hand, by_hand + 1e-9, 3.7):
        m = cost.max_steps_within(seconds, b, ctx)
        assert cost.steps_s(m, b, ctx) <= seconds + 1e-12 < cost.steps_s(m + 1, b, ctx)


def test_equal_lengths_rollout_bound_known_step_times():
    # 4 sequences of 10 tokens in one continuous batch at 1 s per decode step: rollout 10 s;
    # update 3 s; sync 1 s.
    sync = am.simulate(cluster(), WORK, am.Schedule("sync"), steps=6, warmup=1)
    assert [r.seconds for r in sync.steps] == pytest.approx([14.0] * 6)  # rollout + update + sync
    overlap = am.simulate(cluster(), WORK, am.Schedule("overlap"), steps=6, warmup=1)
    assert overlap.steps[0].seconds == pytest.approx(10 + 10 + 1)  # batch 0 alone, then max(10, 3) + 1
    assert [r.seconds for r in overlap.steps[1:]] == pytest.approx([11.0] * 5)
    assert overlap.step_s == pytest.approx(11.0)
    for partial in (True, False):
        # With room for one batch at a time (max_running 4), the servers decode one batch per 10 s
        # and stop 1 s for each sync (partial: paused in place; not partial: they drain first and
        # the trainer waits for that): like overlap.
        asyn = am.simulate(cluster(max_running=4), WORK, am.Schedule("async", partial, 1), steps=8, warmup=2)
        assert asyn.step_s == pytest.approx(11.0)
    assert [sum(r.staleness) for r in sync.steps] == [0] * 6


def test_equal_lengths_trainer_bound_known_step_times():
    slow = cluster(update_fixed_s=20.0)
    assert am.simulate(slow, WORK, am.Schedule("sync"), steps=5).step_s == pytest.approx(10 + 20 + 1)
    assert am.simulate(slow, WORK, am.Schedule("overlap"), steps=5).step_s == pytest.approx(20 + 1)
    asyn = am.simulate(cluster(update_fixed_s=20.0, max_running=4), WORK, am.Schedule("async", True, 2), steps=8)
    assert asyn.step_s == pytest.approx(20 + 1)
    assert asyn.staleness_max == 2  # the producer runs as far ahead as the bound lets it


def test_prefill_and_update_per_token_costs_add_up():
    c = cluster(decode=am.DecodeCost(step_s=1.0, prefill_per_token_s=0.1), update_per_token_s=0.01, update_fixed_s=0.0)
    # prefill of 4 prompts x 5 tokens = 2 s, decode 10 s, update (4 x 15 tokens) x 0.01 = 0.6 s, sync 1 s
    assert am.simulate(c, WORK, am.Schedule("sync"), steps=3).step_s == pytest.approx(2 + 10 + 0.6 + 1)


def test_static_batches_wait_for_their_longest_row():
    lengths = iter([2, 10, 2, 2] * 10)
    work = am.Workload(prompts=2, n=2, prompt_tokens=1, lengths=lambda rng: next(lengths))
    static = cluster(max_running=2, batching="static", update_fixed_s=0.0, sync_s=0.0)
    result = am.simulate(static, work, am.Schedule("sync"), steps=1)
    assert result.steps[0].seconds == pytest.approx(10 + 2)  # batch [2, 10] then batch [2, 2]
    assert result.generated_tokens == 16  # pad rows are not counted as tokens
    continuous = am.simulate(cluster(max_running=2, update_fixed_s=0.0, sync_s=0.0), work, am.Schedule("sync"), steps=1)
    assert continuous.steps[0].seconds == pytest.approx(10)  # the short rows follow each other beside the long one


def long_tail(rng):
    return 200 if rng.random() < 0.05 else 20


def tail_cluster(**kw):
    base = dict(servers=4, decode=am.DecodeCost(step_s=0.01, per_seq_s=0.001), update_per_token_s=2e-4, update_fixed_s=0.1,
                sync_s=0.05, max_running=32)
    base.update(kw)
    return am.Cluster(**base)


def test_long_tail_async_beats_sync_and_overlap():
    work = am.Workload(prompts=16, n=8, prompt_tokens=10, lengths=long_tail)
    results = {mode: am.simulate(tail_cluster(), work, am.Schedule(mode, True, 2), steps=20, seed=3)
               for mode in am.MODES}
    assert results["async"].steps_per_hour > 1.2 * results["sync"].steps_per_hour
    assert results["async"].steps_per_hour > 1.05 * results["overlap"].steps_per_hour
    assert results["async"].server_idle_frac < results["sync"].server_idle_frac
    assert 0 < results["async"].partial_frac < 1  # long samples run across weight updates
    # a partial sample's newer tokens are less stale than its oldest one
    assert results["async"].token_staleness_mean < results["async"].staleness_mean
    assert results["async"].staleness_max <= 2


def test_without_partial_rollouts_samples_never_span_versions():
    work = am.Workload(prompts=16, n=8, prompt_tokens=10, lengths=long_tail)
    drained = am.simulate(tail_cluster(), work, am.Schedule("async", False, 2), steps=12, seed=1)
    assert drained.partial_frac == 0
    partial = am.simulate(tail_cluster(), work, am.Schedule("async", True, 2), steps=12, seed=1)
    assert partial.steps_per_hour > drained.steps_per_hour


def test_partial_sample_across_a_weight_update_by_hand():
    # One sample per step, 30 tokens at 1 s per decode step, update 5 s, sync 1 s, K=1.
    # t=0: groups 0 and 1 decode together, done at 30. Step 0 trains group 0: update 30-35, sync 35-36.
    # Group 2 starts at 36 (v1). Step 1 trains group 1 (made by v0: staleness 1): update 36-41, sync
    # pauses group 2 after 5 tokens (41-42). It finishes its last 25 tokens with v2 at 67; step 2 trains
    # it: oldest token 1 step old, token-weighted (5 x 1 + 25 x 0) / 30, a partial sample.
    c = cluster(update_fixed_s=5.0, sync_s=1.0)
    work = am.Workload(prompts=1, n=1, prompt_tokens=1, lengths=fixed(30))
    result = am.simulate(c, work, am.Schedule("async", True, 1), steps=3, warmup=0)
    assert [r.end_s for r in result.steps] == pytest.approx([36, 42, 73])
    assert [r.staleness for r in result.steps] == [[0], [1], [1]]
    assert [r.token_staleness for r in result.steps] == pytest.approx([0, 1, 5 / 30])
    assert [r.partial for r in result.steps] == [0, 0, 1]
    drained = am.simulate(c, work, am.Schedule("async", False, 1), steps=3, warmup=0)
    assert [r.partial for r in drained.steps] == [0, 0, 0]  # the update waited for the sample instead


@pytest.mark.parametrize("seed", range(30))
def test_staleness_bound_holds_over_random_schedules(seed):
    rng = random.Random(seed)
    k = rng.randint(0, 3)
    c = am.Cluster(
        servers=rng.randint(1, 4),
        decode=am.DecodeCost(step_s=rng.uniform(0.001, 0.02), per_seq_s=rng.uniform(0, 0.002),
                             per_ctx_token_s=rng.uniform(0, 1e-5), prefill_per_token_s=rng.uniform(0, 1e-4)),
        update_per_token_s=rng.uniform(0, 1e-3), update_fixed_s=rng.uniform(0, 1), sync_s=rng.uniform(0, 0.5),
        max_running=rng.choice([4, 16, 64]), batching=rng.choice(["continuous", "static"]),
        resume=rng.choice(["in_place", "reprefill"]),
    )
    heavy = rng.uniform(0.01, 0.3)
    work = am.Workload(prompts=rng.randint(1, 6), n=rng.randint(1, 4), prompt_tokens=rng.randint(1, 50),
                       lengths=lambda r: int(r.paretovariate(1.2) * 5) if r.random() < heavy else r.randint(1, 30))
    result = am.simulate(c, work, am.Schedule("async", rng.random() < 0.7, k), steps=10, seed=seed)
    assert len(result.steps) == 10
    assert all(len(r.staleness) == work.prompts for r in result.steps)
    assert result.staleness_max <= k
    ends = [r.end_s for r in result.steps]
    assert ends == sorted(ends)
    assert all(s.seconds >= c.sync_s - 1e-9 for s in result.steps)
    overlap = am.simulate(c, work, am.Schedule("overlap"), steps=4, seed=seed)
    assert [max(r.staleness) for r in overlap.steps] == [0, 1, 1, 1]
    assert [r.token_staleness for r in overlap.steps] == [0, 1, 1, 1]
    assert am.simulate(c, work, am.Schedule("sync"), steps=3, seed=seed).staleness_max == 0


def test_tokens_trained_equal_tokens_sampled_in_sync():
    work = am.Workload(prompts=4, n=3, prompt_tokens=7, lengths=long_tail)
    result = am.simulate(tail_cluster(resume="reprefill"), work, am.Schedule("sync"), steps=5, seed=2)
    assert result.generated_tokens == sum(r.response_tokens for r in result.steps)
    assert all(r.tokens == r.response_tokens + 4 * 3 * 7 for r in result.steps)


def test_zero_rl_lengths_and_percentiles():
    draw = am.ZeroRLLengths(median=1000, sigma=0.8, truncated=0.05, max_tokens=4096)
    rng = random.Random(0)
    values = [draw(rng) for _ in range(20000)]
    assert max(values) == 4096 and min(values) >= 1
    # at the cap: the truncated share plus the log-normal's own tail past it
    expected = 0.05 + 0.95 * (1 - statistics.NormalDist().cdf(math.log(4096 / 1000) / 0.8))
    assert sum(v == 4096 for v in values) / len(values) == pytest.approx(expected, abs=0.006)
    p = am.percentiles(values)
    assert 900 < p["p50"] < 1150 and p["p99"] == 4096
    assert am.percentiles([1, 2, 3, 4]) == {"mean": 2.5, "p50": 2, "p90": 4, "p99": 4, "max": 4}


def test_gpu_prediction_runs_and_reports_every_schedule():
    layout = am.GpuLayout(prompts=32, n=4, rollout_gpus=4, train_gpus=4)
    prediction = am.predict(layout, am.ZeroRLLengths(max_tokens=2048), steps=4, warmup=1)
    assert len(prediction["rows"]) == 6  # 5 schedules + async on the best split
    assert [(r["rollout_gpus"], r["train_gpus"]) for r in prediction["async_split_scan"]] == [(2, 6), (4, 4), (6, 2)]
    assert all(r["steps_per_hour"] > 0 for r in prediction["rows"].values())
    assert prediction["speedup_async_over_best_sync"] > 0


def test_bad_inputs_name_the_field():
    with pytest.raises(ValueError, match="mode"):
        am.Schedule("fast")
    with pytest.raises(ValueError, match="max_staleness"):
        am.Schedule("async", True, -1)
    with pytest.raises(ValueError, match="batching"):
        cluster(batching="dynamic")
