"""Real Slurm jobs on a local two-node cluster: `megarl submit` renders and submits, the trainer
node runs a torchrun/gloo job (tests/slurm/launch_probe.py, which follows the trainer's launch
contract), the rollout node runs `megarl serve` on a tiny model.

Checked: the job's outputs and logs, node addresses and server URLs reaching the ranks, a killed
rollout server not ending the job, `scontrol requeue` of a running job resuming to the same final
metrics as an uninterrupted run, and the time-limit path (SIGUSR1 to the batch script -> checkpoint,
exit 75 -> the job requeues itself -> resumes) in colocated mode across two trainer nodes.
"""

from __future__ import annotations

import os
import re
import signal

import pytest

from jobs import (PROBE, free_port_block, job_report, megarl_submit, probe_facts, read_metrics, resume_probe, submitted_job_id,
                  wait_for_pause, write_cpu_recipe)

pytestmark = pytest.mark.slurm
STEPS = 6
PAUSE_AFTER = 3  # the probe holds after this step until the test has acted
JOB_TIMEOUT_S = 120


def _submit_probe(cluster, tmp_path, model, name: str, extra: list[str]):
    run_dir = tmp_path / name
    recipe = write_cpu_recipe(tmp_path / f"{name}.yaml", model, run_dir, run={"steps": STEPS})
    env = dict(cluster.env, MEGARL_PROBE_PAUSE_AFTER=str(PAUSE_AFTER))  # sbatch passes it on to the ranks
    base = free_port_block(4)
    proc = megarl_submit([str(recipe), "--nodes", "2", "--gpus-per-node", "0", "--entry", str(PROBE),
                          "--server-port", str(base), "--master-port", str(base + 3), *extra], env=env)
    return run_dir, submitted_job_id(proc), proc, base


@pytest.fixture(scope="module")
def reference_run(slurm_cluster, tiny_server_model, tmp_path_factory):
    """An uninterrupted 2-node job (trainer: 2 ranks on n1; rollout: 2 servers on n2), during which
    one server is killed."""
    tmp_path = tmp_path_factory.mktemp("slurm_reference")
    run_dir, job_id, proc, base = _submit_probe(slurm_cluster, tmp_path, tiny_server_model, "reference",
                                          ["--rollout-nodes", "1", "--procs-per-node", "2", "--servers-per-node", "2"])
    wait_for_pause(run_dir, slurm_cluster, job_id)
    rollout_log = (run_dir / "logs" / f"job_{job_id}" / "restart_0" / "rollout_n2.log").read_text()
    pid = int(re.search(r"server 0 \(port \d+, pid (\d+)\)", rollout_log).group(1))
    os.kill(pid, signal.SIGKILL)  # a rollout server crashes mid-run
    resume_probe(run_dir)
    info = slurm_cluster.wait_for_job(job_id, timeout=JOB_TIMEOUT_S)
    return {"run_dir": run_dir, "job_id": job_id, "info": info, "submit_output": proc.stdout, "killed_pid": pid,
            "base_port": base}


def _final(rows):
    return [(r["step"], r["acc"]) for r in rows]


def test_two_node_job_runs_trainer_and_servers(reference_run):
    run_dir, job_id, info = reference_run["run_dir"], reference_run["job_id"], reference_run["info"]
    urls = [f"http://127.0.0.1:{reference_run['base_port'] + i}" for i in range(2)]
    assert info["JobState"] == "COMPLETED", f"{info}\n{job_report(run_dir, job_id)}"
    # what megarl submit printed: where the logs are
    out = reference_run["submit_output"]
    assert str(run_dir / "logs" / f"job_{job_id}.out") in out and f"job_{job_id}/restart_<n>/" in out
    # the run directory holds what the job ran
    for name in ("submit.sbatch", "recipe.yaml", "launch.json", "slurm/env.sh", "slurm/node_role.sh"):
        assert (run_dir / name).is_file(), name
    # outputs: every step logged once, a checkpoint per step
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert (run_dir / "checkpoints" / f"step_{STEPS:06d}" / "COMPLETE").exists()
    # the ranks: 2 on the trainer node n1, rendezvous at n1's NodeAddr, servers on n2's NodeAddr
    facts = probe_facts(run_dir)
    assert set(facts) == {(0, 0), (0, 1)}
    for rank_facts in facts.values():
        assert rank_facts["node"] == "n1" and rank_facts["world"] == 2 and rank_facts["master_addr"] == "127.0.0.1"
        assert rank_facts["servers"] == urls
        assert rank_facts["token_set"] and rank_facts["job_id"] == job_id
    assert facts[0, 0]["flush_cache_status"] == [200, 200]  # the per-run admin token reached rank 0 and the servers
    # logs per job and per node
    batch_log = (run_dir / "logs" / f"job_{job_id}.out").read_text()
    # both servers answered /health, in whichever order they came up
    assert "is healthy (2/2)" in batch_log and all(f"rollout server {url} is healthy (" in batch_log for url in urls)
    assert "trainer step exited with code 0" in batch_log
    node_dir = run_dir / "logs" / f"job_{job_id}" / "restart_0"
    assert f"listening on http://0.0.0.0:{reference_run['base_port']}" in (node_dir / "server_n2_0.log").read_text()
    assert "torchrun exited with code 0" in (node_dir / "trainer_n1.log").read_text()
    rank_logs = list((node_dir / "torchrun_n1").rglob("stdout.log"))
    assert len(rank_logs) == 2
    assert sorted(p.read_text() for p in (node_dir / "exit_codes").glob("rank_*.code")) == ["0\n", "0\n"]


