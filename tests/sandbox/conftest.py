"""Fixtures for the sandbox tests: one warm pool per module, checked for leftovers after every test."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from sandbox_helpers import assert_all_gone, assert_only_idle_workers  # noqa: E402

from megarl.sandbox import SandboxLimits, SandboxPool  # noqa: E402

TEST_LIMITS = SandboxLimits(timeout_s=3.0, memory_mb=256, max_processes=16, file_size_mb=4, output_bytes=4096)


@pytest.fixture(scope="module")
def pool():
    sandboxes = SandboxPool(workers=2, limits=TEST_LIMITS, tmp_mb=16)
    yield sandboxes
    pids, uids = sandboxes.worker_pids(), set(sandboxes.worker_uids())
    sandboxes.close()
    assert_all_gone(pids, uids)


@pytest.fixture
def clean_pool(pool):
    """The module's pool; after the test, nothing but the idle workers may be running."""
    yield pool
    assert_only_idle_workers(pool)
