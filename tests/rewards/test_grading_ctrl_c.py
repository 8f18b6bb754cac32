"""Ctrl-C reaches the process group of the terminal's foreground job. Grading workers started by a
GradingPool must not print a KeyboardInterrupt traceback when it lands while they import (before
their own handler is set): the trainer, which owns them, reports the interrupt in one line.
Before: `python -m megarl.rewards.grading_worker` workers shared the trainer's process group, and the
merged CI run's Ctrl-C test printed two `KeyboardInterrupt` tracebacks from `megarl/rewards/__init__.py`."""

import os
import signal
import subprocess
import sys
import time

PARENT = """
import sys, time
from megarl.rewards.grading import GradingPool
pool = GradingPool(num_workers=2)  # the workers import sympy and math-verify now, in the background
print("started", flush=True)
try:
    time.sleep(60)
except KeyboardInterrupt:
    pool.close()
    print("interrupted", flush=True)
    sys.exit(130)
"""


def test_ctrl_c_while_grading_workers_start_prints_no_traceback():
    proc = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # a terminal job: its own process group
    try:
        assert proc.stdout.readline().strip() == "started"
        time.sleep(0.05)  # the workers are still starting or importing (before: 0.05 s reproduced the tracebacks)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130 and "interrupted" in out, (proc.returncode, out, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