def test_killed_rollout_server_does_not_end_the_job(reference_run):
    run_dir, job_id = reference_run["run_dir"], reference_run["job_id"]
    assert reference_run["info"]["JobState"] == "COMPLETED", job_report(run_dir, job_id)
    rows = read_metrics(run_dir)
    assert rows[0]["servers_answered"] == 2 and rows[-1]["servers_answered"] == 1, rows
    log = (run_dir / "logs" / f"job_{job_id}" / "restart_0" / "rollout_n2.log").read_text()
    assert f"server 0 (pid {reference_run['killed_pid']}) exited with code -9; 1 server(s) left on this node" in log


def test_scontrol_requeue_of_a_running_job_resumes_to_the_same_result(slurm_cluster, tiny_server_model, tmp_path,
                                                                     reference_run):
    run_dir, job_id, _, _ = _submit_probe(slurm_cluster, tmp_path, tiny_server_model, "requeued",
                                       ["--rollout-nodes", "1", "--procs-per-node", "2", "--requeue"])
    wait_for_pause(run_dir, slurm_cluster, job_id)
    slurm_cluster.run(["scontrol", "requeue", job_id], timeout=20)
    info = slurm_cluster.wait_for_job(job_id, timeout=JOB_TIMEOUT_S)
    assert info["JobState"] == "COMPLETED", f"{info}\n{job_report(run_dir, job_id)}"
    assert info["Restarts"] == "1", info
    facts = probe_facts(run_dir)
    assert facts[1, 0]["resumed_from"] >= PAUSE_AFTER, facts[1, 0]  # the requeued job resumed from a checkpoint
    assert _final(read_metrics(run_dir)) == _final(read_metrics(reference_run["run_dir"]))
    assert (run_dir / "logs" / f"job_{job_id}" / "restart_1" / "trainer_n1.log").exists()


def test_time_limit_signal_checkpoints_and_requeues_itself_colocated(slurm_cluster, tiny_server_model, tmp_path,
                                                                     reference_run):
    """Colocated: both nodes run a trainer rank (torchrun across 2 nodes) and a server. SIGUSR1 to
    the batch script is what --signal=B:USR1@N delivers before the time limit."""
    run_dir, job_id, _, base = _submit_probe(slurm_cluster, tmp_path, tiny_server_model, "preempted",
                                       ["--colocate", "--procs-per-node", "1", "--requeue"])
    wait_for_pause(run_dir, slurm_cluster, job_id)
    slurm_cluster.run(["scancel", "--batch", "--signal=USR1", job_id], timeout=20)
    info = slurm_cluster.wait_for_job(job_id, timeout=JOB_TIMEOUT_S)
    assert info["JobState"] == "COMPLETED", f"{info}\n{job_report(run_dir, job_id)}"
    assert info["Restarts"] == "1", info
    batch_log = (run_dir / "logs" / f"job_{job_id}.out").read_text()
    assert "SIGUSR1: time limit near" in batch_log and f"requeueing job {job_id}" in batch_log
    first = run_dir / "logs" / f"job_{job_id}" / "restart_0"
    assert sorted(p.read_text() for p in (first / "exit_codes").glob("rank_*.code")) == ["75\n", "75\n"]
    facts = probe_facts(run_dir)
    assert {facts[0, r]["node"] for r in (0, 1)} == {"n1", "n2"}  # one trainer rank per node
    assert facts[0, 0]["servers"] == [f"http://127.0.0.1:{base}", f"http://127.0.0.1:{base + 1}"]
    assert facts[1, 0]["resumed_from"] >= PAUSE_AFTER
    assert _final(read_metrics(run_dir)) == _final(read_metrics(reference_run["run_dir"]))


def test_conversion_sbatch_script_converts_on_the_cluster(slurm_cluster, tiny_server_model, tmp_path):
    import sys

    from jobs import REPO

    out = tmp_path / "megatron_tp1"
    proc = slurm_cluster.run(["timeout", "120", "sbatch", "--wait", "--cpus-per-task=1", f"--output={tmp_path}/convert-%j.out",
                              str(REPO / "slurm" / "convert.sbatch"), str(tiny_server_model), str(out), "1"],
                             timeout=130, check=False, extra_env={"MEGARL_HOME": str(REPO), "MEGARL_PYTHON": sys.executable})
    log = "\n".join(p.read_text() for p in tmp_path.glob("convert-*.out"))
    assert proc.returncode == 0, f"{proc.stdout}{proc.stderr}\n{log}"
    assert f"done: {out}" in log
    assert (out / "latest_checkpointed_iteration.txt").exists(), sorted(p.name for p in out.iterdir())  # torch_dist
