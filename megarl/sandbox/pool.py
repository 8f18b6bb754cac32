"""A pool of warm bubblewrap sandboxes that run untrusted Python programs and return results as data.

Each worker is one bubblewrap sandbox (see `megarl.sandbox` for what it isolates) with
`megarl/sandbox/worker.py` as its PID 1; a call sends the program to an idle worker, which runs it in
a fresh child process and answers with a `SandboxResult`. Starting a sandbox costs a bubblewrap
launch plus a Python start-up; the pool pays that once per worker instead of once per call
(docs/benchmarks.md, "Tool sandbox"). A worker that dies, hangs past its deadline or answers
garbage is killed as a whole (SIGKILL to the worker, the init of the sandbox's PID namespace, through a
pidfd, so the kernel kills everything else in the namespace; then its bubblewrap process) and replaced; that call gets status `killed` and every other call goes on.
"""

from __future__ import annotations

import json
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

WORKER_SOURCE = Path(__file__).with_name("worker.py")
WORKER_PATH = "/sandbox/worker.py"  # where the worker file is bound, read-only, inside the sandbox
INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`; Fedora: `dnf install bubblewrap`)"
STATUSES = ("ok", "error", "timeout", "killed")
# Root mode: each worker drops to a uid of its own in this range, so that RLIMIT_NPROC (never enforced
# for root) binds, and no two sandboxes share a process budget.
UID_BASE, UID_SPAN = 1_600_000_000, 100_000_000
SYSTEM_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")
START_TIMEOUT_S = 60.0  # a loaded 2-core machine can take seconds to start Python
NAMESPACE_HINT = {  # by "the caller is root"
    False: "unprivileged user namespaces must be allowed: sysctl user.max_user_namespaces=10000, and "
           "kernel.unprivileged_userns_clone=1 where that knob exists",
    True: "as root, bubblewrap needs to create namespaces and mounts: in a container, run it with "
          "CAP_SYS_ADMIN or a seccomp profile that allows unshare and mount",
}
ANSWER_GRACE_S = 10.0  # on top of the call's wall-clock limit before the host gives up on a worker


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot run on this machine (bubblewrap missing or unable to create namespaces)."""


@dataclass(frozen=True)
class SandboxLimits:
    """What one call may use. Every limit applies to each process of the program (rlimits)."""

    timeout_s: float = 10.0  # wall clock for the whole call; then every process of it is killed
    cpu_s: float | None = None  # CPU seconds per process, rounded up to whole seconds; None: timeout_s
    memory_mb: int = 1024  # address space per process (RLIMIT_AS)
    max_processes: int = 32  # processes and threads the program may have at once (RLIMIT_NPROC)
    file_size_mb: int = 16  # largest file it may write (RLIMIT_FSIZE)
    output_bytes: int = 16384  # stdout and stderr are each cut to this many bytes

    def __post_init__(self):
        for name in ("timeout_s", "memory_mb", "max_processes", "file_size_mb", "output_bytes"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"SandboxLimits.{name}={value!r} must be a positive number")
        if self.cpu_s is not None and self.cpu_s <= 0:
            raise ValueError(f"SandboxLimits.cpu_s={self.cpu_s!r} must be positive (or None for timeout_s)")
        if self.memory_mb < 64:
            raise ValueError(f"SandboxLimits.memory_mb={self.memory_mb} is too small to start Python; use 64 or more")

    def wire(self) -> dict:
        values = asdict(self)
        values["cpu_s"] = self.timeout_s if self.cpu_s is None else self.cpu_s
        return values


@dataclass(frozen=True)
class SandboxResult:
    """What one call did. `status`: ok (exit 0), error (non-zero exit), timeout (wall-clock or CPU
    limit), killed (a signal, or the sandbox worker died)."""

    status: str
    stdout: str
    stderr: str
    seconds: float
    exit_code: int | None
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    peak_memory_mb: float = 0.0
    detail: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def find_bwrap(bwrap: str | None = None) -> str:
    path = shutil.which(bwrap or "bwrap")
    if path is None:
        raise SandboxUnavailable(f"megarl sandbox: {bwrap or 'bwrap'} (bubblewrap) not found; {INSTALL_HINT}")
    return path


def _python_prefixes(python: str) -> list[str]:
    # Not compared through symlinks: a venv's python links to its base interpreter, and another venv
    # on the same base has other prefixes.
    if os.path.abspath(python) == os.path.abspath(sys.executable):
        found = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    else:
        out = subprocess.run(
            [python, "-I", "-c", "import sys, json; print(json.dumps([sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]))"],
            capture_output=True, text=True, timeout=START_TIMEOUT_S, env={"PATH": os.defpath})
        if out.returncode != 0:
            raise SandboxUnavailable(f"megarl sandbox: cannot run the interpreter {python}: {out.stderr.strip()[-200:]}")
        found = json.loads(out.stdout)
    found += [str(Path(os.path.abspath(python)).parent.parent), str(Path(os.path.realpath(python)).parent.parent)]
    return found


def _covered(path: str, roots: list[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def bwrap_argv(bwrap: str, python: str, read_only: list[str], tmp_mb: int, uid: int | None) -> list[str]:
    """The bubblewrap command line of one worker. `uid` is set when the caller is root (see UID_BASE)."""
    argv = [bwrap, "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
            "--hostname", "sandbox", "--die-with-parent", "--new-session", "--as-pid-1", "--clearenv"]
    if uid is None:  # unprivileged: a user namespace, and no nested ones
        argv += ["--unshare-user", "--disable-userns"]
    else:  # root: keep only what the worker needs to drop to `uid` (it does so before reading any request)
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    roots = ["/usr"]
    argv += ["--ro-bind", "/usr", "/usr"]
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
            roots.append(path)
    made = {"/"}

    def bind(path: str) -> None:
        parents = []
        for parent in Path(path).parents:
            if str(parent) in made:
                break
            parents.append(str(parent))
        for parent in reversed(parents):  # bwrap would make them 0700, closed to the worker's dropped uid
            argv.extend(["--perms", "0755", "--dir", parent])
            made.add(parent)
        argv.extend(["--ro-bind", path, path])
        roots.append(path)

    for path in SYSTEM_FILES:
        if os.path.isfile(path):
            bind(path)
    wanted = sorted({os.path.realpath(p) for p in read_only if os.path.exists(p)})
    # A path under /tmp (a venv in a checkout there, as CI's clone may be) is bound after the private
    # tmpfs, inside it; the worker's wipe of /tmp leaves mount points alone.
    in_tmp = [path for path in wanted if _covered(path, ["/tmp"])]
    for path in wanted:
        if path not in in_tmp and not _covered(path, roots):
            bind(path)
    argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", str(tmp_mb << 20), "--tmpfs", "/tmp"]
    made.add("/tmp")
    for path in in_tmp:
        if not _covered(path, roots):
            bind(path)
    argv += ["--perms", "0755", "--dir", "/sandbox", "--ro-bind", str(WORKER_SOURCE), WORKER_PATH,
             "--remount-ro", "/", "--chdir", "/tmp",
             "--", python, "-I", WORKER_PATH]
    if uid is not None:
        argv.append(str(uid))
    return argv


_uid_lock = threading.Lock()
_uid_next = [0]


def _fresh_uid() -> int:
    with _uid_lock:
        _uid_next[0] += 1
        return UID_BASE + (os.getpid() * 1000 + _uid_next[0]) % UID_SPAN


class _LineReader:
    """Reads newline-ended answers from a worker's stdout with a deadline and a size cap."""

    def __init__(self, fd: int, max_bytes: int):
        self.fd, self.max_bytes = fd, max_bytes
        self.buffer = b""

    def line(self, deadline: float) -> bytes:
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no answer before the deadline")
            if not select.select([self.fd], [], [], remaining)[0]:
                continue
            chunk = os.read(self.fd, 1 << 20)
            if not chunk:
                raise EOFError("the sandbox worker exited")
            self.buffer += chunk
            if len(self.buffer) > self.max_bytes:
                raise ValueError(f"answer longer than {self.max_bytes} bytes")
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line


def _read_to_end(fd: int, deadline: float, max_bytes: int = 65536) -> bytes:
    data = b""
    while len(data) < max_bytes:
        if not select.select([fd], [], [], max(deadline - time.monotonic(), 0))[0]:
            raise TimeoutError("bubblewrap wrote no sandbox information before the deadline")
        chunk = os.read(fd, max_bytes)
        if not chunk:
            return data
        data += chunk
    raise ValueError(f"bubblewrap's sandbox information is longer than {max_bytes} bytes")


class SandboxWorker:
    """One warm sandbox; runs one call at a time."""

    def __init__(self, argv: list[str], answer_bytes: int):
        info_read, info_write = os.pipe()  # bubblewrap writes {"child-pid": host pid of the worker} here
        argv = [argv[0], "--info-fd", str(info_write), *argv[1:]]
        self.worker = None  # a pidfd of the worker: killing the namespace's init kills the whole namespace
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         start_new_session=True, pass_fds=(info_write,), env={"PATH": os.defpath})
        finally:
            os.close(info_write)
        self.reader = _LineReader(self.proc.stdout.fileno(), answer_bytes)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            self.worker = os.pidfd_open(json.loads(_read_to_end(info_read, deadline))["child-pid"])
            hello = json.loads(self.reader.line(deadline))
        except (TimeoutError, EOFError, ValueError, KeyError, OSError) as err:
            self.kill()
            message = self.proc.stderr.read().decode(errors="replace").strip().splitlines()
            why = message[-1] if message else str(err)
            raise SandboxUnavailable(f"megarl sandbox: bubblewrap could not start a sandbox: {why} "
                                     f"({NAMESPACE_HINT[os.geteuid() == 0]})") from None
        finally:
            os.close(info_read)
        self.pid_outside, self.uid = self.proc.pid, hello["uid"]

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def call(self, code: str, limits: SandboxLimits) -> SandboxResult:
        start = time.monotonic()
        try:
            self.proc.stdin.write(json.dumps({"code": code, "limits": limits.wire()}).encode() + b"\n")
            self.proc.stdin.flush()
            answer = json.loads(self.reader.line(start + limits.timeout_s + ANSWER_GRACE_S))
            if answer.pop("retire"):  # the worker could not clean up after this call and has exited
                self.kill()
            return SandboxResult(**answer)
        except (OSError, TimeoutError, EOFError, ValueError, TypeError, KeyError) as err:
            self.kill()
            return SandboxResult(status="killed", stdout="", stderr="", seconds=round(time.monotonic() - start, 4),
                                 exit_code=None, detail=f"sandbox worker lost ({err}); it was killed and replaced")

    def kill(self) -> None:
        """Kill the worker, the init of the sandbox's PID namespace, so the kernel kills everything else in
        it; then bubblewrap. (The worker's pidfd names that process alone: no pid-reuse race.)"""
        if self.worker is not None:
            try:
                signal.pidfd_send_signal(self.worker, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.close(self.worker)
            self.worker = None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


@dataclass
class SandboxPool:
    """`workers` warm sandboxes; `run` is thread-safe and blocks until a worker is free.

    >>> with SandboxPool(workers=2) as pool:
    ...     pool.run("print(6 * 7)").stdout
    '42\\n'
    """

    workers: int = 2
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    tmp_mb: int = 64  # size of each sandbox's private /tmp (a tmpfs, so it counts as memory)
    python: str = sys.executable  # the interpreter the programs run with (its prefixes are visible, read-only)
    read_only: tuple[str, ...] = ()  # more host paths the programs may read
    bwrap: str | None = None

    def __post_init__(self):
        if self.workers < 1:
            raise ValueError(f"SandboxPool.workers={self.workers} must be at least 1")
        self._bwrap = find_bwrap(self.bwrap)
        self._paths = _python_prefixes(self.python) + list(self.read_only)
        self._idle: queue.Queue[SandboxWorker] = queue.Queue()
        self._all: list[SandboxWorker] = []
        self._lock = threading.Lock()
        self._closed = False
        # bubblewrap's --die-with-parent is PR_SET_PDEATHSIG, which fires when the *thread* that started
        # it ends: so every worker is started by one of these threads, which live as long as the pool.
        self._starter = ThreadPoolExecutor(self.workers, thread_name_prefix="sandbox-start")
        try:
            for worker in self._starter.map(lambda _: self._start_here(), range(self.workers)):
                self._idle.put(worker)
        except BaseException:
            self.close()
            raise

    def _start(self) -> SandboxWorker:
        return self._starter.submit(self._start_here).result()

    def _start_here(self) -> SandboxWorker:
        uid = _fresh_uid() if os.geteuid() == 0 else None
        # an answer carries two outputs, each at most output_bytes of text, JSON-escaped (\uXXXX: 6 bytes per byte)
        worker = SandboxWorker(bwrap_argv(self._bwrap, self.python, self._paths, self.tmp_mb, uid),
                               answer_bytes=12 * self.limits.output_bytes + 65536)
        with self._lock:
            self._all.append(worker)
        return worker

    def run(self, code: str, *, timeout_s: float | None = None, memory_mb: int | None = None,
            limits: SandboxLimits | None = None) -> SandboxResult:
        """Run one program; never raises for anything the program does."""
        limits = limits or self.limits
        if timeout_s is not None:
            limits = replace(limits, timeout_s=timeout_s)
        if memory_mb is not None:
            limits = replace(limits, memory_mb=memory_mb)
        if limits.output_bytes > self.limits.output_bytes:
            raise ValueError(f"output_bytes={limits.output_bytes} exceeds the pool's {self.limits.output_bytes}; "
                             "make the pool with the larger SandboxLimits")
        if self._closed:
            raise RuntimeError("SandboxPool.run after close()")
        worker = self._take()
        try:
            if not worker.alive:  # died while idle (killed from outside): this call gets a fresh one
                worker = self._replace(worker)
            result = worker.call(code, limits)
        finally:
            if self._closed:
                worker.kill()
            else:
                if not worker.alive:
                    worker = self._replace(worker)
                self._idle.put(worker)
        return result

    def _take(self) -> SandboxWorker:
        while True:
            try:
                return self._idle.get(timeout=1.0)
            except queue.Empty:
                with self._lock:
                    if not self._all:  # every worker died and could not be restarted
                        raise SandboxUnavailable("megarl sandbox: no sandbox worker left (restarts failed)") from None

    def _replace(self, dead: SandboxWorker) -> SandboxWorker:
        dead.kill()
        with self._lock:
            self._all.remove(dead)
        return self._start()

    def run_file(self, path: str | os.PathLike, **kwargs) -> SandboxResult:
        return self.run(Path(path).read_text(encoding="utf-8"), **kwargs)

    def map(self, codes: list[str], **kwargs) -> list[SandboxResult]:
        """Run programs concurrently, one per free worker; results in the order of `codes`."""
        with ThreadPoolExecutor(self.workers) as threads:
            return list(threads.map(lambda code: self.run(code, **kwargs), codes))

    def worker_pids(self) -> list[int]:
        """Host pids of the workers' bubblewrap processes (everything a worker runs descends from one)."""
        with self._lock:
            return [w.pid_outside for w in self._all]

    def worker_uids(self) -> list[int]:
        with self._lock:
            return [w.uid for w in self._all]

    def close(self) -> None:
        self._closed = True
        with self._lock:
            workers, self._all = self._all, []
        for worker in workers:
            worker.kill()
        self._starter.shutdown(wait=True)

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_sandboxed(code: str, limits: SandboxLimits | None = None, **pool_options) -> SandboxResult:
    """Run one program in a sandbox started for it alone (no pool: pays the start-up every call)."""
    limits = limits or SandboxLimits()
    with SandboxPool(workers=1, limits=limits, **pool_options) as pool:
        return pool.run(code)
