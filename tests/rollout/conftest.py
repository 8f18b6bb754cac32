"""Fixtures for the rollout tests: a tiny HF model on disk and real built-in servers on 127.0.0.1."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from rollout_helpers import ServerProcess  # noqa: E402
from tiny_model import build_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    return build_tiny_model(str(tmp_path_factory.mktemp("tiny_qwen2")))


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    """One built-in server (a `megarl serve` process with the test token) per test module."""
    proc = ServerProcess(tiny_model_dir)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def two_servers(tiny_model_dir):
    servers = [ServerProcess(tiny_model_dir), ServerProcess(tiny_model_dir)]
    yield servers
    for server in servers:
        server.stop()
