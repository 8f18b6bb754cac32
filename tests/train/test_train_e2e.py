"""End-to-end training on CPU: real Megatron ranks over gloo (torchrun), a real built-in rollout
server, real grading. PPO, GRPO and Dr. GRPO at TP2xPP2; layout parity; kill-and-resume."""

import json
import math
import os
import signal
import sys

import pytest
from dist_utils import free_port, run_to_exit


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _env(**extra) -> dict:
    """A training run's environment: one thread, no warnings, toy_rewards on the path."""
    here = os.path.dirname(__file__)
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
                PYTHONPATH=os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]), **extra)


def _train(recipe, *overrides, nproc=1, timeout=420):
    if nproc == 1:
        cmd = [sys.executable, "-m", "megarl.cli", "train", str(recipe), *overrides]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
               "--master-port", str(free_port()), "-m", "megarl.cli", "train", str(recipe), *overrides]
    proc = run_to_exit(cmd, timeout=timeout, env=_env())
    if proc.returncode != 0:
        raise AssertionError(f"training failed rc={proc.returncode}\n{(proc.stdout + proc.stderr)[-5000:]}")
    return proc


def _train_until_killed(recipe, tmp_path, at_call: int):
    """Run `megarl train` until the reward function SIGKILLs the process at grading call `at_call`
    (toy_rewards:mentions_seven_then_crash), as a node failure would."""
    env = _env(MEGARL_TEST_CRASH_AT_CALL=str(at_call), MEGARL_TEST_CRASH_COUNTER=str(tmp_path / "grading_calls"))
    proc = run_to_exit([sys.executable, "-m", "megarl.cli", "train", str(recipe)], env=env, timeout=420)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-3000:])


@pytest.mark.parametrize(
    "algorithm,extra",
    [
        ("grpo", {"algorithm": {"name": "grpo", "kl_coef": 0.01, "entropy_coef": 0.001, "mini_batches": 2}}),
        ("drgrpo", {"algorithm": {"name": "drgrpo", "loss_agg": "seq-sum-constant", "loss_constant": 32}}),
        # SimpleRL v0's aggregation for both losses (per-sequence token mean, then over sequences)
        ("ppo", {"algorithm": {"name": "ppo", "loss_agg": "seq-mean-token-mean", "lam": 0.95},
                 "critic": {"tp": 2, "pp": 2, "lr": 1e-4, "micro_batch_tokens": 256, "loss_agg": "seq-mean-token-mean"}}),
    ],
)
def test_three_steps_at_tp2_pp2(write_recipe, algorithm, extra):
    recipe, run_dir = write_recipe(algorithm, actor={"tp": 2, "pp": 2}, reward={"custom": "toy_rewards:mentions_seven"}, **extra)
    _train(recipe, nproc=4)
    rows = _metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        for key in ("reward/mean", "actor/pg_loss", "actor/entropy", "actor/grad_norm", "perf/tokens_per_s", "mismatch/logp_abs_mean"):
            assert key in r and r[key] is not None and math.isfinite(r[key]), (algorithm, key, r)
        # the actor's recomputed log-probs match the server's behaviour log-probs (same weights)
        assert r["mismatch/logp_abs_mean"] < 1e-3
        assert r["actor/grad_norm"] > 0
    if algorithm == "ppo":
        assert all("critic/vf_loss" in r and r["critic/grad_norm"] > 0 for r in rows)
    if algorithm == "grpo":
        assert all(r["actor/kl"] >= 0 for r in rows) and rows[-1]["actor/kl"] > 0


@pytest.fixture(scope="module")
def first_step_at_three_layouts(write_module_recipe):
    """{name: (process, metrics rows)} of one step at TP=1, at TP2xPP2 under torchrun, and at TP=2 with
    sequence parallelism through plain `megarl train` with command-line overrides (it relaunches
    itself under torchrun)."""
    runs = {}
    for name, actor, nproc, overrides in [("parity1", {}, 1, ()), ("parity4", {"tp": 2, "pp": 2}, 4, ()),
                                          ("parity_sp", {}, 1, ("actor.tp=2", "actor.sequence_parallel=true"))]:
        recipe, run_dir = write_module_recipe(name, run={"steps": 1}, actor=actor)
        proc = _train(recipe, *overrides, nproc=nproc)
        runs[name] = (proc, _metrics(run_dir))
    return runs


