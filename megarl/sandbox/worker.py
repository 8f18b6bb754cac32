"""The program inside each sandbox: runs one Python program per request in a fresh, rlimited child.

It runs as PID 1 of the sandbox's own PID namespace (bubblewrap `--as-pid-1`), reads one JSON request
per line on stdin and answers one JSON line on stdout; nothing else in the sandbox can reach those
two pipes. It uses only the standard library, because megarl itself is not visible in the sandbox.

Per request: wipe the private tmpfs `/tmp`, write the program to `/tmp/main.py`, fork a child that
starts a new session, sets its rlimits and `exec`s a fresh `python -I main.py` with a scrubbed
environment, collect its stdout and stderr (keeping only the first `output_bytes` of each), stop it
at the wall-clock deadline, then SIGKILL every other process of the namespace (`kill(-1)` spares the
caller) and reap them all. Because the worker is the namespace's init, the kernel drops any signal
sent to it from inside the namespace, SIGKILL included, so the program cannot kill its parent; and
the worker makes itself non-dumpable, so the program (same uid) can neither ptrace it nor open
`/proc/1/fd/*` to forge an answer. If the namespace cannot be emptied or `/tmp` wiped, the worker
answers with `retire: true` and exits; the host then starts a fresh sandbox.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import select
import signal
import stat
import sys
import time

WORK = "/tmp"  # the sandbox's private, size-limited tmpfs: the only writable place
PROGRAM = "main.py"
CHILD_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": WORK,
    "TMPDIR": WORK,
    "LANG": "C.UTF-8",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
READ_CHUNK = 65536
DRAIN_AFTER_EXIT = 64  # reads of what is left in the pipes once the program has exited
EMPTY_NAMESPACE_S = 5.0
PR_SET_DUMPABLE = 4


def _set_undumpable() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def _limit(kind: int, value: int) -> None:
    resource.setrlimit(kind, (value, value))


def _child(code_path: str, limits: dict, out_w: int, err_w: int) -> None:
    """In the forked child: never returns."""
    try:
        os.setsid()  # its own session and process group
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.closerange(3, 65536)  # the worker's control pipes are not inherited
        cpu = max(1, int(limits["cpu_s"] + 0.999))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU, then SIGKILL
        _limit(resource.RLIMIT_AS, limits["memory_mb"] << 20)
        _limit(resource.RLIMIT_NPROC, limits["max_processes"] + 1)  # + this worker (same uid, same namespace)
        _limit(resource.RLIMIT_FSIZE, limits["file_size_mb"] << 20)
        _limit(resource.RLIMIT_CORE, 0)
        _limit(resource.RLIMIT_NOFILE, 256)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        os.execve(sys.executable, [sys.executable, "-I", code_path], CHILD_ENV)
    except BaseException as err:  # noqa: BLE001 - report whatever stopped the exec, then exit
        try:
            os.write(2, f"sandbox: could not start the program: {err!r}\n".encode())
        finally:
            os._exit(127)


def _wipe(path: str, device: int | None = None) -> bool:
    """Remove everything under `path` (the program may have chmod-ed its files to 000) except the
    read-only mounts bound into it (the interpreter's prefix when it lies under /tmp) and the folders
    leading to them; True when `path` is left empty."""
    device = os.lstat(path).st_dev if device is None else device
    empty = True
    for name in os.listdir(path):
        full = os.path.join(path, name)
        info = os.lstat(full)
        if info.st_dev != device:  # a mount point: not the program's
            empty = False
        elif stat.S_ISDIR(info.st_mode):
            if info.st_uid == os.getuid():  # not the folders bubblewrap made (as root) on the way to a mount
                os.chmod(full, 0o700)
            if _wipe(full, device):
                os.rmdir(full)
            else:
                empty = False
        else:
            os.unlink(full)
    return empty


def _empty_namespace() -> bool:
    """SIGKILL every process of the namespace except this one; reap them all. False if some remain."""
    deadline = time.monotonic() + EMPTY_NAMESPACE_S
    while time.monotonic() < deadline:
        _kill_all()
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return True  # no child left; orphans are re-parented to us, so nothing left at all
            if pid == 0:
                break
        time.sleep(0.002)
    return False


class _Capture:
    """The first `limit` bytes of one pipe; the rest is read and dropped."""

    def __init__(self, fd: int, limit: int):
        self.fd, self.limit = fd, limit
        self.data = bytearray()
        self.dropped = 0
        self.open = True

    def read(self) -> None:
        try:
            chunk = os.read(self.fd, READ_CHUNK)
        except BlockingIOError:
            return
        if not chunk:
            self.close()
            return
        room = self.limit - len(self.data)
        self.data += chunk[:max(room, 0)]
        self.dropped += max(len(chunk) - max(room, 0), 0)

    def close(self) -> None:
        if self.open:
            os.close(self.fd)
            self.open = False

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def run_one(request: dict) -> dict:
    limits = request["limits"]
    _wipe(WORK)
    code_path = os.path.join(WORK, PROGRAM)
    with open(code_path, "w", encoding="utf-8") as f:
        f.write(request["code"])
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(code_path, limits, out_w, err_w)
    os.close(out_w)
    os.close(err_w)
    pidfd = os.pidfd_open(pid)
    streams = [_Capture(out_r, limits["output_bytes"]), _Capture(err_r, limits["output_bytes"])]
    deadline = start + limits["timeout_s"]
    timed_out = exited = False
    while not exited:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([s.fd for s in streams if s.open] + [pidfd], [], [], remaining)
        for s in streams:
            if s.open and s.fd in ready:
                s.read()
        exited = pidfd in ready
    if timed_out:
        _kill_all()
    _, status, usage = os.wait4(pid, 0)
    seconds = time.monotonic() - start
    os.close(pidfd)
    for s in streams:  # what the program wrote before it ended (a leftover process may still write: bounded)
        if s.open:
            os.set_blocking(s.fd, False)
            for _ in range(DRAIN_AFTER_EXIT):
                if not s.open or not select.select([s.fd], [], [], 0)[0]:
                    break
                s.read()
    emptied = _empty_namespace()
    for s in streams:
        s.close()
    try:
        _wipe(WORK)
        wiped = True
    except OSError:
        wiped = False
    result = {
        "stdout": streams[0].text(),
        "stderr": streams[1].text(),
        "stdout_truncated": streams[0].dropped > 0,
        "stderr_truncated": streams[1].dropped > 0,
        "seconds": round(seconds, 4),
        "peak_memory_mb": round(usage.ru_maxrss / 1024, 1),
        "retire": not (emptied and wiped),
    }
    result.update(_classify(status, timed_out, usage, limits))
    return result


def _kill_all() -> None:
    try:
        os.kill(-1, signal.SIGKILL)  # every process of the namespace but this one, whatever its group
    except ProcessLookupError:
        pass


def _classify(status: int, timed_out: bool, usage, limits: dict) -> dict:
    if timed_out:
        return {"status": "timeout", "exit_code": None, "detail": f"wall-clock limit of {limits['timeout_s']} s"}
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        cpu_used = usage.ru_utime + usage.ru_stime
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_used >= limits["cpu_s"]):
            return {"status": "timeout", "exit_code": -sig, "detail": f"CPU-time limit of {limits['cpu_s']} s"}
        return {"status": "killed", "exit_code": -sig, "detail": f"killed by {signal.Signals(sig).name}"}
    code = os.WEXITSTATUS(status)
    if code == 0:
        return {"status": "ok", "exit_code": 0, "detail": ""}
    return {"status": "error", "exit_code": code, "detail": f"exit code {code}"}


def main(argv: list[str]) -> int:
    uid = int(argv[0]) if argv else None
    if uid is not None:  # root mode: leave root for a uid of this sandbox's own (RLIMIT_NPROC binds it)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    _set_undumpable()  # after setuid, which resets the flag
    control_in, control_out = sys.stdin.buffer, sys.stdout.buffer
    control_out.write(json.dumps({"ready": True, "uid": os.getuid(), "pid": os.getpid()}).encode() + b"\n")
    control_out.flush()
    for line in control_in:
        try:
            answer = run_one(json.loads(line))
        except Exception as err:  # noqa: BLE001 - one failed request must not take the worker down silently
            answer = {"status": "error", "exit_code": None, "stdout": "", "stderr": "", "stdout_truncated": False,
                      "stderr_truncated": False, "seconds": 0.0, "peak_memory_mb": 0.0,
                      "detail": f"sandbox worker failed: {err!r}", "retire": True}
        control_out.write(json.dumps(answer).encode() + b"\n")
        control_out.flush()
        if answer["retire"]:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
