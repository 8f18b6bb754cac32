"""`megarl train` at TP=2 (two ranks hash and verify their shares): the run writes only torch_dist
checkpoints and HF exports; 20 KB of random bytes inside the newest checkpoint make the resumed
run skip it with a message and continue from the previous one."""

import json
import math
import os
import sys

from dist_utils import run_to_exit


def _train(recipe, *overrides):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return run_to_exit([sys.executable, "-m", "megarl.cli", "train", str(recipe), *overrides], timeout=600, env=env)


def _assert_only_torch_dist_and_hf(run_dir):
    """Checkpoints hold torch_dist files (plus RNG states, trainer state and the manifest); the HF
    export holds safetensors and the HF config/tokenizer; no other Megatron layout, no staging."""
    for step in (run_dir / "checkpoints").iterdir():
        assert sorted(p.name for p in step.iterdir()) == ["CHECKSUMS.json", "COMPLETE", "rng", "torch_dist", "trainer_state.json"]
        names = {p.name for p in (step / "torch_dist").iterdir()}
        assert {"metadata.json", "common.pt", ".metadata"} <= names, names
        assert all(n.endswith(".distcp") for n in names - {"metadata.json", "common.pt", ".metadata"}), names
        assert all(p.suffix == ".pt" for p in (step / "rng").iterdir())
    assert sorted(p.name for p in (run_dir / "hf").iterdir()) == ["step_000003"]
    exported = {p.name for p in (run_dir / "hf" / "step_000003").iterdir()}
    assert {"config.json", "model.safetensors.index.json", "model-00001-of-00001.safetensors"} <= exported, exported
    assert all(n.endswith((".json", ".safetensors", ".txt", ".jinja")) for n in exported), exported
    assert not [p for p in run_dir.rglob("*") if p.name == "megarl_checkpoint.json" or p.name.startswith("mp_rank_")
                or p.name.endswith((".megatron", ".megarl-staging"))]


def test_corrupted_newest_checkpoint_is_skipped_and_training_resumes(write_recipe):
    recipe, run_dir = write_recipe("corrupt", run={"steps": 3}, actor={"tp": 2},
                                   checkpoint={"every": 1, "keep_last": 2, "hf_export_every": 3})
    first = _train(recipe)
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_000002", "step_000003"]
    _assert_only_torch_dist_and_hf(run_dir)
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
