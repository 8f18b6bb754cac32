"""A NaN loss skips the optimizer step (counted in train/skipped_updates); after
run.max_skipped_updates in a row the run stops with a non-zero exit, and no checkpoint ever holds
non-finite weights."""

import json
import os
import sys

import torch
from dist_utils import run_to_exit


def _actor_weights(torch_dist_dir, scratch):
    """The actor's floating-point model tensors of a torch_dist checkpoint, read without a process
    group (torch's DCP -> torch.save converter), keyed by name; optimizer state left out."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(str(torch_dist_dir), str(scratch))
    state = torch.load(scratch, weights_only=False)
    flat = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        elif torch.is_tensor(value) and value.is_floating_point():
            flat[prefix[:-1]] = value

    walk("", state)
    weights = {k: v for k, v in flat.items() if "optimizer" not in k and not k.startswith("critic.")}
    assert weights, f"no model tensors in {torch_dist_dir}"
    return weights


def test_nan_loss_skips_updates_then_stops_before_a_nonfinite_checkpoint(write_recipe, tmp_path):
    recipe, run_dir = write_recipe("nan", run={"steps": 6, "max_skipped_updates": 2},
                                   checkpoint={"every": 1, "keep_last": 10}, reward={"custom": "toy_rewards:mentions_seven"})
    here = os.path.dirname(__file__)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", MEGARL_TEST_NAN_FROM_STEP="2")
    proc = run_to_exit([sys.executable, os.path.join(here, "nan_loss_job.py"), str(recipe)], timeout=600, env=env)
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
        tensors = _actor_weights(run_dir / "checkpoints" / name / "torch_dist", tmp_path / f"{name}.pt")
        assert all(torch.isfinite(v).all() for v in tensors.values()), name
        weights[name] = tensors
    # the skipped step left the weights as they were
    assert all(torch.equal(weights["step_000003"][k], v) for k, v in weights["step_000002"].items())
    assert any(not torch.equal(weights["step_000002"][k], v) for k, v in weights["step_000001"].items())
