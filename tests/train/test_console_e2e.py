"""What `megarl train` prints, read as a user reads it: a banner, one line per step, held-out
results at each evaluation, a line per checkpoint, a sample table every `logging.samples_every`
steps, and no third-party bars or warnings (here or in the rollout server's log)."""

import os
import re
import sys

from dist_utils import run_to_exit

QUIET_VARS = ("PYTHONWARNINGS", "HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY", "TRANSFORMERS_NO_ADVISORY_WARNINGS",
              "MEGARL_VERBOSE")


def test_console_of_a_short_run(write_recipe):
    recipe, run_dir = write_recipe(
        "console", run={"steps": 3}, eval={"every": 2, "benchmarks": ["toy-arith:heldout:8"], "max_new_tokens": 32},
        checkpoint={"every": 2}, logging={"wandb": "disabled", "samples_per_step": 1, "samples_every": 2})
    env = {k: v for k, v in os.environ.items() if k not in QUIET_VARS}  # megarl itself must keep third parties quiet
    env["OMP_NUM_THREADS"] = "1"
    proc = run_to_exit([sys.executable, "-m", "megarl.cli", "train", str(recipe)], env=env, timeout=420)
    out = proc.stdout
    assert proc.returncode == 0, (out + proc.stderr)[-4000:]
    lines = out.splitlines()
    assert lines[0].startswith("megarl train: console, 3 steps of grpo"), out[:800]
    assert any(re.fullmatch(rf"  run dir +{re.escape(str(run_dir))} \(new run\)", line) for line in lines), out[:800]
    assert any(line.startswith("  cache ") for line in lines)
    step_lines = [line for line in lines if line.startswith("step ")]
    assert [line.split()[1] for line in step_lines] == ["1/3", "2/3", "3/3"], step_lines  # no bare "step 0"
    assert all(" reward " in line and " answered " in line and "tok/s" in line for line in step_lines), step_lines
    held_out = [line for line in lines if line.startswith("held out ")]
    assert len(held_out) == 3 and held_out[0].startswith("held out before training (step 0): toy-arith:heldout:8 ")
    assert held_out[1].startswith("held out at step 2: ") and "points since step 0" in held_out[1]
    assert held_out[2].startswith("held out at step 3: ")  # the final evaluation
    assert [line.split(":")[0] for line in lines if line.startswith("checkpoint ")] == ["checkpoint at step 2"]
    assert re.findall(r"samples at step (\d+)", out) == ["2"]
    assert sum(1 for line in (run_dir / "samples.jsonl").read_text().splitlines() if line.strip()) == 3  # every step
    server_log = (run_dir / "logs" / "rollout_server_0.log").read_text()
    for noise in ("Warning", "Loading weights", "Writing model shards", "it/s]"):
        assert noise not in out + proc.stderr + server_log, noise
