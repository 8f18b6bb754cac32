"""Fixtures for the Slurm launch tests: a real two-node local cluster (started once per session,
stopped by PID) and the recipes the jobs run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from cluster import LocalSlurmCluster, why_unavailable  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def slurm_cluster():
    reason = why_unavailable()
    if reason:
        pytest.skip(reason)
    cluster = LocalSlurmCluster()
    try:
        cluster.start()
    except (RuntimeError, TimeoutError) as err:
        cluster.stop()
        pytest.fail(f"could not start the local Slurm cluster: {err}")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def tiny_server_model(tmp_path_factory) -> Path:
    """A tiny random Qwen2 HF model that `megarl serve` loads (token ids only, no tokenizer)."""
    from tiny_models import make_tiny_hf

    return make_tiny_hf("qwen2", tmp_path_factory.mktemp("slurm_model") / "qwen2_tiny")
