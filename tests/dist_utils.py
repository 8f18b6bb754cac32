"""Launch real multi-process torchrun jobs (gloo on CPU) from pytest."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile


from megarl.runtime.distributed import free_port  # noqa: F401  (re-exported for the tests)


def run_to_exit(cmd: list[str], *, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """`subprocess.run(cmd, capture_output=True, text=True)`, except that it returns when the process
    exits: its output goes through files, not pipes. torch's shared-memory manager (started by the
    tensor weight transport) inherits a trainer's stdout and stderr and stays about 2 s after the
    trainer exits (its shutdown timeout); a pipe reader waits for it, once per run."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if code is None:
        raise subprocess.TimeoutExpired(cmd, timeout, output=stdout, stderr=stderr)
    return subprocess.CompletedProcess(cmd, code, stdout, stderr)


def torchrun(args: list[str], nproc: int, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `torchrun --nproc-per-node nproc <args>`; raise with the output tail if it fails."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *args,
    ]
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **(env or {}))
    proc = run_to_exit(cmd, timeout=timeout, env=full_env)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-6000:]
        raise AssertionError(f"torchrun failed (rc={proc.returncode}): {' '.join(cmd)}\n{tail}")
    return proc
