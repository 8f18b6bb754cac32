"""How many local ranks `megarl train` starts for itself outside a launcher (megarl.train.cli.local_ranks)."""

import pytest

from megarl.config import load_config
from megarl.model_configs.experts import check_expert_world
from megarl.train.cli import local_ranks


@pytest.mark.parametrize(("overrides", "ranks"), [
    ([], 1),
    (["actor.tp=2"], 2),
    (["actor.tp=2", "actor.pp=2"], 4),
    (["actor.ep=2"], 2),  # the MoE demo at EP2: two data-parallel ranks hold half of the experts each (was 1)
    (["actor.tp=2", "actor.ep=4"], 4),
    (["actor.pp=2", "actor.ep=2"], 4),
])
def test_local_ranks_are_the_fewest_megatron_accepts(overrides, ranks):
    cfg = load_config("configs/tiny_cpu_moe.yaml", overrides=overrides, check_files=False)
    assert local_ranks(cfg) == ranks
    check_expert_world(cfg.actor.ep, cfg.actor.tp, cfg.actor.pp, ranks)  # megatron-core's rule holds at that count
