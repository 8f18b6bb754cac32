"""`megarl train` at TP=2 (two ranks hash and verify their shares): 20 KB of random bytes inside the
newest checkpoint make the resumed run skip it with a message and continue from the previous one."""

import json
import math
import os
import sys

from dist_utils import run_to_exit


def _train(recipe, *overrides):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return run_to_exit([sys.executable, "-m", "megarl.cli", "train", str(recipe), *overrides], timeout=600, env=env)


def test_corrupted_newest_checkpoint_is_skipped_and_training_resumes(write_recipe):
    recipe, run_dir = write_recipe("corrupt", run={"steps": 3}, actor={"tp": 2}, checkpoint={"every": 1, "keep_last": 2})
    first = _train(recipe)
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_000002", "step_000003"]
    shard = ckpts / "step_000003" / "torch_dist" / "__1_0.distcp"  # rank 1's tensor file
    with open(shard, "r+b") as f:
        f.seek(shard.stat().st_size // 2)
        f.write(os.urandom(20 << 10))

    second = _train(recipe, "run.steps=4")
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-3000:]
    assert "checkpoint step_000003 skipped: " in out and "torch_dist/__1_0.distcp does not match its SHA-256" in out, out[-3000:]
    assert "resumed from checkpoint at step 2" in out
    assert "Traceback" not in out
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(math.isfinite(r["actor/grad_norm"]) and math.isfinite(r["actor/pg_loss"]) for r in rows)
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_000003", "step_000003.rejected", "step_000004"]
