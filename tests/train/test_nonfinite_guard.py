"""A NaN loss skips the optimizer step (counted in train/skipped_updates); after
run.max_skipped_updates in a row the run stops with a non-zero exit, and no checkpoint ever holds
non-finite weights."""

import json
import os
import subprocess
import sys

import torch


def test_nan_loss_skips_updates_then_stops_before_a_nonfinite_checkpoint(write_recipe):
    recipe, run_dir = write_recipe("nan", run={"steps": 6, "max_skipped_updates": 2},
                                   checkpoint={"every": 1, "keep_last": 10}, reward={"custom": "toy_rewards:mentions_seven"})
    here = os.path.dirname(__file__)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", MEGARL_TEST_NAN_FROM_STEP="2")
    proc = subprocess.run([sys.executable, os.path.join(here, "nan_loss_job.py"), str(recipe)], capture_output=True,
                          text=True, timeout=600, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3, out[-3000:]
    assert "actor: 2 optimizer steps in a row skipped for a non-finite loss or gradient at step 4" in out, out[-3000:]
    assert "Traceback" not in out

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [(r["step"], r["train/skipped_updates"]) for r in rows] == [(1, 0), (2, 0), (3, 1)]
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == ["step_000001", "step_000002", "step_000003"]
    weights = {}
    for name in ckpts:
        shard = torch.load(run_dir / "checkpoints" / name / "rank_00000.pt", weights_only=False)["actor"]["model"]
        tensors = {k: v for k, v in shard.items() if torch.is_tensor(v) and v.is_floating_point()}
        assert all(torch.isfinite(v).all() for v in tensors.values()), name
        weights[name] = tensors
    # the skipped step left the weights as they were
    assert all(torch.equal(weights["step_000003"][k], v) for k, v in weights["step_000002"].items())
    assert any(not torch.equal(weights["step_000002"][k], v) for k, v in weights["step_000001"].items())
