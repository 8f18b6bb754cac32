"""What a person meets at the keyboard: Ctrl-C (SIGINT to the whole process group, as a terminal
sends it) checkpoints, prints one line and exits 130 without a traceback from any rank; the same
command resumes; a finished run says so at once; a run that cannot be resumed is never appended to."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

INTERRUPTED = 130


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def _train(recipe, *overrides, timeout=600):
    from dist_utils import run_to_exit

    return run_to_exit([sys.executable, "-m", "megarl.cli", "train", str(recipe), *overrides], timeout=timeout, env=_env())


def _steps(run_dir):
    path = run_dir / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _ctrl_c_after_step(recipe, run_dir, step: int, timeout=600) -> tuple[int, str]:
    """Start `megarl train` as a terminal would (its own process group), and once `step` is logged send
    SIGINT to the whole group. Returns (exit code, stdout + stderr)."""
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen([sys.executable, "-m", "megarl.cli", "train", str(recipe)], stdout=out, stderr=subprocess.STDOUT,
                                text=True, env=_env(), start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while max(_steps(run_dir), default=-1) < step:
                assert proc.poll() is None, "the run ended before it was interrupted"
                assert time.monotonic() < deadline, "no step logged in time"
                time.sleep(0.2)
            os.killpg(proc.pid, signal.SIGINT)
            code = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        out.seek(0)
        return code, out.read()


@pytest.mark.parametrize("tp", [1, 2])
def test_ctrl_c_checkpoints_and_the_same_command_resumes_then_says_finished(write_recipe, tp):
    recipe, run_dir = write_recipe(f"ctrl_c_tp{tp}", run={"steps": 4}, actor={"tp": tp})  # checkpoint.every=0
    code, out = _ctrl_c_after_step(recipe, run_dir, step=1)
    assert code == INTERRUPTED, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out and "[rank" not in out, out[-3000:]
    lines = [line for line in out.splitlines() if line.startswith("interrupted at step")]
    assert len(lines) == 1 and lines[0].endswith("; run the same command to resume"), out[-3000:]
    stopped_at = int(lines[0].split()[3].rstrip(";"))
    assert stopped_at >= 1 and (run_dir / "checkpoints" / f"step_{stopped_at:06d}" / "COMPLETE").is_file()

    again = _train(recipe)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert f"resumed from checkpoint at step {stopped_at}" in again.stdout
    assert _steps(run_dir) == [1, 2, 3, 4]  # no step twice

    started = time.perf_counter()
    done = _train(recipe, timeout=60)
    elapsed = time.perf_counter() - started
    assert done.returncode == 0 and "already finished its 4 steps; nothing to do" in done.stdout, done.stderr[-2000:]
    assert elapsed < 5.0, elapsed
    assert _steps(run_dir) == [1, 2, 3, 4]
