"""Helpers for the Slurm launch tests: write a CPU recipe, run `megarl submit` against the local
cluster, follow a run directory's files."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).resolve().parent / "launch_probe.py"


def write_cpu_recipe(path: Path, model_dir: Path, run_dir: Path, **sections) -> Path:
    recipe = {
        "run": {"name": run_dir.name, "output_dir": str(run_dir), "steps": 8},
        "model": {"path": str(model_dir), "dtype": "fp32"},
        "data": {"train": ["gsm8k_train"]},
        "rollout": {"transport": "distributed", "n": 2},
        "checkpoint": {"every": 1},
        "slurm": {"gpus_per_node": 0, "time": "00:10:00"},
    }
    for name, values in sections.items():
        recipe.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def wait_for_pause(run_dir: Path, cluster, job_id: str, timeout: float = 90.0) -> int:
    """Wait until launch_probe.py holds mid-run (MEGARL_PROBE_PAUSE_AFTER); returns the step."""
    marker = run_dir / "probe" / "paused"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker.exists() and marker.read_text():
            return int(marker.read_text())
        state = cluster.job_state(job_id).get("JobState")
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
            raise AssertionError(f"job {job_id} ended ({state}) before pausing:\n{job_report(run_dir, job_id)}")
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not pause within {timeout:.0f} s:\n{job_report(run_dir, job_id)}")


def resume_probe(run_dir: Path) -> None:
    (run_dir / "probe" / "resume").write_text("")


def free_port_block(count: int) -> int:
    """A base port with `count` consecutive free ports (servers, rendezvous) on this host, so
    concurrent test sessions sharing the machine do not collide on the defaults."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - count)
        try:
            sockets = []
            for port in range(base, base + count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("0.0.0.0", port))
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
        return base
    raise RuntimeError("no block of free ports found")


def megarl_submit(args: list[str], env: dict | None = None, timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "megarl.cli", "submit", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=REPO)


def submitted_job_id(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"megarl submit failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    lines = [line for line in proc.stdout.splitlines() if line.startswith("submitted job ")]
    assert lines, proc.stdout
    return lines[0].split()[2].rstrip(":")


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_step(run_dir: Path, step: int, cluster, job_id: str, timeout: float = 90.0) -> None:
    """Wait until metrics.jsonl has reached `step` (fail early if the job ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = read_metrics(run_dir)
        if rows and rows[-1]["step"] >= step:
            return
        state = cluster.job_state(job_id).get("JobState")
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
            raise AssertionError(f"job {job_id} ended ({state}) before step {step}:\n{job_report(run_dir, job_id)}")
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not reach step {step} within {timeout:.0f} s:\n{job_report(run_dir, job_id)}")


def job_report(run_dir: Path, job_id: str, chars: int = 2500) -> str:
    """The job's batch log and the tail of every node log (for assertion messages)."""
    parts = []
    logs = run_dir / "logs"
    for path in sorted(logs.glob(f"job_{job_id}.out")) + sorted((logs / f"job_{job_id}").rglob("*.log")):
        parts.append(f"--- {path.relative_to(run_dir)}\n{path.read_text(errors='replace')[-chars:]}")
    return "\n".join(parts)


def probe_facts(run_dir: Path) -> dict[tuple[int, int], dict]:
    """{(restart, rank): facts} written by launch_probe.py."""
    out = {}
    for path in (run_dir / "probe").glob("restart_*_rank_*.json"):
        _, restart, _, rank = path.stem.split("_")
        out[int(restart), int(rank)] = json.loads(path.read_text())
    return out
