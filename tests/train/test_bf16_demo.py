"""The CPU demo in bf16 (configs/tiny_cpu_bf16.yaml, the dtype of every GPU recipe) trains a few
steps: `megarl train` end to end with bf16 Megatron weights and fp32 main copies, a bf16 built-in
rollout server and tensor weight sync. Before the load-then-optimizer fix the first optimizer step
replaced the loaded model with the optimizer's copies of unloaded memory (NaN and ~3e38)."""

import json
import math
import os
import sys
from pathlib import Path

import torch
from dist_utils import run_to_exit

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu_bf16.yaml"
STEPS = 3


def test_bf16_demo_trains_a_few_steps(toy_model, tmp_path):
    from megarl.config import load_config

    lr = load_config(RECIPE).actor.lr
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "megarl.cli", "train", str(RECIPE), f"model.path={toy_model}", f"run.steps={STEPS}",
           "eval.every=0", "logging.wandb=disabled", "logging.samples_per_step=0", f"checkpoint.hf_export_every={STEPS}",
           f"run.output_dir={run_dir}", "data.prompts_per_step=4", "rollout.n=4", "rollout.max_new_tokens=32",
           "reward.custom=toy_rewards:mentions_seven"]  # mixed groups from the session's barely trained toy model
    here = str(Path(__file__).parent)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               PYTHONPATH=os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    proc = run_to_exit(cmd, timeout=300, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    assert json.loads((run_dir / "config.json").read_text())["model"]["dtype"] == "bf16"

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for r in rows:
        for key in ("reward/mean", "actor/pg_loss", "actor/entropy", "actor/grad_norm", "actor/ppo_kl"):
            assert math.isfinite(r[key]), (key, r)
        assert 0.0 <= r["reward/mean"] <= 1.0 and r["actor/grad_norm"] > 0 and r["train/skipped_updates"] == 0
    # Step 1 trains the weights the server sampled with: the trainer's bf16 log-probs equal the bf16
    # server's up to kernel rounding (with the wiped model they were unrelated).
    assert abs(rows[0]["actor/ppo_kl"]) < 1e-2 and rows[0]["actor/clipfrac"] < 0.05, rows[0]

    before, after = _tensors(Path(toy_model)), _tensors(run_dir / "hf" / f"step_{STEPS:06d}")
    assert set(after) == set(before)
    changed = total = 0
    for name, new in after.items():
        assert new.dtype == torch.bfloat16, name
        new, old = new.float(), before[name].bfloat16().float()
        assert torch.isfinite(new).all(), name
        # Adam moves a weight by about lr per step; bf16 stores it to within half an ulp (2^-9 relative).
        bound = STEPS * lr * 1.5 + old.abs() * 2.0**-8
        assert ((new - old).abs() <= bound).all(), (name, (new - old).abs().max().item())
        changed += (new != old).sum().item()
        total += new.numel()
    assert changed > 0.01 * total, f"only {changed} of {total} weights moved"


def _tensors(hf_dir: Path) -> dict:
    from megarl.models.hf_io import HFCheckpoint

    ckpt = HFCheckpoint(hf_dir)
    try:
        return {name: ckpt.get(name) for name in ckpt.weight_map}
    finally:
        ckpt.close()
