"""A Megatron actor at TP=2 x PP=2 (torchrun, 4 processes over gloo) syncs its weights to two
built-in rollout servers by each transport (tensor, distributed, disk): afterwards the servers'
log-probs for fixed sequences equal the actor's own (Megatron pipeline, last stage) within 1e-4,
weight_version advanced, and after an SGD step a new sync moves the servers along with the actor.

One torchrun job runs every transport in sequence (imports dominate the cost); see
actor_sync_job.py for what it does and records.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from dist_utils import torchrun
from safetensors import safe_open
from tiny_models import make_tiny_hf

from megarl.rollout.transports import TRANSPORTS

JOB = Path(__file__).with_name("actor_sync_job.py")


@pytest.fixture(scope="module")
def sync_run(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("actor_sync")
    # Same architecture, different weights: the servers start from a model the actor is not.
    actor_hf = make_tiny_hf("qwen2", root / "actor", seed=0)
    server_hf = make_tiny_hf("qwen2", root / "server", seed=1)
    out = root / "result.json"
    torchrun([str(JOB), "--actor-hf", str(actor_hf), "--server-hf", str(server_hf), "--out", str(out),
              "--log-dir", str(root / "logs"), "--tp", "2", "--pp", "2", "--transports", *TRANSPORTS],
             nproc=4, timeout=240)
    record = json.loads(out.read_text())
    with safe_open(str(actor_hf / "model.safetensors"), "pt") as f:
        record["checkpoint_names"] = sorted(f.keys())
    return record


def logprobs(rows) -> list[torch.Tensor]:
    return [torch.tensor(r, dtype=torch.float64) for r in rows]


def max_diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(logprobs(a), logprobs(b)))


def test_every_transport_synced_twice_with_all_tensors(sync_run):
    rounds = sync_run["rounds"]
    assert [(r["transport"], r["version"]) for r in rounds] == [(t, f"{t}-{i}") for t in TRANSPORTS for i in (0, 1)]
    assert sync_run["hf_names"] == sync_run["checkpoint_names"]  # full HF names, tied lm_head sent once as embedding
    for r in rounds:
        assert r["num_tensors"] == len(sync_run["checkpoint_names"])
        assert r["num_buckets"] >= 3, r  # 64 KB buckets: the push really is split
    for transport in ("tensor", "distributed"):  # CPU: the buffers were reused across a push's buckets, freed after it
        allocations = [r["pool_allocations"] for r in rounds if r["transport"] == transport]  # cumulative
        per_push = [allocations[0]] + [b - a for a, b in zip(allocations, allocations[1:])]
        assert all(n <= 3 < 2 * rounds[0]["num_buckets"] for n in per_push), allocations


def test_servers_match_the_actor_after_each_sync(sync_run):
    for r in sync_run["rounds"]:
        for server_index, (server_lp, version) in enumerate(r["servers"]):
            assert version == r["version"], (r["transport"], server_index)
            diff = max_diff(server_lp, r["actor"])
            assert diff < 1e-4, f"{r['version']}: server {server_index} differs from the actor by {diff:.2e}"


def test_each_sync_changes_the_servers_as_the_actor_changed(sync_run):
    previous = [lp for lp, _ in sync_run["initial_server"]]
    assert max_diff(previous[0], sync_run["rounds"][0]["actor"]) > 1e-2  # servers began on other weights
    for r in sync_run["rounds"]:
        assert r["stepped"] == (r is not sync_run["rounds"][0])  # an SGD step before every sync but the first
        for before, (after, _) in zip(previous, r["servers"]):
            # The step (or, the first time, the actor's own weights) moved the servers' outputs.
            assert max_diff(before, after) > 1e-3, r["version"]
        previous = [lp for lp, _ in r["servers"]]
    # Each step raised the fixed sequences' likelihood (the loss it descended), on the actor and on every server.
    totals = [(sum(map(sum, r["actor"])), [sum(map(sum, lp)) for lp, _ in r["servers"]]) for r in sync_run["rounds"]]
    for (actor_before, servers_before), (actor_after, servers_after) in zip(totals, totals[1:]):
        assert actor_after > actor_before + 1.0
        assert all(after > before + 1.0 for before, after in zip(servers_before, servers_after))
