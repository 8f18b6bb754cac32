"""Any unsigned 64-bit run.seed trains: the per-sample sampling seeds the trainer derives stay
inside SGLang's signed 64-bit range, and the built-in server accepts them."""

import json
import os
import sys

import pytest
from dist_utils import run_to_exit

from megarl.train.stages.generate import rollout_seed

PROMPT_SLOTS = 4096  # the client adds the prompt index (< 4096) to the rollout seed


@pytest.mark.parametrize("seed", [0, 1, 1407, 1408, 12345, 2**32, 2**63 - 1, 2**63, 2**64 - 1])
def test_rollout_seeds_fit_a_signed_64_bit_long(seed):
    seen = set()
    for step in (0, 1, 999, 10**6):
        for round_ in range(1, 5):
            base = rollout_seed(seed, step, round_)
            assert 0 <= base and base + PROMPT_SLOTS - 1 < 2**63, (seed, step, round_, base)
            assert base % PROMPT_SLOTS == 0
            seen.add(base)
    assert len(seen) == 16  # every (step, round) of a run has its own block of seeds


def test_small_seeds_keep_their_rollout_seeds():
    """Resumed runs from before the fold sample the same streams: small seeds map as they did."""
    assert rollout_seed(3, 2, 1) == ((3 * 100_003 + 2) * 32 + 1) * 4096


@pytest.mark.parametrize("seed", [12345, 2**64 - 1])
def test_training_with_a_large_seed(write_recipe, seed):
    recipe, run_dir = write_recipe(f"seed{seed}", run={"steps": 1, "seed": seed})
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = run_to_exit([sys.executable, "-m", "megarl.cli", "train", str(recipe)], timeout=420, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [r["step"] for r in rows] == [1]
