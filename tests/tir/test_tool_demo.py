"""The tool demo's fast CI variant: `megarl train configs/tiny_cpu_tool.yaml` end to end (built-in server,
sandboxed interpreter, Megatron actor) for a few steps. GRPO rewards the samples that call the
interpreter, so the share that calls it rises; the full run's held-out gain is in docs/tool_use.md."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dist_utils import run_to_exit  # noqa: E402

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu_tool.yaml"
STEPS = 6


def test_the_tool_demo_learns_to_call_the_interpreter(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "megarl.cli", "train", str(RECIPE), f"run.steps={STEPS}", "eval.every=0",
           "checkpoint.every=0", "logging.wandb=disabled", f"run.output_dir={run_dir}"]
    proc = run_to_exit(cmd, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    calls = [r["tool/calls_per_sample"] for r in rows]
    assert all(c > 0 for c in calls[-2:]), calls
    assert sum(calls[-2:]) / 2 > sum(calls[:2]) / 2 + 0.05, calls  # tool use grows under GRPO
    for r in rows:
        assert r["tool/timeout_rate"] == 0.0 and 0.0 <= r["tool/error_rate"] <= 0.2, r
        assert r["tool/turns"] >= 1.0 and r["tool/output_tokens"] > 0, r
    # Correct samples are the ones that ran the code: their answer is the interpreter's product.
    assert rows[-1]["reward/accuracy"] > rows[0]["reward/accuracy"], [r["reward/accuracy"] for r in rows]


def test_tool_rollouts_run_in_async_mode_with_partial_rollouts(tmp_path):
    """rollout.mode=async with rollout.partial=true: multi-turn samples are produced while the trainer
    updates, a weight update cuts turns short and they continue on the new weights; every step trains
    samples that called the interpreter, and every trained token has its policy version."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "megarl.cli", "train", str(RECIPE), "run.steps=3", "eval.every=0", "checkpoint.every=0",
           "logging.wandb=disabled", f"run.output_dir={run_dir}", "rollout.mode=async", "rollout.partial=true",
           "rollout.max_staleness=1"]
    proc = run_to_exit(cmd, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["tool/calls_per_sample"] > 0 and r["tool/timeout_rate"] == 0.0, r
        assert 0 <= r["rollout/policy_lag"] <= 1, r  # within rollout.max_staleness
    assert "rollout/partial_frac" in rows[-1]
