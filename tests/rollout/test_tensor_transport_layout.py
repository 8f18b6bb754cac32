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


def test_colocated_distributed_transport_on_gpus_is_refused_with_the_fix():
    """Likely defect 5: colocated servers on GPUs with the distributed transport put trainer rank 0 and a
    server rank on one GPU in one NCCL communicator, which NCCL refuses. megarl has no IPC path for the
    distributed transport (CUDA IPC is the tensor transport), so the combination is refused at config load
    (SGLang servers run on GPUs) and by the launcher (--colocate on a GPU layout), in one line naming the fix;
    on a CPU cluster (gloo, no shared GPU) it stays allowed."""
    from megarl.config import ConfigError

    with pytest.raises(ConfigError, match="one NCCL group, which NCCL refuses; set rollout.transport=tensor") as err:
        recipe("distributed", "rollout.colocate=true")
    assert "\n" not in str(err.value)
    assert recipe("tensor", "rollout.colocate=true").rollout.colocate
    with pytest.raises(LaunchError, match="set rollout.transport=tensor"):
        plan_layout(recipe("distributed"), LaunchOptions(nodes=1, colocate=True))
    assert plan_layout(recipe("tensor"), LaunchOptions(nodes=1, colocate=True)).mode == "colocated"
    cpu = recipe("distributed", "rollout.engine=builtin")
    assert plan_layout(cpu, LaunchOptions(nodes=2, colocate=True, gpus_per_node=0)).mode == "colocated"
