"""End to end on the local two-node Slurm cluster: `megarl submit configs/tiny_cpu.yaml --nodes 2
--rollout-nodes 1` trains a few GRPO steps (trainer on n1, built-in rollout server on n2), writes
metrics and checkpoints; a run requeued mid-way (`scontrol requeue`) ends with the same final step
and metrics as the uninterrupted one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobs import free_port_block, job_report, megarl_submit, read_metrics, submitted_job_id
from test_slurm_jobs import JOB_TIMEOUT_S

# The launch side passes: trainer on n1, server on n2, server URLs as rollout.servers=[...], the
# per-run admin token in $MEGARL_SERVE_TOKEN, rendezvous address in $MASTER_ADDR. The trainer
# passes that token to servers it did not start (megarl/train/trainer.py _start_servers).
pytestmark = [pytest.mark.slurm]
STEPS = 3
COMPARED = ("reward/mean", "reward/accuracy", "response/length_mean")


PER_STEP = 4 * 4  # data.prompts_per_step x rollout.n: grading calls per step


def _submit_tiny(cluster, run_dir, extra=(), env=None):
    """Both runs grade with tests/slurm/gated_rewards.py (importable through PYTHONPATH, which the
    job inherits from sbatch); `env` may close its gate."""
    base = free_port_block(2)
    job_env = dict(cluster.env, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
                   **(env or {}))
    proc = megarl_submit(["configs/tiny_cpu.yaml", "--nodes", "2", "--rollout-nodes", "1", "--gpus-per-node", "0",
                          "--time", "00:15:00", "--server-port", str(base), "--master-port", str(base + 1), *extra,
                          f"run.steps={STEPS}", "checkpoint.every=1", "eval.every=0", "rollout.transport=distributed",
                          "data.prompts_per_step=4", "rollout.n=4", "reward.custom=gated_rewards:boxed_gold_gated",
                          f"run.output_dir={run_dir}"],
                         env=job_env, timeout=300)
    return submitted_job_id(proc)


@pytest.fixture(scope="module")
def straight_run(slurm_cluster, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("slurm_train") / "straight"
    job_id = _submit_tiny(slurm_cluster, run_dir)
    info = slurm_cluster.wait_for_job(job_id, timeout=JOB_TIMEOUT_S * 2)
    assert info["JobState"] == "COMPLETED", f"{info}\n{job_report(run_dir, job_id)}"
    return run_dir


def test_tiny_cpu_recipe_trains_on_two_nodes(straight_run):
    rows = read_metrics(straight_run)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert all(0.0 <= r["reward/accuracy"] <= 1.0 for r in rows)
    done = sorted(p.name for p in (straight_run / "checkpoints").glob("step_*") if (p / "COMPLETE").exists())
    assert done and done[-1] == f"step_{STEPS:06d}"


def test_requeued_training_resumes_to_the_same_result(slurm_cluster, straight_run, tmp_path):
    import time

    run_dir = tmp_path / "requeued"
    # The trainer waits in the grading of the third batch while the gate file exists: by then the
    # step-1 checkpoint is written (with rollout.mode=overlap the third batch is generated during step 2).
    gate = tmp_path / "gate"
    gate.write_text("closed")
    job_id = _submit_tiny(slurm_cluster, run_dir, ["--requeue"],
                          env={"MEGARL_TEST_GATE_FILE": str(gate), "MEGARL_TEST_GATE_AFTER_CALLS": str(2 * PER_STEP)})
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not (run_dir / "checkpoints" / "step_000001" / "COMPLETE").exists():  # mid-run: after the first checkpoint
        assert time.monotonic() < deadline, job_report(run_dir, job_id)
        assert slurm_cluster.job_state(job_id)["JobState"] in ("PENDING", "RUNNING"), job_report(run_dir, job_id)
        time.sleep(0.3)
    assert not (run_dir / "checkpoints" / f"step_{STEPS:06d}").exists()  # held at the gate, not finished
    slurm_cluster.run(["scontrol", "requeue", job_id], timeout=20)
    gate.unlink()  # the requeued job (a fresh process) starts counting again and passes freely
    info = slurm_cluster.wait_for_job(job_id, timeout=JOB_TIMEOUT_S * 2)
    assert info["JobState"] == "COMPLETED", f"{info}\n{job_report(run_dir, job_id)}"
    assert info["Restarts"] == "1", info
    straight, resumed = read_metrics(straight_run), read_metrics(run_dir)
    assert [r["step"] for r in resumed] == [r["step"] for r in straight]
    for a, b in zip(straight, resumed):
        for key in COMPARED:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)
