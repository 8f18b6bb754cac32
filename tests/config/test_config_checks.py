"""Config rejects non-finite numbers and out-of-range seeds, and checks layouts against the built-in
model too, each with one line naming the field."""

import subprocess
import sys
from pathlib import Path

import pytest

from megarl.config import ConfigError, load_config

TINY = Path(__file__).parents[2] / "configs" / "tiny_cpu.yaml"


@pytest.mark.parametrize("override,field", [
    ("actor.lr=.inf", "actor.lr"), ("critic.lr=-.inf", "critic.lr"), ("algorithm.clip_low=.nan", "algorithm.clip_low"),
    ("rollout.temperature=.nan", "rollout.temperature"), ("actor.adam_eps=.inf", "actor.adam_eps"),
])
def test_non_finite_numbers_are_rejected(override, field):
    with pytest.raises(ConfigError, match=rf"^{field}=[-a-z]+: must be a finite number \(not inf or nan\)$"):
        load_config(TINY, [override])


@pytest.mark.parametrize("seed,ok", [(0, True), (2**64 - 1, True), (2**64, False), (-1, False)])
def test_seed_range(seed, ok):
    if ok:
        assert load_config(TINY, [f"run.seed={seed}"]).run.seed == seed
    else:
        with pytest.raises(ConfigError, match=r"^run\.seed="):
            load_config(TINY, [f"run.seed={seed}"])


def test_builtin_model_layout_is_checked_by_megarl_config():
    proc = subprocess.run([sys.executable, "-m", "megarl.cli", "config", str(TINY), "actor.tp=3"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "megarl: config error: actor.tp=3 does not divide num_attention_heads=4; choose tp from [1, 2]"]
    assert load_config(TINY, ["actor.tp=2"]).actor.tp == 2
