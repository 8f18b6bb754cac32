"""The sandbox as a non-root user (a user namespace instead of a dropped uid), checked from root.

The rest of tests/sandbox runs as the CI user, which is root there; cluster users are not root, and
their sandboxes rely on the user namespace for the process limit and on the worker's own
non-dumpable flag against ptrace and /proc/1/fd. This runs the hostile programs of
unprivileged_check.py under `setpriv` as a uid of its own and checks nothing of that uid is left.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

WORKTREE = Path(__file__).resolve().parents[2]
CHECK = Path(__file__).with_name("unprivileged_check.py")
TEST_UID = 1_599_999_999  # below megarl.sandbox.pool.UID_BASE: never a root-mode sandbox uid


def _readable_by_others(path: Path) -> bool:
    return all(os.stat(p).st_mode & 0o005 == 0o005 for p in [path, *path.parents])


def _interpreter_for_others() -> str | None:
    """A Python another user can run (the venv's base interpreter, or a system one)."""
    candidates = [os.path.realpath(sys.executable)]
    candidates += [shutil.which("python3", path=d) for d in ("/usr/local/bin", "/usr/bin", "/bin")]
    for python in filter(None, candidates):
        if _readable_by_others(Path(os.path.realpath(python)).parent):
            return python
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="the whole suite already runs unprivileged here")
def test_hostile_programs_as_an_unprivileged_user():
    python = _interpreter_for_others()
    if python is None or not shutil.which("setpriv"):
        pytest.fail("this check needs a Python interpreter other users can run and setpriv (util-linux)")
    work = Path(tempfile.mkdtemp(prefix="megarl-sandbox-unpriv-", dir="/tmp"))  # pytest's tmp_path is root-only
    try:
        # the checkout may sit where other users cannot read (/root): copy the stdlib-only package over
        shutil.copytree(WORKTREE / "megarl" / "sandbox", work / "src" / "megarl" / "sandbox",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(WORKTREE / "megarl" / "__init__.py", work / "src" / "megarl" / "__init__.py")
        os.chmod(work, 0o755)
        (work / "run").mkdir()
        os.chown(work / "run", TEST_UID, TEST_UID)
        _check(python, work)
    finally:
        shutil.rmtree(work)


def _check(python: str, work: Path) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    token = secrets.token_hex(16)
    env = {"PATH": "/usr/bin:/bin", "MEGARL_TEST_SECRET": token}
    shutil.copy(CHECK, work / "src")
    done = subprocess.run(["setpriv", f"--reuid={TEST_UID}", f"--regid={TEST_UID}", "--clear-groups", python, "-I",
                           str(work / "src" / CHECK.name), str(work / "src"), str(server.getsockname()[1]), token],
                          cwd=work / "run", env=env, capture_output=True, text=True, timeout=180)
    try:
        server.accept()
        accepted = True
    except BlockingIOError:
        accepted = False
    server.close()
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout)
    assert found["uid"] == TEST_UID
    limit = 16
    assert found["fork_bomb"]["status"] == "timeout"
    assert limit // 2 < found["fork_bomb"]["peak_extra_processes"] <= limit, found["fork_bomb"]
    assert found["after_bomb_processes"] == 0
    assert found["forge"].count("PermissionError") == 2 and "OPENED" not in found["forge"], found["forge"]
    assert found["kill_parent"] == "killed" and found["after_kill"] == "alive\n"
    assert found["loopback"] == "ConnectionRefusedError\n" and not accepted
    assert token not in found["peek"] and "MEGARL_TEST_SECRET" not in found["peek"]
    assert found["peek"].splitlines()[1:] == ["False", "absent"], found["peek"]
    assert found["write"].splitlines() == ["/ False", "/usr False", f"{work / 'run'} False", "/tmp True"], found["write"]
    assert found["nested_userns"].strip() in ("1", "28"), found["nested_userns"]  # EPERM or ENOSPC: --disable-userns
    deadline = time.monotonic() + 10
    while (left := [p.pid for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == TEST_UID]):
        assert time.monotonic() < deadline, f"processes of the test uid left running: {left}"
        time.sleep(0.05)
