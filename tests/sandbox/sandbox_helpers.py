"""Checks shared by the sandbox tests: which processes a pool has, and that nothing else is running."""

from __future__ import annotations

import os
import time

import psutil


def pool_processes(pool) -> dict[int, list[psutil.Process]]:
    """{bubblewrap pid: every process below it} for each worker of the pool."""
    found = {}
    for pid in pool.worker_pids():
        try:
            found[pid] = psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess:
            found[pid] = []
    return found


def processes_with_uids(uids: set[int]) -> list[psutil.Process]:
    """Processes anywhere on the host whose real uid is one of `uids` (root mode: the sandboxes' own uids)."""
    uids = uids - {os.getuid()}  # unprivileged mode: sandboxes run as the caller, the scan says nothing
    stray = []
    for proc in psutil.process_iter(["uids"]):
        info_uids = proc.info.get("uids")
        if info_uids is not None and info_uids.real in uids:
            stray.append(proc)
    return stray


def assert_only_idle_workers(pool) -> None:
    """Each worker's sandbox holds exactly its worker (PID 1 inside), and no sandbox uid runs anywhere else."""
    inside = set()
    for pid, below in pool_processes(pool).items():
        described = [(p.pid, _cmd(p)) for p in below]
        assert len(below) == 1, f"sandbox {pid} should hold only its worker, holds {described}"
        inside.update(p.pid for p in below)
    stray = [p for p in processes_with_uids(set(pool.worker_uids())) if p.pid not in inside]
    assert not stray, f"sandbox processes outside any sandbox: {[(p.pid, _cmd(p)) for p in stray]}"


def assert_all_gone(pids: list[int], uids: set[int], timeout_s: float = 10.0) -> None:
    """After close(): the workers' bubblewrap processes, everything below them and every sandbox uid are gone."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
        stray = processes_with_uids(uids)
        if not alive and not stray:
            return
        assert time.monotonic() < deadline, f"left running after close(): bwrap {alive}, sandbox uids {stray}"
        time.sleep(0.05)


def _cmd(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())[:120]
    except psutil.Error:
        return "?"
