"""Sync stage: the actor's weights, gathered from its TP/PP shards into HF tensors, pushed to every
rollout server; and, in colocated mode, the servers' GPU memory released during training."""

from __future__ import annotations

from megarl.models.export import gather_hf_tensors
from megarl.models.spec import ModelSpec
from megarl.rollout import fleet
from megarl.runtime import collectives


def push_weights(actor_module, spec: ModelSpec, pusher, client, version: int, is_driver: bool):
    """Gather the actor into HF tensors on the driver and push them to every server as weight_version
    `version` (the number of optimizer steps in these weights); the push report on the driver."""
    tensors = gather_hf_tensors(actor_module, dst=0, spec=spec)
    if not is_driver:
        for _ in tensors:  # the other ranks send their shards
            pass
        return None
    report = pusher.push(tensors, weight_version=str(version))
    client.expected_weight_version = str(version)
    return report


def server_memory(action: str, servers: fleet.ServerFleet | None, is_driver: bool) -> None:
    """Colocated mode: servers `release` their GPU memory (weights, KV cache) while the trainer
    computes and `resume` it before the weight sync (SGLang --enable-memory-saver)."""
    if is_driver:
        fleet.post_to_servers(servers.server_urls, f"/{action}_memory_occupation", {}, token=servers.admin_token)
    collectives.barrier()


def trainer_memory(action: str, workers) -> int:
    """Colocated mode: `offload` the trainer's weights, gradients and optimizer state to host memory while
    the servers generate, `reload` them after; returns the bytes moved on this rank (None workers skipped)."""
    return sum(w.offload() if action == "offload" else w.reload() for w in workers if w is not None)
