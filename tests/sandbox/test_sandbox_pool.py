"""The sandbox pool: concurrent calls, one bad call failing alone, lost workers replaced, clear refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from sandbox_helpers import assert_all_gone, assert_only_idle_workers

from megarl.sandbox import SandboxLimits, SandboxPool, SandboxUnavailable, run_sandboxed
from megarl.sandbox.pool import bwrap_argv


def test_calls_run_concurrently_and_keep_their_order(clean_pool):
    codes = [f"import time\ntime.sleep(1.0)\nprint({i})" for i in range(4)]
    start = time.monotonic()
    results = clean_pool.map(codes)
    elapsed = time.monotonic() - start
    assert [r.stdout for r in results] == ["0\n", "1\n", "2\n", "3\n"]
    assert all(r.status == "ok" and r.seconds >= 1.0 for r in results)
    assert elapsed < 4.0, f"4 one-second calls on 2 workers took {elapsed:.1f} s: not concurrent"


def test_one_bad_call_fails_alone(clean_pool):
    codes = [
        "print('first')",
        "while True: pass",
        "raise ValueError('bad input')",
        "import os\nos.kill(os.getpid(), 9)",
        "x = bytearray(10 ** 10)",
        "print('last')",
    ]
    results = clean_pool.map(codes, timeout_s=1.5)
    assert [r.status for r in results] == ["ok", "timeout", "error", "killed", "error", "ok"], results
    assert results[0].stdout == "first\n" and results[-1].stdout == "last\n"
    assert "ValueError: bad input" in results[2].stderr
    assert results[3].exit_code == -signal.SIGKILL
    assert "MemoryError" in results[4].stderr


def test_a_worker_killed_from_outside_is_replaced():
    with SandboxPool(workers=2, limits=SandboxLimits(timeout_s=3, memory_mb=256)) as pool:
        first, first_uids = pool.worker_pids(), set(pool.worker_uids())
        os.killpg(first[0], signal.SIGKILL)  # its bubblewrap process, from the host
        results = pool.map([f"print({i})" for i in range(4)])
        assert [r.status for r in results] == ["ok"] * 4
        assert first[0] not in pool.worker_pids() and len(pool.worker_pids()) == 2
        assert_only_idle_workers(pool)
        pids, uids = pool.worker_pids() + first, set(pool.worker_uids()) | first_uids
    assert_all_gone(pids, uids)


def test_a_hung_worker_is_killed_and_its_call_reports_it(monkeypatch):
    import megarl.sandbox.pool as pool_module

    monkeypatch.setattr(pool_module, "ANSWER_GRACE_S", 0.5)
    with SandboxPool(workers=1, limits=SandboxLimits(timeout_s=3, memory_mb=256)) as pool:
        hung, hung_uids = pool.worker_pids(), set(pool.worker_uids())
        for proc in psutil.Process(hung[0]).children(recursive=True):
            proc.suspend()  # a wedged worker: it never answers
        result = pool.run("print('never')", timeout_s=0.5)
        assert result.status == "killed" and "lost" in result.detail, result
        assert pool.run("print('again')").stdout == "again\n"
        assert pool.worker_pids() != hung
        assert_only_idle_workers(pool)
        pids, uids = pool.worker_pids() + hung, set(pool.worker_uids()) | hung_uids
    assert_all_gone(pids, uids)


def test_missing_bubblewrap_is_refused_with_the_fix():
    with pytest.raises(SandboxUnavailable) as info:
        SandboxPool(workers=1, bwrap="/nonexistent/bwrap")
    message = str(info.value)
    assert "\n" not in message and "apt-get install bubblewrap" in message
    with pytest.raises(SandboxUnavailable) as info:  # a bwrap that cannot make namespaces exits at once
        SandboxPool(workers=1, bwrap="false")
    message = str(info.value)
    assert "\n" not in message and "could not start a sandbox" in message and "namespaces" in message


def test_bad_limits_are_refused_with_the_field():
    with pytest.raises(ValueError, match=r"SandboxLimits.timeout_s=0 must be a positive"):
        SandboxLimits(timeout_s=0)
    with pytest.raises(ValueError, match=r"memory_mb=16 is too small"):
        SandboxLimits(memory_mb=16)


def test_the_bwrap_command_shares_no_host_path_but_the_interpreter_and_usr():
    argv = bwrap_argv("bwrap", sys.executable, [sys.prefix, sys.base_prefix], tmp_mb=16, uid=None)
    for flag in ("--unshare-net", "--unshare-pid", "--unshare-ipc", "--clearenv", "--die-with-parent", "--as-pid-1"):
        assert flag in argv
    sources = [argv[i + 1] for i, arg in enumerate(argv) if arg in ("--bind", "--ro-bind", "--dev-bind")]
    assert "--bind" not in argv and "--dev-bind" not in argv  # nothing writable from the host
    cwd = os.path.realpath(os.getcwd())
    assert not any(cwd == s or cwd.startswith(s + "/") for s in sources if s != "/usr"), sources
    assert not any(s == os.path.expanduser("~") for s in sources), sources


def test_run_sandboxed_without_a_pool():
    result = run_sandboxed("print(sum(range(10)))", SandboxLimits(timeout_s=3, memory_mb=256))
    assert (result.status, result.stdout, result.exit_code) == ("ok", "45\n", 0)


def test_cli_prints_the_result_json(tmp_path):
    program = tmp_path / "solve.py"
    program.write_text("import math\nprint(math.factorial(20))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-m", "megarl.cli", "sandbox", "run", str(program), "--timeout", "5",
                           "--memory-mb", "256"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["status"] == "ok" and result["stdout"] == "2432902008176640000\n" and result["exit_code"] == 0
    assert set(result) == {"status", "stdout", "stderr", "seconds", "exit_code", "stdout_truncated",
                           "stderr_truncated", "peak_memory_mb", "detail"}

    program.write_text("while True: pass\n")
    done = subprocess.run([sys.executable, "-m", "megarl.cli", "sandbox", "run", str(program), "--timeout", "1"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1 and json.loads(done.stdout)["status"] == "timeout"

    done = subprocess.run([sys.executable, "-m", "megarl.cli", "sandbox", "run", str(tmp_path / "missing.py")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "cannot read" in done.stderr and done.stdout == ""


def test_an_interpreter_whose_venv_lies_under_tmp_runs(tmp_path):
    """CI may clone the project (and make its venv) under /tmp, where the sandbox mounts its private
    tmpfs: the venv is bound inside that tmpfs, read-only, and survives the wipe between calls.
    Before: `bwrap: execvp /tmp/.../bin/python: No such file or directory`."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    assert str(venv).startswith("/tmp/")
    with SandboxPool(workers=1, python=str(venv / "bin" / "python")) as pool:
        first = pool.run("import sys; open('/tmp/scratch.txt', 'w').write('x'); print(sys.prefix)")
        second = pool.run("import os, sys; print(sys.prefix, os.path.exists('/tmp/scratch.txt'))")
        blocked = pool.run(f"open({str(venv / 'pyvenv.cfg')!r}, 'a').write('x')")
    assert first.status == "ok" and first.stdout.strip() == str(venv), first
    assert second.status == "ok" and second.stdout.split() == [str(venv), "False"], second
    assert blocked.status == "error" and ("Read-only file system" in blocked.stderr or "Permission denied" in blocked.stderr), blocked
