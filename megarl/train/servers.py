"""Rollout servers for a training run: start megarl's built-in servers (CPU, tests, demo) or
SGLang servers (GPU clusters), or use URLs given in the recipe; stop what was started.

Every server started here gets a fresh per-run admin token that never appears on a command line:
built-in servers read it from $MEGARL_SERVE_TOKEN in their environment, SGLang servers from a 0600
`--config` file (see `sglang_launcher`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from megarl.rollout.admin_token import TOKEN_ENV, new_token
from megarl.runtime.distributed import free_port


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM when the process that started it dies (even by SIGKILL).

    PR_SET_PDEATHSIG fires when the *thread* that forked the server exits: start servers from
    the main thread (or a thread that lives as long as they should)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class ServerGroup:
    def __init__(self, urls: list[str], procs: list[subprocess.Popen], token: str | None, logs: list[Path]):
        self.urls, self.procs, self.token, self.logs = urls, procs, token, logs

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.time() + 15
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs = []


def builtin_thread_split(num_servers: int, overlap: bool) -> tuple[int | None, int]:
    """CPU threads for (this trainer process, each built-in server) on one machine.

    Without rollout.overlap the trainer and the servers take turns: the trainer keeps torch's
    default and each server gets $MEGARL_SERVER_THREADS (default 1). With overlap they compute at
    the same time, so the cores are split (half to the servers, the rest to the trainer) instead
    of oversubscribed, which on CPU costs more than the overlap gains. $OMP_NUM_THREADS (trainer)
    and $MEGARL_SERVER_THREADS (servers), when set, win.
    """
    server = os.environ.get("MEGARL_SERVER_THREADS")
    if not overlap:
        return None, int(server or 1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_server = int(server) if server else max(1, cores // (2 * num_servers))
    trainer = None if os.environ.get("OMP_NUM_THREADS") else max(1, cores - per_server * num_servers)
    return trainer, per_server


def start_builtin_servers(model_dir: str | Path, count: int, log_dir: Path, *, seed: int = 0,
                          timeout_s: float = 180.0, threads: int | None = None) -> ServerGroup:
    """Start `count` built-in rollout servers on 127.0.0.1 and wait until /health answers
    (`threads`: torch threads per server; default $MEGARL_SERVER_THREADS or 1)."""
    import urllib.request

    log_dir.mkdir(parents=True, exist_ok=True)
    token = new_token()
    urls, procs, logs = [], [], []
    for i in range(count):
        port = free_port()
        log = log_dir / f"rollout_server_{i}.log"
        cmd = [sys.executable, "-m", "megarl.cli", "serve", "--model", str(model_dir), "--host", "127.0.0.1",
               "--port", str(port), "--seed", str(seed + i)]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads or os.environ.get("MEGARL_SERVER_THREADS", "1")),
                   **{TOKEN_ENV: token})
        procs.append(subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent))
        urls.append(f"http://127.0.0.1:{port}")
        logs.append(log)
    group = ServerGroup(urls, procs, token, logs)
    deadline = time.time() + timeout_s
    for url, proc, log in zip(urls, procs, logs):
        while True:
            if proc.poll() is not None:
                group.stop()
                raise RuntimeError(f"rollout server {url} exited with code {proc.returncode}; see {log}:\n{log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                group.stop()
                raise TimeoutError(f"rollout server {url} did not become healthy in {timeout_s:.0f}s; see {log}")
            time.sleep(0.3)
    return group


def sglang_fleet(model_dir: str | Path, count: int, tp: int, log_dir: Path, *, colocate: bool = False,
                 router: bool = False, seed: int = 0, mem_fraction_static: float | None = None):
    """GPU clusters: `count` SGLang servers on this node (GPUs [i*tp, (i+1)*tp) each), optionally
    behind sglang-router, with a fresh admin token (`fleet.admin_token`, never on a command line).
    `mem_fraction_static` goes to colocated servers, which share their GPUs with training.
    Returns the SGLangFleet, not yet started."""
    from megarl.rollout.sglang_launcher import SGLangFleet, SGLangServerSpec

    token = new_token()
    specs = [
        SGLangServerSpec(model_path=str(model_dir), port=free_port(), tp_size=tp, base_gpu_id=i * tp,
                         enable_memory_saver=colocate, random_seed=seed + i, admin_token=token,
                         mem_fraction_static=mem_fraction_static if colocate else None)
        for i in range(count)
    ]
    return SGLangFleet(specs, router_port=free_port() if router and count > 1 else None, log_dir=str(log_dir))


def start_sglang_servers(model_dir: str | Path, count: int, tp: int, log_dir: Path, **options):
    """`sglang_fleet(...)` started: returns it once every server answers /health."""
    return sglang_fleet(model_dir, count, tp, log_dir, **options).start()


def post_to_servers(urls: list[str], path: str, body: dict | None = None, token: str | None = None, timeout_s: float = 300.0) -> list[dict]:
    """POST the same JSON to every server (admin endpoints such as /release_memory_occupation)."""
    import json
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    def post(url: str) -> dict:
        request = urllib.request.Request(url + path, data=json.dumps(body or {}).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            text = response.read().decode() or "{}"
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return {"text": text}

    with ThreadPoolExecutor(max_workers=max(1, len(urls))) as pool:
        return list(pool.map(post, urls))
