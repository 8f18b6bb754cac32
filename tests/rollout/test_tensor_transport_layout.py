"""The layout planner refuses the `tensor` transport wherever a server runs on another node than
trainer rank 0 (shared-memory and CUDA-IPC handles do not cross nodes; issue 11, defect 3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from megarl.config import load_config
from megarl.launch import LaunchOptions, plan_layout
from megarl.launch.layout import LaunchError

RECIPE = str(Path(__file__).resolve().parents[2] / "configs" / "simplerl_zoo_qwen2.5_7b.yaml")


def recipe(transport: str, *overrides: str):
    return load_config(RECIPE, [f"rollout.transport={transport}", *overrides], check_files=False)


@pytest.mark.parametrize("options, where, fix", [
    (LaunchOptions(nodes=2, rollout_nodes=1), "on rollout nodes", "distributed"),
    # colocated on GPUs: distributed would put trainer rank 0 and a server rank on one GPU in one NCCL group
    (LaunchOptions(nodes=2, colocate=True), "on all 2 nodes (colocated)", "disk"),
    (LaunchOptions(nodes=2), "on all 2 nodes (partitioned)", "distributed"),
])
def test_tensor_transport_across_nodes_is_refused(options, where, fix):
    with pytest.raises(LaunchError, match=f"set rollout.transport={fix}") as err:
        plan_layout(recipe("tensor", "rollout.num_servers=4"), options)
    assert where in str(err.value) and "\n" not in str(err.value)
    assert plan_layout(recipe(fix, "rollout.num_servers=4"), options).num_servers > 0


def test_tensor_transport_on_one_node_is_accepted():
    assert plan_layout(recipe("tensor"), LaunchOptions(nodes=1, colocate=True)).mode == "colocated"
    assert plan_layout(recipe("tensor", "rollout.num_servers=2"), LaunchOptions(nodes=1)).mode == "partitioned"
