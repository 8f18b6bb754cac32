"""Runs untrusted Python (a model's tool calls) in bubblewrap sandboxes, one fresh process per call.

Why bubblewrap: it is the small, audited setuid-free namespace tool that Flatpak ships on every major
distribution (Debian package `bubblewrap`), so the isolation comes from the kernel's namespaces and
rlimits set up by a well-kept tool, not from restrictions inside Python that the code could undo.
nsjail would add seccomp and cgroups but is not packaged in Debian 12; plain `unshare` cannot build
a minimal read-only file system view.

What each sandbox isolates (docs/security.md, "Tool sandbox", has the full list and the limits):
- network: its own network namespace with only its own loopback, so the host's loopback services and
  abstract Unix sockets are unreachable, and so is everything else;
- files: a new root holding only /usr (and the /bin, /lib links), the interpreter's prefixes, read-only,
  and a private size-limited tmpfs /tmp, the only writable place; the run directory, home, /etc
  (but ld.so.cache and localtime), /sys, /run and the GPUs are not there;
- processes: its own PID namespace (the worker is PID 1; it kills and reaps every other process
  after each call, and the host kills the whole namespace by killing bubblewrap), a new session per call,
  IPC and UTS namespaces, an environment built from scratch;
- resources, per process: CPU time, address space, process count, file size, open files (rlimits),
  plus a wall-clock limit for the call and a cap on the output kept.
What it does not isolate: the kernel itself (no seccomp filter: a kernel exploit escapes), memory
across processes (the address-space limit is per process, so N processes may use N times it; cgroups
would bound the total), CPU shares, and host facts readable in /proc (cpuinfo, meminfo, uptime).

    >>> from megarl.sandbox import SandboxPool
    >>> with SandboxPool(workers=4) as pool:
    ...     results = pool.map(["print(2**100)", "while True: pass"], timeout_s=2)
"""

from megarl.sandbox.pool import (
    SandboxLimits,
    SandboxPool,
    SandboxResult,
    SandboxUnavailable,
    run_sandboxed,
)

__all__ = ["SandboxLimits", "SandboxPool", "SandboxResult", "SandboxUnavailable", "run_sandboxed"]