def test_layout_parity_first_step(first_step_at_three_layouts):
    """The same first step at TP=1, TP2xPP2 and TP=2 with sequence parallelism: identical rollouts,
    matching losses and grad norm."""
    a = first_step_at_three_layouts["parity1"][1][0]
    for name in ("parity4", "parity_sp"):
        b = first_step_at_three_layouts[name][1][0]
        assert a["reward/mean"] == b["reward/mean"] and a["response/length_mean"] == b["response/length_mean"]
        for key in ("actor/pg_loss", "actor/entropy", "actor/grad_norm", "actor/ppo_kl"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (name, key)


@pytest.mark.parametrize("overlap", [False, True], ids=["on-policy", "overlap"])
def test_kill_and_resume_reproduces_uninterrupted_run(write_recipe, tmp_path, overlap):
    """SIGKILL in the middle of step 3's grading (16 samples a step), then a resumed run: the
    metrics equal the uninterrupted run's. With rollout.mode=overlap the checkpoint also holds the next
    step's batch, already sampled."""
    settings = dict(run={"steps": 4}, checkpoint={"every": 1, "keep_last": 2}, rollout={"mode": "overlap" if overlap else "sync"},
                    reward={"custom": "toy_rewards:mentions_seven_then_crash"})
    recipe, run_dir = write_recipe("straight", **settings)
    _train(recipe)
    expected = _metrics(run_dir)
    assert [r["rollout/policy_lag"] for r in expected] == ([0, 1, 1, 1] if overlap else [0, 0, 0, 0])

    recipe2, run_dir2 = write_recipe("killed", **settings)
    _train_until_killed(recipe2, tmp_path, 2 * 16 + 8)
    done = sorted(p.name for p in (run_dir2 / "checkpoints").glob("step_*") if (p / "COMPLETE").exists())
    assert done and done[-1] < "step_000004", done  # killed before the end
    _train(recipe2)  # resumes from the newest complete checkpoint
    got = _metrics(run_dir2)
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    for want, have in zip(expected, got):
        for key, value in want.items():
            if key.startswith("perf/"):
                continue  # wall-clock
            if key.startswith("mismatch/") or (overlap and key.startswith("actor/")):
                # the server's own log-probs carry float noise that depends on how it batched
                # requests (with overlap they are the PPO ratio's denominator)
                assert have[key] == pytest.approx(value, rel=1e-4, abs=1e-5), (want["step"], key)
            else:
                assert have[key] == value, (want["step"], key, value, have[key])


@pytest.mark.parametrize("algorithm", [{"mini_batches": 2}, {"importance_correction": "tis"}], ids=["two-minibatches", "tis"])
def test_overlap_off_policy_variants(write_recipe, algorithm):
    """rollout.mode=overlap beyond the single-pass case: ratio against the behaviour log-probs over two
    optimizer steps, or against recomputed log-probs with a TIS weight."""
    recipe, run_dir = write_recipe("overlap", run={"steps": 3}, rollout={"mode": "overlap"},
                                   reward={"custom": "toy_rewards:mentions_seven"}, algorithm={"name": "grpo", **algorithm})
    _train(recipe)
    rows = _metrics(run_dir)
    assert [r["rollout/policy_lag"] for r in rows] == [0, 1, 1]
    for r in rows:
        assert r["actor/grad_norm"] > 0 and math.isfinite(r["actor/pg_loss"]) and math.isfinite(r["actor/ppo_kl"])
    if "importance_correction" in algorithm:  # recomputed log-probs vs the server's (after step 1 they
        # differ by one optimizer step too)
        assert all(math.isfinite(r["mismatch/logp_abs_mean"]) for r in rows) and rows[0]["mismatch/logp_abs_mean"] < 1e-3
    else:  # the ratio's denominator is the server's log-prob itself: no separate mismatch to report
        assert all("mismatch/logp_abs_mean" not in r for r in rows)


def test_dynamic_sampling_never_returns_a_short_batch(write_recipe):
    recipe, run_dir = write_recipe("dyn", run={"steps": 3}, reward={"custom": "toy_rewards:mentions_seven"},
                                   algorithm={"name": "grpo", "dynamic_sampling": True, "dynamic_sampling_max_rounds": 30})
    _train(recipe)
    rows = _metrics(run_dir)
    assert all(r["batch/sequences"] == 4 * 4 and r["batch/prompts"] == 4 for r in rows)
    assert sum(r["data/filtered_groups"] for r in rows) > 0  # some groups were uniform and were replaced
    assert all(r["advantage/abs_mean"] > 0 for r in rows)


def test_rloo_colocated_with_hf_export(write_recipe):
    recipe, run_dir = write_recipe("rloo", run={"steps": 2}, algorithm={"name": "rloo"}, reward={"custom": "toy_rewards:mentions_seven"},
                                   rollout={"colocate": True}, checkpoint={"hf_export_every": 2})
    _train(recipe)
    rows = _metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2] and all(r["actor/grad_norm"] > 0 for r in rows)
    # the trainer's weights and gradients left the device while the server generated, and from step 2
    # on (once Adam has state) its two moments too: twice the bytes
    first, second = (r["colocate/offloaded_gib"] for r in rows)
    assert first > 0 and second == pytest.approx(2 * first)
    exported = run_dir / "hf" / "step_000002"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(exported)
    assert AutoTokenizer.from_pretrained(exported) is not None and model.config.model_type == "qwen2"


