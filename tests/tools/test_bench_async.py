"""tools/bench_async.py's arithmetic: per-mode summaries from metrics rows, the trainer-cost fit, the
decode-cost scale, the server batch record, and the environment every run gets."""

import importlib.util
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


ba = _load("bench_async")
am = _load("async_model")


def step(i, step_s, tokens, **extra):
    return {"step": i, "perf/step_s": step_s, "perf/tokens": tokens, **extra}


def test_summarize_leaves_out_warmup_and_weights_tokens_per_second_by_time():
    rows = [step(1, 10.0, 100), step(2, 2.0, 200, **{"perf/update_s": 1.0, "rollout/staleness_max": 2}),
            step(3, 4.0, 600, **{"perf/update_s": 3.0, "rollout/dropped_stale": 3, "perf/server_idle_frac": 0.5})]
    out = ba.summarize(rows, warmup=1)
    assert out["measured_steps"] == 2
    assert out["step_s_mean"] == pytest.approx(3.0)
    assert out["tokens_per_s"] == pytest.approx(800 / 6.0)  # total tokens over total time, not a mean of ratios
    assert out["stages_s_mean"] == {"update_s": pytest.approx(2.0)}
    assert out["server_idle_frac"] == pytest.approx(0.5)
    assert ba.summarize([step(1, 1.0, 10, **{"rollout/server_idle_frac": 0.25})], warmup=0)["server_idle_frac"] == 0.25
    assert out["staleness_max_all_steps"] == 2 and out["dropped_stale_all_steps"] == 3


def test_update_cost_fit_recovers_a_line_and_falls_back_on_noise():
    rows = [step(i, 1.0, t, **{"perf/logprobs_s": 0.1 * c, "perf/update_s": 0.9 * c, "perf/sync_s": 0.02})
            for i, (t, c) in enumerate([(1000, 0.5 + 1000 * 2e-4), (3000, 0.5 + 3000 * 2e-4), (2000, 0.5 + 2000 * 2e-4),
                                        (5000, 0.5 + 5000 * 2e-4)], start=1)]
    fit = ba.fit_update_cost(rows, warmup=0)
    assert fit["update_per_token_s"] == pytest.approx(2e-4) and fit["update_fixed_s"] == pytest.approx(0.5)
    assert fit["sync_s"] == pytest.approx(0.02)
    # more tokens, less time: a negative slope is noise, so cost per token only
    noisy = [step(1, 1, 1000, **{"perf/update_s": 2.0}), step(2, 1, 2000, **{"perf/update_s": 1.0}),
             step(3, 1, 3000, **{"perf/update_s": 0.5})]
    fit = ba.fit_update_cost(noisy, warmup=0)
    assert fit["update_fixed_s"] == 0.0 and fit["update_per_token_s"] == pytest.approx(3.5 / 6000)


def test_busy_per_step_of_a_simulated_run():
    # sync, 1 server, 4 x 10 tokens at 1 s per decode step, update 3 s, sync 1 s: busy 10 s of each 14 s step
    cluster = am.Cluster(servers=1, decode=am.DecodeCost(step_s=1.0), update_per_token_s=0.0, update_fixed_s=3.0, sync_s=1.0)
    sim = am.simulate(cluster, am.Workload(2, 2, 5, lambda rng: 10), am.Schedule("sync"), steps=5)
    assert ba.busy_per_step(sim) == pytest.approx(10.0)


def test_batch_watcher_summary(tmp_path):
    watcher = ba.BatchWatcher(tmp_path)
    watcher.sizes = {1: 128, 2: 4, 3: 8, 4: 256}
    out = watcher.summary()
    assert out == {"batches_seen": 4, "batches_run": 4, "mean_sequences": 99.0, "median_sequences": 68.0,
                   "share_under_16": 0.5}
    (tmp_path / "rollout_server_0.log").write_text("loading\nmegarl serve: listening on http://127.0.0.1:4321\n")
    assert watcher._url() == "http://127.0.0.1:4321"


def test_runs_get_megarls_own_thread_split(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.setenv("MEGARL_SERVER_THREADS", "2")
    env = ba.run_env()
    assert "OMP_NUM_THREADS" not in env and "MEGARL_SERVER_THREADS" not in env
    assert env["WANDB_MODE"] == "disabled" and env["PYTHONPATH"].startswith(str(TOOLS.parent))


def test_help_has_an_example():
    with pytest.raises(SystemExit) as info:
        ba.main(["--help"])
    assert info.value.code == 0
