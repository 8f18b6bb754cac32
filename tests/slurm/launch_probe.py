"""A small torchrun/gloo job that follows the trainer's launch contract, for the Slurm launch tests.

megarl submit runs it on every trainer rank instead of `megarl.cli train` (`--entry
tests/slurm/launch_probe.py`), with the same arguments: RECIPE key=value ... rollout.servers=[...].
Like the trainer it
  - loads the recipe with megarl.config.load_config (the overrides the sbatch script adds included),
  - joins a gloo process group from torchrun's environment (rendezvous on the first trainer node),
  - generates on every rollout server in rollout.servers (real HTTP to `megarl serve` on the other
    node), using the admin token from $MEGARL_SERVE_TOKEN for /flush_cache,
  - runs run.steps steps, appends metrics.jsonl, checkpoints every checkpoint.every steps,
  - resumes from the newest complete checkpoint, and on SIGUSR1/SIGTERM checkpoints after the
    current step and exits 75.
Each step's value depends on all ranks (all_reduce), on the servers' greedy output and on the
state carried through checkpoints, so an interrupted-and-resumed run only matches an
uninterrupted one if the launch resumed it correctly. Per-rank facts (node, rank, world, master
address, resume step) go to RUN/probe/restart_<n>_rank_<r>.json for the tests to check.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import torch
import torch.distributed as dist

from megarl.config import load_config
from megarl.rollout.fleet import wait_for_servers

PREEMPTED_EXIT_CODE = 75
STEP_SECONDS = float(os.environ.get("MEGARL_PROBE_STEP_S", "0.5"))
# Tests set MEGARL_PROBE_PAUSE_AFTER=K: in the first attempt, rank 0 writes RUN/probe/paused and
# holds after step K until RUN/probe/resume exists or a stop signal arrives, so a test can act
# "mid-run" (kill a server, requeue, signal) without racing the job.
PAUSE_AFTER = int(os.environ.get("MEGARL_PROBE_PAUSE_AFTER", "0"))


def pause(probe_dir: Path, step: int, stop: dict, timeout_s: float = 90.0) -> None:
    (probe_dir / "paused").write_text(str(step))
    deadline = time.monotonic() + timeout_s
    while not (probe_dir / "resume").exists() and not stop["signal"] and time.monotonic() < deadline:
        time.sleep(0.1)


def http_post(url: str, body: dict, token: str | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def generate_everywhere(servers: list[str], step: int) -> tuple[int, list[str]]:
    """Greedy-generate on every server; (sum of the first answering server's output ids, answering
    URLs). The servers load the same model, so losing one does not change the value (failover)."""
    total, answered = None, []
    for url in servers:
        try:
            status, body = http_post(url + "/generate", {"input_ids": [3 + step % 5, 7, 11],
                                                         "sampling_params": {"max_new_tokens": 4, "temperature": 0.0}})
        except OSError:
            continue
        if status != 200:
            continue
        if total is None:
            total = sum(json.loads(body)["output_ids"])
        answered.append(url)
    if total is None:
        raise RuntimeError(f"no rollout server answered: {servers}")
    return total, answered


def newest_checkpoint(ckpt_dir: Path) -> tuple[int, dict] | None:
    done = sorted(p for p in ckpt_dir.glob("step_*") if (p / "COMPLETE").exists())
    if not done:
        return None
    return int(done[-1].name.split("_")[1]), json.loads((done[-1] / "state.json").read_text())


def main(argv: list[str]) -> int:
    cfg = load_config(argv[0], argv[1:])
    stop = {"signal": None}

    def on_signal(signum, frame):
        stop["signal"] = signal.Signals(signum).name

    signal.signal(signal.SIGUSR1, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    run_dir = Path(cfg.run.output_dir)
    ckpt_dir = run_dir / "checkpoints"
    restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    resumed = newest_checkpoint(ckpt_dir) if cfg.run.resume else None
    step, state = (resumed[0], resumed[1]) if resumed else (0, {"acc": 0})
    token = os.environ.get("MEGARL_SERVE_TOKEN")
    facts = {
        "rank": rank, "world": world, "local_rank": int(os.environ["LOCAL_RANK"]), "node": os.environ.get("SLURMD_NODENAME"),
        "host": socket.gethostname(), "master_addr": os.environ["MASTER_ADDR"], "servers": cfg.rollout.servers,
        "resumed_from": step, "restart": restart, "token_set": bool(token), "job_id": os.environ.get("SLURM_JOB_ID"),
    }
    if rank == 0:
        # like the trainer's RolloutClient.wait_until_healthy: servers may still be loading
        if not wait_for_servers(cfg.rollout.servers, timeout_s=120, poll_s=0.5, log=lambda m: None):
            raise RuntimeError(f"no rollout server became healthy: {cfg.rollout.servers}")
        run_dir.mkdir(parents=True, exist_ok=True)
        # the token reached this rank through sbatch -> srun -> torchrun: the servers accept it
        facts["flush_cache_status"] = [http_post(u + "/flush_cache", {}, token=token)[0] for u in cfg.rollout.servers]
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists():  # drop steps logged after the checkpoint we resume from
            kept = [line for line in metrics.read_text().splitlines() if line and json.loads(line)["step"] <= step]
            metrics.write_text("".join(line + "\n" for line in kept))
    probe_dir = run_dir / "probe"
    probe_dir.mkdir(parents=True, exist_ok=True)
    (probe_dir / f"restart_{restart}_rank_{rank}.json").write_text(json.dumps(facts, indent=1))

    while step < cfg.run.steps:
        time.sleep(STEP_SECONDS)
        generated = torch.zeros(1, dtype=torch.long)
        answered = []
        if rank == 0:
            total, answered = generate_everywhere(cfg.rollout.servers, step)
            generated[0] = total % 1000
        dist.broadcast(generated, src=0)
        contribution = torch.tensor([(rank + 1) * (step + 1)], dtype=torch.long)
        dist.all_reduce(contribution)
        state["acc"] = (state["acc"] * 31 + int(contribution) + int(generated)) % 1_000_003
        step += 1
        if rank == 0:
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "acc": state["acc"], "servers_answered": len(answered),
                                    "restart": restart}) + "\n")
        if rank == 0 and restart == 0 and step == PAUSE_AFTER:
            pause(probe_dir, step, stop)
        stop_now = torch.tensor([1 if stop["signal"] else 0])
        dist.all_reduce(stop_now, op=dist.ReduceOp.MAX)
        if (cfg.checkpoint.every and step % cfg.checkpoint.every == 0) or stop_now.item():
            if rank == 0:
                tmp = ckpt_dir / f"step_{step:06d}.tmp"
                tmp.mkdir(parents=True, exist_ok=True)
                (tmp / "state.json").write_text(json.dumps(state))
                (tmp / "COMPLETE").write_text("")
                os.replace(tmp, ckpt_dir / f"step_{step:06d}")
            dist.barrier()
        if stop_now.item():
            if rank == 0:
                print(f"probe: stop requested ({stop['signal']}): checkpointed at step {step}", flush=True)
            dist.destroy_process_group()
            return PREEMPTED_EXIT_CODE
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
