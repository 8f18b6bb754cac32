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


def _one_interrupt_line(code, out) -> int:
    """Exit 130, the one line, no traceback from any rank; returns the step it names."""
    assert code == INTERRUPTED, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out and "[rank" not in out, out[-3000:]
    lines = [line for line in out.splitlines() if line.startswith("interrupted at step")]
    assert len(lines) == 1 and lines[0].endswith("; run the same command to resume"), out[-3000:]
    return int(lines[0].split()[3].rstrip(";"))


def test_ctrl_c_checkpoints_and_the_same_command_resumes_then_says_finished(write_recipe):
    """The directory holds an earlier run that cannot be resumed (killed before its first checkpoint):
    the command starts runs in a numbered directory, and the same command finds that run again."""
    recipe, base = write_recipe("ctrl_c", run={"steps": 4})  # checkpoint.every=0: only Ctrl-C checkpoints
    base.mkdir()
    earlier = "".join(json.dumps({"step": s, "reward/mean": 0.5}) + "\n" for s in (1, 2, 3))
    (base / "metrics.jsonl").write_text(earlier)
    run_dir = base.parent / f"{base.name}-2"

    code, out = _ctrl_c_after_step(recipe, run_dir, step=1)
    assert f"{base} holds a run with no checkpoint to resume (logged up to step 3); this run goes to {run_dir}" in out
    stopped_at = _one_interrupt_line(code, out)
    assert stopped_at >= 1 and (run_dir / "checkpoints" / f"step_{stopped_at:06d}" / "COMPLETE").is_file()

    again = _train(recipe)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert f"resuming {run_dir}" in again.stderr and f"resumed from checkpoint at step {stopped_at}" in again.stdout
    assert _steps(run_dir) == [1, 2, 3, 4]  # no step twice
    assert (base / "metrics.jsonl").read_text() == earlier  # the earlier run is never appended to

    started = time.perf_counter()
    done = _train(recipe, timeout=60)
    elapsed = time.perf_counter() - started
    assert done.returncode == 0 and f"{run_dir} already finished its 4 steps; nothing to do" in done.stdout, done.stderr[-2000:]
    assert elapsed < 5.0, elapsed
    assert _steps(run_dir) == [1, 2, 3, 4]


def test_ctrl_c_under_torchrun_at_tp2(write_recipe):
    """`megarl train` relaunched under torchrun: SIGINT to the terminal's process group reaches both ranks."""
    recipe, run_dir = write_recipe("ctrl_c_tp2", run={"steps": 20}, actor={"tp": 2})
    code, out = _ctrl_c_after_step(recipe, run_dir, step=1)
    stopped_at = _one_interrupt_line(code, out)
    assert "ChildFailedError" not in out and "SignalException" not in out, out[-3000:]
    step_dir = run_dir / "checkpoints" / f"step_{stopped_at:06d}"
    assert (step_dir / "COMPLETE").is_file() and json.loads((step_dir / "trainer_state.json").read_text())["step"] == stopped_at


def test_a_second_ctrl_c_exits_at_once_and_keeps_what_is_on_disk(write_recipe):
    recipe, run_dir = write_recipe("ctrl_c_twice", run={"steps": 50}, checkpoint={"every": 1, "keep_last": 50})
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen([sys.executable, "-m", "megarl.cli", "train", str(recipe)], stdout=out, stderr=subprocess.STDOUT,
                                text=True, env=_env(), start_new_session=True)
        try:
            deadline = time.monotonic() + 600
            # Checkpoint 2 complete on disk (its metrics row may be logged before the checkpoint is written).
            while not (run_dir / "checkpoints" / "step_000002" / "COMPLETE").is_file():
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
            os.killpg(proc.pid, signal.SIGINT)
            time.sleep(0.05)
            os.killpg(proc.pid, signal.SIGINT)
            started = time.perf_counter()
            code = proc.wait(timeout=60)
            elapsed = time.perf_counter() - started
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        out.seek(0)
        text = out.read()
    assert code == INTERRUPTED and elapsed < 5.0, (code, elapsed, text[-3000:])
    assert "interrupted again: exiting now" in text and "Traceback" not in text, text[-3000:]
    complete = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*") if (p / "COMPLETE").is_file())
    assert "step_000001" in complete and "step_000002" in complete  # written before the first Ctrl-C: kept whole
    from megarl.checkpoint.checksums import read_manifest, verify_files

    for name in complete:  # every file at its recorded SHA-256
        manifest = read_manifest(run_dir / "checkpoints" / name)
        verify_files(run_dir / "checkpoints" / name, manifest, list(manifest))
