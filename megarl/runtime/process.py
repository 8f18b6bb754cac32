"""Process lifetime: children that die with the process that started them (Linux
PR_SET_PDEATHSIG), and exclusive file locks (a run directory, a conversion's partial output) that
the kernel releases when their holder dies.

`megarl train` relaunches itself under torchrun when tp*pp > 1: torchrun is started with a
parent-death signal, and every rank arms one too (its parent is the torchrun agent), so `kill -9`
of the launcher ends the whole tree instead of leaving ranks that keep training and checkpointing.
Whatever a training process forks (checkpoint writers) dies with it too.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import os
import signal
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
LAUNCHER_PID_ENV = "MEGARL_LAUNCHER_PID"  # set by `megarl train` for the ranks it launches
LOCK_NAME = ".megarl.lock"
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT: what a shell reports for a command ended by Ctrl-C


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send `sig` to this process when its parent (the thread that forked it)
    exits. Safe to call in a `preexec_fn`. Returns False where unsupported (not Linux)."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig)) == 0
    except (OSError, AttributeError):
        return False


def tie_training_process() -> None:
    """In a training process (`megarl train`'s own process or a rank): the processes it forks die with
    it, and under `megarl train`'s torchrun it dies with the launcher (exiting now if that is gone)."""
    forks_die_with_this_process()
    launcher = os.environ.get(LAUNCHER_PID_ENV)
    if launcher and die_with_parent(signal.SIGKILL) and not Path(f"/proc/{int(launcher)}").exists():
        os._exit(1)  # the launcher died before the signal was armed


_forks_tied = False
_forking_pid: int | None = None  # in a forked child: the pid of the process that forked it


def forks_die_with_this_process() -> None:
    """Every child this process forks without exec dies when this process dies (kill -9 included).

    megatron-core's checkpoint writer forks workers that report on a queue; one orphaned by a kill in
    the middle of a save blocks on that queue forever, keeps the run's stdout open (so whoever waits
    for the output waits for ever) and holds the dead run's memory. They fork from the main thread,
    whose exit is the process's: PR_SET_PDEATHSIG follows the forking thread. Children started with
    exec (subprocess) are not affected: the at-fork hooks do not run for them."""
    global _forks_tied
    if not _forks_tied:
        os.register_at_fork(before=_remember_forking_pid, after_in_child=_die_with_forking_process)
        _forks_tied = True


def _remember_forking_pid() -> None:
    global _forking_pid
    _forking_pid = os.getpid()


def _die_with_forking_process() -> None:
    # the parent may have died between the fork and the prctl: then no signal would ever come
    if die_with_parent(signal.SIGKILL) and os.getppid() != _forking_pid:
        os.kill(os.getpid(), signal.SIGKILL)


_finished_with: list[int] = []  # the exit code of a command that returned normally


def skip_finalization_at_exit() -> None:
    """Let a command that returns normally (`finished(code)`) end right after the atexit handlers,
    without CPython's finalization. Call it before the command imports anything heavy: this handler
    then runs last (atexit is last in, first out), after every library's own handlers and after
    non-daemon threads were joined.

    A built-in server (torch and transformers loaded) spent 0.97 s finalizing after its last request
    was answered, and every training run waits for its servers to stop; with this it is gone in
    0.11 s. Nothing is lost: the command has closed what it wrote before returning, streams are
    flushed here, and a command that raised gets the normal teardown."""
    atexit.register(_exit_now_if_finished)


def finished(code: int) -> None:
    _finished_with.append(code)


def _exit_now_if_finished() -> None:
    if not _finished_with:
        return
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(_finished_with[-1])


class LockBusyError(RuntimeError):
    """Another live process holds the lock (`holder`: its pid as it wrote it, or "unknown")."""

    def __init__(self, message: str, holder: str = "unknown"):
        super().__init__(message)
        self.holder = holder


class FileLock:
    """Exclusive, non-blocking `flock` on a lock file, held while the process lives (the kernel drops
    it when the process dies, so a killed process never leaves a stale lock). The file holds the
    holder's pid, for messages."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self, wait_s: float = 0.0) -> "FileLock":
        """Take the lock, retrying for up to `wait_s` seconds; LockBusyError if held."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) and time.monotonic() < deadline:
                    time.sleep(1.0)
                    continue
                self._fail(fd, err)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def _fail(self, fd: int, err: OSError) -> None:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise LockBusyError(self._busy_message(holder), holder) from None
        raise err

    def _busy_message(self, holder: str) -> str:
        return f"{self.path} is locked by another process (pid {holder})"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class RunDirectoryLock(FileLock):
    """RUN_DIR/.megarl.lock: one training run per run directory."""

    def __init__(self, run_dir: str | Path):
        super().__init__(Path(run_dir) / LOCK_NAME)

    def _busy_message(self, holder: str) -> str:
        return (f"run directory {self.path.parent} is in use by another run (pid {holder}); wait for it to "
                "finish or stop it, or give this run another run.output_dir")
