"""A reward for the Slurm requeue test: 1 for a response containing `\\boxed{gold}`, else 0, held
at a gate so the test can requeue a job at a known point however fast its steps run.

With $MEGARL_TEST_GATE_FILE and $MEGARL_TEST_GATE_AFTER_CALLS set, every grading call after the
first N of this process waits while the gate file exists (at most 10 minutes). Without them it
never waits."""

import os
import time
from pathlib import Path

_calls = 0


def boxed_gold_gated(response: str, gold, metadata: dict) -> float:
    global _calls
    _calls += 1
    gate, after = os.environ.get("MEGARL_TEST_GATE_FILE"), os.environ.get("MEGARL_TEST_GATE_AFTER_CALLS")
    if gate and after and _calls > int(after):
        deadline = time.monotonic() + 600
        while Path(gate).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    return 1.0 if f"\\boxed{{{gold}}}" in response else 0.0