def test_reinforce_pp_with_kl_in_reward(write_recipe):
    """Also the disk transport: each push goes to rollout.disk_dir's default, the run directory."""
    recipe, run_dir = write_recipe("rpp", run={"steps": 2}, reward={"custom": "toy_rewards:mentions_seven"},
                                   algorithm={"name": "reinforce_pp", "kl_coef": 0.05, "kl_in_reward": True, "gamma": 1.0},
                                   rollout={"transport": "disk"})
    _train(recipe)
    rows = _metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2] and all(r["actor/grad_norm"] > 0 for r in rows)
    assert rows[-1]["mismatch/logp_abs_mean"] < 1e-3  # the server generated step 2 on the pushed weights
    assert (run_dir / "weight_sync").is_dir() and not any((run_dir / "weight_sync").iterdir())  # each push cleaned up


def test_cli_relaunches_itself_under_torchrun_for_tp2(first_step_at_three_layouts):
    proc, rows = first_step_at_three_layouts["parity_sp"]  # plain `megarl train ... actor.tp=2`, no launcher
    assert "launching 2 processes" in proc.stderr
    assert [r["step"] for r in rows] == [1]


def test_stop_request_is_honoured_between_phases_and_the_resumed_run_matches(write_recipe, tmp_path):
    """SIGUSR1 (Slurm's time-limit notice) during step 2's first mini-batch update, or during its
    rollout: the run checkpoints the step's progress and exits 75 before the next phase starts (no
    further optimizer step), and the resumed run's metrics equal the uninterrupted run's."""
    settings = dict(run={"steps": 2}, algorithm={"name": "grpo", "mini_batches": 2}, reward={"custom": "toy_rewards:mentions_seven"})
    recipe, run_dir = write_recipe("straight", **settings)
    _train(recipe)
    expected = _metrics(run_dir)
    here = os.path.dirname(__file__)
    # (where the signal arrives, actor optimizer steps that ran before the run stopped)
    for signal_in, updates_run in [("update:3", 3), ("grade:2", 2)]:
        name = "stopped_" + signal_in.split(":")[0]
        recipe2, run_dir2 = write_recipe(name, **settings)
        log = tmp_path / f"{name}.phases"
        env = _env(MEGARL_TEST_SIGNAL_IN=signal_in, MEGARL_TEST_PHASE_LOG=str(log))
        proc = run_to_exit([sys.executable, os.path.join(here, "signal_in_phase.py"), str(recipe2)], env=env, timeout=420)
        assert proc.returncode == 75, (signal_in, proc.returncode, proc.stderr[-3000:])
        assert "checkpointed at step 2 (in progress)" in proc.stdout + proc.stderr
        assert log.read_text().split().count("update") == updates_run, signal_in  # nothing after the stop point
        assert [r["step"] for r in _metrics(run_dir2)] == [1]
        assert [p.name for p in (run_dir2 / "checkpoints").glob("step_*")] == ["step_000001"]
        _train(recipe2)  # resumes in the middle of step 2
        got = _metrics(run_dir2)
        assert [r["step"] for r in got] == [1, 2]
        for want, have in zip(expected, got):
            assert {k for k in have if not k.startswith("perf/")} == {k for k in want if not k.startswith("perf/")}, signal_in
            for key, value in want.items():
                if key.startswith("mismatch/"):  # the server's log-probs carry batching-dependent float noise
                    assert have[key] == pytest.approx(value, rel=1e-4, abs=1e-5), (signal_in, want["step"], key)
                elif not key.startswith("perf/"):  # wall-clock
                    assert have[key] == value, (signal_in, want["step"], key, value, have[key])
